"""Numbers for Prometheus: kept in Redis by the workers, served by the web app at /metrics.

Workers and the web app are separate processes, often on separate machines, so the counts
live in Redis, in two small hashes that never grow with the number of jobs: fixed stages
times fixed buckets, fixed outcomes and failure reasons. A worker adds to them as a job goes
(`StageTimer`); the web app reads them, with what Redis knows anyway (the queue, the running
jobs, the workers' heartbeats), and writes them out in Prometheus text format
(`MetricsCollector`). No label names a teacher, a title or a token: labels are stages,
outcomes, failure reasons, and workers' names, hosts and GPU models.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import redis

from engine.jobs import render_queue
from engine.settings import Settings
from engine.workers import live_workers

log = logging.getLogger(__name__)

STAGE_KEY = "lessonreel:metrics:stage_seconds"  # "<stage>:<le>", "<stage>:count", ":sum"
JOBS_KEY = "lessonreel:metrics:jobs"  # outcome -> jobs; "failed:<reason>" -> jobs

# The stages of a render job, in order (worker/jobs.py and worker/render.py time them).
STAGES = {
    "queued": "waiting on the queue, from enqueue until a worker took the job",
    "prepare": "settings, output folder, renderer and encoder made ready",
    "narration": "speaking the narration, which times the scenes",
    "title_card": "drawing the title card",
    "model_load": "a model scene, before its first denoising step: loading the pipeline "
                  "(once per worker) and looking up the clip cache",
    "scene": "rendering one scene (a model's clip, a cached clip, or an animatic scene)",
    "compose": "captions burned in and frames handed to the encoder",
    "encode": "the encoder finishing the video and the preview",
    "audio": "the voice and the music mixed, levelled and put into the video as AAC",
    "stills": "subtitle files, poster and contact sheet",
    "check": "the quality report and the export bundle",
    "save": "the finished files moved into place, the video last",
    "publish": "the video recorded in the library and the teacher told",
    "total": "a finished job, from a worker taking it to the teacher being told",
}
# Upper bounds of the histogram buckets, in seconds (a scene on a GPU takes minutes).
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
           3600.0)
OUTCOMES = ("finished", "failed", "cancelled")
FAILURE_REASONS = {
    "user_error": "the storyboard or its images (the teacher was told what to change)",
    "internal_error": "a bug or a broken machine (the teacher was told to try again)",
    "gpu_fault": "a CUDA fault; the job runs again on a fresh worker",
}


def _bucket_label(bound: float) -> str:
    return f"{bound:g}"


def _check_stage(stage: str) -> None:
    if stage not in STAGES:  # a label per scene or per job would grow without end
        raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")


def observe_stage(connection: redis.Redis, stage: str, seconds: float) -> None:
    """Add one duration to the stage's histogram."""
    _check_stage(stage)
    index = bisect.bisect_left(BUCKETS, seconds)  # the first bucket whose bound >= seconds
    bucket = _bucket_label(BUCKETS[index]) if index < len(BUCKETS) else "+Inf"
    with connection.pipeline() as pipe:  # MULTI: a scrape sees the count and bucket agree
        pipe.hincrby(STAGE_KEY, f"{stage}:{bucket}", 1)
        pipe.hincrby(STAGE_KEY, f"{stage}:count", 1)
        pipe.hincrbyfloat(STAGE_KEY, f"{stage}:sum", seconds)
        pipe.execute()


def count_outcome(connection: redis.Redis, outcome: str, reason: str | None = None) -> None:
    """Count a job a worker ended: finished, cancelled, or failed for a reason."""
    if outcome not in OUTCOMES or (reason is not None and reason not in FAILURE_REASONS) \
            or (outcome == "failed") != (reason is not None):
        raise ValueError(f"outcome {outcome!r} with reason {reason!r}: a failure has one of "
                         f"{', '.join(FAILURE_REASONS)}, other outcomes none")
    with connection.pipeline() as pipe:
        pipe.hincrby(JOBS_KEY, outcome, 1)
        if reason is not None:
            pipe.hincrby(JOBS_KEY, f"failed:{reason}", 1)
        pipe.execute()


class StageTimer:
    """Times one job's stages. Each is logged as one line with job_id, stage and seconds
    (plus any fields given, e.g. scene) and, with a connection, added to its histogram;
    `finish` logs the total and counts the outcome. Metrics never fail a render: a Redis
    error while recording is logged and forgotten."""

    def __init__(self, job_id: str, connection: redis.Redis | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job_id = job_id
        self.connection = connection
        self.clock = clock
        self.started = clock()

    def record(self, stage: str, seconds: float, **fields: object) -> None:
        _check_stage(stage)
        name = f"{stage} {fields['scene']}" if "scene" in fields else stage
        log.info("job %s: %s took %.2f s", self.job_id, name, seconds,
                 extra={"job_id": self.job_id, "stage": stage, "seconds": round(seconds, 3),
                        **fields})
        self._store(observe_stage, stage, seconds)

    @contextlib.contextmanager
    def stage(self, stage: str, **fields: object) -> Iterator[None]:
        """Time the block as `stage`; a block that raises is not recorded."""
        start = self.clock()
        yield
        self.record(stage, self.clock() - start, **fields)

    def finish(self, outcome: str, reason: str | None = None, **fields: object) -> None:
        """The job's last line: its outcome and how long it ran (from `started`)."""
        seconds = self.clock() - self.started
        details = {"reason": reason, **fields} if reason else fields
        said = ", ".join(f"{name} {value}" for name, value in details.items())
        log.info("job %s %s after %.2f s%s", self.job_id, outcome, seconds,
                 f" ({said})" if said else "",
                 extra={"job_id": self.job_id, "stage": "total", "seconds": round(seconds, 3),
                        "outcome": outcome, **details})
        if outcome == "finished":  # a failure's run time says little: it stopped anywhere
            self._store(observe_stage, "total", seconds)
        self._store(count_outcome, outcome, reason)

    def _store(self, write: Callable[..., None], *args: object) -> None:
        if self.connection is None:
            return
        try:
            write(self.connection, *args)
        except redis.RedisError as exc:
            log.warning("job %s: metrics not recorded (Redis: %s)", self.job_id,
                        exc.__class__.__name__)


class MetricsCollector:
    """A prometheus_client collector that reads everything from Redis at each scrape, so it
    speaks for every worker. Only the web app needs prometheus_client (the `bot` extra); a
    worker only writes the hashes above."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        queue = render_queue(self.connection, self.settings)
        yield GaugeMetricFamily("lessonreel_queue_length", "Render jobs waiting on the queue.",
                                value=queue.count)
        running = queue.started_job_registry.get_job_count(cleanup=False)
        yield GaugeMetricFamily("lessonreel_jobs_running", "Render jobs a worker is running.",
                                value=running)

        stored = _read_hash(self.connection, STAGE_KEY)
        stages = HistogramMetricFamily(
            "lessonreel_job_stage_seconds", f"Seconds render jobs spent in each stage: "
            f"{', '.join(STAGES)} (engine/metrics.py says what each covers).",
            labels=["stage"])
        for stage in STAGES:
            buckets, seen = [], 0
            for bound in BUCKETS:
                seen += int(stored.get(f"{stage}:{_bucket_label(bound)}", 0))
                buckets.append((_bucket_label(bound), seen))
            buckets.append(("+Inf", int(stored.get(f"{stage}:count", 0))))
            stages.add_metric([stage], buckets, float(stored.get(f"{stage}:sum", 0)))
        yield stages

        jobs = {key: int(value) for key, value in _read_hash(self.connection, JOBS_KEY).items()}
        ended = CounterMetricFamily(
            "lessonreel_jobs", "Render jobs workers ended, by outcome (a run that hit a CUDA "
            "fault counts as failed; its job runs again).", labels=["outcome"])
        for outcome in OUTCOMES:
            ended.add_metric([outcome], jobs.get(outcome, 0))
        yield ended
        failures = CounterMetricFamily(
            "lessonreel_job_failures", "Failed render jobs, by reason: " + "; ".join(
                f"{reason}: {meaning}" for reason, meaning in FAILURE_REASONS.items()) + ".",
            labels=["reason"])
        for reason in FAILURE_REASONS:
            failures.add_metric([reason], jobs.get(f"failed:{reason}", 0))
        yield failures

        workers = live_workers(self.connection)
        yield GaugeMetricFamily("lessonreel_workers", "Render workers with a live heartbeat.",
                                value=len(workers))
        labels = ["worker", "host", "gpu"]
        used = GaugeMetricFamily("lessonreel_gpu_memory_used_bytes",
                                 "GPU memory in use on each worker's GPU (by any process), "
                                 "at its last heartbeat.", labels=labels)
        total = GaugeMetricFamily("lessonreel_gpu_memory_total_bytes",
                                  "GPU memory of each worker's GPU.", labels=labels)
        temperature = GaugeMetricFamily("lessonreel_gpu_temperature_celsius",
                                        "Each worker's GPU temperature at its last heartbeat.",
                                        labels=labels)
        for worker in workers:
            if worker.gpu is None:  # a CPU worker (the animatic)
                continue
            names = [worker.name, worker.host, worker.gpu.name]
            used.add_metric(names, (worker.gpu.total_mb - worker.gpu.free_mb) * 2**20)
            total.add_metric(names, worker.gpu.total_mb * 2**20)
            temperature.add_metric(names, worker.gpu.temperature_c)
        yield used
        yield total
        yield temperature


def _read_hash(connection: redis.Redis, key: str) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in connection.hgetall(key).items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def exposition(connection: redis.Redis, settings: Settings) -> tuple[bytes, str]:
    """GET /metrics: the body in Prometheus text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(MetricsCollector(connection, settings)), CONTENT_TYPE_LATEST
