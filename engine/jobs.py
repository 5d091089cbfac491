"""Render jobs: what a worker is asked to make, and how the ask is put on the queue.

The engine names the job function by its import path, so it never imports the worker (and
a bot host never imports torch). Jobs are serialised as JSON, not pickle, and workers run
only the functions they allow (worker/runner.py): whoever can write to Redis must not be
able to run code on a GPU host.
"""

from __future__ import annotations

import secrets

import redis
from pydantic import BaseModel, Field
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from engine.events import EventLog, RenderEvent
from engine.fair_queue import FairQueue, Priority
from engine.settings import Settings
from engine.storyboard import Storyboard

RENDER_FUNCTION = "worker.jobs.render_storyboard"


class RenderSpec(BaseModel):
    job_id: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    conversation: str = Field(max_length=200)
    # Whose job it is ("slack:U123"): the queue takes fair turns between owners.
    owner: str = Field(default="", max_length=200)
    version: int = Field(ge=1)
    storyboard: Storyboard
    # A folder name inside the media root, which every worker mounts (never a path: a job
    # must not be able to make a worker write anywhere else).
    output: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    # A quick preview: the CPU animatic, whatever video model the worker has.
    animatic: bool = False


CANCEL_PREFIX = "lessonreel:cancel:"


class JobCancelled(Exception):
    """Raised inside a render when its job was cancelled: checked at every denoising step."""


def request_cancel(connection: redis.Redis, settings: Settings, job_id: str) -> None:
    """Cancel a job: a queued one never starts, a running one stops at its next step."""
    connection.set(CANCEL_PREFIX + job_id, "1", ex=settings.queue.job_timeout_seconds)
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return
    if job.get_status() in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        job.cancel()
        EventLog(connection).publish(RenderEvent(job_id=job_id, kind="cancelled",
                                                 message=CANCELLED_MESSAGE))


def cancel_requested(connection: redis.Redis, job_id: str) -> bool:
    return bool(connection.exists(CANCEL_PREFIX + job_id))


CANCELLED_MESSAGE = "The render was cancelled; nothing was saved."


def new_job_id() -> str:
    return "r-" + secrets.token_hex(6)


def render_queue(connection: redis.Redis, settings: Settings,
                 name: str | None = None) -> FairQueue:
    """The shared render queue, or a named one (the demo renders on a private queue)."""
    return FairQueue(name or settings.queue.name, connection=connection,
                     serializer=JSONSerializer)


def enqueue_render(
    connection: redis.Redis, settings: Settings, spec: RenderSpec, *,
    queue: FairQueue | None = None, priority: Priority = "normal",
) -> Job:
    """Put a render on the queue, taking a fair turn between owners at `priority`
    (engine/fair_queue.py: "high" and "low" never take a turn from another teacher)."""
    queue = queue or render_queue(connection, settings)
    queue.set_owner(spec.job_id, spec.owner, priority)
    job = queue.enqueue(
        RENDER_FUNCTION,
        spec.model_dump(mode="json"),
        job_id=spec.job_id,
        job_timeout=settings.queue.job_timeout_seconds,
        result_ttl=settings.queue.result_ttl_seconds,
        failure_ttl=settings.queue.result_ttl_seconds,
    )
    EventLog(connection).publish(RenderEvent(job_id=spec.job_id, kind="queued"))
    return job
