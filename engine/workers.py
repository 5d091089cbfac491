"""What each render worker is doing, and its GPU: the heartbeats workers leave in Redis.

A worker writes its status every `queue.heartbeat_seconds` under a key that expires after
HEARTBEAT_MISSES beats: a worker whose key is gone has died (killed, machine off), and the
job it held is given to another (worker/heartbeat.py). Admins read the same records in chat.
"""

from __future__ import annotations

import time

import redis
from pydantic import BaseModel, ValidationError

PREFIX = "lessonreel:worker:"
HEARTBEAT_MISSES = 3  # beats a worker may miss before it counts as dead


class GpuStatus(BaseModel):
    name: str
    total_mb: int
    free_mb: int
    temperature_c: int


class WorkerStatus(BaseModel):
    name: str  # RQ's worker name
    host: str
    pid: int
    renderer: str  # "animatic" or the diffusion preset
    job: str | None = None  # the job it renders now
    since: float  # when it started
    at: float  # when it last beat
    gpu: GpuStatus | None = None
    waiting: str = ""  # why it takes no job now (a full or hot GPU), if it does not


def publish(connection: redis.Redis, status: WorkerStatus, interval_seconds: float) -> None:
    connection.set(PREFIX + status.name, status.model_dump_json(),
                   px=int(interval_seconds * HEARTBEAT_MISSES * 1000))


def withdraw(connection: redis.Redis, name: str) -> None:
    """A worker stopping cleanly says so at once, rather than by going quiet."""
    connection.delete(PREFIX + name)


def is_alive(connection: redis.Redis, name: str) -> bool:
    return bool(name) and bool(connection.exists(PREFIX + name))


def live_workers(connection: redis.Redis) -> list[WorkerStatus]:
    """Every worker that beat lately, oldest first."""
    found = []
    for key in connection.scan_iter(match=PREFIX + "*", count=200):
        raw = connection.get(key)
        if raw is None:  # expired between the scan and the read
            continue
        try:
            found.append(WorkerStatus.model_validate_json(raw))
        except ValidationError:
            continue
    return sorted(found, key=lambda status: status.since)


def age_seconds(status: WorkerStatus, now: float | None = None) -> float:
    return max((time.time() if now is None else now) - status.at, 0.0)
