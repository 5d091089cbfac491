"""A worker's heartbeat, and a dead worker's job run again, exactly once, on a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot.core import Author, ChatService, Place
from engine.events import EventLog
from engine.jobs import RenderSpec, enqueue_render, new_job_id, render_queue
from engine.library import Library
from engine.settings import load_settings
from engine.workers import is_alive, live_workers
from tests.conftest import make_storyboard, wait_until
from worker.encode import probe
from worker.gpu import GpuReading
from worker.heartbeat import RECOVERY_LIMIT, Heartbeat
from worker.runner import run_worker

LESSONREEL = Path(sys.executable).parent / "lessonreel"


def _spec(owner: str = "slack:U1", durations=(2,)) -> RenderSpec:
    job_id = new_job_id()
    return RenderSpec(job_id=job_id, conversation="test:1", version=1, owner=owner,
                      storyboard=make_storyboard(durations), output=job_id)


def _taken_by_a_worker_that_dies(connection, queue, job_id: str) -> str:
    """Have a real RQ worker take the job (as it does before rendering) and then vanish."""
    dead = SimpleWorker([queue], connection=connection, serializer=JSONSerializer)
    job, _queue = queue.dequeue_any([queue], None, connection=connection,
                                    serializer=JSONSerializer)
    assert job.id == job_id
    dead.prepare_execution(job)
    dead.prepare_job_execution(job)
    assert job_id in queue.started_job_registry.get_job_ids()
    return dead.name


def _watcher(connection, queue, name="watcher", **options) -> Heartbeat:
    class Alive:  # the live worker a heartbeat speaks for: only its name and job are read
        def __init__(self):
            self.name = name

        def get_current_job_id(self):
            return None

    return Heartbeat(Alive(), queue, interval_seconds=options.pop("interval", 5),
                     renderer="animatic", **options)


def test_a_dead_workers_job_goes_back_to_the_front_of_the_line_once(settings, redis_connection):
    queue = render_queue(redis_connection, settings)
    orphan = _spec()
    enqueue_render(redis_connection, settings, orphan)
    dead = _taken_by_a_worker_that_dies(redis_connection, queue, orphan.job_id)
    waiting = _spec(owner="slack:U2")
    enqueue_render(redis_connection, settings, waiting)
    assert not is_alive(redis_connection, dead)

    first, second = _watcher(redis_connection, queue, "w1"), _watcher(redis_connection, queue,
                                                                      "w2")
    assert first.recover_orphans() == [orphan.job_id]
    assert second.recover_orphans() == []  # two live workers look: it is requeued once
    assert queue.job_ids == [orphan.job_id, waiting.job_id]
    assert orphan.job_id not in queue.started_job_registry.get_job_ids()
    job = Job.fetch(orphan.job_id, connection=redis_connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.QUEUED


def test_a_job_that_ended_while_the_heartbeat_looked_is_not_run_again(settings,
                                                                      redis_connection,
                                                                      monkeypatch):
    """The race: the heartbeat read the running jobs, then the worker finished this one
    (removing it and its execution record) before the heartbeat read its owner."""
    queue = render_queue(redis_connection, settings)
    spec = _spec()
    enqueue_render(redis_connection, settings, spec)
    assert run_worker(settings, redis_connection, burst=True, logging_level="CRITICAL")
    registry = type(queue.started_job_registry)
    monkeypatch.setattr(registry, "get_job_and_execution_ids",
                        lambda self, *a, **k: [(spec.job_id, "gone-execution")])
    assert _watcher(redis_connection, queue).recover_orphans() == []
    job = Job.fetch(spec.job_id, connection=redis_connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED and queue.job_ids == []


def test_a_job_held_by_a_live_worker_is_left_alone(settings, redis_connection):
    queue = render_queue(redis_connection, settings)
    spec = _spec()
    enqueue_render(redis_connection, settings, spec)
    busy = _taken_by_a_worker_that_dies(redis_connection, queue, spec.job_id)
    _watcher(redis_connection, queue, busy).beat()  # … except that it is alive and beating
    assert _watcher(redis_connection, queue, "w2").recover_orphans() == []
    assert spec.job_id in queue.started_job_registry.get_job_ids()


def test_a_job_that_keeps_killing_its_worker_is_given_up_with_a_sentence(settings,
                                                                         redis_connection):
    queue = render_queue(redis_connection, settings)
    spec = _spec()
    enqueue_render(redis_connection, settings, spec)
    after = EventLog(redis_connection).last_id()
    for attempt in range(RECOVERY_LIMIT + 1):
        _taken_by_a_worker_that_dies(redis_connection, queue, spec.job_id)
        recovered = _watcher(redis_connection, queue, f"w{attempt}").recover_orphans()
        assert recovered == ([spec.job_id] if attempt < RECOVERY_LIMIT else [])
    assert queue.job_ids == []
    events = [e for _id, e in EventLog(redis_connection).read(after) if e.job_id == spec.job_id]
    assert events[-1].kind == "failed" and "given up" in events[-1].message


def test_admins_see_each_worker_its_gpu_and_what_it_renders(runtime):
    connection, settings = runtime.connection, runtime.settings
    service: ChatService = runtime.service
    admin = Author("UA", "Admin")
    service.settings = settings.model_copy(update={"roles": settings.roles.model_copy(
        update={"admins": ("test:UA",)})})
    [_mine, none] = service.message(Place("test", "C1", "q"), admin, "queue")
    assert "No render worker is running" in none.text
    queue = render_queue(connection, settings)
    reading = GpuReading(0, "NVIDIA GeForce RTX 4090", 24_564, 6_132, 71)
    heartbeat = _watcher(connection, queue, "gpu-worker", read_gpu=lambda: reading,
                         waiting=lambda: "")
    heartbeat.beat()
    [_mine, status] = service.message(Place("test", "C1", "q"), admin, "queue")
    assert "NVIDIA GeForce RTX 4090, 18.0 of 24.0 GB in use, 71 °C · idle" in status.text
    teacher = service.message(Place("test", "C1", "t"), Author("U1"), "queue")
    assert "RTX 4090" not in str(teacher)  # teachers see their own place in line only
    heartbeat.stop()  # a worker stopping says so at once
    assert live_workers(connection) == []


def _worker_process(tmp_path: Path, url: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSONREEL_")}
    env.update(LESSONREEL_DATA_DIR=str(tmp_path / "data"), LESSONREEL_REDIS_URL=url,
               LESSONREEL_QUEUE__HEARTBEAT_SECONDS="0.5", LESSONREEL_DIFFUSION__RENDERER="animatic",
               LESSONREEL_NARRATION__ENABLED="false")  # the storyboard's own timing
    command = [str(LESSONREEL)] if LESSONREEL.exists() else [sys.executable, "-m", "bot.cli"]
    return subprocess.Popen([*command, "worker"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / f"worker-{time.monotonic_ns()}.log", "w"))


def test_a_worker_killed_mid_render_has_its_job_finished_once_by_another(tmp_path,
                                                                          redis_server_url,
                                                                          monkeypatch):
    monkeypatch.setenv("LESSONREEL_DATA_DIR", str(tmp_path / "data"))
    settings = load_settings()
    connection = redis.Redis.from_url(redis_server_url)
    events = EventLog(connection)
    after = events.last_id()
    spec = _spec(durations=(8, 8, 8, 8))  # long enough to be killed in the middle
    enqueue_render(connection, settings, spec)

    def seen(kind: str):
        return [e for _id, e in events.read(after) if e.job_id == spec.job_id and e.kind == kind]

    first = _worker_process(tmp_path, redis_server_url)
    try:
        wait_until(lambda: [e for e in seen("progress") if (e.fraction or 0) > 0], 60,
              "the render to be under way")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    assert not seen("finished")
    killed_at = time.monotonic()
    second = _worker_process(tmp_path, redis_server_url)
    try:
        wait_until(lambda: seen("finished"), 90, "the job to finish on the second worker")
        recovered_in = time.monotonic() - killed_at
        time.sleep(1.5)  # room for a wrong second run to show itself
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert recovered_in < 120
    assert len(seen("finished")) == 1 and len(seen("started")) == 2
    job = Job.fetch(spec.job_id, connection=connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    assert [video.video for video in Library(connection).of_owner("slack:U1")] == [spec.job_id]
    video = settings.media_path / spec.output / "video.mp4"
    assert probe(video).seconds == pytest.approx(spec.storyboard.total_seconds, abs=0.2)
    assert live_workers(connection) == []  # the dead one expired, the stopped one withdrew
