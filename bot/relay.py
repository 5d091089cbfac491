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
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis

from bot.core import (
    PREFIX,
    Route,
    RouteStore,
    gpu_seconds_key,
    queued_text,
    status_text_key,
    waiting_etas,
)
from bot.messages import say
from engine.events import LIVE_PREVIEW, STREAM, RenderEvent
from engine.jobs import render_queue
from engine.library import Library, link_to
from engine.settings import Settings
from engine.share import BUNDLE_SUFFIX, media_file, share_url
from engine.storyboard import format_seconds

log = logging.getLogger(__name__)

DELIVERED_TTL_SECONDS = 30 * 86_400
# A final message that cannot be posted (the platform is down) is tried again after 1 s,
# 2 s, 4 s… at most every 5 minutes, for a day; other jobs' news goes on meanwhile.
RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 300.0
GIVE_UP_SECONDS = 86_400.0
STATS_WEIGHT = 0.3  # of the newest job in the running average of job seconds
# How long after "render" the adapter has to post and record the job's status message.
STATUS_GRACE_SECONDS = 10.0


@dataclass
class _Retry:
    first_failed: float
    attempts: int = 0
    next_try: float = 0.0


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


class LivePreviews(Protocol):
    """What an adapter that can show pictures adds: one live preview message per job, its
    picture replaced as the render goes, removed when the result is posted."""

    async def show_preview(self, route: Route, ref: str | None, picture: Path,
                           caption: str) -> str:
        """Post the live preview message (`ref` None) or replace its picture; return the
        ref to use next time (it may change: a Slack picture is a new file each time)."""

    async def remove_preview(self, route: Route, ref: str) -> None:
        """Delete the live preview message: the result takes its place."""


def live_preview_key(job_id: str) -> str:
    return f"{PREFIX}live-preview:{job_id}"


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
        self._last_preview: dict[str, float] = {}
        self._retries: dict[str, _Retry] = {}  # pending entries whose final message failed

    def ensure_group(self, *, start: str = "$") -> None:
        """Create the consumer group once, reading only events from now on."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def remove_group(self) -> None:
        """For a reader that lives only as long as its session (the console)."""
        self.redis.xgroup_destroy(self.stream, self.group)

    async def run(self, stop: asyncio.Event, *, block_ms: int = 1000) -> None:
        await asyncio.to_thread(self.ensure_group)
        backlog = True  # first what this consumer read before a restart and did not finish
        while not stop.is_set():
            try:
                if backlog or self._retry_due():
                    backlog = await self.pump(backlog=True) > 0 and backlog
                    continue
                await self.pump(block_ms=block_ms)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis lost the group (restarted without its data, flushed): make it again
                # and read what the stream still holds; delivered markers stop repeats.
                log.warning("the event stream's consumer group is gone; recreating it")
                await asyncio.to_thread(self.ensure_group, start="0")
                backlog = True
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("event stream unreachable (%s); retrying", exc)
                backlog = True
                await _sleep_or_stop(stop, 1.0)
            except Exception:
                log.exception("relaying render events failed; retrying")
                backlog = True
                await _sleep_or_stop(stop, 1.0)

    async def pump(self, *, block_ms: int = 0, backlog: bool = False) -> int:
        """Act on one batch of events; return how many were acted on.

        With `backlog`, the batch is this consumer's pending entries: read before a restart,
        or a final message that could not be posted yet and waits for its next try. A final
        message is retried with growing pauses for a day, while other jobs' news goes on."""
        start = "0" if backlog else ">"
        reply = await asyncio.to_thread(
            self.redis.xreadgroup, self.group, self.consumer, {self.stream: start}, count=100,
            block=None if backlog or not block_ms else block_ms)
        entries = [entry for _stream, batch in reply or [] for entry in batch]
        if backlog and len(entries) < 100:  # the whole pending list: forget what left it
            pending = {(e.decode() if isinstance(e, bytes) else str(e)) for e, _ in entries}
            for gone in set(self._retries) - pending:
                del self._retries[gone]
        acted = 0
        now = time.monotonic()
        for entry_id, fields in entries:
            entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            retry = self._retries.get(entry)
            if retry is not None and retry.next_try > now:
                continue  # not due yet: stays pending
            acted += 1
            raw = (fields or {}).get(b"event") or (fields or {}).get("event")
            try:
                event = RenderEvent.model_validate_json(raw) if raw else None
            except ValueError:
                event = None
            if event is None:  # trimmed while pending, or unreadable
                log.warning("event %s could not be read; skipped", entry)
            else:
                try:
                    await self.handle(event)
                except (redis.ConnectionError, redis.TimeoutError):
                    raise  # not the event's fault: the whole batch is read again
                except Exception:
                    if event.is_final and self._retry_later(entry):
                        log.warning("the final message of job %s could not be posted (or its "
                                    "live preview removed); will try again", event.job_id,
                                    exc_info=True)
                        continue
                    log.exception("event %s for job %s could not be relayed; dropped",
                                  entry, event.job_id)
            await asyncio.to_thread(self.redis.xack, self.stream, self.group, entry)
            self._retries.pop(entry, None)
        return acted

    def _retry_later(self, entry: str) -> bool:
        """Schedule another try of a pending entry; False once it has failed for too long."""
        now = time.monotonic()
        retry = self._retries.get(entry) or _Retry(first_failed=now)
        if now - retry.first_failed > GIVE_UP_SECONDS:
            return False
        retry.attempts += 1
        retry.next_try = now + min(RETRY_BASE_SECONDS * 2 ** (retry.attempts - 1),
                                   RETRY_MAX_SECONDS)
        self._retries[entry] = retry
        return True

    def _retry_due(self) -> bool:
        now = time.monotonic()
        return any(retry.next_try <= now for retry in self._retries.values())

    async def handle(self, event: RenderEvent) -> None:
        if event.kind in ("queued", "started", "cancelled"):
            # A job, of any platform, left the line or went in ahead of others (fair turns):
            # this platform's waiting jobs moved. A new job's own place is in its reply.
            await self._refresh_queued(exclude=event.job_id)
        route = await asyncio.to_thread(self.routes.get, event.job_id)
        if route is None or route.place.platform != self.platform or (
                self.only is not None and not self.only(route)):
            return  # another platform's job, or the demo's
        if event.kind == "queued":
            return
        if event.kind == "started":
            await asyncio.to_thread(self.redis.set, f"{PREFIX}started:{event.job_id}",
                                    str(event.at), ex=DELIVERED_TTL_SECONDS)
        if event.is_final:
            await self._final(route, event)
            return
        if event.preview == LIVE_PREVIEW:  # the one file an event may show
            await self._show_preview(route, event)
        now = time.monotonic()
        if now - self._last_edit.get(route.job_id, 0.0) < self.settings.bot.status_interval_seconds:
            return
        if await self._show_status(route, status_text(route, event)):
            self._last_edit[route.job_id] = now

    async def _refresh_queued(self, exclude: str) -> None:
        """Edit the status of this platform's waiting jobs to their new place in line."""
        queue = render_queue(self.redis, self.settings)
        etas = await asyncio.to_thread(waiting_etas, self.redis, queue)
        for ahead, (job_id, eta) in enumerate(etas.items()):
            route = None if job_id == exclude else await asyncio.to_thread(self.routes.get,
                                                                           job_id)
            if route is None or route.place.platform != self.platform or (
                    self.only is not None and not self.only(route)):
                continue
            try:
                await self._show_status(route, queued_text(route, ahead, eta))
            except Exception:  # a courtesy: never at the cost of the event in hand
                log.warning("could not update the queue position of job %s", job_id,
                            exc_info=True)

    async def _show_status(self, route: Route, text: str, *, final: bool = False) -> bool:
        """Edit the job's status message to `text`; False when there was nothing to do.

        The adapter posts the status message (its reply to "render") and records it. Until
        it has, progress is not shown: posting another here could race it into two status
        messages. Only when none turns up (the adapter died between queueing and posting)
        does the relay post one, so the thread still sees progress."""
        key = status_text_key(route.job_id)
        if await asyncio.to_thread(self.redis.get, key) == text.encode():
            return False
        ref = await asyncio.to_thread(self.routes.status_ref, route.job_id)
        if ref is None:
            if final or route.batch or time.time() - route.created_at < STATUS_GRACE_SECONDS:
                return False  # (a batch's rows are listed in its summary: no message each)
            posted = await self.notifier.post_status(route, text)
            ref = await asyncio.to_thread(self.routes.claim_status, route.job_id, posted)
            if ref == posted:
                await asyncio.to_thread(self.redis.set, key, text, ex=DELIVERED_TTL_SECONDS)
                return True
        await self.notifier.edit_status(route, ref, text)
        await asyncio.to_thread(self.redis.set, key, text, ex=DELIVERED_TTL_SECONDS)
        return True

    async def _show_preview(self, route: Route, event: RenderEvent) -> None:
        """Replace the job's live preview picture, at most every live_preview_seconds. A
        courtesy: whatever goes wrong is logged, and the render's news goes on."""
        every = self.settings.bot.live_preview_seconds
        now = time.monotonic()
        if (not every or route.batch or not hasattr(self.notifier, "show_preview")
                or now - self._last_preview.get(route.job_id, -every) < every):
            return
        picture = media_file(self.settings, route.job_id, LIVE_PREVIEW)
        if picture is None:  # the render finished meanwhile and removed it
            return
        key = live_preview_key(route.job_id)
        ref = await asyncio.to_thread(self.redis.get, key)
        caption = say(route.language, "live_preview", scene=event.scene, scenes=event.scenes,
                      step=event.step, steps=event.steps)
        self._last_preview[route.job_id] = now  # a failure, too, waits for the next turn
        try:
            new = await self.notifier.show_preview(route, ref.decode() if ref else None,
                                                   picture, caption)
        except Exception as exc:
            self._last_preview[route.job_id] = now + _retry_after(exc)  # a rate limit's wait
            log.warning("the live preview of job %s was not shown", route.job_id,
                        exc_info=True)
            return
        await asyncio.to_thread(self.redis.set, key, new, ex=DELIVERED_TTL_SECONDS)

    async def _remove_preview(self, route: Route) -> None:
        """Delete the job's live preview message. One that may still be there raises: the
        final event is tried again later, and its repeat comes back here."""
        self._last_preview.pop(route.job_id, None)
        key = live_preview_key(route.job_id)
        ref = await asyncio.to_thread(self.redis.get, key)
        if ref is None or not hasattr(self.notifier, "remove_preview"):
            return
        await self.notifier.remove_preview(route, ref.decode())
        await asyncio.to_thread(self.redis.delete, key)

    async def _final(self, route: Route, event: RenderEvent) -> None:
        self._last_edit.pop(route.job_id, None)
        delivered = f"{PREFIX}delivered:{route.job_id}"
        if await asyncio.to_thread(self.redis.exists, delivered):
            # A repeat (a restart between posting and acknowledging, or a live preview that
            # could not be removed): nothing to post, but what comes after may not be done.
            await asyncio.to_thread(self._after_final, route, event)
            await self._remove_preview(route)
            return
        shown = False
        try:
            shown = await self._show_status(route, status_text(route, event), final=True)
        except Exception:  # a deleted or uneditable status message must not cost the result
            log.warning("could not update the status message of job %s", route.job_id,
                        exc_info=True)
        await asyncio.to_thread(self._after_final, route, event)
        if not (event.kind == "cancelled" and shown):  # the status already says "cancelled"
            delivery = await asyncio.to_thread(self._delivery, route, event)
            await self.notifier.deliver(route, delivery)
        await asyncio.to_thread(self.redis.set, delivered, "1", ex=DELIVERED_TTL_SECONDS)
        # After the result, so tidying never holds it up; the result takes the picture's place.
        await self._remove_preview(route)

    def _delivery(self, route: Route, event: RenderEvent) -> Delivery:
        lang = route.language
        if event.kind == "failed":
            return Delivery("failed", say(lang, "failed", version=route.version,
                                          message=event.message))
        if event.kind == "cancelled":
            return Delivery("cancelled", say(lang, "cancelled", version=route.version))
        key = "done_preview" if route.preview else "done"
        url = link_to(Library(self.redis), self.settings, self.share_secret, route.job_id)
        total = route.total if event.seconds is None else format_seconds(round(event.seconds))
        lines = [say(lang, key, title=route.title, total=total),
                 say(lang, "link", days=self.settings.share.link_days, url=url)]
        if media_file(self.settings, route.job_id, "bundle.zip") is not None:
            bundle = share_url(self.settings, self.share_secret, route.job_id + BUNDLE_SUFFIX)
            lines.append(say(lang, "bundle", url=f"{bundle}/bundle.zip?download=1"))
        lines += [f"• {note}" for note in event.notes[:6]]  # the voice, the music, the check
        text = "\n".join(lines)
        return Delivery("finished", text, link=url,
                        video=media_file(self.settings, route.job_id, "preview.mp4"),
                        poster=media_file(self.settings, route.job_id, "poster.jpg"))

    def _after_final(self, route: Route, event: RenderEvent) -> None:
        active = f"{PREFIX}active:{route.conversation}"
        if self.redis.get(active) == route.job_id.encode():
            self.redis.delete(active)
        self.redis.srem(f"{PREFIX}active-by:{route.place.platform}:{route.author}", route.job_id)
        # The worker recorded the video in the library; here the measures are charged, once.
        if event.kind != "finished" or not self.redis.set(
                f"{PREFIX}recorded:{route.job_id}", "1", nx=True, ex=DELIVERED_TTL_SECONDS):
            return
        started = self.redis.get(f"{PREFIX}started:{route.job_id}")
        if started and not route.preview:  # previews are quick: they would skew the estimate
            seconds = max(event.at - float(started), 0.0)
            old = self.redis.get(f"{PREFIX}stats:job_seconds")
            mean = seconds if old is None else (
                STATS_WEIGHT * seconds + (1 - STATS_WEIGHT) * float(old))
            self.redis.set(f"{PREFIX}stats:job_seconds", f"{mean:.2f}")
            # Charged to the teacher's day only now, for a render that succeeded.
            key = gpu_seconds_key(route.place.platform, route.author, event.at)
            self.redis.incrbyfloat(key, seconds)
            self.redis.expire(key, 3 * 86_400)


def _retry_after(exc: Exception) -> float:
    """The seconds a rate-limited platform asked to wait, 0 when it did not say: a Slack
    error's response has a Retry-After header, Telegram's RetryAfter the seconds (or a
    timedelta)."""
    wait = (getattr(getattr(exc, "response", None), "headers", None) or {}).get("Retry-After")
    if wait is None:
        wait = getattr(exc, "retry_after", 0)
    try:
        return wait.total_seconds() if hasattr(wait, "total_seconds") else float(wait or 0)
    except (TypeError, ValueError):
        return 0.0


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
