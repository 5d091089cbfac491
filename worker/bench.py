"""`lessonreel bench compose`: how fast the CPU path turns a storyboard into finished files.

Two figures: compose + encode seconds per second of output video (target <= 0.15 at 832x480),
and the wall time of a whole `lessonreel demo` run (a fresh process: start-up, drafting,
the embedded Redis, the RQ job, every output file).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.drafter import draft_storyboard
from engine.settings import Settings
from worker.render import render_to_folder

TARGET_SECONDS_PER_OUTPUT_SECOND = 0.15


def bench_request(seconds: int) -> str:
    return f"Explain photosynthesis to grade 7 in {seconds} seconds"


def bench_compose(settings: Settings, *, seconds: int = 30, repeat: int = 3) -> dict:
    # The CPU path only, even where a video model is installed.
    settings = settings.model_copy(update={
        "diffusion": settings.diffusion.model_copy(update={"renderer": "animatic"})})
    storyboard = draft_storyboard(bench_request(seconds), settings, aspect="16:9").storyboard
    timings = []
    with tempfile.TemporaryDirectory(prefix="lessonreel-bench-") as folder:
        for attempt in range(repeat):
            started = time.perf_counter()
            render_to_folder(storyboard, Path(folder) / str(attempt), settings)  # animatic
            timings.append(time.perf_counter() - started)
    best = min(timings)
    return {
        "frame_size": "x".join(map(str, storyboard.frame_size)),
        "fps": settings.render.fps,
        "video_seconds": storyboard.total_seconds,
        "compose_encode_seconds": [round(t, 3) for t in timings],
        "seconds_per_output_second_best": round(best / storyboard.total_seconds, 4),
        "seconds_per_output_second_median": round(
            statistics.median(timings) / storyboard.total_seconds, 4),
        "target_seconds_per_output_second": TARGET_SECONDS_PER_OUTPUT_SECOND,
    }


def bench_demo_wall(*, seconds: int = 30, repeat: int = 1) -> dict:
    """Run the real CLI in a fresh process with a fresh data dir, as a new user would."""
    timings = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="lessonreel-bench-demo-") as folder:
            env = {**os.environ, "LESSONREEL_DATA_DIR": str(Path(folder) / "data")}
            env.pop("LESSONREEL_REDIS_URL", None)
            command = [sys.executable, "-m", "bot.cli", "demo", bench_request(seconds),
                       "--out", str(Path(folder) / "out")]
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            timings.append(time.perf_counter() - started)
    return {"demo_wall_seconds": [round(t, 3) for t in timings], "video_seconds": seconds}


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.platform(terse=True),
        "python": platform.python_version(),
    }
