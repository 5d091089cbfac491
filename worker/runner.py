"""The render worker: RQ, without a fork per job.

RQ's default worker forks a child for every job. A model loaded in the child dies with it,
and CUDA initialised in the parent cannot be used in a forked child, so a GPU worker would
reload gigabytes per job. `ResidentWorker` runs jobs in its own process instead, so what a
job loads stays loaded for the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import redis
from rq import Queue, SimpleWorker
from rq.timeouts import TimerDeathPenalty

from engine.events import EventLog, RenderEvent
from engine.jobs import RENDER_FUNCTION, render_queue
from engine.presets import plan_for
from engine.settings import Settings
from engine.storyboard import ASPECTS
from worker.gpu import GpuReading, is_cuda_fault, preflight_problem, read_gpu, reclaimable_mb
from worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)

EXIT_CUDA_FAULT = 3  # the supervisor restarts a worker that exits with this
MAX_CUDA_FAULTS = 2  # runs of one job that may end in a CUDA fault before it fails
GPU_GAVE_UP = ("The GPU failed twice while rendering this video, so it was stopped; please "
               "ask your IT contact to check the GPU (job {job}).")


class ResidentWorker(SimpleWorker):
    """Runs each job in the worker process itself: loaded pipelines survive between jobs.

    Before taking a job it asks `preflight` whether the GPU is fit (free memory,
    temperature) and waits while it is not. A CUDA fault in a job gives the job back to the
    queue and ends the process with EXIT_CUDA_FAULT: the CUDA context is unusable, and a
    fresh process under the supervisor will run the job again.

    SimpleWorker sends no heartbeat while a job runs; run_worker adds ours
    (worker/heartbeat.py), which also gives a dead worker's job to a live one.
    """

    # Only these functions run: RQ would call whatever a job names, and whoever can write to
    # Redis could name subprocess.getoutput.
    allowed_functions: frozenset[str] = frozenset({RENDER_FUNCTION})
    preflight: Callable[[], str | None] | None = None
    preflight_wait_seconds: float = 10.0
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    _faulted_job: str | None = None
    waiting_for: str = ""  # why no job is taken now, for the heartbeat to tell admins

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        while self.preflight is not None and (problem := self.preflight()):
            self.waiting_for = problem
            self.log.warning("not taking a job yet: %s", problem)
            if timeout is None:  # burst mode: report and stop rather than wait
                return None
            self.heartbeat()  # still alive, only waiting for the GPU
            self.sleep(self.preflight_wait_seconds)
            if self._stop_requested:
                return None
        self.waiting_for = ""
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def handle_exception(self, job, *exc_info) -> None:
        if is_cuda_fault(exc_info[1]):
            self._faulted_job = job.id
        super().handle_exception(job, *exc_info)

    def execute_job(self, job, queue) -> None:
        if job.func_name not in self.allowed_functions:
            self.log.error("refusing job %s: %s is not a lessonreel job", job.id, job.func_name)
            self.handle_job_failure(job, queue=queue,
                                    exc_string=f"refused: {job.func_name} is not allowed")
            return
        super().execute_job(job, queue)
        if self._faulted_job == job.id:
            faults = int(job.meta.get("cuda_faults", 0)) + 1
            job.meta["cuda_faults"] = faults
            job.save_meta()
            if faults < MAX_CUDA_FAULTS:
                job.requeue(at_front=True)  # it waited its turn once: first for a fresh worker
                self.log.error("CUDA fault in job %s; queued again, this worker exits", job.id)
            else:  # the job itself breaks the GPU, or the GPU is broken: stop trying
                self.log.error("CUDA fault in job %s again; giving up on it", job.id)
                EventLog(self.connection).publish(RenderEvent(
                    job_id=job.id, kind="failed", message=GPU_GAVE_UP.format(job=job.id)))
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
    if threading.current_thread() is not threading.main_thread():
        # SIGALRM, RQ's job timeout, exists only in the main thread (`lessonreel chat`
        # renders in a background thread): time jobs out with a timer thread instead.
        worker.death_penalty_class = TimerDeathPenalty
    worker.preflight = gpu_preflight(settings)
    if not burst:
        warm_up_worker(settings)  # before the first job, so no teacher waits on a compile
    heartbeat = Heartbeat(worker, queue, interval_seconds=settings.queue.heartbeat_seconds,
                          renderer=renderer_name(settings), read_gpu=gpu_reader(settings),
                          waiting=lambda: worker.waiting_for)
    heartbeat.start()  # first rescues a job a killed worker left, then beats
    try:
        return worker.work(burst=burst, logging_level=logging_level, with_scheduler=False)
    finally:
        heartbeat.stop()


def warm_up_worker(settings: Settings) -> int:
    """Compile each shape bucket this worker will render (one size per aspect, at the
    preset's longest clip) when the configured quality compiles; return the buckets warmed.
    torch is imported only then: an animatic worker never loads it."""
    plans = [plan for aspect in ASPECTS if (plan := plan_for(settings, aspect)) is not None]
    if not plans or not plans[0].compile:
        return 0
    from worker.pipelines import device_for, warm_up

    sizes = sorted({(plan.width, plan.height, plan.max_frames) for plan in plans})
    try:
        return warm_up(plans[0], sizes, device_for(settings.diffusion.device))
    except Exception:  # a failed warm-up costs speed, not the worker
        log.exception("warm-up failed; the first render of each size compiles instead")
        return 0


def renderer_name(settings: Settings) -> str:
    diffusion = settings.diffusion
    return "animatic" if diffusion.renderer == "animatic" else diffusion.preset


def gpu_index(settings: Settings) -> int | None:
    """The GPU this worker renders on, or None for a CPU-only worker."""
    device = settings.diffusion.device
    if device == "cpu" or settings.diffusion.renderer == "animatic":
        return None
    return int(device.split(":")[1]) if ":" in device else 0


def gpu_reader(settings: Settings) -> Callable[[], GpuReading | None]:
    index = gpu_index(settings)
    return (lambda: None) if index is None else (lambda: read_gpu(index))


def gpu_preflight(settings: Settings) -> Callable[[], str | None] | None:
    """The check a worker makes before each job, or None on a CPU-only worker."""
    index = gpu_index(settings)
    if index is None:
        return None

    def check() -> str | None:
        reading = read_gpu(index)
        if reading is not None:  # memory this process's torch keeps cached is ours to reuse
            reading = replace(reading, free_mb=reading.free_mb + reclaimable_mb(index))
        return preflight_problem(reading, min_free_mb=settings.gpu.min_free_mb,
                                 max_temperature_c=settings.gpu.max_temperature_c)

    return check
