"""Several workers under one supervisor: real `lessonreel worker` children on a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from engine.events import EventLog
from engine.jobs import RenderSpec, enqueue_render, new_job_id
from engine.settings import load_settings
from engine.workers import live_workers
from tests.conftest import make_storyboard, wait_until
from worker.supervisor import MAX_PAUSE_SECONDS, Supervisor, worker_slots

LESSONREEL = Path(sys.executable).parent / "lessonreel"


class FakeProcess:
    """A child that has exited (or not) when the test says so."""

    pids = iter(range(1000, 2000))

    def __init__(self, *args, **kwargs):
        self.pid = next(self.pids)
        self.code = None
        self.kwargs = kwargs

    def poll(self):
        return self.code

    def send_signal(self, signum):
        self.signals = [*getattr(self, "signals", []), signum]


def test_a_child_that_keeps_dying_at_once_waits_longer_each_time_and_one_that_ran_does_not():
    now = [0.0]
    started: list[FakeProcess] = []

    def popen(*args, **kwargs):
        started.append(FakeProcess(*args, **kwargs))
        return started[-1]

    supervisor = Supervisor([("worker1", {})], command=["true"], environ={},
                            clock=lambda: now[0], popen=popen)
    supervisor.start()
    assert started[0].kwargs["start_new_session"] is True
    pauses = []
    for _ in range(9):
        started[-1].code = 3  # dies at once
        count = len(started)
        supervisor.check()
        began = now[0]
        while len(started) == count:
            now[0] += 0.25
            supervisor.check()
        pauses.append(now[0] - began)
    assert pauses[:4] == [1.0, 2.0, 4.0, 8.0] and max(pauses) == MAX_PAUSE_SECONDS
    now[0] += 3600  # this one ran for an hour before it exited: started again at once
    started[-1].code = 0
    count = len(started)
    supervisor.check()
    assert len(started) == count + 1


def test_a_second_stop_request_stops_the_children_at_once():
    started: list[FakeProcess] = []

    def popen(*args, **kwargs):
        started.append(FakeProcess(*args, **kwargs))
        return started[-1]

    supervisor = Supervisor([("worker1", {}), ("worker2", {})], command=["true"], environ={},
                            popen=popen)
    supervisor.start()
    supervisor._on_signal(signal.SIGINT)  # Ctrl-C: finish the jobs in hand (run() stops them)
    assert supervisor.stopping.is_set()
    assert not any(getattr(p, "signals", []) for p in started)
    supervisor._on_signal(signal.SIGINT)  # again: now
    assert [p.signals for p in started] == [[signal.SIGTERM], [signal.SIGTERM]]


def test_one_worker_per_gpu_reads_and_renders_the_same_card():
    slots = worker_slots(gpus=[0, 2], processes=1)
    assert [name for name, _env in slots] == ["gpu0", "gpu2"]
    assert slots[1][1] == {"LESSONREEL_DIFFUSION__DEVICE": "cuda:2",
                           "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert [name for name, _env in worker_slots(gpus=None, processes=3)] == [
        "worker1", "worker2", "worker3"]


@pytest.fixture
def worker_env(tmp_path, redis_server_url, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSONREEL_")}
    env.update(LESSONREEL_DATA_DIR=str(tmp_path / "data"), LESSONREEL_REDIS_URL=redis_server_url,
               LESSONREEL_QUEUE__HEARTBEAT_SECONDS="0.3",
               LESSONREEL_DIFFUSION__RENDERER="animatic")
    for key, value in env.items():
        if key.startswith("LESSONREEL_"):
            monkeypatch.setenv(key, value)
    return env


def test_a_killed_worker_is_started_again_and_the_pool_renders_and_stops_cleanly(
        worker_env, redis_server_url):
    connection = redis.Redis.from_url(redis_server_url)
    supervisor = Supervisor(worker_slots(gpus=None, processes=2), environ=worker_env,
                            grace_seconds=30)
    supervisor.start()
    try:
        first = wait_until(lambda: (w := live_workers(connection)) and len(w) == 2 and w, 60,
                      "two workers to beat")
        victim = supervisor.children[0].process
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)

        def replaced():
            supervisor.check()
            pids = {w.pid for w in live_workers(connection)}
            return len(pids) == 2 and victim.pid not in pids and pids

        pids = wait_until(replaced, 60, "the killed worker to be replaced")
        assert pids != {w.pid for w in first} and supervisor.children[0].restarts == 1

        settings = load_settings()
        events = EventLog(connection)
        after = events.last_id()
        jobs = []
        for _ in range(2):
            job_id = new_job_id()
            enqueue_render(connection, settings, RenderSpec(
                job_id=job_id, conversation="t:1", version=1, owner="slack:U1",
                storyboard=make_storyboard((2,)), output=job_id))
            jobs.append(job_id)
        wait_until(lambda: {e.job_id for _id, e in events.read(after) if e.kind == "finished"}
              == set(jobs), 90, "both jobs to render")
    finally:
        supervisor.stop()
    assert all(child.process.poll() == 0 for child in supervisor.children)  # clean exits
    assert live_workers(connection) == []


def test_the_worker_command_supervises_without_loading_torch_in_the_parent(worker_env,
                                                                           redis_server_url):
    command = [str(LESSONREEL)] if LESSONREEL.exists() else [sys.executable, "-m", "bot.cli"]
    parent = subprocess.Popen([*command, "worker", "--processes", "2"], env=worker_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    connection = redis.Redis.from_url(redis_server_url)
    try:
        workers = wait_until(lambda: (w := live_workers(connection)) and len(w) == 2 and w, 60,
                        "two workers under the command")
        assert parent.pid not in {w.pid for w in workers}
        maps = Path(f"/proc/{parent.pid}/maps").read_text()
        assert "libtorch" not in maps and "libcuda" not in maps
    finally:
        parent.send_signal(signal.SIGTERM)
        output, _ = parent.communicate(timeout=60)
    assert parent.returncode == 0, output
    assert live_workers(connection) == []
