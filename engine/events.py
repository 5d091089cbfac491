"""Render events: how a worker tells the rest of the world what it is doing.

Workers append events to one Redis Stream; the bot and the console read them. A stream, not
pub/sub, so that a reader that was away (a bot restarting) can catch up on what it missed.
"""

from __future__ import annotations

import time
from typing import Literal

import redis
from pydantic import BaseModel, Field

STREAM = "lessonreel:events"
# The stream keeps about this many events; a render makes a few dozen.
STREAM_MAXLEN = 20_000

# The live preview of the scene being rendered: a file of this name in the job's media
# folder, while the render runs; the only name a progress event may point at.
LIVE_PREVIEW = "live.jpg"

EventKind = Literal["queued", "started", "progress", "finished", "failed", "cancelled"]


class RenderEvent(BaseModel):
    job_id: str
    kind: EventKind
    scene: int | None = None  # 1-based scene being worked on
    scenes: int | None = None
    step: int | None = None  # denoising step within the scene, for model renders
    steps: int | None = None
    fraction: float = Field(0.0, ge=0.0, le=1.0)  # of the whole job
    message: str = ""  # for "failed" and "cancelled": the sentence to show the teacher
    outputs: dict[str, str] = {}  # for "finished": name -> file path
    notes: list[str] = []  # for "finished": what the teacher should know (e.g. degraded)
    seconds: float | None = None  # for "finished": the video's length (the voice may retime)
    # For "progress": LIVE_PREVIEW when a new live preview picture is in the job's folder.
    preview: str = Field("", max_length=64)
    at: float = Field(default_factory=time.time)

    @property
    def is_final(self) -> bool:
        return self.kind in ("finished", "failed", "cancelled")


class EventLog:
    def __init__(self, connection: redis.Redis, stream: str = STREAM) -> None:
        self._redis = connection
        self._stream = stream

    def publish(self, event: RenderEvent) -> str:
        entry_id = self._redis.xadd(
            self._stream, {"event": event.model_dump_json()}, maxlen=STREAM_MAXLEN, approximate=True
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def last_id(self) -> str:
        """The id to read after to see only events from now on."""
        newest = self._redis.xrevrange(self._stream, count=1)
        if not newest:
            return "0-0"
        entry_id = newest[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def read(
        self, after: str, *, block_ms: int | None = None, count: int = 100,
    ) -> list[tuple[str, RenderEvent]]:
        """Events after the entry `after`, waiting up to `block_ms` for the first one."""
        reply = self._redis.xread({self._stream: after}, count=count, block=block_ms)
        events: list[tuple[str, RenderEvent]] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                raw = fields.get(b"event") or fields.get("event")
                key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                events.append((key, RenderEvent.model_validate_json(raw)))
        return events
