"""Frame interpolation: a model's 16 fps clip turned into 24 or 32 fps motion.

Without it, a 16 fps clip in a 24 fps video shows some frames twice and judders. ffmpeg's
minterpolate (motion-compensated: it estimates where each block moves and draws the
picture in between) runs through pipes: raw frames in on stdin, raw frames out on stdout,
nothing on disk. It is slow by video standards (about 2 s of wall time per output second at
832x480, 16 to 24 fps, on a 2-core machine; `measure_interpolation` measures it) but fast
beside the model that made the clip.

"rife" names a RIFE-class model preset. None is installed with lessonreel yet, so asking
for it interpolates with ffmpeg and says so (`method_for`).

The output covers the clip's own time: N frames at `from_fps` last N / from_fps seconds,
and become every frame of `to_fps` that starts inside that time. Frame 0 is the clip's
first frame as it was.
"""

from __future__ import annotations

import contextlib
import logging
import math
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

import imageio_ffmpeg
import numpy as np

log = logging.getLogger(__name__)

Method = Literal["ffmpeg", "rife"]
# minterpolate needs frames after the one it is drawing towards: the clip's last frame is
# repeated this many times, so the end is drawn too (and the extra frames are cut off).
TAIL_FRAMES = 3
RIFE_MISSING = ("Frame interpolation 'rife' (setting output.interpolation) needs a RIFE model "
                "preset, and none is installed; motion was interpolated with ffmpeg instead.")


class InterpolationError(RuntimeError):
    """ffmpeg could not interpolate; the message carries the end of its log."""


def method_for(requested: Method) -> tuple[Method, str | None]:
    """The method that will run when `requested` is asked for, and a note when it differs."""
    if requested == "rife":
        return "ffmpeg", RIFE_MISSING
    if requested != "ffmpeg":
        raise ValueError(f"interpolation method {requested!r} is not one of ffmpeg, rife")
    return "ffmpeg", None


def output_count(count: int, from_fps: float, to_fps: float) -> int:
    """Frames at `to_fps` that start inside `count` frames' time at `from_fps`."""
    return math.ceil(count * to_fps / from_fps - 1e-9)


def interpolate(frames: Sequence[np.ndarray], from_fps: float, to_fps: float,
                method: Method = "ffmpeg") -> list[np.ndarray]:
    """`frames` (each HxWx3 uint8, all one size) played at `from_fps`, redrawn at `to_fps`
    with motion-compensated frames in between. `to_fps` must not be lower than `from_fps`;
    the same rate gives the frames back."""
    if from_fps <= 0 or to_fps < from_fps:
        raise ValueError(f"interpolation raises a frame rate: {from_fps} fps to {to_fps} fps "
                         "does not")
    method, note = method_for(method)
    if note:
        log.warning(note)
    if len(frames) == 0 or to_fps == from_fps:
        return list(frames)
    height, width = frames[0].shape[:2]
    for frame in frames:
        if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype} is not {width}x{height} RGB "
                             "uint8 like the first")
    wanted = output_count(len(frames), from_fps, to_fps)
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
        "-r", _rate(from_fps), "-i", "pipe:0",
        "-vf", f"tpad=stop_mode=clone:stop={TAIL_FRAMES},"
               f"minterpolate=fps={_rate(to_fps)}:mi_mode=mci",
        "-frames:v", str(wanted), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors)
        # Feed and drain at once: either pipe filling up while the other waits would hang.
        feeder = threading.Thread(target=_feed, args=(process, frames), daemon=True)
        feeder.start()
        out = np.empty((wanted, height, width, 3), np.uint8)
        try:
            filled = _read_into(process.stdout, memoryview(out).cast("B"))
        finally:
            process.stdout.close()
            code = process.wait()
            feeder.join()
        if code != 0:
            errors.seek(0)
            tail = " | ".join(errors.read().decode(errors="replace").strip().splitlines()[-3:])
            raise InterpolationError(f"ffmpeg minterpolate exited with status {code}: "
                                     f"{tail or 'no message'}")
    made = filled // (width * height * 3)
    if made != wanted:
        raise InterpolationError(f"ffmpeg minterpolate made {made} frames of {wanted}")
    return list(out)


def _read_into(stream, buffer: memoryview) -> int:
    """Fill `buffer` from `stream` until it is full or the stream ends; bytes read."""
    filled = 0
    while filled < len(buffer):
        count = stream.readinto(buffer[filled:])
        if not count:
            break
        filled += count
    return filled


def _feed(process: subprocess.Popen, frames: Sequence[np.ndarray]) -> None:
    # ffmpeg stopping early breaks the pipe: its exit status, not this thread, says why.
    with contextlib.suppress(BrokenPipeError):
        for frame in frames:
            process.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()


def _rate(fps: float) -> str:
    return str(int(fps)) if float(fps).is_integer() else f"{fps:.6f}"


def moving_pattern(count: int, size: tuple[int, int], step: float = 6.0) -> list[np.ndarray]:
    """A textured bright disc gliding right `step` pixels a frame: motion to interpolate,
    for tests and the benchmark (the position of frame i is 0.15 * width + i * step)."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = np.sin(xs / 5.0) * 40 + np.cos(ys / 7.0) * 40 + 128
    radius = max(min(size) * 0.18, 4.0)
    frames = []
    for index in range(count):
        centre = width * 0.15 + index * step
        disc = np.clip(255 - ((xs - centre) ** 2 + (ys - height / 2) ** 2) / radius, 0, 255)
        frames.append(np.stack([disc, texture, disc * 0.5 + texture * 0.5], axis=-1)
                      .astype(np.uint8))
    return frames


def measure_interpolation(*, size: tuple[int, int] = (832, 480), from_fps: int = 16,
                          to_fps: int = 24, seconds: float = 3.0, method: Method = "ffmpeg",
                          clock: Callable[[], float] = time.perf_counter) -> float:
    """Wall seconds that interpolation adds per second of output video: a `seconds` long
    clip of `size` at `from_fps` (a model's) interpolated to `to_fps`, timed once. Without
    interpolation the clip's frames are only repeated, which costs next to nothing."""
    frames = moving_pattern(max(2, round(seconds * from_fps)), size,
                            step=size[0] * 0.5 / max(seconds * from_fps, 1))
    started = clock()
    interpolate(frames, from_fps, to_fps, method)
    elapsed = clock() - started
    return elapsed / (len(frames) / from_fps)
