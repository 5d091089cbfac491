"""GET /metrics: what `lessonreel serve` tells Prometheus, read with prometheus_client's own
parser. The app is the real one (`serve_app`) under uvicorn, Redis a real redis-server, the
worker the real one rendering with the CPU animatic in burst mode."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import worker.jobs
from engine.jobs import RenderSpec, enqueue_render, new_job_id, render_queue
from engine.metrics import (
    BUCKETS,
    JOBS_KEY,
    STAGE_KEY,
    STAGES,
    StageTimer,
    count_outcome,
    exposition,
    observe_stage,
)
from engine.settings import Settings, load_settings
from tests.conftest import make_storyboard
from tests.local_server import LocalServer
from tests.test_recovery import _taken_by_a_worker_that_dies
from tests.test_serve import serve
from worker.gpu import GpuReading
from worker.heartbeat import Heartbeat
from worker.runner import run_worker

TITLE = "Photosynthesis for Ms Smithson's 7B"
OWNER = "slack:UTEACHER42"
CONVERSATION = "slack:C0CLASS7B:1700000000.000100"
METRICS_TOKEN = "metrics-token-0123456789abcdef"


@dataclass
class Scrape:
    """One GET /metrics, parsed: (sample name, labels) -> value."""

    text: str
    samples: dict[tuple[str, frozenset], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {(sample.name, frozenset(sample.labels.items())): sample.value
                   for family in text_string_to_metric_families(text)
                   for sample in family.samples}
        return cls(text, samples)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample, labels in self.samples if sample == name]

    def histogram(self, stage: str) -> tuple[list[tuple[str, float]], float, float]:
        """A stage's (le, cumulative count) buckets, its count and its sum."""
        name = "lessonreel_job_stage_seconds"
        buckets = [(labels["le"], self.value(f"{name}_bucket", **labels))
                   for labels in self.labels_of(f"{name}_bucket") if labels["stage"] == stage]
        return (sorted(buckets, key=lambda bucket: float(bucket[0])),
                self.value(f"{name}_count", stage=stage), self.value(f"{name}_sum", stage=stage))


@dataclass
class Web:
    server: LocalServer
    settings: Settings
    connection: redis.Redis

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.server.url + path, timeout=10, **kwargs)

    def scrape(self) -> Scrape:
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=")
        return Scrape.parse(response.text)

    def render(self) -> None:
        run_worker(self.settings, self.connection, burst=True, logging_level="CRITICAL",
                   foreground=True)


@pytest.fixture
def web(monkeypatch, redis_server_url) -> Iterator[Web]:
    server, _mounted = serve(monkeypatch, {"LESSONREEL_REDIS_URL": redis_server_url})
    with server:
        yield Web(server, load_settings(), redis.Redis.from_url(redis_server_url))


def _spec(durations=(2, 2), **options) -> RenderSpec:
    job_id = new_job_id()
    board = make_storyboard(durations, narrations=tuple(
        f"Ms Smithson's class sees part {i}." for i in range(len(durations))), **options)
    return RenderSpec(job_id=job_id, conversation=CONVERSATION, owner=OWNER, version=1,
                      storyboard=board.model_copy(update={"title": TITLE}), output=job_id)


def _enqueue(web: Web, *specs: RenderSpec) -> None:
    for spec in specs:
        enqueue_render(web.connection, web.settings, spec)


# -- the queue, and the stages of real renders ---------------------------------------------------


def test_the_queue_length_counts_waiting_jobs_and_running_ones_apart(web):
    assert web.scrape().value("lessonreel_queue_length") == 0
    specs = [_spec() for _ in range(3)]
    _enqueue(web, *specs)
    waiting = web.scrape()
    assert waiting.value("lessonreel_queue_length") == 3
    assert waiting.value("lessonreel_jobs_running") == 0

    queue = render_queue(web.connection, web.settings)
    _taken_by_a_worker_that_dies(web.connection, queue, specs[0].job_id)  # taken, not done
    taken = web.scrape()
    assert taken.value("lessonreel_queue_length") == 2
    assert taken.value("lessonreel_jobs_running") == 1


def test_real_renders_fill_the_stage_histograms_and_name_no_teacher(web):
    _enqueue(web, _spec((2, 2)), _spec((2, 2, 2)))
    web.render()
    scrape = web.scrape()
    assert scrape.value("lessonreel_queue_length") == 0
    assert scrape.value("lessonreel_jobs_total", outcome="finished") == 2
    counts = {stage: scrape.histogram(stage)[1] for stage in STAGES}
    assert counts == {"queued": 2, "narration": 2, "prepare": 2, "title_card": 2,
                      "model_load": 0, "scene": 5, "compose": 2, "encode": 2, "audio": 2,
                      "stills": 2, "check": 2, "save": 2, "publish": 2, "total": 2}
    for stage in STAGES:
        buckets, count, total = scrape.histogram(stage)
        assert [le for le, _ in buckets] == [f"{bound:g}" for bound in BUCKETS] + ["+Inf"]
        cumulative = [seen for _, seen in buckets]
        assert cumulative == sorted(cumulative) and cumulative[-1] == count
        assert total >= 0
    assert scrape.histogram("scene")[2] > 0 and scrape.histogram("total")[2] > 0
    assert scrape.histogram("total")[2] >= scrape.histogram("scene")[2]
    for private in ("Smithson", "Photosynthesis", "UTEACHER42", "C0CLASS7B"):
        assert private not in scrape.text


# -- failures ----------------------------------------------------------------------------------


def test_each_failure_is_counted_with_its_reason_and_a_cancel_apart(web, monkeypatch):
    missing_image = _spec((2,), images=("never-uploaded.png",))
    cancelled = _spec((2,))
    web.connection.set("lessonreel:cancel:" + cancelled.job_id, "1")  # before it starts
    _enqueue(web, missing_image, cancelled)
    web.render()
    first = web.scrape()
    assert first.value("lessonreel_jobs_total", outcome="failed") == 1
    assert first.value("lessonreel_jobs_total", outcome="cancelled") == 1
    assert first.value("lessonreel_jobs_total", outcome="finished") == 0
    assert first.value("lessonreel_job_failures_total", reason="user_error") == 1

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(worker.jobs, "render_to_folder", broken)
    _enqueue(web, _spec((2,)))
    web.render()

    def cuda_fault(*args, **kwargs):
        raise RuntimeError("CUDA error: unspecified launch failure")

    monkeypatch.setattr(worker.jobs, "render_to_folder", cuda_fault)
    _enqueue(web, _spec((2,)))
    with pytest.raises(SystemExit):  # the worker gives the job back and exits
        web.render()

    scrape = web.scrape()
    assert scrape.value("lessonreel_jobs_total", outcome="failed") == 3
    assert [scrape.value("lessonreel_job_failures_total", reason=reason) for reason in
            ("user_error", "internal_error", "gpu_fault")] == [1, 1, 1]
    assert scrape.value("lessonreel_queue_length") == 1  # the faulted job, to run again
    # A failed run's stages before the failure count; its total does not.
    assert scrape.histogram("title_card")[1] == 1 and scrape.histogram("total")[1] == 0


# -- workers and their GPUs ------------------------------------------------------------------------


class _Worker:
    """What a Heartbeat reads of its worker: a name and the job it runs."""

    def __init__(self, name: str) -> None:
        self.name = name

    def get_current_job_id(self) -> None:
        return None


def test_gpu_memory_comes_from_each_workers_heartbeat(web):
    queue = render_queue(web.connection, web.settings)
    reading = GpuReading(0, "NVIDIA GeForce RTX 4090", 24_564, 6_132, 71)
    gpu = Heartbeat(_Worker("gpu-worker"), queue, interval_seconds=5,
                    renderer="wan2.1-t2v-1.3b", read_gpu=lambda: reading)
    cpu = Heartbeat(_Worker("cpu-worker"), queue, interval_seconds=5, renderer="animatic")
    gpu.beat()
    cpu.beat()

    scrape = web.scrape()
    assert scrape.value("lessonreel_workers") == 2
    labels = {"worker": "gpu-worker", "host": socket.gethostname(),
              "gpu": "NVIDIA GeForce RTX 4090"}
    assert scrape.value("lessonreel_gpu_memory_used_bytes", **labels) == (24_564 - 6_132) * 2**20
    assert scrape.value("lessonreel_gpu_memory_total_bytes", **labels) == 24_564 * 2**20
    assert scrape.value("lessonreel_gpu_temperature_celsius", **labels) == 71
    assert scrape.labels_of("lessonreel_gpu_memory_used_bytes") == [labels]  # no CPU worker

    gpu.stop()  # a worker that stops says so at once
    gone = web.scrape()
    assert gone.value("lessonreel_workers") == 1
    assert gone.labels_of("lessonreel_gpu_memory_used_bytes") == []
    cpu.stop()


# -- who may read it, and without Redis ----------------------------------------------------------


def test_with_a_token_set_metrics_want_it_as_a_bearer_token(monkeypatch, redis_server_url):
    server, _mounted = serve(monkeypatch, {"LESSONREEL_REDIS_URL": redis_server_url,
                                           "LESSONREEL_METRICS__TOKEN": METRICS_TOKEN})
    with server:
        url = server.url + "/metrics"
        for headers in ({}, {"Authorization": "Bearer not-the-token"},
                        {"Authorization": METRICS_TOKEN}):
            refused = httpx.get(url, headers=headers, timeout=10)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "lessonreel_" not in refused.text
        allowed = httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
                            timeout=10)
        assert allowed.status_code == 200
        assert Scrape.parse(allowed.text).value("lessonreel_queue_length") == 0
        assert METRICS_TOKEN not in allowed.text
        lower = httpx.get(url, headers={"Authorization": f"bearer {METRICS_TOKEN}"}, timeout=10)
        assert lower.status_code == 200  # the scheme's case does not matter (RFC 9110)
        assert httpx.get(server.url + "/healthz", timeout=10).text == "ok"  # no token there


def test_metrics_are_503_while_redis_does_not_answer(web):
    web.connection.shutdown(nosave=True)
    down = web.get("/metrics")
    assert down.status_code == 503
    assert down.text == "Redis does not answer (ConnectionError)"


# -- what Redis keeps ------------------------------------------------------------------------------


def test_the_numbers_stay_in_two_small_hashes_however_many_jobs_run(settings, redis_connection):
    for number in range(60):
        timer = StageTimer(f"r-{number}", redis_connection)
        timer.record("scene", number * 65.0, scene=1)  # 0 s to over an hour
        timer.finish("finished" if number % 2 else "cancelled")
    keys = {key.decode() for key in redis_connection.scan_iter("lessonreel:*")}
    assert keys == {STAGE_KEY, JOBS_KEY}
    # Two stages (scene, total), each at most its buckets, +Inf, count and sum.
    assert redis_connection.hlen(STAGE_KEY) <= 2 * (len(BUCKETS) + 3)
    assert redis_connection.hlen(JOBS_KEY) == 2


def test_a_duration_on_a_bucket_bound_falls_in_that_bucket(settings, redis_connection):
    observe_stage(redis_connection, "encode", 1.0)
    observe_stage(redis_connection, "encode", 1.0001)
    observe_stage(redis_connection, "encode", 5000.0)
    body, _content_type = exposition(redis_connection, settings)
    buckets, count, total = Scrape.parse(body.decode()).histogram("encode")
    seen = dict(buckets)
    assert (seen["0.5"], seen["1"], seen["2.5"], seen["3600"], seen["+Inf"]) == (0, 1, 2, 2, 3)
    assert count == 3 and total == pytest.approx(5002.0001)


def test_unknown_stages_and_outcomes_are_refused_so_the_label_sets_stay_fixed(redis_connection):
    with pytest.raises(ValueError, match="unknown stage 'scene 3'"):
        observe_stage(redis_connection, "scene 3", 1.0)
    for outcome, reason in (("failed", None), ("finished", "user_error"), ("lost", None),
                            ("failed", "oops")):
        with pytest.raises(ValueError):
            count_outcome(redis_connection, outcome, reason)
    assert not redis_connection.exists(STAGE_KEY, JOBS_KEY)
