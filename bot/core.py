"""The conversation, the same on every platform.

An adapter (Slack, Telegram, the console) turns what a platform delivers into calls here —
a message in a thread, a command, a button press, an image — and shows what comes back:
`Out` items of text, a storyboard card with buttons, and which job a status message follows.
Everything here is synchronous and thread-safe: async adapters call it from worker threads,
so a slow language model never holds up an acknowledgement.

State lives in Redis, never in the process: a restarted bot, or a second one, picks up every
thread where it was. Buttons carry short tokens that refer to server-side state, because
Telegram allows 64 bytes of callback data and a button must not be trusted with anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
from PIL import Image, UnidentifiedImageError
from redis.exceptions import LockError
from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot.messages import COMMAND_WORDS, duration_words, say
from engine.changes import describe_changes
from engine.dialogue import Dialogue
from engine.edits import apply_plain_edit
from engine.errors import UserError
from engine.eta import CostModel
from engine.fair_queue import FairQueue
from engine.history import StoryboardHistory, StoryboardVersion
from engine.jobs import RenderSpec, enqueue_render, new_job_id, render_queue, request_cancel
from engine.library import Library, VideoRecord, link_to
from engine.llm import StoryboardLLM
from engine.moderation import ALLOWED, Policy, Verdict
from engine.request import clean_text, detect_language
from engine.settings import IDENTITY_PATTERN, Settings
from engine.share import media_file, revoke, token_of, verify
from engine.storyboard import Storyboard, format_seconds
from engine.workers import live_workers

log = logging.getLogger(__name__)

PREFIX = "lessonreel:"
ACTION_TTL_SECONDS = 60 * 86_400
DEDUPE_TTL_SECONDS = 86_400
# Until a few renders have been timed, a queue estimate assumes this many seconds a job
# (engine/eta.py prices a job by its storyboard once workers have measured its kind).
DEFAULT_JOB_SECONDS = 60.0
VIDEOS_KEPT = 20
ROLES_KEY = PREFIX + "roles"  # identity -> role, as admins set them in chat
ROLES = ("teacher", "student")  # what the chat may give; admins come from the settings
ROLE_WORDS = {"admin": "admin", "teacher": "teacher", "student": "student", "remove": "remove",
              "管理员": "admin", "教师": "teacher", "老师": "teacher", "学生": "student",
              "移除": "remove"}
IDENTITY = re.compile(IDENTITY_PATTERN)
AUDIT_STREAM = "lessonreel:audit"  # what moderation blocked: who, when, which rule
AUDIT_MAXLEN = 100_000
# A thread's messages are taken one at a time; a turn holds the thread at most this long,
# and a message waits at most this long for the one before it.
TURN_LOCK_SECONDS = 600
TURN_WAIT_SECONDS = 300
ACTIONS = ("render", "preview", "edit", "cancel")
IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
MAX_IMAGE_PIXELS = 40_000_000
_SCENE_IN_CAPTION = re.compile(r"(?:scene|场景|第)\s*(\d{1,2})", re.IGNORECASE)


@dataclass(frozen=True)
class Place:
    """Where a conversation lives: a Slack thread, a Telegram chat, topic or reply chain."""

    platform: str
    chat: str
    thread: str = ""

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.chat}:{self.thread}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Place:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class Author:
    id: str
    name: str = ""
    # Groups the author speaks from, for roles: "slack-team:T1", "telegram-chat:-100…".
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Button:
    action: str  # one of ACTIONS
    label: str
    token: str  # refers to server-side state (lessonreel:action:<token>)


@dataclass(frozen=True)
class CardScene:
    number: int
    seconds: int
    visual: str
    narration: str
    image: str | None


@dataclass(frozen=True)
class Card:
    """A storyboard as a platform shows it: a heading, a line per scene, buttons."""

    heading: str
    language: str
    version: int
    scenes: tuple[CardScene, ...]
    buttons: tuple[Button, ...]
    storyboard: Storyboard

    def lines(self) -> list[str]:
        lines = [self.heading]
        for scene in self.scenes:
            lines.append(say(self.language, "card_scene", number=scene.number,
                             seconds=scene.seconds, visual=scene.visual))
            if scene.narration:
                lines.append("   " + say(self.language, "card_narration",
                                         narration=scene.narration))
            if scene.image:
                lines.append("   " + say(self.language, "card_image", image=scene.image))
        return lines


@dataclass(frozen=True)
class Out:
    """One message to show. `follows_job`: this message is that job's status message, to be
    edited in place as the render goes on."""

    text: str
    card: Card | None = None
    follows_job: str | None = None
    language: str = "en"


@dataclass(frozen=True)
class ActionRef:
    action: str
    place: Place
    conversation: str
    version: int


@dataclass(frozen=True)
class Route:
    """Where a job's news goes: the thread that asked for it, and its status message."""

    job_id: str
    place: Place
    conversation: str
    version: int
    language: str
    author: str
    title: str
    total: str
    preview: bool
    created_at: float = 0.0
    batch: str = ""  # a row of a CSV batch: its news needs no status message of its own


class SharedLLM:
    """One llama.cpp model serves the whole bot: turns use it one at a time."""

    def __init__(self, llm: StoryboardLLM) -> None:
        self._llm = llm
        self._lock = threading.Lock()

    def answer(self, *args, **kwargs):
        with self._lock:
            return self._llm.answer(*args, **kwargs)


class ChatService:
    def __init__(self, connection: redis.Redis, settings: Settings, *,
                 share_secret: bytes, llm: StoryboardLLM | SharedLLM | None = None) -> None:
        self.redis = connection
        self.settings = settings
        self.share_secret = share_secret
        if isinstance(llm, StoryboardLLM):
            llm = SharedLLM(llm)
        self.llm = llm
        self.dialogue = Dialogue(connection, settings, llm)  # type: ignore[arg-type]
        self.history = StoryboardHistory(connection)
        self.routes = RouteStore(connection)
        self.library = Library(connection)
        # Students watch these videos: one policy reads what teachers send and what renders.
        self.policy = Policy.load(settings=settings)
        self.queue_name: str | None = None  # None: the shared render queue
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    # -- what adapters call ------------------------------------------------------------------

    def first_time(self, platform: str, delivery_id: str) -> bool:
        """True the first time a platform delivers this event/update id; False for retries."""
        key = f"{PREFIX}seen:{platform}:{delivery_id[:200]}"
        return bool(self.redis.set(key, "1", nx=True, ex=DEDUPE_TTL_SECONDS))

    def message(self, place: Place, author: Author, text: str, *,
                language: str | None = None) -> list[Out]:
        """A teacher wrote in a thread: a command word, a new request or an edit."""
        command = parse_command(text)
        if command is not None:
            if detect_language(text) == "zh":  # "帮助": answer in Chinese
                language = "zh"
            return self.command(place, author, *command, language=language)
        if (refusal := self._refuse_non_teacher(place, author, language, text)) is not None:
            return refusal
        return self._guarded(place, language, text, lambda: self._turn(place, author, text,
                                                                       language))

    def command(self, place: Place, author: Author, name: str, argument: str = "", *,
                language: str | None = None) -> list[Out]:
        if name != "help" and (refusal := self._refuse_non_teacher(
                place, author, language, argument)) is not None:
            return refusal
        return self._guarded(place, language, argument,
                             lambda: self._command(place, author, name, argument, language))

    def action(self, token: str, author: Author, *,
               language: str | None = None) -> tuple[Place | None, list[Out]]:
        """A button was pressed. Returns the thread it belongs to and what to say there."""
        ref = self._action_ref(token)
        if ref is None:
            return None, [Out(say(language or "en", "stale_button"), language=language or "en")]
        if (refusal := self._refuse_non_teacher(ref.place, author, language, "")) is not None:
            return ref.place, refusal
        return ref.place, self._guarded(ref.place, language, "",
                                        lambda: self._act(ref, author, language))

    def action_ref(self, token: str) -> ActionRef | None:
        return self._action_ref(token)

    def image(self, place: Place, author: Author, data: bytes, *, caption: str = "",
              file_name: str = "", language: str | None = None) -> list[Out]:
        """An image sent in the thread: it becomes a scene's image for image-to-video.
        Its caption and its file name are read by the same policy as any message (the
        file is saved under a name of our own)."""
        if (refusal := self._refuse_non_teacher(place, author, language, caption)) is not None:
            return refusal
        conversation = self.conversation(place)
        return self._guarded(place, language, caption, lambda: self._in_turn(
            conversation, place, language, caption,
            lambda: self._image(place, author, data, caption, file_name, language)))

    def batch(self, place: Place, author: Author, data: bytes, name: str, *,
              language: str | None = None) -> list[Out]:
        """A CSV file sent in a thread: a video for each row, one summary message."""
        from bot.batch import batch_from_file  # bot.batch builds on this module

        return batch_from_file(self, place, author, data, name, language=language)

    def image_too_large(self, place: Place, size: int, *, language: str | None = None
                        ) -> list[Out]:
        """Answer an image too large to fetch (the platform told its size) without fetching."""
        lang = self._language(place, language, "")
        return [Out(say(lang, "image_too_large", size=round(size / 2**20, 1),
                        limit=self.settings.bot.max_image_mb), language=lang)]

    def unsupported_file(self, place: Place, name: str, *, language: str | None = None
                         ) -> list[Out]:
        lang = self._language(place, language, "")
        return [Out(say(lang, "unsupported_file", name=name[:80]), language=lang)]

    def edit_scene(self, conversation: str, version: int, number: int, *, visual: str,
                   narration: str, seconds: int | None, language: str | None = None,
                   author: Author | None = None) -> list[Out]:
        """A scene edited in a form (Slack's modal): applied to the version the form showed."""
        place = self._place_of(conversation)
        if author is not None and place is not None and (refusal := self._refuse_non_teacher(
                place, author, language, "")) is not None:
            return refusal
        return self._guarded(place, language, "", lambda: self._in_turn(
            conversation, place, language, "", lambda: self._edit_scene(
                conversation, version, number, visual, narration, seconds)))

    def card(self, place: Place) -> Out | None:
        latest = self.history.latest(self.conversation(place))
        return self._card_out(place, latest) if latest else None

    def has_storyboard(self, place: Place) -> bool:
        """Whether this thread has a storyboard (read-only: for chatter the bot may ignore)."""
        return self.history.count(self._current(place)) > 0

    def _current(self, place: Place) -> str:
        """The thread's current conversation ("new" starts another), without recording it."""
        generation = int(self.redis.get(f"{PREFIX}thread:{place.key}") or 0)
        return f"{place.key}#{generation}"

    def conversation(self, place: Place) -> str:
        conversation = self._current(place)
        self.redis.set(f"{PREFIX}place:{conversation}", place.to_json(), ex=ACTION_TTL_SECONDS)
        return conversation

    # -- turns -------------------------------------------------------------------------------

    def _turn(self, place: Place, author: Author, text: str, language: str | None
              ) -> list[Out]:
        """One message, after the thread's earlier ones: two quick messages in a thread
        (platforms deliver them concurrently) must not race into a version conflict."""
        conversation = self.conversation(place)
        # An empty or too long message gets the dialogue's answer for that instead.
        long_or_empty = not 0 < len(text) <= self.settings.limits.max_request_chars
        verdict = ALLOWED if long_or_empty else self.policy.check_text(text)
        if not verdict.allowed:
            lang = self._language(place, language, text)
            self._audit(place, author, "message", verdict)
            return [Out(say(lang, "blocked", category=_category(lang, verdict)), language=lang)]
        return self._in_turn(conversation, place, language, text, lambda: self._turn_in_order(
            place, conversation, text, language))

    def _in_turn(self, conversation: str, place: Place | None, language: str | None,
                 text: str, work) -> list[Out]:
        """Run `work` once the thread's earlier messages, images and forms are done."""
        lock = self.redis.lock(f"{PREFIX}turn:{conversation}", timeout=TURN_LOCK_SECONDS,
                               blocking_timeout=TURN_WAIT_SECONDS)
        if not lock.acquire():
            lang = self._language(place, language, text)
            return [Out(say(lang, "thread_busy"), language=lang)]
        try:
            return work()
        finally:
            with contextlib.suppress(LockError):  # held longer than TURN_LOCK_SECONDS
                lock.release()

    def _turn_in_order(self, place: Place, conversation: str, text: str,
                       language: str | None) -> list[Out]:
        latest = self.history.latest(conversation)
        lang = self._language(place, language, text)
        needs_model = self.llm is not None and not _is_plain_edit(latest, text)
        if needs_model and not self._reserve_model():
            return [Out(say(lang, "llm_busy"), language=lang)]
        try:
            reply = self.dialogue.turn(conversation, text, language=language if latest is None
                                       and language in ("en", "zh") else None)
        finally:
            if needs_model:
                self._release_model()
        lang = reply.storyboard.language if reply.storyboard else lang
        if reply.failed or reply.storyboard is None or reply.version == (
                latest.number if latest else None):
            return [Out(reply.text, language=lang)]
        version = self.history.get(conversation, reply.version)
        return [self._card_out(place, version, intro=reply.text)]

    def _command(self, place: Place, author: Author, name: str, argument: str,
                 language: str | None) -> list[Out]:
        lang = self._language(place, language, argument)
        conversation = self.conversation(place)
        if name == "help":
            return [Out(say(lang, "help", commands=say(lang, "commands")), language=lang)]
        if name == "new":
            self.redis.incr(f"{PREFIX}thread:{place.key}")
            if argument.strip():
                return self._turn(place, author, argument, language)
            return [Out(say(lang, "new_started"), language=lang)]
        if name == "unknown":
            return [Out(say(lang, "unknown_command", name=argument[:40],
                            commands=say(lang, "commands")), language=lang)]
        if name == "videos":
            return [self._videos(place.platform, author, lang)]
        if name in ("link", "revoke", "remix"):
            return self._library(place, author, name, argument.strip(), lang)
        if name == "role":
            return [self._change_role(place, author, argument.strip(), lang)]
        if name == "queue":
            if self.role_of(place, author) == "admin":
                return [self._queue_status(conversation, lang), self._whole_queue(lang)]
            return [self._queue_status(conversation, lang)]
        if name == "cancel" and re.fullmatch(r"r-[0-9a-f]{12}", argument.strip()) and \
                self.role_of(place, author) == "admin":
            route = self.routes.get(argument.strip())
            if route is None or not _job_is_live(self.redis, route.job_id):
                return [Out(say(lang, "nothing_to_cancel"), language=lang)]
            request_cancel(self.redis, self.settings, route.job_id)
            return [Out(say(lang, "cancel_sent", version=route.version), language=lang)]
        latest = self.history.latest(conversation)
        if latest is None:
            return [Out(say(lang, "nothing_yet"), language=lang)]
        if name == "show":
            return [self._card_out(place, latest)]
        if name in ("render", "preview"):
            return self._render(place, author, conversation, latest, preview=name == "preview")
        if name == "cancel":
            return [self._cancel(conversation, lang)]
        raise ValueError(f"unknown command {name!r}")

    def _act(self, ref: ActionRef, author: Author, language: str | None) -> list[Out]:
        latest = self.history.latest(ref.conversation)
        if latest is None:
            return [Out(say(language or "en", "nothing_yet"))]
        lang = latest.storyboard.language
        if ref.action == "edit":
            return [Out(say(lang, "edit_prompt"), language=lang)]
        if ref.action == "cancel":
            return [self._cancel(ref.conversation, lang)]
        version = self.history.get(ref.conversation, ref.version)
        outs = self._render(ref.place, author, ref.conversation, version,
                            preview=ref.action == "preview")
        if version.number != latest.number:
            note = say(lang, "old_version", version=version.number, latest=latest.number)
            outs = [Out(f"{note} {outs[0].text}", outs[0].card, outs[0].follows_job, lang),
                    *outs[1:]]
        return outs

    def _render(self, place: Place, author: Author, conversation: str,
                version: StoryboardVersion, *, preview: bool) -> list[Out]:
        board = version.storyboard
        lang = board.language
        problem = self._storyboard_problem(board)
        if problem is not None:  # a model's answer or an old version: checked before any render
            where, verdict = problem
            self._audit(place, author, "storyboard", verdict)
            return [Out(say(lang, "blocked_render", version=version.number, where=where,
                            category=_category(lang, verdict)), language=lang)]
        # One render per thread at a time, however many presses and bot processes race.
        with self.redis.lock(f"{PREFIX}lock:{conversation}", timeout=30, blocking_timeout=20):
            active = self._active_job(conversation)
            if active is not None:
                return [Out(say(lang, "busy_rendering", version=active.version), language=lang)]
            queue = render_queue(self.redis, self.settings, self.queue_name)
            if queue.count >= self.settings.bot.max_queued_jobs:
                return [Out(say(lang, "queue_full", queued=queue.count), language=lang)]
            refusal = None if preview else self._over_daily_quota(place, author, lang)
            if refusal is not None:
                return [refusal]
            mine = self._active_jobs_of(place.platform, author)
            limit = self.settings.bot.max_active_jobs_per_teacher
            if len(mine) >= limit and self.role_of(place, author) != "admin":
                return [Out(say(lang, "too_many_jobs", count=len(mine), limit=limit),
                            language=lang)]
            job_id = new_job_id()
            self.routes.save(Route(
                job_id=job_id, place=place, conversation=conversation, version=version.number,
                language=lang, author=author.id, title=board.title,
                total=format_seconds(board.total_seconds), preview=preview,
                created_at=time.time()))
            spec = RenderSpec(job_id=job_id, conversation=conversation, version=version.number,
                              owner=f"{place.platform}:{author.id}", storyboard=board,
                              output=job_id, animatic=preview)
            enqueue_render(self.redis, self.settings, spec, queue=queue)
            self.redis.sadd(f"{PREFIX}active-by:{place.platform}:{author.id}", job_id)
            # Kept while the job may still wait or run (a full queue of longest jobs); a
            # job that ended unseen frees the thread anyway (_active_job checks RQ).
            queue_settings = self.settings.queue
            self.redis.set(f"{PREFIX}active:{conversation}", job_id,
                           ex=queue_settings.job_timeout_seconds
                           * (self.settings.bot.max_queued_jobs + 2)
                           + queue_settings.result_ttl_seconds)
        route = self.routes.get(job_id)
        etas = waiting_etas(self.redis, queue)  # fair turns: it may go ahead of a batch
        ahead = list(etas).index(job_id) if job_id in etas else 0
        text = queued_text(route, ahead, etas.get(job_id, self.job_seconds()))
        # What the status message will say, so the relay skips re-sending the same words.
        self.redis.set(status_text_key(job_id), text, ex=7 * 86_400)
        return [Out(text, follows_job=job_id, language=lang)]

    def _cancel(self, conversation: str, lang: str) -> Out:
        route = self._active_job(conversation)
        if route is None:
            return Out(say(lang, "nothing_to_cancel"), language=lang)
        request_cancel(self.redis, self.settings, route.job_id)
        return Out(say(lang, "cancel_sent", version=route.version), language=lang)

    def _image(self, place: Place, author: Author, data: bytes, caption: str, file_name: str,
               language: str | None) -> list[Out]:
        conversation = self.conversation(place)
        latest = self.history.latest(conversation)
        lang = latest.storyboard.language if latest else self._language(place, language,
                                                                        caption)
        if len(data) > self.settings.bot.max_image_mb * 2**20:
            return self.image_too_large(place, len(data), language=lang)
        if latest is None:
            return [Out(say(lang, "image_needs_board"), language=lang)]
        for where, text in (("caption", caption), ("file_name", _words_of_file_name(file_name))):
            verdict = self.policy.check_text(text or "")
            if not verdict.allowed:
                self._audit(place, author, where, verdict)
                return [Out(say(lang, "blocked", category=_category(lang, verdict)),
                            language=lang)]
        name = self._save_image(data)
        if name is None:
            return [Out(say(lang, "image_unreadable"), language=lang)]
        board = latest.storyboard
        match = _SCENE_IN_CAPTION.search(caption or "")
        if match:
            number = int(match.group(1))
        else:  # the first scene still without an image
            number = next((i for i, s in enumerate(board.scenes, 1) if not s.image), 1)
        if not 1 <= number <= len(board.scenes):
            return [Out(say(lang, "image_no_scene", scene=number, count=len(board.scenes)),
                        language=lang)]
        scenes = [scene.model_dump() for scene in board.scenes]
        scenes[number - 1]["image"] = name
        new = board.revise(scenes=scenes)
        changes = describe_changes(board, new)
        number_saved = self.history.append(conversation, new, "; ".join(changes)[:200],
                                           after=latest.number)
        intro = say(lang, "image_added", scene=number)
        return [self._card_out(place, self.history.get(conversation, number_saved),
                               intro=intro)]

    def _edit_scene(self, conversation: str, version: int, number: int, visual: str,
                    narration: str, seconds: int | None) -> list[Out]:
        current = self.history.get(conversation, version)
        board = current.storyboard
        if not 1 <= number <= len(board.scenes):
            return [Out(say(board.language, "image_no_scene", scene=number,
                            count=len(board.scenes)), language=board.language)]
        verdict = self.policy.check_text(f"{visual}\n{narration}")
        if not verdict.allowed:
            self._audit(self._place_of(conversation), Author(""), "form", verdict)
            return [Out(say(board.language, "blocked",
                            category=_category(board.language, verdict)),
                        language=board.language)]
        scenes = [scene.model_dump() for scene in board.scenes]
        scenes[number - 1].update(visual=clean_text(visual), narration=clean_text(narration))
        if seconds is not None:
            scenes[number - 1]["duration"] = seconds
        new = board.revise(scenes=scenes)  # a bad value raises a UserError with the reason
        new.check_total(self.settings.limits.max_total_seconds)
        changes = describe_changes(board, new)
        if not changes:
            return [Out(say(board.language, "card_title", title=board.title,
                            audience=board.audience, total=format_seconds(board.total_seconds),
                            aspect=board.aspect, version=version), language=board.language)]
        saved = self.history.append(conversation, new, "; ".join(changes)[:200], after=version)
        intro = "\n".join(f"• {change}" for change in changes)
        return [self._card_out(self._place_of(conversation),
                               self.history.get(conversation, saved), intro=intro)]

    # -- status ------------------------------------------------------------------------------

    def job_seconds(self) -> float:
        return job_seconds(self.redis)

    def _queue_status(self, conversation: str, lang: str) -> Out:
        queue = render_queue(self.redis, self.settings, self.queue_name)
        running = len(queue.started_job_registry.get_job_ids())
        route = self._active_job(conversation)
        lines = []
        if route is not None:
            etas = waiting_etas(self.redis, queue)
            if route.job_id in etas:
                ahead = list(etas).index(route.job_id)
                lines.append(say(lang, "queue_yours_waiting", version=route.version,
                                 ahead=_ahead(lang, ahead),
                                 eta=duration_words(lang, etas[route.job_id])))
            else:
                lines.append(say(lang, "queue_yours_running", version=route.version))
        if queue.count or running:
            lines.append(say(lang, "queue_status", queued=queue.count, running=running))
        elif route is None:
            lines.append(say(lang, "queue_empty"))
        return Out("\n".join(lines), language=lang)

    def _library(self, place: Place, author: Author, name: str, argument: str,
                 lang: str) -> list[Out]:
        """A teacher's past videos: a new link, a link withdrawn, a storyboard remixed."""
        if not argument:
            example = "https://…/v/…" if name == "revoke" else "r-1a2b3c4d5e6f"
            return [Out(say(lang, "needs_argument", name=name, example=example), language=lang)]
        if name == "revoke":
            link = verify(self.share_secret, token_of(argument))
            if link is None:
                return [Out(say(lang, "bad_link"), language=lang)]
            if self._own_video(place, author, link.folder) is None:
                return [Out(say(lang, "not_your_video", video=link.folder), language=lang)]
            key = "revoked" if revoke(self.settings, link) else "revoked_already"
            return [Out(say(lang, key), language=lang)]
        video = self._own_video(place, author, argument)
        if video is None:
            return [Out(say(lang, "not_your_video", video=argument[:40]), language=lang)]
        if name == "link":
            url = link_to(self.library, self.settings, self.share_secret, video.video,
                          reuse=False)
            return [Out(say(lang, "new_link", title=video.title,
                            days=self.settings.share.link_days, url=url), language=lang)]
        saved = media_file(self.settings, video.video, "storyboard.json")
        if saved is None:
            return [Out(say(lang, "not_your_video", video=argument[:40]), language=lang)]
        board = Storyboard.model_validate_json(saved.read_text(encoding="utf-8"))
        self.redis.incr(f"{PREFIX}thread:{place.key}")  # a new storyboard in this thread
        conversation = self.conversation(place)
        number = self.history.append(conversation, board, f"remixed from {video.video}",
                                     after=0)
        intro = say(lang, "remixed", title=video.title, video=video.video)
        return [self._card_out(place, self.history.get(conversation, number), intro=intro)]

    def _own_video(self, place: Place, author: Author, folder: str) -> VideoRecord | None:
        """The library record of `folder` if it is this teacher's (any, for an admin)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", folder):
            return None
        video = self.library.get(folder)
        if video is None or (video.owner != f"{place.platform}:{author.id}"
                             and self.role_of(place, author) != "admin"):
            return None
        return video

    def _whole_queue(self, lang: str) -> Out:
        """For admins: every render waiting or running, whose, and its id to cancel it by."""
        queue = render_queue(self.redis, self.settings)
        running = queue.started_job_registry.get_job_ids()
        lines = []
        for state, ids in (("▶", running), ("…", queue.job_ids)):
            for job_id in ids:
                route = self.routes.get(job_id)
                if route is not None:
                    lines.append(f"{state} {job_id} · {route.place.platform} · {route.author} · "
                                 f"“{route.title}” v{route.version}")
        return Out("\n".join([*(lines or [say(lang, "queue_empty")]),
                              *self._workers_lines(lang)]), language=lang)

    def _workers_lines(self, lang: str) -> list[str]:
        """For admins: each render worker, its GPU, and what it does now."""
        workers = live_workers(self.redis)
        if not workers:
            return [say(lang, "workers_none")]
        lines = []
        for worker in workers:
            gpu = worker.gpu
            where = say(lang, "worker_cpu") if gpu is None else say(
                lang, "worker_gpu", name=gpu.name, temperature=gpu.temperature_c,
                used=f"{(gpu.total_mb - gpu.free_mb) / 1024:.1f}",
                total=f"{gpu.total_mb / 1024:.1f}")
            doing = (say(lang, "worker_rendering", job=worker.job) if worker.job else
                     say(lang, "worker_waiting", why=worker.waiting) if worker.waiting else
                     say(lang, "worker_idle"))
            lines.append(say(lang, "worker_line", host=worker.host, renderer=worker.renderer,
                             gpu=where, doing=doing))
        return lines

    def _videos(self, platform: str, author: Author, lang: str) -> Out:
        videos = self.library.of_owner(f"{platform}:{author.id}", VIDEOS_KEPT)
        if not videos:
            return Out(say(lang, "no_videos"), language=lang)
        lines = [say(lang, "videos")]
        for video in videos:
            day = time.strftime("%Y-%m-%d", time.localtime(video.rendered_at))
            url = link_to(self.library, self.settings, self.share_secret, video.video)
            kind = say(lang, "preview_word") + ", " if video.preview else ""
            lines.append(f"• {video.title} ({kind}{format_seconds(video.seconds)}, {day}, "
                         f"{video.video}): {url}")
        return Out("\n".join(lines), language=lang)

    # -- helpers -----------------------------------------------------------------------------

    def role_of(self, place: Place, author: Author) -> str:
        """"admin", "teacher" or "student": the [roles] settings, with what admins changed
        in chat ("role teacher slack:U…"); a person's own role before their groups'."""
        roles = self.settings.roles
        person = f"{place.platform}:{author.id}"
        ids = [person, *author.groups]
        if set(ids) & set(roles.admins):
            return "admin"  # only the settings make admins, and the chat cannot unmake them
        try:
            changed = dict(zip(ids, self.redis.hmget(ROLES_KEY, ids), strict=True))
        except redis.RedisError:  # the settings still answer; the turn will say Redis is out
            log.warning("roles changed in chat could not be read", exc_info=True)
            changed = dict.fromkeys(ids)
        if changed[person]:
            return changed[person].decode()
        by_role = {role: {i for i in ids if changed[i] and changed[i].decode() == role}
                   for role in ROLES}
        if set(ids) & set(roles.students) or by_role["student"]:
            return "student"
        if not roles.teachers or set(ids) & set(roles.teachers) or by_role["teacher"]:
            return "teacher"
        return "student"

    def _change_role(self, place: Place, author: Author, argument: str, lang: str) -> Out:
        """For admins: "role" lists the changes made in chat, "role teacher slack:U…" gives
        one, "role remove slack:U…" takes one back (the settings decide again)."""
        if self.role_of(place, author) != "admin":
            return Out(say(lang, "role_admins_only"), language=lang)
        if not argument:
            changed = sorted((k.decode(), v.decode()) for k, v in
                             self.redis.hgetall(ROLES_KEY).items())
            lines = [f"• {who}: {say(lang, 'role_' + role)}" for who, role in changed]
            return Out("\n".join([say(lang, "role_list"), *lines]) if lines else
                       say(lang, "role_none"), language=lang)
        words = argument.split()
        role = ROLE_WORDS.get(words[0].lower()) if len(words) == 2 else None
        who = _identity(place, words[1]) if role else None
        if role is None or who is None:
            return Out(say(lang, "role_usage"), language=lang)
        if role == "admin":
            return Out(say(lang, "role_admin_in_settings"), language=lang)
        if who in self.settings.roles.admins:
            return Out(say(lang, "role_from_settings", who=who), language=lang)
        if role == "remove":
            self.redis.hdel(ROLES_KEY, who)
            return Out(say(lang, "role_removed", who=who), language=lang)
        self.redis.hset(ROLES_KEY, who, role)
        log.info("roles: %s:%s made %s a %s", place.platform, author.id, who, role)
        return Out(say(lang, "role_set", who=who, role=say(lang, "role_" + role)),
                   language=lang)

    def _refuse_non_teacher(self, place: Place, author: Author, language: str | None,
                            text: str) -> list[Out] | None:
        if self.role_of(place, author) != "student":
            return None
        lang = self._language(place, language, text)
        return [Out(say(lang, "students_only_watch"), language=lang)]

    def _storyboard_problem(self, board: Storyboard) -> tuple[str, Verdict] | None:
        """Where a storyboard breaks the policy ("scene 3"), and how; None when it does not."""
        verdict = self.policy.check_storyboard(board)
        if verdict.allowed:
            return None
        zh = board.language == "zh"
        for number, scene in enumerate(board.scenes, start=1):
            fields = (scene.visual, scene.narration, scene.on_screen_text or "")
            if not self.policy.check_text("\n".join(fields)).allowed:
                return (f"场景 {number}" if zh else f"scene {number}"), verdict
        return ("标题" if zh else "the title"), verdict

    def _audit(self, place: Place | None, author: Author, where: str, verdict: Verdict) -> None:
        """Who, when and which rule: never the text, which may hold a student's data."""
        self.redis.xadd(AUDIT_STREAM, {
            "at": f"{time.time():.0f}", "platform": place.platform if place else "",
            "thread": place.key if place else "", "author": author.id, "where": where,
            "category": verdict.category or "", "rule": verdict.rule or ""},
            maxlen=AUDIT_MAXLEN, approximate=True)
        log.info("moderation: %s blocked (%s, rule %s) in %s", where, verdict.category,
                 verdict.rule, place.key if place else "?")

    def _guarded(self, place: Place | None, language: str | None, text: str, work) -> list[Out]:
        """Run a turn; a UserError becomes its sentence, anything else a polite apology."""
        try:
            return work()
        except UserError as exc:
            return [Out(str(exc), language=self._language(place, language, text))]
        except Exception:
            log.exception("a turn failed in %s", place.key if place else "an unknown thread")
            lang = self._language(place, language, text)
            return [Out(say(lang, "internal"), language=lang)]

    def _language(self, place: Place | None, language: str | None, text: str) -> str:
        if place is not None:
            latest = self.history.latest(self._current(place))
            if latest is not None:
                return latest.storyboard.language
        if text and detect_language(text) == "zh":
            return "zh"
        if language in ("en", "zh"):
            return language
        return self.settings.storyboard.language

    def _reserve_model(self) -> bool:
        with self._waiting_lock:
            if self._waiting > self.settings.bot.llm_max_waiting:
                return False
            self._waiting += 1
            return True

    def _release_model(self) -> None:
        with self._waiting_lock:
            self._waiting -= 1

    def _card_out(self, place: Place, version: StoryboardVersion, *, intro: str = "") -> Out:
        board = version.storyboard
        lang = board.language
        conversation = self.conversation(place)
        buttons = tuple(
            Button(action, say(lang, f"button_{action}"),
                   self._new_action(ActionRef(action, place, conversation, version.number)))
            for action in ACTIONS)
        scenes = tuple(CardScene(number, scene.duration, scene.visual, scene.narration,
                                 scene.image)
                       for number, scene in enumerate(board.scenes, start=1))
        heading = say(lang, "card_title", title=board.title, audience=board.audience,
                      total=format_seconds(board.total_seconds), aspect=board.aspect,
                      version=version.number)
        card = Card(heading, lang, version.number, scenes, buttons, board)
        return Out(intro, card=card, language=lang)

    def _new_action(self, ref: ActionRef) -> str:
        token = secrets.token_urlsafe(9)  # 12 characters
        self.redis.set(f"{PREFIX}action:{token}", json.dumps({
            "action": ref.action, "place": asdict(ref.place), "conversation": ref.conversation,
            "version": ref.version}), ex=ACTION_TTL_SECONDS)
        return token

    def _action_ref(self, token: str) -> ActionRef | None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", token or ""):
            return None
        raw = self.redis.get(f"{PREFIX}action:{token}")
        if raw is None:
            return None
        data = json.loads(raw)
        return ActionRef(data["action"], Place(**data["place"]), data["conversation"],
                         int(data["version"]))

    def _place_of(self, conversation: str) -> Place | None:
        raw = self.redis.get(f"{PREFIX}place:{conversation}")
        return Place.from_json(raw) if raw else None

    def _over_daily_quota(self, place: Place, author: Author, lang: str) -> Out | None:
        """Render time is shared: a teacher's successful renders today count against
        bot.render_minutes_per_day (previews, on the CPU, do not)."""
        limit = self.settings.bot.render_minutes_per_day
        if not limit or self.role_of(place, author) == "admin":
            return None
        used = float(self.redis.get(gpu_seconds_key(place.platform, author.id, time.time()))
                     or 0)
        if used < limit * 60:
            return None
        midnight = _next_midnight(time.time())
        resets = time.strftime("%H:%M", time.localtime(midnight))
        return Out(say(lang, "quota_used", used=round(used / 60), limit=limit, resets=resets,
                       hours=max(round((midnight - time.time()) / 3600), 1)), language=lang)

    def _active_jobs_of(self, platform: str, author: Author) -> list[str]:
        """The teacher's renders still waiting or running (finished ones are dropped here)."""
        key = f"{PREFIX}active-by:{platform}:{author.id}"
        live = []
        for raw in self.redis.smembers(key):
            job_id = raw.decode() if isinstance(raw, bytes) else raw
            if _job_is_live(self.redis, job_id):
                live.append(job_id)
            else:
                self.redis.srem(key, job_id)
        return live

    def _active_job(self, conversation: str) -> Route | None:
        job_id = self.redis.get(f"{PREFIX}active:{conversation}")
        if not job_id:
            return None
        job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
        route = self.routes.get(job_id)
        if route is None or not _job_is_live(self.redis, job_id):
            # The job ended without its final event being seen (or expired): free the thread.
            self.redis.delete(f"{PREFIX}active:{conversation}")
            return None
        return route

    def _save_image(self, data: bytes) -> str | None:
        """Decode, check and re-encode an image into the uploads folder; its file name."""
        try:
            with Image.open(io.BytesIO(data)) as probe:
                kind = probe.format
                if kind not in IMAGE_FORMATS or probe.width * probe.height > MAX_IMAGE_PIXELS:
                    return None
                probe.load()
                image = probe.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            return None
        import hashlib

        name = f"img-{hashlib.sha256(data).hexdigest()[:20]}.png"
        folder: Path = self.settings.uploads_path
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if not target.exists():
            partial = folder / f".{name}.{secrets.token_hex(4)}"
            image.save(partial, "PNG")  # re-encoded: no metadata, nothing hostile kept
            partial.replace(target)
        return name


class RouteStore:
    """Job → thread, in Redis, so whichever bot process reads an event knows where it goes."""

    def __init__(self, connection: redis.Redis) -> None:
        self.redis = connection

    def save(self, route: Route) -> None:
        data = asdict(route)
        data["place"] = asdict(route.place)
        self.redis.set(self._key(route.job_id), json.dumps(data), ex=30 * 86_400)

    def get(self, job_id: str) -> Route | None:
        raw = self.redis.get(self._key(job_id))
        if raw is None:
            return None
        data = json.loads(raw)
        data["place"] = Place(**data["place"])
        return Route(**data)

    def claim_status(self, job_id: str, ref: str) -> str:
        """Record the status message of a job, unless one is recorded already; return the
        one that counts (first writer wins, so a job never has two status messages edited)."""
        key = f"{PREFIX}status:{job_id}"
        self.redis.set(key, ref, nx=True, ex=30 * 86_400)
        current = self.redis.get(key)
        return current.decode() if isinstance(current, bytes) else str(current)

    def status_ref(self, job_id: str) -> str | None:
        current = self.redis.get(f"{PREFIX}status:{job_id}")
        if current is None:
            return None
        return current.decode() if isinstance(current, bytes) else str(current)

    @staticmethod
    def _key(job_id: str) -> str:
        return f"{PREFIX}route:{job_id}"


def parse_command(text: str) -> tuple[str, str] | None:
    """("render", "") for "/render" or "render"; ("new", "photosynthesis…") for "new …".
    A lone command word counts; a sentence that starts with one does not, except "new"."""
    stripped = clean_text(text)
    slash = stripped.startswith("/")
    word, _, rest = stripped.lstrip("/").partition(" ")
    word = word.split("@", 1)[0].lower()  # Telegram: /render@lessonreel_bot
    name = COMMAND_WORDS.get(word)
    if name is None:
        return ("unknown", word) if slash and word else None
    rest = rest.strip()
    if name == "new" and rest.lower() in ("storyboard", "分镜"):
        rest = ""
    if slash or not rest:  # "new seed for scene 2" is an edit, not a command
        return name, rest
    # "remix r-1a2b3c4d5e6f", "revoke https://…/v/…": the argument shows it is a command.
    if (name in ("link", "remix") and re.fullmatch(r"r-[0-9a-f]{12}", rest)) or (
            name == "revoke" and "/v/" in rest and " " not in rest) or (
            name == "role" and len(rest.split()) == 2 and rest.split()[0].lower() in ROLE_WORDS):
        return name, rest
    return None


def _is_plain_edit(latest: StoryboardVersion | None, text: str) -> bool:
    if latest is None:
        return False
    try:
        return apply_plain_edit(latest.storyboard, clean_text(text)) is not None
    except UserError:
        return True  # a plain edit that cannot apply: answered by rule, no model needed


def _job_is_live(connection: redis.Redis, job_id: str) -> bool:
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except Exception:  # gone (expired, deleted): not live
        return False
    return job.get_status() in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED,
                                JobStatus.SCHEDULED)


def _category(lang: str, verdict: Verdict) -> str:
    return say(lang, f"category_{verdict.category}") if verdict.category else ""


def gpu_seconds_key(platform: str, author: str, at: float) -> str:
    """Render seconds a teacher used on the (server's local) day of `at`."""
    day = time.strftime("%Y-%m-%d", time.localtime(at))
    return f"{PREFIX}render-seconds:{platform}:{author}:{day}"


def _next_midnight(now: float) -> float:
    day = time.localtime(now)
    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday + 1, 0, 0, 0, 0, 0, -1))


def job_seconds(connection: redis.Redis) -> float:
    """What a render has taken lately (a running average kept by the relay)."""
    raw = connection.get(f"{PREFIX}stats:job_seconds")
    return float(raw) if raw else DEFAULT_JOB_SECONDS


def waiting_etas(connection: redis.Redis, queue: FairQueue) -> dict[str, float]:
    """Seconds until each waiting job's video is ready, by job id, in the queue's order.

    Each job is priced by its own storyboard (engine/eta.py), else as an average job. A job
    waits for what the running jobs have left and for the jobs ahead of it, shared among as
    many workers as are rendering now (the queue knows no better count of its workers), then
    for its own render. A few round trips however long the line: the jobs come in one
    pipeline, the figures in one read."""
    waiting = queue.job_ids
    running = queue.started_job_registry.get_job_ids()
    jobs = Job.fetch_many([*running, *waiting], connection=connection,
                          serializer=JSONSerializer)
    model = CostModel.read(connection)
    fallback = job_seconds(connection)
    now = datetime.now(UTC)
    before = 0.0  # worker-seconds of work in front of the next waiting job
    for job in jobs[:len(running)]:
        seconds = _job_estimate(model, job, fallback)
        if job is not None and job.started_at is not None:
            seconds -= (now - job.started_at).total_seconds()
        before += max(seconds, 0.0)
    workers = max(len(running), 1)
    etas = {}
    for job_id, job in zip(waiting, jobs[len(running):], strict=True):
        own = _job_estimate(model, job, fallback)
        etas[job_id] = before / workers + own
        before += own
    return etas


def _job_estimate(model: CostModel, job: Job | None, fallback: float) -> float:
    """A queued render's seconds from the RenderSpec it was enqueued with."""
    if job is None:  # gone since the queue was read
        return fallback
    try:
        spec = RenderSpec.model_validate(job.args[0])
    except (DeserializationError, IndexError, TypeError, ValueError):  # not a render job
        return fallback
    seconds = model.estimate(spec.storyboard, preview=spec.animatic)
    return fallback if seconds is None else seconds


def _identity(place: Place, text: str) -> str | None:
    """"slack:U123", or in Slack a mention of a user ("<@U123>", "@U123"), as an identity.
    Elsewhere a name after "@" is not an id (Telegram's ids are numbers): only the full
    "telegram:123" form counts."""
    mention = re.fullmatch(r"<?@([UW][A-Z0-9]{1,20})(?:\|[^>]*)?>?", text)
    if mention and place.platform == "slack":
        text = f"slack:{mention.group(1)}"
    return text if IDENTITY.fullmatch(text) else None


def _words_of_file_name(name: str) -> str:
    """"gory_battle-scene.png" -> "gory battle scene": what a file name says, in words."""
    stem = Path(name[:255]).stem if name else ""
    return re.sub(r"[_\-.+~]+", " ", stem)


def status_text_key(job_id: str) -> str:
    """Where the words a job's status message shows now are kept."""
    return f"{PREFIX}status-text:{job_id}"


def queued_text(route: Route, ahead: int, eta_seconds: float) -> str:
    """"Version 3 is queued: 2 videos ahead of it, about 3 min." (`waiting_etas`)"""
    lang = route.language
    return say(lang, "queued_preview" if route.preview else "queued", version=route.version,
               ahead=_ahead(lang, ahead), eta=duration_words(lang, eta_seconds))


def _ahead(lang: str, count: int) -> str:
    if count == 0:
        return say(lang, "ahead_none")
    if count == 1:
        return say(lang, "ahead_one")
    return say(lang, "ahead_many", count=count)
