"""The render worker: RQ, without a fork per job.

RQ's default worker forks a child for every job. A model loaded in the child dies with it,
and CUDA initialised in the parent cannot be used in a forked child, so a GPU worker would
reload gigabytes per job. `ResidentWorker` runs jobs in its own process instead, so what a
job loads stays loaded for the next one.
"""

from __future__ import annotations

import redis
from rq import Queue, SimpleWorker

from engine.jobs import render_queue
from engine.settings import Settings


class ResidentWorker(SimpleWorker):
    """Runs each job in the worker process itself: loaded pipelines survive between jobs.

    Caveat: SimpleWorker sends no heartbeat while a job runs, so a job whose worker was
    killed stays "started" until its timeout. Our own heartbeat and recovery are still to
    come (the operations issue).
    """


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
    return worker.work(burst=burst, logging_level=logging_level, with_scheduler=False)
