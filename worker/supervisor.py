"""Several render workers under one parent that never touches CUDA.

`lessonreel worker --gpus 0,1` (one worker per GPU) or `--processes N` (N on one device)
starts each worker as a child process running plain `lessonreel worker`. The parent only
starts, watches and stops children: it imports neither torch nor the renderers, so a CUDA
fault or an out-of-memory kill in one child leaves the others and the parent as they were
(a CUDA context cannot be shared with forked children anyway, which is why RQ's fork-based
worker pool does not fit a GPU worker).

A child that exits is started again. One that keeps dying within a minute of starting waits
1, 2, 4 … up to 60 s between tries, so a broken GPU does not spin. SIGTERM or SIGINT reaches
every child, which finishes its job in hand (RQ's warm shutdown); a second one, or
`grace_seconds` passing, stops them at once, and their jobs are run again by the heartbeat
recovery.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

QUICK_EXIT_SECONDS = 60.0  # a child that dies sooner than this counts as failing to start
MAX_PAUSE_SECONDS = 60.0


@dataclass
class Child:
    name: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_failures: int = 0
    restart_at: float = 0.0
    restarts: int = 0


def worker_slots(*, gpus: list[int] | None, processes: int) -> list[tuple[str, dict[str, str]]]:
    """What each child is: a name, and the settings it gets through its environment."""
    if gpus:
        # Device numbers as NVML counts them (by PCI bus), so the worker's GPU reading and
        # its torch device are the same card.
        return [(f"gpu{gpu}", {"LESSONREEL_DIFFUSION__DEVICE": f"cuda:{gpu}",
                               "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}) for gpu in gpus]
    return [(f"worker{number}", {}) for number in range(1, processes + 1)]


def worker_command() -> list[str]:
    return [sys.executable, "-m", "bot.cli", "worker"]


class Supervisor:
    def __init__(self, slots: list[tuple[str, dict[str, str]]], *,
                 command: list[str] | None = None, environ: Mapping[str, str] | None = None,
                 grace_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 popen: Callable[..., subprocess.Popen] = subprocess.Popen) -> None:
        base = dict(os.environ if environ is None else environ)
        self.children = [Child(name, {**base, **extra}) for name, extra in slots]
        self.command = command or worker_command()
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.popen = popen
        self.stopping = threading.Event()

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def check(self) -> None:
        """Start again each child that exited, once its pause is over."""
        now = self.clock()
        for child in self.children:
            if child.process is None:
                if now >= child.restart_at and not self.stopping.is_set():
                    self._spawn(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            lived = now - child.started_at
            child.quick_failures = child.quick_failures + 1 if lived < QUICK_EXIT_SECONDS else 0
            pause = 0.0 if not child.quick_failures else min(
                2.0 ** (child.quick_failures - 1), MAX_PAUSE_SECONDS)
            log.warning("worker %s (pid %d) exited with %s after %.0f s; starting it again in "
                        "%.0f s", child.name, child.process.pid, code, lived, pause)
            child.process = None
            child.restart_at = now + pause
            child.restarts += 1
            if pause == 0.0 and not self.stopping.is_set():
                self._spawn(child)

    def stop(self) -> None:
        """SIGTERM to every child: each finishes its job, then exits; late ones are killed."""
        self.stopping.set()
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = self.clock() + self.grace_seconds
        for process in running:
            try:
                process.wait(max(deadline - self.clock(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time; killed", process.pid)
                process.kill()
                process.wait(10)

    def hurry(self) -> None:
        """A second stop request: the children stop now (RQ takes a second SIGTERM as "stop
        mid-job"; the heartbeat recovery runs those jobs again later)."""
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)

    def _on_signal(self, *_args) -> None:
        if self.stopping.is_set():
            self.hurry()
        self.stopping.set()

    def run(self, *, poll_seconds: float = 0.5) -> int:
        """Start the children and keep them running until SIGTERM or SIGINT; a second one
        stops them at once."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.start()
        while not self.stopping.wait(poll_seconds):
            self.check()
        self.stop()
        return 0

    def _spawn(self, child: Child) -> None:
        # A session of its own: a terminal's Ctrl-C reaches only the parent, which passes one
        # SIGTERM on (RQ takes a second signal as "stop now", mid-job).
        child.process = self.popen(self.command, env=child.env, start_new_session=True)
        child.started_at = self.clock()
        log.info("worker %s started (pid %d)", child.name, child.process.pid)
