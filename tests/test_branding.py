"""The school's intro and outro cards: drawn with real Pillow, rendered through the animatic,
compose and the real ffmpeg encoder, and read back frame by frame."""

from __future__ import annotations

import re
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.narration import plan_narration, scene_phrases
from engine.settings import load_settings
from engine.timeline import build_timeline, cards_shown, to_srt, to_webvtt
from tests.conftest import make_storyboard
from worker.animatic import AnimaticRenderer
from worker.branding import BrandCards, brand_cards
from worker.compose import compose
from worker.encode import EncodeOptions, VideoEncoder
from worker.narration_audio import NarrationAudio
from worker.qc import quality_report, scene_kinds, scene_spans
from worker.render import render_to_folder
from worker.text import BUNDLED_FONT, hex_rgb

FPS = 24
SIZE = (832, 480)
LOGO_RED = (220, 30, 30)
SRT_TIME = re.compile(r"(\d\d):(\d\d):(\d\d),(\d\d\d) -->")


def branding_settings(monkeypatch, **values: str):
    """Settings as IT would write them: [branding] keys through the environment."""
    for key, value in values.items():
        monkeypatch.setenv(f"LESSONREEL_BRANDING__{key.upper()}", value)
    return load_settings()


def write_logo(path: Path, size=(300, 120), mode="RGBA") -> Path:
    """A wide logo: a red disc in the middle of a transparent (or white, for JPEG) field."""
    width, height = size
    image = Image.new("RGBA", size, (255, 255, 255, 0 if mode != "RGB" else 255))
    radius = min(width, height) * 0.4
    ImageDraw.Draw(image).ellipse((width / 2 - radius, height / 2 - radius,
                                   width / 2 + radius, height / 2 + radius),
                                  fill=(*LOGO_RED, 255))
    if mode == "P":  # a palette PNG with one transparent entry, as many tools save logos
        image = image.convert("RGB").quantize(colors=4)
        corner = image.getpixel((0, 0))
        image.info["transparency"] = corner
        image.save(path, transparency=corner)
    elif mode == "LA":
        grey = Image.new("LA", size, (0, 0))
        grey.paste(Image.new("LA", size, (60, 255)), mask=image.getchannel("A"))
        grey.save(path)
    elif mode == "RGB":
        image.convert("RGB").save(path, "JPEG", quality=95)
    else:
        image.save(path)
    return path


def red_mask(frame: np.ndarray, tolerance: int = 40) -> np.ndarray:
    return (np.abs(frame.astype(int) - LOGO_RED) <= tolerance).all(axis=-1)


def close_to(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 6) -> bool:
    return bool((np.abs(pixel.astype(int) - colour) <= tolerance).all())


def card_frame(cards: BrandCards, kind: str) -> np.ndarray:
    return list(cards.card(kind, 48))[-1].frame  # the held picture, after the fade


def render_branded(storyboard, settings, folder: Path):
    """A render as a worker makes it (render_to_folder), and the timeline it should follow;
    returns the decoded frames and the render's result too."""
    timeline = build_timeline(storyboard, FPS, branding=settings.branding)
    result = render_to_folder(storyboard, folder, settings)
    reader = imageio_ffmpeg.read_frames(str(result.files["video"]))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
    return timeline, frames, result


def srt_starts(srt: str) -> list[float]:
    return [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
            for h, m, s, ms in SRT_TIME.findall(srt)]


# -- when the cards are shown ---------------------------------------------------------------

def test_cards_are_off_by_default_and_the_timeline_is_unchanged(settings):
    storyboard = make_storyboard((3, 3))
    assert not cards_shown(settings.branding)
    assert brand_cards(settings.branding, storyboard, size=SIZE, font=BUNDLED_FONT,
                       fps=FPS) is None
    plain = build_timeline(storyboard, FPS)
    assert build_timeline(storyboard, FPS, branding=settings.branding) == plain
    assert [s.kind for s in plain.segments] == ["title", "scene", "scene"]


def test_cards_show_when_a_logo_is_set_or_when_switched_on(monkeypatch, tmp_path):
    assert cards_shown(branding_settings(monkeypatch, logo_path=str(tmp_path / "l.png"))
                       .branding)
    assert not cards_shown(branding_settings(monkeypatch, cards="off").branding)
    monkeypatch.delenv("LESSONREEL_BRANDING__LOGO_PATH")
    assert cards_shown(branding_settings(monkeypatch, cards="on").branding)


def test_intro_and_outro_wrap_the_video_and_every_caption_moves_by_the_intro(
    monkeypatch, tmp_path
):
    settings = branding_settings(monkeypatch, logo_path=str(write_logo(tmp_path / "l.png")),
                                 intro_seconds="2.5", outro_seconds="3")
    storyboard = make_storyboard((3, 4), title_card_seconds=1)
    plain = build_timeline(storyboard, FPS)
    branded = build_timeline(storyboard, FPS, branding=settings.branding)

    assert [(s.kind, s.scene_index, s.start_frame, s.frame_count) for s in branded.segments] \
        == [("intro", None, 0, 60), ("title", None, 60, 24), ("scene", 0, 84, 72),
            ("scene", 1, 156, 96), ("outro", None, 252, 72)]
    assert branded.frame_count == plain.frame_count + 60 + 72
    assert [(c.start_frame - 60, c.end_frame - 60, c.text) for c in branded.cues] == \
        [(c.start_frame, c.end_frame, c.text) for c in plain.cues]
    for shifted, original in zip(srt_starts(to_srt(branded)), srt_starts(to_srt(plain)),
                                 strict=True):
        assert shifted == pytest.approx(original + 2.5, abs=1e-3)
    first_vtt = re.search(r"(\d\d:\d\d:\d\d\.\d\d\d) -->", to_webvtt(branded)).group(1)
    assert first_vtt.replace(".", ",") in to_srt(branded).split("\n")[1]
    assert to_webvtt(branded).count("-->") == len(branded.cues)

    # The quality check's spans follow the segments: the scenes start after both cards.
    spans = scene_spans(branded, storyboard, scene_kinds(storyboard, None))
    assert [(span.kind, span.start, span.end) for span in spans] == [
        ("intro", 0.0, 2.5), ("title", 2.5, 3.5), ("still", 3.5, 6.5), ("still", 6.5, 10.5),
        ("outro", 10.5, 13.5)]
    assert [span.name for span in spans][::4] == ["the intro card", "the outro card"]


def test_the_voice_and_its_captions_start_after_the_intro(monkeypatch, tmp_path):
    """Narration places each scene's voice and captions on its segment: an intro moves them
    all by its length, and nothing is said over the school's cards."""
    settings = branding_settings(monkeypatch, logo_path=str(tmp_path / "l.png"),
                                 intro_seconds="2", outro_seconds="2")
    storyboard = make_storyboard((3, 3), title_card_seconds=1)
    spoken = [[(phrase, 0.8) for phrase in phrases] for phrases in scene_phrases(storyboard)]
    plan = plan_narration(storyboard, spoken, pause_seconds=0.4, max_total_seconds=180)
    rate = 8000
    audio = NarrationAudio(plan.storyboard, plan, "test voice", sample_rate=rate, scenes=[
        np.full(scene.duration * rate, 0.5, np.float32) for scene in plan.storyboard.scenes])
    plain = audio.timeline(build_timeline(plan.storyboard, FPS))
    branded = audio.timeline(build_timeline(plan.storyboard, FPS, branding=settings.branding))

    assert branded.cues and len(branded.cues) == len(plain.cues)
    assert [(c.start_frame - 48, c.end_frame - 48) for c in branded.cues] == \
        [(c.start_frame, c.end_frame) for c in plain.cues]
    track, plain_track = audio.track(branded), audio.track(plain)
    assert len(track) == len(plain_track) + 4 * rate
    assert not track[:2 * rate].any() and not track[-2 * rate:].any(), "the cards are silent"
    assert np.array_equal(track[2 * rate:-2 * rate], plain_track)
    shifted = [(start + 2, end + 2) for start, end in audio.speech_intervals(plain)]
    assert np.allclose(audio.speech_intervals(branded), shifted)


# -- the rendered video ---------------------------------------------------------------------

def test_a_branded_video_opens_and_closes_on_the_school_cards_with_the_logo(
    monkeypatch, tmp_path
):
    settings = branding_settings(
        monkeypatch, logo_path=str(write_logo(tmp_path / "logo.png")),
        school_name="Riverside Middle School", background="#204060", foreground="#fff4d0")
    storyboard = make_storyboard((3, 3), title_card_seconds=1)
    timeline, frames, result = render_branded(storyboard, settings, tmp_path / "out")
    background = hex_rgb("#204060")

    assert len(frames) == timeline.frame_count == (2.5 + 1 + 6 + 2.5) * FPS
    assert result.notes == [] and result.problems == []
    intro, outro = timeline.segments[0], timeline.segments[-1]
    for frame in (frames[intro.end_frame - 1], frames[outro.end_frame - 1]):
        for corner in (frame[5, 5], frame[5, -6], frame[-6, 5], frame[-6, -6]):
            assert close_to(corner, background), corner
        assert red_mask(frame).sum() > 2000, "the logo's red disc is on the card"
        foreground = (np.abs(frame.astype(int) - hex_rgb("#fff4d0")) <= 30).all(axis=-1)
        assert foreground.sum() > 500, "the school's name and the title are drawn"
    for segment in timeline.segments[1:-1]:  # the title card and the scenes: not the school's
        middle = frames[segment.start_frame + segment.frame_count // 2]
        assert not close_to(middle[5, 5], background)
        assert red_mask(middle).sum() == 0

    # Burned-in captions come when the SRT says, which is after the intro.
    srt = to_srt(timeline)
    first = timeline.cues[0]
    assert srt_starts(srt)[0] == pytest.approx(first.start_frame / FPS, abs=1e-3)
    assert first.start_frame >= intro.frame_count + 24
    band = slice(SIZE[1] - 50, SIZE[1] - 25), slice(SIZE[0] // 2 - 40, SIZE[0] // 2 + 40)
    assert frames[(first.start_frame + first.end_frame) // 2][band].mean() < 160
    assert frames[first.start_frame - 2][band].mean() > 180

    # The poster is still the lesson's title card, not the school's intro.
    with Image.open(result.files["poster"]) as poster:
        corner = np.asarray(poster.convert("RGB"))[5, 5]
    assert close_to(corner, hex_rgb(storyboard.style.background), 12)


def test_a_dark_school_colour_is_not_reported_as_a_black_picture(monkeypatch, tmp_path):
    settings = branding_settings(monkeypatch, logo_path=str(write_logo(tmp_path / "l.png")),
                                 background="#0a1020")
    storyboard = make_storyboard((3,), title_card_seconds=1)
    timeline, _frames, result = render_branded(storyboard, settings, tmp_path / "o")
    assert result.problems == []  # the render's own check agrees
    spans = scene_spans(timeline, storyboard, scene_kinds(storyboard, None))
    report = quality_report(tmp_path / "o" / "video.mp4", storyboard=storyboard,
                            scenes=spans)
    assert report.black == []
    assert [p.code for p in report.problems] == []
    assert report.seconds == pytest.approx(timeline.seconds, abs=0.05)


def test_compose_refuses_a_timeline_with_cards_but_nothing_to_draw_them(
    monkeypatch, tmp_path
):
    settings = branding_settings(monkeypatch, cards="on")
    storyboard = make_storyboard((2,))
    timeline = build_timeline(storyboard, FPS, branding=settings.branding)
    renderer = AnimaticRenderer(storyboard, fps=FPS, font=BUNDLED_FONT, uploads=tmp_path)
    encoder = VideoEncoder(tmp_path / "v.mp4", tmp_path / "p.mp4", SIZE, EncodeOptions(fps=FPS))
    try:
        with pytest.raises(ValueError, match="intro or outro card"):
            compose(timeline, renderer, encoder, font=BUNDLED_FONT)
    finally:
        encoder.abort()


# -- drawing the cards ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "RGB"])
def test_the_logo_keeps_its_shape_and_its_transparency(monkeypatch, tmp_path, mode):
    logo = write_logo(tmp_path / ("logo.jpg" if mode == "RGB" else "logo.png"), (400, 100),
                      mode)
    settings = branding_settings(monkeypatch, logo_path=str(logo), background="#204060")
    cards = brand_cards(settings.branding, make_storyboard(), size=SIZE, font=BUNDLED_FONT,
                        fps=FPS)
    assert cards.notes == []
    frame = card_frame(cards, "intro")
    # Where the logo is: the disc for colour logos, the grey mark for the grey one.
    colour = (60, 60, 60) if mode == "LA" else LOGO_RED
    mark = (np.abs(frame.astype(int) - colour) <= 30).all(axis=-1)
    rows, columns = np.flatnonzero(mark.any(axis=1)), np.flatnonzero(mark.any(axis=0))
    assert rows.size and columns.size, "the logo is drawn"
    mark_width, mark_height = columns[-1] - columns[0] + 1, rows[-1] - rows[0] + 1
    assert mark_width == pytest.approx(mark_height, rel=0.06), "the disc stays round"
    # The logo is 4:1; beside the disc, inside the logo's box, is its transparent field.
    beside = frame[(rows[0] + rows[-1]) // 2, columns[0] - mark_width // 2]
    if mode == "RGB":  # a JPEG has no transparency: its white field shows
        assert close_to(beside, (255, 255, 255), 10)
    else:
        assert close_to(beside, hex_rgb("#204060"), 2)


def test_a_huge_tall_logo_is_shrunk_to_leave_room_for_the_title(monkeypatch, tmp_path):
    logo = write_logo(tmp_path / "tall.png", (1200, 3000))
    settings = branding_settings(monkeypatch, logo_path=str(logo), school_name="Hillview")
    storyboard = make_storyboard().revise(title=("A long lesson title " * 4).strip())
    cards = brand_cards(settings.branding, storyboard, size=SIZE, font=BUNDLED_FONT, fps=FPS)
    frame = card_frame(cards, "intro")
    red_rows = np.flatnonzero(red_mask(frame).any(axis=1))
    assert red_rows.size
    assert red_rows[-1] - red_rows[0] + 1 <= 0.3 * SIZE[1]
    text = (np.abs(frame.astype(int) - (255, 255, 255)) <= 30).all(axis=-1)
    text_rows = np.flatnonzero(text.any(axis=1))
    assert text_rows[0] > red_rows[-1], "the texts sit under the logo"
    assert text_rows[-1] < SIZE[1] - 5, "and inside the frame"


@pytest.mark.parametrize(("language", "title", "school"), [
    ("en", "How plants turn sunlight, water and air into the sugar they live on",
     "Saint Catherine of Alexandria Catholic Primary and Nursery School"),
    ("zh", "植物如何利用阳光、水和空气制造养分：光合作用的奥秘与生命的能量来源",
     "北京市海淀区实验中学附属第二小学"),
])
@pytest.mark.parametrize("aspect", ["16:9", "9:16"])
def test_long_names_and_titles_wrap_inside_the_card(monkeypatch, language, title, school,
                                                    aspect):
    settings = branding_settings(monkeypatch, cards="on", school_name=school)
    storyboard = make_storyboard(language=language, aspect=aspect).revise(title=title)
    size = storyboard.frame_size
    cards = brand_cards(settings.branding, storyboard, size=size, font=BUNDLED_FONT, fps=FPS)
    for kind in ("intro", "outro"):
        frame = card_frame(cards, kind)
        ink = (np.abs(frame.astype(int) - hex_rgb("#1f3b5c")) > 40).any(axis=-1)
        columns = np.flatnonzero(ink.any(axis=0))
        assert columns[0] >= size[0] * 0.05 and columns[-1] <= size[0] * 0.95, "inside"
        line_starts = np.flatnonzero(np.diff(ink.any(axis=1).astype(int)) == 1)
        assert len(line_starts) >= 3, f"the {kind}'s texts wrap onto several lines"


def test_chinese_text_on_the_cards_is_drawn_with_real_glyphs(monkeypatch):
    """The bundled font draws hanzi: two different titles give two different pictures
    (a font without them draws the same empty boxes for both)."""
    settings = branding_settings(monkeypatch, cards="on")
    frames = []
    for title in ("光合作用", "水的循环"):
        storyboard = make_storyboard(language="zh").revise(title=title)
        cards = brand_cards(settings.branding, storyboard, size=SIZE, font=BUNDLED_FONT,
                            fps=FPS)
        frames.append(card_frame(cards, "intro").astype(int))
    assert np.abs(frames[0] - frames[1]).sum(axis=-1).astype(bool).sum() > 500


# -- a logo that cannot be used -------------------------------------------------------------

def _broken_logos(folder: Path) -> dict[str, tuple[Path, str]]:
    truncated = write_logo(folder / "truncated.png").read_bytes()
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    (folder / "notes.png").write_text("this is a text file with a .png name")
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    Image.new("RGB", (40, 40), LOGO_RED).save(folder / "logo.gif")
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(folder / "empty.png")
    (folder / "a-folder.png").mkdir()
    return {
        "missing": (folder / "nowhere.png", "no such file"),
        "truncated": (folder / "truncated.png", "cannot be read"),
        "text": (folder / "notes.png", "cannot be read"),
        "svg": (folder / "logo.svg", "cannot be read"),
        "gif": (folder / "logo.gif", "GIF file, not a PNG or JPEG"),
        "transparent": (folder / "empty.png", "entirely transparent"),
        "folder": (folder / "a-folder.png", "no such file"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "text", "svg", "gif", "transparent",
                                  "folder"])
def test_a_logo_that_cannot_be_used_gives_a_note_and_cards_without_it(
    monkeypatch, tmp_path, case
):
    path, reason = _broken_logos(tmp_path)[case]
    settings = branding_settings(monkeypatch, logo_path=str(path), school_name="Hillview")
    cards = brand_cards(settings.branding, make_storyboard(), size=SIZE, font=BUNDLED_FONT,
                        fps=FPS)
    assert cards is not None, "the cards stay: the logo was set"
    assert cards.logo is None
    assert len(cards.notes) == 1
    assert reason in cards.notes[0] and path.name in cards.notes[0]
    assert "branding.logo_path" in cards.notes[0]
    frame = card_frame(cards, "intro")
    assert red_mask(frame).sum() == 0
    white = (np.abs(frame.astype(int) - (255, 255, 255)) <= 30).all(axis=-1)
    assert white.sum() > 500, "the school's name and the title are still there"


def test_a_broken_logo_still_renders_a_whole_video(monkeypatch, tmp_path):
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    settings = branding_settings(monkeypatch, logo_path=str(tmp_path / "logo.png"))
    storyboard = make_storyboard((2,), title_card_seconds=0)
    timeline, frames, result = render_branded(storyboard, settings, tmp_path / "o")
    assert len(frames) == timeline.frame_count == (2.5 + 2 + 2.5) * FPS
    assert len([note for note in result.notes if "logo" in note]) == 1
    assert close_to(frames[30][5, 5], hex_rgb("#1f3b5c"))
