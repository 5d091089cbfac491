"""Render jobs: what a worker is asked to make, and how the ask is put on the queue.

The engine names the job function by its import path, so it never imports the worker (and
a bot host never imports torch). Jobs are serialised as JSON, not pickle: whoever can write
to Redis must not be able to run code on a GPU host.
"""

from __future__ import annotations

import secrets
from typing import Literal

import redis
from pydantic import BaseModel, Field
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from engine.events import EventLog, RenderEvent
from engine.settings import Settings
from engine.storyboard import Storyboard

RENDER_FUNCTION = "worker.jobs.render_storyboard"


class RenderSpec(BaseModel):
    job_id: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    conversation: str = Field(max_length=200)
    version: int = Field(ge=1)
    storyboard: Storyboard
    out_dir: str = Field(max_length=4096)  # on storage the worker shares with the bot
    renderer: Literal["animatic"] = "animatic"


def new_job_id() -> str:
    return "r-" + secrets.token_hex(6)


def render_queue(connection: redis.Redis, settings: Settings) -> Queue:
    return Queue(settings.queue.name, connection=connection, serializer=JSONSerializer)


def enqueue_render(connection: redis.Redis, settings: Settings, spec: RenderSpec) -> Job:
    queue = render_queue(connection, settings)
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
