"""The animatic renderer and the encoder, checked by reading the files back with real ffmpeg."""

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image, ImageFont

from engine.errors import RenderError
from engine.timeline import build_timeline
from tests.conftest import make_storyboard
from worker.encode import probe
from worker.render import OUTPUT_FILES, STAGING_PREFIX, render_to_folder
from worker.text import BUNDLED_FONT


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box names, in file order."""
    names, data, offset = [], path.read_bytes(), 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        names.append(data[offset + 4:offset + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        if size < 8:
            break
        offset += size
    return names


def decoded_frames(path: Path) -> tuple[tuple[int, int], list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
    return (width, height), frames


def test_render_writes_a_playable_h264_video_matching_the_storyboard(settings, tmp_path):
    storyboard = make_storyboard((3, 3), title_card_seconds=1)
    outputs = render_to_folder(storyboard, tmp_path / "out", settings).files

    assert set(outputs) == set(OUTPUT_FILES)
    info = probe(outputs["video"])
    assert (info.width, info.height) == (832, 480)
    assert info.frames == 7 * 24
    assert info.seconds == pytest.approx(storyboard.total_seconds, rel=0.05)
    assert info.codec.startswith("h264")
    assert info.pix_fmt.startswith("yuv420p")
    boxes = top_level_boxes(outputs["video"])
    assert boxes.index("moov") < boxes.index("mdat"), "faststart puts the index first"

    preview = probe(outputs["preview"])
    assert preview.width <= 480 and preview.height <= 480
    assert preview.frames == info.frames
    assert outputs["preview"].stat().st_size < 5_000_000

    with Image.open(outputs["poster"]) as poster:
        assert (poster.format, poster.size) == ("JPEG", (832, 480))
    assert not list((tmp_path / "out").glob(STAGING_PREFIX + "*"))


@pytest.mark.parametrize(("aspect", "size"), [("9:16", (480, 832)), ("1:1", (640, 640))])
def test_frame_size_follows_the_aspect_ratio(settings, tmp_path, aspect, size):
    outputs = render_to_folder(make_storyboard((2,), aspect=aspect), tmp_path, settings).files
    info = probe(outputs["video"])
    assert (info.width, info.height) == size
    preview = probe(outputs["preview"])
    assert max(preview.width, preview.height) <= 480


def test_contact_sheet_has_one_thumbnail_per_scene(settings, tmp_path):
    storyboard = make_storyboard((2, 2, 2, 2, 2))
    outputs = render_to_folder(storyboard, tmp_path, settings).files
    with Image.open(outputs["contact_sheet"]) as sheet:
        assert sheet.format == "PNG"
        pixels = np.asarray(sheet.convert("RGB"), dtype=np.float32)
    # Four columns, then a second row holding the fifth scene: 320 x 185 thumbnails, 16 px gaps.
    assert sheet.size == (4 * 320 + 5 * 16, 84 + 2 * (185 + 16) + 16)
    for index in range(5):
        row, column = divmod(index, 4)
        x, y = 16 + column * 336, 84 + row * 201
        assert pixels[y:y + 185, x:x + 320].std() > 5, f"thumbnail {index + 1} is drawn"
    empty_slot = pixels[285:285 + 185, 16 + 336:16 + 336 + 320]
    assert empty_slot.std(axis=(0, 1)).max() < 1, "no thumbnail where there is no sixth scene"


def _caption_band_brightness(frame: np.ndarray) -> float:
    height, width = frame.shape[:2]
    band = frame[height - 50:height - 25, width // 2 - 40:width // 2 + 40]
    return float(band.mean())


def test_burned_in_captions_appear_exactly_when_their_cues_say(settings, tmp_path):
    storyboard = make_storyboard((4,), title_card_seconds=1,
                                 narrations=("A short caption. And a second one here.",))
    outputs = render_to_folder(storyboard, tmp_path, settings).files
    timeline = build_timeline(storyboard, settings.render.fps)
    _size, frames = decoded_frames(outputs["video"])
    assert len(frames) == timeline.frame_count

    for cue in timeline.cues:
        middle = (cue.start_frame + cue.end_frame) // 2
        assert _caption_band_brightness(frames[middle]) < 160, "the dark caption box is shown"
    assert _caption_band_brightness(frames[12]) > 180, "no caption over the title card"
    before_first = timeline.cues[0].start_frame - 2
    assert _caption_band_brightness(frames[before_first]) > 180
    assert _caption_band_brightness(frames[timeline.cues[-1].end_frame + 1]) > 180


def test_bundled_font_covers_chinese_narration_and_draws_real_glyphs(settings, tmp_path):
    from engine.drafter import draft_storyboard

    request = "用30秒给初一学生讲解光合作用"
    storyboard = draft_storyboard(request, settings, language="zh").storyboard
    text = storyboard.model_dump_json()
    cmap = TTFont(BUNDLED_FONT).getBestCmap()
    missing = {ch for ch in text if ord(ch) > 127 and ord(ch) not in cmap}
    assert missing == set()

    font = ImageFont.truetype(str(BUNDLED_FONT), 40)
    notdef = np.asarray(font.getmask("\ue000"))  # private-use: a box, if anything
    for ch in "光合作用":
        glyph = np.asarray(font.getmask(ch))
        assert glyph.shape != notdef.shape or not np.array_equal(glyph, notdef)
        assert glyph.max() > 0


def test_chinese_storyboard_renders_to_the_requested_length(settings, tmp_path):
    from engine.drafter import draft_storyboard

    request = "用30秒给初一学生讲解光合作用"
    storyboard = draft_storyboard(request, settings, language="zh").storyboard
    outputs = render_to_folder(storyboard, tmp_path, settings).files
    assert probe(outputs["video"]).seconds == pytest.approx(30, rel=0.05)
    assert "光合作用" in outputs["captions_srt"].read_text(encoding="utf-8")


def _upload(settings, name: str, size=(1200, 800)) -> None:
    settings.uploads_path.mkdir(parents=True, exist_ok=True)
    gradient = np.linspace(0, 255, size[0], dtype=np.uint8)
    pixels = np.stack([np.tile(gradient, (size[1], 1))] * 3, axis=-1)
    pixels[:, :, 2] = 255 - pixels[:, :, 0]
    Image.fromarray(pixels).save(settings.uploads_path / name)


def test_a_scene_with_an_image_pans_and_zooms_over_it(settings, tmp_path):
    _upload(settings, "leaf.png")
    storyboard = make_storyboard((3,), images=("leaf.png",), title_card_seconds=0)
    outputs = render_to_folder(storyboard, tmp_path, settings).files
    _size, frames = decoded_frames(outputs["video"])
    assert len(frames) == 72
    first, last = frames[0].astype(np.float32), frames[-1].astype(np.float32)
    middle_rows = slice(150, 300)  # away from the title and the captions
    assert np.abs(first[middle_rows] - last[middle_rows]).mean() > 3, "the picture moves"
    # The uploaded picture, not the flat background: its left-to-right gradient shows.
    assert first[200, 50, 0] < first[200, 780, 0] - 60


def test_a_missing_image_fails_clearly_and_leaves_no_video(settings, tmp_path):
    storyboard = make_storyboard((2,), images=("not-uploaded.png",))
    with pytest.raises(RenderError, match="not among the uploaded images"):
        render_to_folder(storyboard, tmp_path / "out", settings)
    left = [p.name for p in (tmp_path / "out").iterdir()]
    assert left == []


def test_an_unreadable_image_fails_clearly_and_leaves_no_video(settings, tmp_path):
    settings.uploads_path.mkdir(parents=True)
    (settings.uploads_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    storyboard = make_storyboard((2, 2), images=(None, "broken.jpg"))
    with pytest.raises(RenderError, match="cannot be read as a picture"):
        render_to_folder(storyboard, tmp_path / "out", settings)
    assert list((tmp_path / "out").iterdir()) == []


def test_an_image_outside_the_uploads_folder_is_never_opened(settings, tmp_path):
    settings.uploads_path.mkdir(parents=True)
    secret = settings.data_path / "secret.png"
    Image.new("RGB", (10, 10)).save(secret)
    (settings.uploads_path / "link.png").symlink_to(secret)
    storyboard = make_storyboard((2,), images=("link.png",))
    with pytest.raises(RenderError, match="not among the uploaded images"):
        render_to_folder(storyboard, tmp_path / "out", settings)


@pytest.mark.parametrize("aspect", ["16:9", "9:16"])
def test_a_word_wider_than_the_frame_wraps_instead_of_failing(settings, tmp_path, aspect):
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"
    storyboard = make_storyboard((2,), aspect=aspect, narrations=(f"{word} {word}.",))
    storyboard = storyboard.revise(title=word, scenes=[
        dict(storyboard.scenes[0].model_dump(), on_screen_text=word)])
    outputs = render_to_folder(storyboard, tmp_path, settings).files
    assert probe(outputs["video"]).frames == 3 * 24


def test_an_output_folder_that_cannot_be_written_is_refused(settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RenderError, match="Cannot write the video to"):
        render_to_folder(make_storyboard(), blocker / "out", settings)
