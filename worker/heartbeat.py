"""A worker's heartbeat, and giving a dead worker's job to another.

RQ's SimpleWorker (which ResidentWorker is) sends no heartbeat while a job runs, and RQ
notices a killed worker's job only when the job's whole timeout has passed, and then fails
it. So each worker runs a thread that, every `queue.heartbeat_seconds`:
1. writes its status (engine/workers.py): what it renders, and its GPU reading;
2. looks at the jobs RQ says are running: one whose worker's status has expired lost its
   worker, and goes back to the front of the line, once per death (a SET NX claim, so two
   live workers looking at once cannot both requeue it).

A job that has killed its worker RECOVERY_LIMIT times (say, the machine runs out of memory
on it) fails with a sentence instead of taking every worker down in turn.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import redis
from rq.executions import Execution
from rq.job import Job, JobStatus

from engine.events import EventLog, RenderEvent
from engine.fair_queue import FairQueue
from engine.workers import GpuStatus, WorkerStatus, is_alive, publish, withdraw
from worker.gpu import GpuReading

log = logging.getLogger(__name__)

RECOVERY_LIMIT = 3
CLAIM_PREFIX = "lessonreel:recovered:"
CLAIM_TTL_SECONDS = 7 * 86_400
RESTARTED = "The worker rendering this stopped; the render starts again on another."
GAVE_UP = ("The render stopped its worker {count} times, so it was given up; try a shorter "
           "storyboard, or ask your IT contact to check the worker's memory (job {job}).")


class Heartbeat:
    """Beats for one worker and recovers the jobs of dead ones (see the module)."""

    def __init__(self, worker, queue: FairQueue, *, interval_seconds: float, renderer: str,
                 read_gpu: Callable[[], GpuReading | None] = lambda: None,
                 waiting: Callable[[], str] = lambda: "") -> None:
        self.worker = worker
        self.queue = queue
        self.connection: redis.Redis = queue.connection
        self.interval = interval_seconds
        self.read_gpu = read_gpu
        self.waiting = waiting
        self.status = WorkerStatus(name=worker.name, host=socket.gethostname(), pid=os.getpid(),
                                   renderer=renderer, since=time.time(), at=time.time())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        reading = self.read_gpu()
        self.status = self.status.model_copy(update={
            "at": time.time(), "job": self.worker.get_current_job_id(),
            "waiting": self.waiting(),
            "gpu": None if reading is None else GpuStatus(
                name=reading.name, total_mb=reading.total_mb, free_mb=reading.free_mb,
                temperature_c=reading.temperature_c)})
        publish(self.connection, self.status, self.interval)

    def recover_orphans(self) -> list[str]:
        """Requeue the running jobs whose workers died; return their ids."""
        registry = self.queue.started_job_registry
        recovered = []
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            try:
                execution = Execution.fetch(execution_id, job_id, self.connection)
                owner = execution.worker_name
            except ValueError:  # its record expired with it: nobody is running it
                owner = ""
            if owner == self.worker.name or is_alive(self.connection, owner):
                continue
            if not self.connection.set(f"{CLAIM_PREFIX}{execution_id}", "1", nx=True,
                                       ex=CLAIM_TTL_SECONDS):
                continue  # another worker took care of it
            # Only an entry still there is an orphan: a worker that finished or failed the
            # job between our two reads removed it (and its execution) itself.
            if not self.connection.zrem(registry.key, f"{job_id}:{execution_id}"):
                continue
            if self._requeue(job_id):
                recovered.append(job_id)
        return recovered

    def _requeue(self, job_id: str) -> bool:
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=self.queue.serializer)
        except Exception:  # expired or unreadable (NoSuchJobError, a bad payload): gone
            log.warning("job %s lost its worker and cannot be read; dropped", job_id)
            return False
        if job.get_status() != JobStatus.STARTED:  # it ended after all: nothing to run again
            return False
        events = EventLog(self.connection)
        count = int(job.meta.get("recoveries", 0)) + 1
        job.meta["recoveries"] = count
        job.save_meta()
        if count > RECOVERY_LIMIT:
            job.set_status(JobStatus.FAILED)
            events.publish(RenderEvent(job_id=job_id, kind="failed",
                                       message=GAVE_UP.format(count=count - 1, job=job_id)))
            log.error("job %s lost its worker %d times; given up", job_id, count - 1)
            return False
        self.queue.enqueue_job(job, at_front=True)  # it waited its turn once already
        events.publish(RenderEvent(job_id=job_id, kind="progress", message=RESTARTED))
        log.warning("job %s lost its worker; queued again at the front", job_id)
        return True

    def tick(self) -> None:
        """One beat and one look for orphans; a Redis hiccup is logged, never fatal."""
        try:
            self.beat()
            self.recover_orphans()
        except redis.RedisError as exc:
            log.warning("heartbeat: Redis did not answer (%s)", exc.__class__.__name__)
        except Exception:  # a silent heartbeat thread would let the job be taken from us
            log.exception("heartbeat: unexpected error; beating on")

    def start(self) -> None:
        self.tick()  # before the first job: a restarted worker first rescues its own last job

        def run() -> None:
            while not self._stop.wait(self.interval):
                self.tick()

        self._thread = threading.Thread(target=run, name="lessonreel-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        with contextlib.suppress(redis.RedisError):
            withdraw(self.connection, self.worker.name)
