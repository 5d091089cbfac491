"""`lessonreel serve`: one web app for the share links, /healthz, the Slack events endpoint and
the Telegram webhook. The real app (`serve_app`, what the command serves) runs under uvicorn
on a local port, the bots talk to the local Slack and Telegram stand-ins, Redis is a real
redis-server, and the real worker renders with the CPU animatic."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from bot.web import serve_app
from engine.settings import Settings, load_settings
from engine.share import share_url
from tests.conftest import free_port
from tests.fake_slack import FORM, FakeSlack, block_actions_payload, event_callback, signed_post
from tests.fake_telegram import FakeTelegram
from tests.local_server import LocalServer
from tests.test_bot_cli import COMMAND, _env
from tests.test_cli import run_cli
from tests.test_slack import card_version, mention_event
from tests.test_telegram import buttons, reply_to
from worker.runner import run_worker

SLACK_TOKEN = "xoxb-serve-test-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
APP_TOKEN = "xapp-serve-test-token"
TELEGRAM_TOKEN = "123:SERVE-TEST-TOKEN"
WEBHOOK_SECRET = "webhook-secret_0123456789"
REQUEST = "Explain fractions to grade 4 in 10 seconds"
TEACHER = 4242


@dataclass
class Served:
    """`lessonreel serve` running with both bots mounted, and the stand-ins they talk to."""

    server: LocalServer
    mounted: str
    slack: FakeSlack
    telegram: FakeTelegram
    settings: Settings
    redis_url: str

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.server.url + path, timeout=10, **kwargs)

    def slack_event(self, event: dict, event_id: str, secret: str = SIGNING_SECRET):
        return signed_post(self.server.url + "/slack/events", event_callback(event, event_id),
                           secret)

    def slack_thread(self, ts: str) -> list[dict]:
        return self.slack.messages_in("C1", thread_ts=ts)

    def render(self) -> None:
        """The real worker, on the same Redis, until the queue is empty."""
        run_worker(self.settings, redis.Redis.from_url(self.redis_url), burst=True,
                   logging_level="CRITICAL", foreground=True)


def serve(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **options: bool
          ) -> tuple[LocalServer, str]:
    """The app `lessonreel serve` builds from this environment, on a LocalServer (not started)
    whose URL is LESSONREEL_PUBLIC_URL, so the links the bots post open on it."""
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN",
                 "TELEGRAM_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # only what the test sets
    server = LocalServer(lifespan="on", name="lessonreel-serve")
    monkeypatch.setenv("LESSONREEL_PUBLIC_URL", server.url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server.app, mounted = serve_app(**options)
    return server, mounted


@pytest.fixture
def served(monkeypatch, redis_server_url) -> Iterator[Served]:
    with FakeSlack() as slack, FakeTelegram() as telegram:
        server, mounted = serve(monkeypatch, {
            "LESSONREEL_REDIS_URL": redis_server_url,
            "SLACK_BOT_TOKEN": SLACK_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "LESSONREEL_SLACK_API_URL": slack.base_url,
            "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
            "LESSONREEL_TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LESSONREEL_TELEGRAM_API_URL": telegram.root,
        })
        with server:
            yield Served(server, mounted, slack, telegram, load_settings(), redis_server_url)


def link_in(text: str, served: Served) -> str:
    [link] = [word for word in text.split() if word.startswith(served.server.url + "/v/")
              and "/bundle.zip" not in word]  # the share link, not the editors' bundle
    return link


# -- one app, both bots, the links they post -------------------------------------------------


def test_one_app_takes_a_slack_event_and_a_telegram_update_and_serves_their_videos(served):
    slack, telegram = served.slack, served.telegram
    assert served.mounted == ("share links, /healthz, Slack events at POST /slack/events, "
                              "Telegram webhook at POST /telegram/webhook")
    # At start the webhook was registered at this app's public address, with its secret.
    assert telegram.webhook["url"] == served.server.url + "/telegram/webhook"
    assert telegram.webhook["secret_token"] == WEBHOOK_SECRET

    # A teacher in Slack asks, and presses Render on the card.
    thread = slack.next_ts()
    assert served.slack_event(mention_event(REQUEST, ts=thread), "Ev1").status == 200
    card = slack.wait_for(lambda s: next((m for m in served.slack_thread(thread)
                                          if card_version(m) == 1), None), message="a card")
    [render] = [b for b in card["blocks"][-1]["elements"] if b["action_id"] == "lr_render"]
    press = block_actions_payload("lr_render", render["value"], message_ts=card["ts"],
                                  thread_ts=thread, message=card, block_id="lr_card")
    assert signed_post(served.server.url + "/slack/events", {"payload": press},
                       SIGNING_SECRET, content_type=FORM).status == 200
    slack.wait_for(lambda s: any("queued" in m["text"] for m in served.slack_thread(thread)),
                   message="the queued status")

    # A teacher in Telegram asks, and presses Render on the card.
    ask = telegram.text_message(TEACHER, REQUEST)
    assert telegram.deliver_webhook(ask) == 200
    tg_card = reply_to(telegram, ask, containing="version 1")
    go = telegram.callback_query(TEACHER, tg_card["message_id"], buttons(tg_card)["Render"])
    assert telegram.deliver_webhook(go) == 200
    telegram.wait_for(lambda: any("queued" in text for text in telegram.texts(TEACHER)),
                      what="the queued status")

    # Both relays run in the one app: each teacher gets the video, with a link that opens
    # on this same app (page, and the video seekable).
    served.render()
    [upload] = slack.wait_for(lambda s: s.uploads, timeout=30, message="the Slack preview")
    [video] = telegram.wait_for(lambda: telegram.sent_videos, 30, what="the Telegram video")
    for link in (link_in(upload["initial_comment"], served), link_in(video.caption, served)):
        page = httpx.get(link, timeout=10)
        assert page.status_code == 200 and "<video" in page.text
        head = httpx.get(link + "/video.mp4", headers={"Range": "bytes=0-7"}, timeout=10)
        assert head.status_code == 206 and head.content[4:8] == b"ftyp"

    health = served.get("/healthz")
    assert health.status_code == 200 and health.text == "ok"


def test_a_forged_slack_event_is_401_and_a_wrong_telegram_secret_403_and_neither_answered(
        served):
    slack, telegram = served.slack, served.telegram
    forged_ts = slack.next_ts()
    forged = served.slack_event(mention_event(REQUEST, ts=forged_ts), "EvForged",
                                secret="not-the-signing-secret")
    assert forged.status == 401
    ask = telegram.text_message(TEACHER, "Explain magnets (forged)")
    wrong = httpx.post(served.server.url + "/telegram/webhook", timeout=10,
                       content=telegram.webhook_update_json(ask),
                       headers={"Content-Type": "application/json",
                                "X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET[:-1] + "x"})
    assert wrong.status_code == 403

    # Genuine ones after them are answered; by then the forged ones would have been too.
    real_ts = slack.next_ts()
    assert served.slack_event(mention_event(REQUEST, ts=real_ts), "EvReal").status == 200
    slack.wait_for(lambda s: served.slack_thread(real_ts), message="the answer to a real one")
    real = telegram.text_message(TEACHER, "/help")
    assert telegram.deliver_webhook(real) == 200
    reply_to(telegram, real, containing="Commands:")
    assert served.slack_thread(forged_ts) == []
    assert {c.args["thread_ts"] for c in slack.calls_to("chat.postMessage")} == {real_ts}
    assert len(telegram.bot_messages(TEACHER)) == 1


# -- /healthz --------------------------------------------------------------------------------


def test_healthz_is_503_once_redis_stops_while_share_links_keep_playing(monkeypatch,
                                                                        redis_server_url):
    server, mounted = serve(monkeypatch, {"LESSONREEL_REDIS_URL": redis_server_url,
                                          "LESSONREEL_SHARE_SECRET": "s" * 32})
    assert mounted.startswith("share links, /healthz; no Slack")
    settings = load_settings()
    folder = settings.media_path / "r-abc"
    folder.mkdir(parents=True)
    (folder / "video.mp4").write_bytes(b"\0\0\0\x18ftypisom" + b"\0" * 100)
    link = share_url(settings, b"s" * 32, "r-abc")
    with server:
        health = httpx.get(server.url + "/healthz", timeout=10)
        assert (health.status_code, health.text) == (200, "ok")

        redis.Redis.from_url(redis_server_url).shutdown(nosave=True)
        down = httpx.get(server.url + "/healthz", timeout=10)
        assert down.status_code == 503
        assert down.text == "Redis does not answer (ConnectionError)"
        assert httpx.get(link, timeout=10).status_code == 200
        assert httpx.get(link + "/video.mp4", timeout=10).content[4:8] == b"ftyp"


# -- what is mounted, and what is not -----------------------------------------------------------


@pytest.mark.parametrize(("env", "options", "reason"), [
    ({"SLACK_APP_TOKEN": APP_TOKEN}, {},
     "no Slack route: SLACK_APP_TOKEN is set, so the Slack bot runs in Socket Mode as its own "
     "service ('lessonreel bot slack')"),
    ({}, {"slack": False}, "Slack left out (--no-slack)"),
])
def test_slack_in_socket_mode_or_left_out_gets_no_route(monkeypatch, redis_server_url, env,
                                                        options, reason):
    server, mounted = serve(monkeypatch, {
        "LESSONREEL_REDIS_URL": redis_server_url, "SLACK_BOT_TOKEN": SLACK_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET, **env}, **options)
    assert mounted == (f"share links, /healthz; {reason}; "
                       "no Telegram (TELEGRAM_BOT_TOKEN is not set)")
    with server:
        event = event_callback(mention_event(REQUEST, ts="1.1"), "Ev1")
        assert signed_post(server.url + "/slack/events", event, SIGNING_SECRET).status == 404
        assert httpx.get(server.url + "/healthz", timeout=10).text == "ok"


def test_the_command_refuses_a_telegram_webhook_without_a_public_url(tmp_path):
    result = run_cli("serve", env_extra={"TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
                                         "LESSONREEL_TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET},
                     data_dir=tmp_path / "data")
    assert result.returncode == 2
    assert result.stderr == ("lessonreel: LESSONREEL_PUBLIC_URL must be set for webhook mode: "
                             "it is the https address Telegram posts updates to.\n")
    assert not list(tmp_path.glob("data/redis.db*"))  # refused before Redis started


def test_the_command_says_in_one_line_what_it_serves_and_never_a_token(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with FakeSlack() as slack:
        env = _env(tmp_path / "data", SLACK_BOT_TOKEN=SLACK_TOKEN,
                   SLACK_SIGNING_SECRET=SIGNING_SECRET, LESSONREEL_SLACK_API_URL=slack.base_url,
                   TELEGRAM_BOT_TOKEN=TELEGRAM_TOKEN,
                   LESSONREEL_TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET)  # and no public URL
        with log.open("wb") as stderr:
            process = subprocess.Popen([*COMMAND, "serve", "--no-telegram", "--host",
                                        "127.0.0.1", "--port", str(port)], env=env,
                                       stderr=stderr)
        try:
            wait_for_health(process, port, log)
            base = f"http://127.0.0.1:{port}"
            ts = slack.next_ts()
            event = event_callback(mention_event(REQUEST, ts=ts), "Ev1")
            assert signed_post(base + "/slack/events", event, SIGNING_SECRET).status == 200
            slack.wait_for(lambda s: s.messages_in("C1", thread_ts=ts), message="an answer")
            assert httpx.post(base + "/telegram/webhook", json={}, timeout=10).status_code == 404
        finally:
            process.terminate()
            process.wait(timeout=15)
    text = log.read_text()
    # Not on a terminal: one JSON object per line.
    [line] = [json.loads(line)["message"] for line in text.splitlines() if "serving on" in line]
    assert line == (f"serving on 127.0.0.1:{port}: share links, /healthz, Slack events at "
                    "POST /slack/events; Telegram left out (--no-telegram)"), line
    for secret in (SLACK_TOKEN, SIGNING_SECRET, TELEGRAM_TOKEN, WEBHOOK_SECRET):
        assert secret not in text


def wait_for_health(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text == "ok":
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "serve did not start"
        time.sleep(0.2)
