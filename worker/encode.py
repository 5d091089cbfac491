"""H.264 encoding through the ffmpeg that ships inside imageio-ffmpeg.

One ffmpeg process takes raw RGB frames on stdin and writes two files at once: the full video
and a small preview (one pass, no second decode). Both are yuv420p with the index at the
front (faststart), so browsers and chat apps start playing before the download ends.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np


class EncodeError(RuntimeError):
    """ffmpeg failed; the message carries the end of its log."""


@dataclass(frozen=True)
class EncodeOptions:
    fps: int
    crf: int = 20
    preview_crf: int = 30
    preset: str = "veryfast"
    preview_max_side: int = 480


class VideoEncoder:
    """Write frames with `write(frame, count)`, then `finish()`; `abort()` on failure."""

    def __init__(
        self, video: Path, preview: Path, size: tuple[int, int], options: EncodeOptions,
    ) -> None:
        width, height = size
        self.size = size
        self.frames_written = 0
        side = options.preview_max_side
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the encoder
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-r", str(options.fps), "-i", "pipe:0",
            "-filter_complex",
            f"[0:v]split=2[full][small];[small]scale=w={side}:h={side}:"
            "force_original_aspect_ratio=decrease:force_divisible_by=2[preview]",
            "-map", "[full]", *self._h264(options.crf, options.preset), str(video),
            "-map", "[preview]", *self._h264(options.preview_crf, options.preset), str(preview),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
        )

    @staticmethod
    def _h264(crf: int, preset: str) -> list[str]:
        return ["-c:v", "libx264", "-preset", preset, "-crf", str(crf),
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
