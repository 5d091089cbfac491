"""Frame interpolation with the real ffmpeg (minterpolate), on a moving pattern and on the clips
of a tiny random Wan pipeline loaded through the production path."""

from __future__ import annotations

import logging
from itertools import pairwise
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from engine.presets import plan_for
from engine.settings import load_settings
from engine.timeline import build_timeline
from tests.conftest import make_storyboard
from worker.compose import compose
from worker.diffusion import DiffusionRenderer
from worker.encode import EncodeOptions, VideoEncoder
from worker.interpolate import (
    RIFE_MISSING,
    interpolate,
    measure_interpolation,
    method_for,
    moving_pattern,
    output_count,
)
from worker.synthetic import build_tiny_wan
from worker.text import BUNDLED_FONT

SIZE = (256, 144)
STEP = 6.0  # pixels the pattern moves per source frame


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def disc_x(frame: np.ndarray) -> float:
    """Where the pattern's bright disc is: the red channel's centroid along its middle row."""
    row = frame[frame.shape[0] // 2, :, 0].astype(np.float64)
    return float((row * np.arange(row.size)).sum() / row.sum())


# -- interpolate() ---------------------------------------------------------------------------

def test_16_to_32_fps_draws_new_frames_between_the_clips_own():
    source = moving_pattern(9, SIZE, STEP)
    out = interpolate(source, 16, 32)

    assert len(out) == 18
    assert all(frame.shape == (144, 256, 3) and frame.dtype == np.uint8 for frame in out)
    for index, frame in enumerate(source):
        assert difference(out[2 * index], frame) < 1.0, "even frames are the clip's own"
    for index in range(len(source) - 1):
        between = out[2 * index + 1]
        # Not a copy of either neighbour: a new picture, with the disc half-way.
        assert difference(between, source[index]) > 1.0
        assert difference(between, source[index + 1]) > 1.0
        assert disc_x(between) == pytest.approx(
            (disc_x(source[index]) + disc_x(source[index + 1])) / 2, abs=STEP * 0.2)
    # Every neighbouring pair differs (the last frame holds the clip's last picture).
    moving = [difference(a, b) for a, b in pairwise(out[:-1])]
    assert min(moving) > 1.0
    # Without interpolation the same 32 fps would show each picture twice.
    repeated = [source[i // 2] for i in range(18)]
    assert min(difference(a, b) for a, b in pairwise(repeated)) == 0


@pytest.mark.parametrize(("count", "from_fps", "to_fps", "expected"), [
    (17, 16, 32, 34), (17, 16, 24, 26), (33, 16, 24, 50), (9, 16, 48, 27), (1, 16, 32, 2),
    (2, 16, 24, 3), (5, 12, 30, 13),
])
def test_the_output_covers_the_clips_time_at_the_new_rate(count, from_fps, to_fps, expected):
    assert output_count(count, from_fps, to_fps) == expected
    out = interpolate(moving_pattern(count, (64, 48), 2.0), from_fps, to_fps)
    assert len(out) == expected


def test_the_same_rate_gives_the_frames_back_and_a_lower_one_is_refused():
    frames = moving_pattern(3, (32, 32))
    assert interpolate(frames, 16, 16) == frames
    assert interpolate([], 16, 32) == []
    with pytest.raises(ValueError, match="16 fps to 12 fps"):
        interpolate(frames, 16, 12)
    with pytest.raises(ValueError, match="is not 32x32 RGB uint8"):
        interpolate([frames[0], frames[1][:16]], 16, 32)


def test_rife_says_it_is_not_installed_and_interpolates_with_ffmpeg(caplog):
    assert method_for("ffmpeg") == ("ffmpeg", None)
    assert method_for("rife") == ("ffmpeg", RIFE_MISSING)
    assert "none is installed" in RIFE_MISSING
    frames = moving_pattern(5, (64, 48), 3.0)
    with caplog.at_level(logging.WARNING, logger="worker.interpolate"):
        by_rife = interpolate(frames, 16, 32, "rife")
    assert RIFE_MISSING in caplog.text
    by_ffmpeg = interpolate(frames, 16, 32, "ffmpeg")
    assert len(by_rife) == 10
    assert all(np.array_equal(a, b) for a, b in zip(by_rife, by_ffmpeg, strict=True))


def test_measure_interpolation_gives_seconds_per_output_second():
    ticks = iter([10.0, 13.0])
    # 2 s of clip at 16 fps, timed (by the fake clock) at 3 s: 1.5 s per output second.
    assert measure_interpolation(size=(64, 48), seconds=2.0, clock=lambda: next(ticks)) == 1.5
    measured = measure_interpolation(size=(64, 48), seconds=1.0)
    assert 0 < measured < 10


# -- in the diffusion renderer ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("wan"))


def _renderer(monkeypatch, tmp_path, folder: Path, fps: int, **options) -> DiffusionRenderer:
    for name, value in {"MAX_SIDE": "64", "STEPS": "2", "MAX_FRAMES": "33",
                        "RENDERER": "diffusion", "MODEL_PATH": str(folder),
                        "DEVICE": "cpu", "CACHE_CLIPS": "false"}.items():
        monkeypatch.setenv(f"LESSONREEL_DIFFUSION__{name}", value)
    settings = load_settings()
    plan = plan_for(settings, "16:9")
    assert plan.fps == 16  # Wan2.1's rate: the clip is 33 frames, 2.06 s
    return DiffusionRenderer(make_storyboard((2,), title_card_seconds=0), plan, fps=fps,
                             font=BUNDLED_FONT, uploads=tmp_path, device="cpu", **options)


def _frames(renderer: DiffusionRenderer, frame_count: int) -> list[np.ndarray]:
    frames = []
    for run in renderer.scene(0, frame_count):
        frames += [run.frame] * run.count
    return frames


def _picture(frame: np.ndarray) -> np.ndarray:
    """The frame below the scene's title and counter (drawn at the top)."""
    return frame[frame.shape[0] // 2:]


def test_a_16_fps_model_clip_becomes_32_fps_motion_not_repeated_frames(
    monkeypatch, tmp_path, tiny_wan
):
    plain = _frames(_renderer(monkeypatch, tmp_path, tiny_wan, 32), 64)
    smooth_renderer = _renderer(monkeypatch, tmp_path, tiny_wan, 32, interpolate_fps=32)
    smooth = _frames(smooth_renderer, 64)

    assert len(plain) == len(smooth) == 64  # 2 s at 32 fps
    repeats = sum(difference(_picture(a), _picture(b)) == 0 for a, b in pairwise(plain))
    assert repeats >= 30, "today: each of the clip's 33 pictures shows about twice"
    changes = [difference(_picture(a), _picture(b)) for a, b in pairwise(smooth)]
    assert min(changes) > 0.5, "interpolated: every frame is a new picture"
    own = [_picture(f) for f in plain]
    new = [f for f in smooth if min(difference(_picture(f), o) for o in own) > 0.5]
    assert len(new) >= 25, "about half the frames are drawn between the model's"
    assert smooth_renderer.notes == []


def test_interpolation_at_or_below_the_models_rate_leaves_the_clip_alone(
    monkeypatch, tmp_path, tiny_wan
):
    renderer = _renderer(monkeypatch, tmp_path, tiny_wan, 24, interpolate_fps=16)
    assert renderer.interpolate_fps == 0
    plain = _renderer(monkeypatch, tmp_path, tiny_wan, 24)
    assert all(np.array_equal(a, b) for a, b in zip(_frames(renderer, 48),
                                                    _frames(plain, 48), strict=True))


def test_asking_for_rife_renders_with_ffmpeg_and_the_result_says_so(
    monkeypatch, tmp_path, tiny_wan
):
    renderer = _renderer(monkeypatch, tmp_path, tiny_wan, 24, interpolate_fps=24,
                         interpolation="rife")
    assert renderer.notes == [RIFE_MISSING]
    assert len(_frames(renderer, 48)) == 48


def test_an_interpolated_scene_encodes_to_the_right_length(monkeypatch, tmp_path, tiny_wan):
    renderer = _renderer(monkeypatch, tmp_path, tiny_wan, 24, interpolate_fps=24)
    timeline = build_timeline(renderer.storyboard, 24)
    encoder = VideoEncoder(tmp_path / "v.mp4", tmp_path / "p.mp4",
                           (renderer.width, renderer.height), EncodeOptions(fps=24))
    compose(timeline, renderer, encoder, font=BUNDLED_FONT)
    encoder.finish()
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "v.mp4"))
    assert frames == 48 and seconds == pytest.approx(2.0, abs=0.05)
