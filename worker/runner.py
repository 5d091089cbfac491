"""The render worker: RQ, without a fork per job.

RQ's default worker forks a child for every job. A model loaded in the child dies with it,
and CUDA initialised in the parent cannot be used in a forked child, so a GPU worker would
reload gigabytes per job. `ResidentWorker` runs jobs in its own process instead, so what a
job loads stays loaded for the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from rq import Queue, SimpleWorker

from engine.jobs import render_queue
from engine.settings import Settings
from worker.gpu import is_cuda_fault, preflight_problem, read_gpu

EXIT_CUDA_FAULT = 3  # the supervisor restarts a worker that exits with this


class ResidentWorker(SimpleWorker):
    """Runs each job in the worker process itself: loaded pipelines survive between jobs.

    Before taking a job it asks `preflight` whether the GPU is fit (free memory,
    temperature) and waits while it is not. A CUDA fault in a job gives the job back to the
    queue and ends the process with EXIT_CUDA_FAULT: the CUDA context is unusable, and a
    fresh process under the supervisor will run the job again.

    Caveat: SimpleWorker sends no heartbeat while a job runs, so a job whose worker was
    killed stays "started" until its timeout. Our own heartbeat and recovery are still to
    come (the operations issue).
    """

    preflight: Callable[[], str | None] | None = None
    preflight_wait_seconds: float = 10.0
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    _faulted_job: str | None = None

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        while self.preflight is not None and (problem := self.preflight()):
            self.log.warning("not taking a job yet: %s", problem)
            self.sleep(self.preflight_wait_seconds)
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def handle_exception(self, job, *exc_info) -> None:
        if is_cuda_fault(exc_info[1]):
            self._faulted_job = job.id
        super().handle_exception(job, *exc_info)

    def execute_job(self, job, queue) -> None:
        super().execute_job(job, queue)
        if self._faulted_job == job.id:
            job.requeue()  # from the failed jobs back onto the queue, for a fresh worker
            self.log.error("CUDA fault in job %s; it is queued again and this worker exits",
                           job.id)
            raise SystemExit(EXIT_CUDA_FAULT)


class ForegroundWorker(ResidentWorker):
    """A worker inside an interactive command: Ctrl-C stops the job now.

    RQ's handlers turn the first Ctrl-C into "finish this job, then stop", which in a terminal
    looks like Ctrl-C being ignored; here the KeyboardInterrupt reaches the job instead.
    """

    def _install_signal_handlers(self) -> None:
        pass


def run_worker(
    settings: Settings, connection: redis.Redis, *, burst: bool = False,
    logging_level: str = "INFO", queue: Queue | None = None, foreground: bool = False,
) -> bool:
    """Work on the render queue; with `burst`, stop when it is empty. True if any job ran."""
    queue = queue or render_queue(connection, settings)
    worker_class = ForegroundWorker if foreground else ResidentWorker
    worker = worker_class([queue], connection=connection, serializer=queue.serializer)
    worker.preflight = gpu_preflight(settings)
    return worker.work(burst=burst, logging_level=logging_level, with_scheduler=False)


def gpu_preflight(settings: Settings) -> Callable[[], str | None] | None:
    """The check a worker makes before each job, or None on a CPU-only worker."""
    device = settings.diffusion.device
    if device == "cpu" or settings.diffusion.renderer == "animatic":
        return None
    index = int(device.split(":")[1]) if ":" in device else 0

    def check() -> str | None:
        return preflight_problem(read_gpu(index), min_free_mb=settings.gpu.min_free_mb,
                                 max_temperature_c=settings.gpu.max_temperature_c)

    return check
