"""Share links: tokens, revocation, the share page, Range requests and path safety."""

from __future__ import annotations

import base64
import html
import json
import os
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import bot.web
from bot.web import share_app
from engine.errors import UserError
from engine.share import (
    REVOKED_FILE,
    is_revoked,
    media_file,
    parse_lifetime,
    revoke,
    share_url,
    sign,
    token_of,
    verify,
)
from tests.test_cli import run_cli

SECRET = b"s" * 32
VIDEO = os.urandom(5000)
OUTSIDE_MARKER = b"OUTSIDE-THE-MEDIA-ROOT"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.fixture
def media(settings) -> Path:
    """r-abc (a video), r-abc-secret (a sibling sharing its prefix), a file outside the root,
    a symlink inside r-abc pointing outside, and a folder symlink r-link pointing outside."""
    root = settings.media_path
    video = root / "r-abc"
    video.mkdir(parents=True)
    (video / "video.mp4").write_bytes(VIDEO)
    (video / "captions.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:02.000\nHello\n",
                                        encoding="utf-8")
    (video / "captions.srt").write_text("1\n00:00:00,000 --> 00:00:02,000\nHello\n",
                                        encoding="utf-8")
    (video / "storyboard.json").write_text(json.dumps({
        "title": "Photosynthesis <b>now</b>", "audience": "Grade 7", "language": "en",
        "scenes": [{"narration": "Plants make sugar from light."},
                   {"narration": "Oxygen & water come out."}]}), encoding="utf-8")
    sibling = root / "r-abc-secret"
    sibling.mkdir()
    (sibling / "video.mp4").write_bytes(OUTSIDE_MARKER)
    outside = settings.data_path / "outside"
    outside.mkdir()
    (outside / "video.mp4").write_bytes(OUTSIDE_MARKER)
    (settings.data_path / "outside.txt").write_bytes(OUTSIDE_MARKER)
    (video / "preview.mp4").symlink_to(settings.data_path / "outside.txt")
    (video / "poster.jpg").symlink_to(sibling / "video.mp4")  # inside the root, another folder
    (root / "r-link").symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture
def client(settings, media) -> TestClient:
    return TestClient(share_app(settings, SECRET))


def _path(settings, folder: str = "r-abc", **kwargs) -> str:
    return "/v/" + token_of(share_url(settings, SECRET, folder, **kwargs))


# -- tokens ------------------------------------------------------------------------------


def test_a_token_opens_one_second_before_its_expiry_and_not_at_it():
    expires = 2_000_000_000
    token = sign(SECRET, "r-abc", expires)
    assert verify(SECRET, token, now=expires - 1).folder == "r-abc"
    assert verify(SECRET, token, now=expires - 1).expires_at == expires
    assert verify(SECRET, token, now=expires) is None
    assert verify(SECRET, token, now=expires + 1) is None


def test_tampered_forged_and_malformed_tokens_are_rejected():
    expires = int(time.time()) + 3600
    token = sign(SECRET, "r-abc", expires)
    payload, signature = token.split(".")
    _, rest = base64.urlsafe_b64decode(payload + "==").decode().split("~", 1)
    for folder in ("r-abd", "r-abc-secret", "r-ab"):  # another id, the old signature
        assert verify(SECRET, f"{_b64(f'{folder}~{rest}'.encode())}.{signature}") is None
    longer = rest.replace(str(expires), str(expires + 86_400))  # a longer life, same signature
    assert verify(SECRET, f"{_b64(f'r-abc~{longer}'.encode())}.{signature}") is None
    for i in (0, len(signature) // 2, len(signature) - 1):  # every flipped character counts
        flipped = signature[:i] + ("A" if signature[i] != "A" else "B") + signature[i + 1:]
        assert verify(SECRET, f"{payload}.{flipped}") is None
    assert verify(b"t" * 32, token) is None  # signed under another secret
    for bad in ("", ".", "abc", f"{payload}.", f".{signature}", f"{token}.x", token + "=",
                f"{payload}.{signature}\x00", "a" * 5000, f"{payload}%2e{signature}"):
        assert verify(SECRET, bad) is None
    assert verify(SECRET, token).folder == "r-abc"


def test_links_are_unique_and_default_to_seven_days(settings):
    now = 1_800_000_000
    first, second = (token_of(share_url(settings, SECRET, "r-abc", now=now)) for _ in "ab")
    assert first != second
    assert verify(SECRET, first, now=now).expires_at == now + 7 * 86_400
    assert verify(SECRET, first, now=now).link_id != verify(SECRET, second, now=now).link_id
    short = token_of(share_url(settings, SECRET, "r-abc", now=now, expires_in=7200))
    assert verify(SECRET, short, now=now).expires_at == now + 7200
    assert len(short) < 100 and all(c.isalnum() or c in "-_." for c in short)
    with pytest.raises(ValueError):
        share_url(settings, SECRET, "../r-abc")


def test_lifetimes_and_links_are_parsed():
    assert parse_lifetime("2h") == 7200
    assert parse_lifetime("90m") == 5400
    assert parse_lifetime("3d") == 3 * 86_400
    for bad in ("", "2", "h", "0h", "2 hours", "-1d", "99999d"):
        with pytest.raises(UserError):
            parse_lifetime(bad)
    assert token_of("https://v.school.example/v/abc.def") == "abc.def"
    assert token_of("https://v.school.example/v/abc.def/video.mp4?download=1") == "abc.def"
    assert token_of("  abc.def\n") == "abc.def"
    assert token_of("https://v.school.example/elsewhere") == ""


# -- the page and the media ----------------------------------------------------------------


def test_the_page_has_title_player_captions_transcript_and_downloads(settings, client):
    path = _path(settings)
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h1>Photosynthesis &lt;b&gt;now&lt;/b&gt;</h1>" in page.text  # escaped
    assert f'<video controls preload="metadata" src="{path}/video.mp4">' in page.text
    assert f'<track kind="captions" src="{path}/captions.vtt"' in page.text
    assert "Plants make sugar from light." in page.text
    assert "Oxygen &amp; water come out." in page.text
    assert f'href="{path}/video.mp4?download=1"' in page.text
    assert f'href="{path}/captions.srt?download=1"' in page.text
    assert page.headers["cache-control"] == "private, no-store"
    assert client.head(path).status_code == 200

    srt = client.get(f"{path}/captions.srt?download=1")
    assert srt.status_code == 200 and srt.text.startswith("1\n00:00:00,000")
    assert srt.headers["content-type"] == "application/x-subrip"
    assert srt.headers["content-disposition"] == 'attachment; filename="captions.srt"'
    vtt = client.get(f"{path}/captions.vtt")
    assert vtt.headers["content-type"] == "text/vtt; charset=utf-8"
    assert "content-disposition" not in vtt.headers


@pytest.mark.parametrize(("header", "start", "stop"), [
    ("bytes=0-0", 0, 1), ("bytes=0-99", 0, 100), ("bytes=1000-1999", 1000, 2000),
    ("bytes=100-", 100, 5000), ("bytes=-100", 4900, 5000), ("bytes=4990-9999", 4990, 5000),
    ("bytes=4999-4999", 4999, 5000),
])
def test_range_requests_are_byte_exact(settings, client, header, start, stop):
    response = client.get(_path(settings) + "/video.mp4", headers={"Range": header})
    assert response.status_code == 206
    assert response.content == VIDEO[start:stop]
    assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{len(VIDEO)}"
    assert response.headers["content-length"] == str(stop - start)
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["accept-ranges"] == "bytes"


def test_a_range_past_the_end_is_416_and_head_and_full_gets_work(settings, client):
    path = _path(settings) + "/video.mp4"
    for header in ("bytes=5000-", "bytes=6000-7000"):
        response = client.get(path, headers={"Range": header})
        assert response.status_code == 416
        assert response.headers["content-range"] == f"bytes */{len(VIDEO)}"
    whole = client.get(path)
    assert whole.status_code == 200 and whole.content == VIDEO
    assert whole.headers["accept-ranges"] == "bytes"
    head = client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(VIDEO))
    assert head.headers["accept-ranges"] == "bytes"
    assert head.headers["content-type"] == "video/mp4"
    ranged_head = client.head(path, headers={"Range": "bytes=0-9"})
    assert ranged_head.status_code == 206 and ranged_head.content == b""


def test_expired_forged_and_tampered_links_get_a_plain_404(settings, client):
    expired = sign(SECRET, "r-abc", int(time.time()) - 1)
    forged = sign(b"t" * 32, "r-abc", int(time.time()) + 60)
    good = token_of(share_url(settings, SECRET, "r-abc"))
    tampered = _b64(b"r-abc-secret~9999999999~AAAAAAAA") + "." + good.split(".")[1]
    for token in (expired, forged, tampered, "nonsense", good[:-2]):
        for suffix in ("", "/video.mp4"):
            response = client.get(f"/v/{token}{suffix}")
            assert response.status_code == 404
            assert "expired or is not valid" in response.text
            assert "<video" not in response.text


def test_a_good_link_to_a_video_still_being_made_says_so(settings, client):
    waiting = token_of(share_url(settings, SECRET, "r-notyetmade1"))
    response = client.get(f"/v/{waiting}")
    assert response.status_code == 404 and "not ready yet" in response.text
    assert "expired" not in response.text


# -- path safety -----------------------------------------------------------------------------


TRAVERSALS = [
    "/{t}/../../outside.txt",
    "/{t}/..%2f..%2foutside.txt",
    "/{t}/%2e%2e%2f%2e%2e%2foutside.txt",
    "/{t}/%2e%2e/%2e%2e/outside.txt",
    "/{t}/%252e%252e%252f%252e%252e%252foutside.txt",
    "/{t}/%2Fetc%2Fpasswd",
    "/{t}//etc/passwd",
    "/{t}/..%5c..%5coutside.txt",
    "/{t}/preview.mp4",  # a symlink in the video's folder to a file outside the root
    "/{t}/poster.jpg",  # a symlink to the sibling folder r-abc-secret
    "/{t}/..%2fr-abc-secret%2fvideo.mp4",
    "/{t}/video.mp4%00.txt",
    "/{t}/" + "a" * 4000,
    "/{t}/%c0%ae%c0%ae%2foutside.txt",
    "/{t}/.links.json",
    "/{t}/storyboard.json",
    "/{t}/video.mp4/..%2f..%2f..%2foutside.txt",
    "/..%2f..%2foutside.txt",
    "/{link}/video.mp4",  # a signed link to a folder that is a symlink out of the root
]


def test_traversal_through_http_opens_nothing_outside_the_media_root(settings, media, client,
                                                                     monkeypatch):
    opened: list[Path] = []

    class Recording(bot.web.FileResponse):
        def __init__(self, path, *args, **kwargs):
            opened.append(Path(path))
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(bot.web, "FileResponse", Recording)
    token = token_of(share_url(settings, SECRET, "r-abc"))
    link = token_of(share_url(settings, SECRET, "r-link"))
    assert len(TRAVERSALS) >= 15
    for attempt in TRAVERSALS:
        url = "/v" + attempt.format(t=token, link=link)
        response = client.get(url)
        assert response.status_code in (403, 404), url
        assert OUTSIDE_MARKER not in response.content, url
    video = media.resolve() / "r-abc"
    assert all(path.parent == video for path in opened), opened


@pytest.mark.parametrize(("folder", "name"), [
    ("..", "outside.txt"), ("r-abc", "../outside.txt"), ("r-abc", "..%2foutside.txt"),
    ("r-abc", "%2e%2e"), ("r-abc", "/etc/passwd"), ("/etc", "passwd"),
    ("r-abc", "..\\outside.txt"), ("r-abc", "preview.mp4"), ("r-abc", "poster.jpg"),
    ("r-abc/../r-abc-secret", "video.mp4"), ("r-abc", "video.mp4\x00"), ("r-a\x00bc", "x"),
    ("r-abc", "a" * 300), ("r-link", "video.mp4"), ("r-abc", REVOKED_FILE), ("r-abc", ""),
    ("", "video.mp4"), (".", "video.mp4"), ("r-abc", ".."), ("r-abc", "."),
    ("r-abc", "captions.vtt/"), ("r-ab", "c/video.mp4"),
])
def test_media_file_resolves_nothing_outside_its_folder(settings, media, folder, name):
    assert media_file(settings, folder, name) is None


def test_media_file_finds_the_real_files(settings, media):
    path = media_file(settings, "r-abc", "video.mp4")
    assert path == media.resolve() / "r-abc" / "video.mp4" and path.read_bytes() == VIDEO
    assert media_file(settings, "r-abc-secret", "video.mp4") is not None  # its own link only


# -- revocation --------------------------------------------------------------------------------


def test_a_revoked_link_stops_opening_and_others_keep_working(settings, client):
    kept, revoked = _path(settings), _path(settings)
    link = verify(SECRET, revoked[len("/v/"):])
    assert not is_revoked(settings, link)
    assert revoke(settings, link) is True
    assert revoke(settings, link) is False  # already
    assert is_revoked(settings, link)
    for suffix in ("", "/video.mp4"):
        response = client.get(revoked + suffix)
        assert response.status_code == 403 and "withdrawn" in response.text
        assert client.get(kept + suffix).status_code == 200
    stored = json.loads((settings.media_path / "r-abc" / REVOKED_FILE).read_text())
    assert list(stored["revoked"]) == [link.link_id]
    assert revoked[len("/v/"):] not in json.dumps(stored)  # nothing in it opens anything
    assert client.get(kept + "/" + REVOKED_FILE).status_code == 404


def test_revocations_of_expired_links_are_dropped_and_damage_fails_closed(settings, client):
    old = verify(SECRET, sign(SECRET, "r-abc", 1000), now=0)
    revoke(settings, old)
    new = verify(SECRET, token_of(share_url(settings, SECRET, "r-abc")))
    revoke(settings, new)
    stored = json.loads((settings.media_path / "r-abc" / REVOKED_FILE).read_text())
    assert list(stored["revoked"]) == [new.link_id]  # the expired one was pruned

    kept = _path(settings)
    (settings.media_path / "r-abc" / REVOKED_FILE).write_text("{damaged", encoding="utf-8")
    assert client.get(kept).status_code == 403
    with pytest.raises(UserError):
        revoke(settings, verify(SECRET, sign(SECRET, "r-none", 2_000_000_000)))


# -- the command -------------------------------------------------------------------------------


def test_the_share_command_makes_and_revokes_links(settings, media, client):
    env = {"LESSONREEL_SHARE_SECRET": SECRET.decode(),
           "LESSONREEL_PUBLIC_URL": "https://video.school.example/"}
    made = run_cli("share", "r-abc", "--expires", "2h", env_extra=env,
                   data_dir=settings.data_path)
    assert made.returncode == 0, made.stderr
    url = made.stdout.strip()
    assert url.startswith("https://video.school.example/v/")
    link = verify(SECRET, token_of(url))
    assert link.folder == "r-abc" and abs(link.expires_at - (time.time() + 7200)) < 60
    assert client.get(url.split(".example", 1)[1]).status_code == 200

    done = run_cli("share", "--revoke", url, env_extra=env, data_dir=settings.data_path)
    assert done.returncode == 0, done.stderr
    assert "Revoked" in done.stdout
    assert client.get(url.split(".example", 1)[1]).status_code == 403

    for args in (["r-nope"], ["r-link"], ["../r-abc"], ["--revoke", "https://x/v/garbage.x"],
                 ["--revoke", url[:-3]], ["r-abc", "--expires", "soon"], []):
        failed = run_cli("share", *args, env_extra=env, data_dir=settings.data_path)
        assert failed.returncode == 2, (args, failed.stdout)
        assert failed.stderr.startswith("lessonreel: ") and failed.stderr.count("\n") == 1
        assert "Traceback" not in failed.stderr


def test_the_demo_prints_a_link_that_opens_unless_out_moved_the_files(settings, tmp_path):
    env = {"LESSONREEL_SHARE_SECRET": SECRET.decode(),
           "LESSONREEL_PUBLIC_URL": "https://video.school.example"}
    request = "Explain photosynthesis to grade 7 in 12 seconds"
    result = run_cli("demo", request, env_extra=env, data_dir=settings.data_path)
    assert result.returncode == 0, result.stderr
    url = result.stdout.split("Share link: ", 1)[1].split()[0]
    path = url.split(".example", 1)[1]
    client = TestClient(share_app(settings, SECRET))
    page = client.get(path)
    assert page.status_code == 200 and "<track" in page.text
    board = json.loads((settings.media_path / verify(SECRET, token_of(url)).folder
                        / "storyboard.json").read_text(encoding="utf-8"))
    assert html.escape(board["scenes"][0]["narration"]) in page.text
    video = client.get(path + "/video.mp4", headers={"Range": "bytes=4-7"})
    assert video.status_code == 206 and video.content == b"ftyp"

    moved = run_cli("demo", request, "--out", str(tmp_path / "out"), env_extra=env,
                    data_dir=settings.data_path)
    assert moved.returncode == 0, moved.stderr
    assert "Share link" not in moved.stdout and "No share link" in moved.stdout
