"""Render news to the thread that asked: worker events in, status edits and results out.

Each platform's bot reads the event stream through a Redis consumer group of its own. An event
is acknowledged only after it has been acted on, so a bot that is killed mid-render reads, on
restart, whatever it had not finished: the final message is posted after the restart, and a
delivered-marker makes sure it is posted once. Status edits are throttled and never repeat the
same text (platforms rate-limit edits, and an identical edit is an error on Telegram).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis

from bot.core import PREFIX, Route, RouteStore
from bot.messages import say
from engine.events import STREAM, RenderEvent
from engine.settings import Settings
from engine.share import media_file, share_url

log = logging.getLogger(__name__)

DELIVERED_TTL_SECONDS = 30 * 86_400
MAX_ATTEMPTS = 5  # a final message that fails this often is logged and given up
STATS_WEIGHT = 0.3
# How long after "render" the adapter has to post and record the job's status message.
STATUS_GRACE_SECONDS = 10.0  # of the newest job in the running average of job seconds


@dataclass(frozen=True)
class Delivery:
    """The final message of a job."""

    kind: str  # finished | failed | cancelled
    text: str
    link: str | None = None
    video: Path | None = None  # the preview to attach, when there is one
    poster: Path | None = None


class Notifier(Protocol):
    """What a platform adapter does with render news."""

    async def post_status(self, route: Route, text: str) -> str:
        """Post a new status message in the route's thread; return its id."""

    async def edit_status(self, route: Route, ref: str, text: str) -> None:
        """Change the status message `ref` to `text`."""

    async def deliver(self, route: Route, delivery: Delivery) -> None:
        """Post the final message: the preview where it fits, the link always."""


def status_text(route: Route, event: RenderEvent) -> str:
    lang, version = route.language, route.version
    if event.kind == "finished":
        return say(lang, "done_status", version=version)
    if event.kind == "failed":
        return say(lang, "failed", version=version, message=event.message)
    if event.kind == "cancelled":
        return say(lang, "cancelled", version=version)
    percent = round(event.fraction * 100)
    if event.kind == "progress" and event.step is not None and event.scene and event.steps:
        return say(lang, "progress_steps", version=version, scene=event.scene,
                   scenes=event.scenes, step=event.step, steps=event.steps, percent=percent)
    if event.kind == "progress":
        return say(lang, "progress", version=version, percent=percent)
    return say(lang, "starting", version=version)


class EventRelay:
    def __init__(self, connection: redis.Redis, settings: Settings, *, share_secret: bytes,
                 platform: str, notifier: Notifier, consumer: str = "main",
                 stream: str = STREAM, group: str | None = None,
                 only: Callable[[Route], bool] | None = None) -> None:
        self.redis = connection
        self.settings = settings
        self.share_secret = share_secret
        self.platform = platform
        self.notifier = notifier
        self.consumer = consumer
        self.stream = stream
        # One group per platform bot: each reads every event once, whatever the others do.
        self.group = group or f"bot-{platform}"
        self.routes = RouteStore(connection)
        self.only = only  # a further filter on which jobs are this reader's
        self._last_edit: dict[str, float] = {}
        self._attempts: dict[str, int] = {}

    def ensure_group(self) -> None:
        """Create the consumer group once, reading only events from now on."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def remove_group(self) -> None:
        """For a reader that lives only as long as its session (the console)."""
        self.redis.xgroup_destroy(self.stream, self.group)

    async def run(self, stop: asyncio.Event, *, block_ms: int = 1000) -> None:
        self.ensure_group()
        backlog = True  # first what this consumer read before a restart and did not finish
        while not stop.is_set():
            try:
                handled = await self.pump(block_ms=block_ms, backlog=backlog)
                backlog = handled > 0 if backlog else False
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("event stream unreachable (%s); retrying", exc)
                await _sleep_or_stop(stop, 1.0)
            except Exception:
                log.exception("relaying render events failed; retrying")
                backlog = True
                await _sleep_or_stop(stop, 1.0)

    async def pump(self, *, block_ms: int = 0, backlog: bool = False) -> int:
        """Act on one batch of events; return how many were read."""
        start = "0" if backlog else ">"
        reply = await asyncio.to_thread(
            self.redis.xreadgroup, self.group, self.consumer, {self.stream: start}, count=50,
            block=None if backlog or not block_ms else block_ms)
        entries = [entry for _stream, batch in reply or [] for entry in batch]
        for entry_id, fields in entries:
            entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            if not fields:  # deleted by trimming while pending
                await asyncio.to_thread(self.redis.xack, self.stream, self.group, entry)
                continue
            raw = fields.get(b"event") or fields.get("event")
            try:
                event = RenderEvent.model_validate_json(raw)
            except ValueError:
                log.warning("unreadable event %s skipped", entry)
                await asyncio.to_thread(self.redis.xack, self.stream, self.group, entry)
                continue
            try:
                await self.handle(event)
            except Exception:
                attempts = self._attempts.get(entry, 0) + 1
                self._attempts[entry] = attempts
                if attempts < MAX_ATTEMPTS and event.is_final:
                    raise  # left pending: the next pass of the backlog tries again
                log.exception("event %s for job %s could not be relayed; dropped", entry,
                              event.job_id)
            await asyncio.to_thread(self.redis.xack, self.stream, self.group, entry)
            self._attempts.pop(entry, None)
        return len(entries)

    async def handle(self, event: RenderEvent) -> None:
        route = await asyncio.to_thread(self.routes.get, event.job_id)
        if route is None or route.place.platform != self.platform or (
                self.only is not None and not self.only(route)):
            return  # another platform's job, or the demo's
        if event.kind == "queued":
            return  # the reply to "render" already says it is queued
        if event.kind == "started":
            await asyncio.to_thread(self.redis.set, f"{PREFIX}started:{event.job_id}",
                                    str(event.at), ex=DELIVERED_TTL_SECONDS)
        if event.is_final:
            await self._final(route, event)
            return
        now = time.monotonic()
        if now - self._last_edit.get(route.job_id, 0.0) < self.settings.bot.status_interval_seconds:
            return
        if await self._show_status(route, status_text(route, event)):
            self._last_edit[route.job_id] = now

    async def _show_status(self, route: Route, text: str, *, final: bool = False) -> bool:
        """Edit the job's status message to `text`; False when there was nothing to do.

        The adapter posts the status message (its reply to "render") and records it. Until
        it has, progress is not shown: posting another here could race it into two status
        messages. Only when none turns up (the adapter died between queueing and posting)
        does the relay post one, so the thread still sees progress."""
        key = f"{PREFIX}status-text:{route.job_id}"
        if await asyncio.to_thread(self.redis.get, key) == text.encode():
            return False
        ref = await asyncio.to_thread(self.routes.status_ref, route.job_id)
        if ref is None:
            if final or time.time() - route.created_at < STATUS_GRACE_SECONDS:
                return False
            posted = await self.notifier.post_status(route, text)
            ref = await asyncio.to_thread(self.routes.claim_status, route.job_id, posted)
            if ref == posted:
                await asyncio.to_thread(self.redis.set, key, text, ex=DELIVERED_TTL_SECONDS)
                return True
        await self.notifier.edit_status(route, ref, text)
        await asyncio.to_thread(self.redis.set, key, text, ex=DELIVERED_TTL_SECONDS)
        return True

    async def _final(self, route: Route, event: RenderEvent) -> None:
        delivered = f"{PREFIX}delivered:{route.job_id}"
        if await asyncio.to_thread(self.redis.exists, delivered):
            return  # a repeat (a restart between posting and acknowledging)
        shown = False
        try:
            shown = await self._show_status(route, status_text(route, event), final=True)
        except Exception:  # a deleted or uneditable status message must not cost the result
            log.warning("could not update the status message of job %s", route.job_id,
                        exc_info=True)
        if not (event.kind == "cancelled" and shown):  # the status already says "cancelled"
            await self.notifier.deliver(route, self._delivery(route, event))
        await asyncio.to_thread(self.redis.set, delivered, "1", ex=DELIVERED_TTL_SECONDS)
        await asyncio.to_thread(self._after_final, route, event)

    def _delivery(self, route: Route, event: RenderEvent) -> Delivery:
        lang = route.language
        if event.kind == "failed":
            return Delivery("failed", say(lang, "failed", version=route.version,
                                          message=event.message))
        if event.kind == "cancelled":
            return Delivery("cancelled", say(lang, "cancelled", version=route.version))
        key = "done_preview" if route.preview else "done"
        url = share_url(self.settings, self.share_secret, route.job_id)
        text = "\n".join((say(lang, key, title=route.title, total=route.total),
                          say(lang, "link", days=self.settings.share.link_days, url=url)))
        return Delivery("finished", text, link=url,
                        video=media_file(self.settings, route.job_id, "preview.mp4"),
                        poster=media_file(self.settings, route.job_id, "poster.jpg"))

    def _after_final(self, route: Route, event: RenderEvent) -> None:
        active = f"{PREFIX}active:{route.conversation}"
        if self.redis.get(active) == route.job_id.encode():
            self.redis.delete(active)
        if event.kind != "finished":
            return
        self.redis.lpush(f"{PREFIX}videos:{route.place.platform}:{route.author}", json.dumps({
            "title": route.title, "total": route.total, "folder": route.job_id,
            "preview": route.preview, "at": event.at}))
        self.redis.ltrim(f"{PREFIX}videos:{route.place.platform}:{route.author}", 0, 19)
        started = self.redis.get(f"{PREFIX}started:{route.job_id}")
        if started and not route.preview:  # previews are quick: they would skew the estimate
            seconds = max(event.at - float(started), 0.0)
            old = self.redis.get(f"{PREFIX}stats:job_seconds")
            mean = seconds if old is None else (
                STATS_WEIGHT * seconds + (1 - STATS_WEIGHT) * float(old))
            self.redis.set(f"{PREFIX}stats:job_seconds", f"{mean:.2f}")


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
