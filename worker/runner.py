"""The render worker: RQ, without a fork per job.

RQ's default worker forks a child for every job. A model loaded in the child dies with it,
and CUDA initialised in the parent cannot be used in a forked child, so a GPU worker would
reload gigabytes per job. `ResidentWorker` runs jobs in its own process instead, so what a
job loads stays loaded for the next one.
"""

from __future__ import annotations

import redis
from rq import SimpleWorker

from engine.jobs import render_queue
from engine.settings import Settings


class ResidentWorker(SimpleWorker):
    """Runs each job in the worker process itself: loaded pipelines survive between jobs.

    Caveat (RQ's, not ours): SimpleWorker sends no heartbeat while a job runs, so a worker
    killed mid-job leaves it "started" until its timeout; crash recovery is built on top.
    """


def run_worker(
    settings: Settings, connection: redis.Redis, *, burst: bool = False,
    logging_level: str = "INFO",
) -> bool:
    """Work on the render queue; with `burst`, stop when it is empty. True if any job ran."""
    queue = render_queue(connection, settings)
    worker = ResidentWorker([queue], connection=connection, serializer=queue.serializer)
    return worker.work(burst=burst, logging_level=logging_level, with_scheduler=False)
