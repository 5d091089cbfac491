"""H.264 (or H.265) encoding through the ffmpeg that ships inside imageio-ffmpeg.

One ffmpeg process takes raw RGB frames on stdin and writes two files at once: the full video
and a small preview (one pass, no second decode). Both are yuv420p with the index at the
front (faststart), so browsers and chat apps start playing before the download ends.

    frames ─▶ split ─┬─▶ [upscale, lanczos] ─▶ H.264 or H.265 ─▶ video.mp4
                     └─▶ fit in preview_max_side ─▶ H.264 ───▶ preview.mp4

The preview is always H.264 at the rendered size's scale: every chat app plays it. H.265
is for archives (about half the size); it is tagged hvc1, which Apple's players require.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imageio_ffmpeg
import numpy as np

Codec = Literal["h264", "h265"]
Upscale = Literal["none", "720p", "1080p"]
# The short side an upscale gives the full video.
UPSCALE_SHORT_SIDE: dict[str, int] = {"720p": 720, "1080p": 1080}
# x265's CRF scale sits higher than x264's for the same look: ffmpeg's H.265 guide puts
# x265 CRF 28 at about x264 CRF 23. render.crf is written in x264's terms.
X265_CRF_OFFSET = 5


class EncodeError(RuntimeError):
    """ffmpeg failed; the message carries the end of its log."""


@dataclass(frozen=True)
class EncodeOptions:
    fps: int
    crf: int = 20
    preview_crf: int = 30
    preset: str = "veryfast"
    preview_max_side: int = 480
    codec: Codec = "h264"  # of the full video; the preview is always H.264
    upscale: Upscale = "none"  # the full video's short side raised to 720 or 1080 pixels


def output_size(size: tuple[int, int], upscale: Upscale) -> tuple[int, int]:
    """The full video's size: `size` with its short side raised to the upscale's, the aspect
    kept and both sides even. An upscale never shrinks: a video already that large keeps
    its size."""
    width, height = size
    short = UPSCALE_SHORT_SIDE.get(upscale, 0)
    if upscale != "none" and not short:
        raise ValueError(f"upscale {upscale!r} is not one of none, 720p, 1080p")
    if min(width, height) >= short:
        return size
    scale = short / min(width, height)
    if width <= height:
        return short, round(height * scale / 2) * 2
    return round(width * scale / 2) * 2, short


class VideoEncoder:
    """Write frames with `write(frame, count)`, then `finish()`; `abort()` on failure."""

    def __init__(
        self, video: Path, preview: Path, size: tuple[int, int], options: EncodeOptions,
    ) -> None:
        width, height = size
        self.size = size
        self.output_size = output_size(size, options.upscale)  # the full video's
        self.frames_written = 0
        side = options.preview_max_side
        if self.output_size == size:
            full = "[0:v]split=2[full][small]"
        else:
            out_width, out_height = self.output_size
            full = (f"[0:v]split=2[rendered][small];[rendered]scale={out_width}:{out_height}:"
                    "flags=lanczos,setsar=1[full]")
        if options.codec == "h265":
            video_codec = self._h265(options.crf, options.preset)
        elif options.codec == "h264":
            video_codec = self._h264(options.crf, options.preset)
        else:
            raise ValueError(f"codec {options.codec!r} is not one of h264, h265")
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the encoder
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-r", str(options.fps), "-i", "pipe:0",
            "-filter_complex",
            f"{full};[small]scale=w={side}:h={side}:"
            "force_original_aspect_ratio=decrease:force_divisible_by=2[preview]",
            "-map", "[full]", *video_codec, str(video),
            "-map", "[preview]", *self._h264(options.preview_crf, options.preset), str(preview),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
        )

    @staticmethod
    def _h264(crf: int, preset: str) -> list[str]:
        return ["-c:v", "libx264", "-preset", preset, "-crf", str(crf),
                "-pix_fmt", "yuv420p", "-movflags", "+faststart"]

    @staticmethod
    def _h265(crf: int, preset: str) -> list[str]:
        # hvc1, not ffmpeg's default hev1: QuickTime and iOS play only the first.
        return ["-c:v", "libx265", "-preset", preset, "-crf", str(min(crf + X265_CRF_OFFSET, 51)),
                "-x265-params", "log-level=error", "-tag:v", "hvc1",
                "-pix_fmt", "yuv420p", "-movflags", "+faststart"]

    def write(self, frame: np.ndarray, count: int = 1) -> None:
        if frame.shape != (self.size[1], self.size[0], 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype} is not {self.size} RGB uint8")
        data = memoryview(np.ascontiguousarray(frame)).cast("B")
        try:
            for _ in range(count):
                self._process.stdin.write(data)
        except BrokenPipeError:
            raise EncodeError(f"ffmpeg stopped early: {self._tail()}") from None
        self.frames_written += count

    def finish(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # ffmpeg died: its exit code says why
            self._process.stdin.close()
        code = self._process.wait()
        if code != 0:
            raise EncodeError(f"ffmpeg exited with status {code}: {self._tail()}")
        self._log.close()

    def abort(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._log.close()

    def _tail(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "no message"


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int
    seconds: float
    codec: str
    pix_fmt: str


def probe(path: Path) -> VideoInfo:
    """Read a video's facts back from the file itself (imageio-ffmpeg ships no ffprobe)."""
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    finally:
        reader.close()
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    width, height = meta["size"]
    return VideoInfo(
        width=width, height=height, fps=float(meta["fps"]), frames=frames, seconds=seconds,
        codec=str(meta.get("codec", "")), pix_fmt=str(meta.get("pix_fmt", "")),
    )
