"""Output options of the encoder: H.265 for archives and an upscaled final video, with the
preview left as it was. Real ffmpeg writes the files; real ffmpeg reads them back."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from worker.encode import EncodeOptions, VideoEncoder, output_size, probe
from worker.interpolate import moving_pattern

FPS = 24


def encode(folder: Path, size: tuple[int, int], frames: int = 24, **options) -> list[np.ndarray]:
    """A moving pattern of `size` through one VideoEncoder; the frames that went in."""
    pictures = moving_pattern(frames, size, step=size[0] / 40)
    encoder = VideoEncoder(folder / "video.mp4", folder / "preview.mp4", size,
                           EncodeOptions(fps=FPS, **options))
    for picture in pictures:
        encoder.write(picture)
    encoder.finish()
    return pictures


def stream_line(path: Path) -> str:
    """ffmpeg's description of the file's video stream: codec, tag, size."""
    log = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True).stderr
    return next(line for line in log.splitlines() if "Video:" in line)


def decode(path: Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]


def test_h265_is_hevc_tagged_hvc1_and_plays_back_the_picture(tmp_path):
    pictures = encode(tmp_path, (320, 180), codec="h265")

    info = probe(tmp_path / "video.mp4")
    assert info.codec.startswith("hevc")
    assert (info.width, info.height, info.frames) == (320, 180, 24)
    assert re.search(r"hevc .*\(hvc1 / ", stream_line(tmp_path / "video.mp4")), \
        "tagged hvc1 (Apple's players refuse hev1)"
    decoded = decode(tmp_path / "video.mp4")
    assert len(decoded) == 24
    for picture, frame in zip(pictures, decoded, strict=True):
        assert np.abs(picture.astype(int) - frame.astype(int)).mean() < 6

    preview = probe(tmp_path / "preview.mp4")
    assert preview.codec.startswith("h264"), "chats play the preview: it stays H.264"
    assert "(avc1 / " in stream_line(tmp_path / "preview.mp4")
    assert preview.frames == 24


def test_h264_stays_the_default(tmp_path):
    encode(tmp_path, (320, 180), frames=6)
    assert probe(tmp_path / "video.mp4").codec.startswith("h264")
    assert "(avc1 / " in stream_line(tmp_path / "video.mp4")


@pytest.mark.parametrize(("size", "upscaled"), [
    ((832, 480), (1248, 720)), ((480, 832), (720, 1248)), ((640, 640), (720, 720)),
])
def test_720p_upscale_raises_the_short_side_and_leaves_the_preview(tmp_path, size,
                                                                   upscaled):
    (tmp_path / "plain").mkdir()
    encode(tmp_path / "plain", size, frames=6)
    encode(tmp_path, size, frames=6, upscale="720p")

    info = probe(tmp_path / "video.mp4")
    assert (info.width, info.height) == upscaled
    assert min(info.width, info.height) == 720
    assert info.frames == 6
    assert "SAR 1:1" in stream_line(tmp_path / "video.mp4"), "square pixels: not stretched"
    preview, plain_preview = probe(tmp_path / "preview.mp4"), probe(
        tmp_path / "plain" / "preview.mp4")
    assert (preview.width, preview.height) == (plain_preview.width, plain_preview.height)
    assert max(preview.width, preview.height) <= 480


def test_an_upscaled_video_shows_the_same_picture_larger(tmp_path):
    pictures = encode(tmp_path, (416, 240), frames=4, upscale="720p", codec="h265")
    frame = decode(tmp_path / "video.mp4")[-1]
    assert frame.shape == (720, 1248, 3)
    shrunk = frame.reshape(240, 3, 416, 3, 3).mean(axis=(1, 3))
    assert np.abs(shrunk - pictures[-1].astype(float)).mean() < 8


@pytest.mark.parametrize(("size", "upscale", "expected"), [
    ((832, 480), "1080p", (1872, 1080)),
    ((480, 832), "1080p", (1080, 1872)),
    ((850, 478), "720p", (1280, 720)),  # 1280.3: rounded to even
    ((1280, 720), "720p", (1280, 720)),  # already there
    ((1920, 1080), "720p", (1920, 1080)),  # an upscale never shrinks
    ((832, 480), "none", (832, 480)),
])
def test_output_size_keeps_the_aspect_with_even_sides(size, upscale, expected):
    width, height = output_size(size, upscale)
    assert (width, height) == expected
    assert width % 2 == 0 and height % 2 == 0
    assert width / height == pytest.approx(size[0] / size[1], rel=0.005)


def test_an_unknown_upscale_or_codec_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'4k' is not one of none, 720p, 1080p"):
        output_size((832, 480), "4k")
    with pytest.raises(ValueError, match="'av1' is not one of h264, h265"):
        VideoEncoder(tmp_path / "v.mp4", tmp_path / "p.mp4", (64, 48),
                     EncodeOptions(fps=FPS, codec="av1"))
    assert list(tmp_path.iterdir()) == []
