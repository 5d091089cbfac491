"""The Telegram face: python-telegram-bot, long polling by default, or a webhook.

A conversation is a private chat, a forum topic (`message_thread_id`), or in a group a reply
chain: a message that mentions the bot or a command starts one, and replies to the bot's
messages continue it (every message the bot sends in a group is remembered with its thread).
Buttons carry "lr:" plus a 12-character token that refers to server-side state, well inside
Telegram's 64 bytes of callback data, and every button press is answered. A `RetryAfter`
(flood control) is waited out and the call made again; an update delivered twice is acted on
once. The webhook checks Telegram's secret-token header in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from telegram import (
    BotCommand,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
    ReplyParameters,
    Update,
)
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ApplicationHandlerStop,
    BaseUpdateProcessor,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot.batch import batch_too_large, is_batch_file
from bot.core import Author, Out, Place, Route
from bot.messages import COMMANDS, say
from bot.relay import Delivery
from bot.runtime import Runtime, redact_token_in_logs, relay_for, use_bot_executor
from bot.web import WebPart, run_web, web_app
from engine.errors import SettingsError

log = logging.getLogger(__name__)

PLATFORM = "telegram"
CALLBACK_PREFIX = "lr:"
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
MAX_RETRIES = 3
TYPING_SECONDS = 4.5
WEBHOOK_PATH = "/telegram/webhook"
MIGRATED = "lessonreel:tg:migrated:"  # old group id -> its supergroup's id
# The updates the bot acts on, in polling and webhook mode alike: new messages and button
# presses (an edited message is not a new turn, and channel posts have no teacher).
ALLOWED_UPDATES = ["message", "callback_query"]
# Sending a large video: Telegram answers once it has processed the upload, which can take
# far longer than PTB's 5 s default; a timeout there would retry and post the video twice.
UPLOAD_TIMEOUT_SECONDS = 300.0
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
COMMAND_HELP = {
    "help": "What I can do", "new": "Start a new storyboard", "show": "Show the storyboard",
    "render": "Render the video", "preview": "A quick preview (animatic)",
    "cancel": "Cancel the render", "videos": "My videos", "queue": "Queue position and ETA",
    "link": "A new share link to one of my videos", "revoke": "Withdraw a share link",
    "remix": "Start a new storyboard from one of my videos",
}
T = TypeVar("T")


def telegram_settings(environ=None, *, webhook: bool = False) -> dict[str, str]:
    """The tokens from the environment; one sentence on what is missing for this mode."""
    environ = os.environ if environ is None else environ
    token = environ.get("TELEGRAM_BOT_TOKEN", "")
    if not token:
        raise SettingsError("TELEGRAM_BOT_TOKEN is not set: create a bot with @BotFather and "
                            "set the token it gives you.")
    secret = environ.get("LESSONREEL_TELEGRAM_WEBHOOK_SECRET", "")
    if webhook:
        # Telegram allows 1-256 of A-Z, a-z, 0-9, _ and -; we ask for 16 at least.
        if not 16 <= len(secret) <= 256 or not all(c.isascii() and (c.isalnum() or c in "_-")
                                                   for c in secret):
            raise SettingsError("LESSONREEL_TELEGRAM_WEBHOOK_SECRET must be set to 16-256 "
                                "letters, digits, _ or - for webhook mode.")
        if not environ.get("LESSONREEL_PUBLIC_URL", "").startswith(("https://", "http://")):
            raise SettingsError("LESSONREEL_PUBLIC_URL must be set for webhook mode: it is "
                                "the https address Telegram posts updates to.")
    return {"token": token, "api_url": environ.get("LESSONREEL_TELEGRAM_API_URL", "").rstrip("/"),
            "webhook_secret": secret}


def _language(update: Update) -> str | None:
    user = update.effective_user
    code = (user.language_code or "") if user else ""
    return "zh" if code.startswith("zh") else ("en" if code else None)


async def with_flood_control(call: Callable[[], Awaitable[T]]) -> T:
    """Make a Bot API call; on RetryAfter, wait as long as Telegram says, then again."""
    for attempt in range(MAX_RETRIES + 1):
        try:
            return await call()
        except RetryAfter as exc:
            if attempt == MAX_RETRIES:
                raise
            wait = exc.retry_after
            seconds = wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
            log.info("Telegram flood control: waiting %.1f s", seconds)
            await asyncio.sleep(seconds)
    raise AssertionError("unreachable")


class ChatOrderedUpdates(BaseUpdateProcessor):
    """Updates run concurrently, except that messages of one chat (or topic) run in the
    order they arrived: "delete scene 1" then "make scene 1 shorter" must happen in that
    order, and an album's photos one after another. Button presses skip the line, so they
    are answered at once."""

    def __init__(self, max_concurrent_updates: int) -> None:
        super().__init__(max_concurrent_updates)
        self._lines: dict[tuple, tuple[asyncio.Lock, list[int]]] = {}  # lock, users

    async def do_process_update(self, update: object, coroutine: Awaitable) -> None:
        message = update.message if isinstance(update, Update) else None
        if message is None:
            await coroutine
            return
        key = (message.chat_id, message.message_thread_id if message.is_topic_message else 0)
        lock, users = self._lines.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:  # asyncio locks are first come, first served
                await coroutine
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._lines[key]

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


class TelegramBot:
    def __init__(self, runtime: Runtime, *, token: str, api_url: str = "") -> None:
        self.runtime = runtime
        self.service = runtime.service
        builder = ApplicationBuilder().token(token).concurrent_updates(ChatOrderedUpdates(64))
        if api_url:
            builder = builder.base_url(f"{api_url}/bot").base_file_url(f"{api_url}/file/bot")
        self.app: Application = builder.build()
        self.upload_limit = runtime.settings.bot.telegram_upload_mb * 2**20
        self.relay = relay_for(runtime, PLATFORM, self)
        self._register()

    @property
    def bot(self):
        return self.app.bot

    def _register(self) -> None:
        app = self.app
        app.add_handler(TypeHandler(Update, self._dedupe), group=-1)
        new = filters.UpdateType.MESSAGE
        app.add_handler(CallbackQueryHandler(self._on_button))
        app.add_handler(MessageHandler(filters.StatusUpdate.MIGRATE, self._on_migrate))
        app.add_handler(MessageHandler(new & filters.PHOTO, self._on_photo))
        app.add_handler(MessageHandler(new & filters.Document.ALL, self._on_document))
        app.add_handler(MessageHandler(new & filters.TEXT, self._on_text))
        app.add_handler(MessageHandler(
            new & filters.ATTACHMENT & ~filters.PHOTO & ~filters.Document.ALL,
            self._on_other_file))
        app.add_error_handler(self._on_error)

    # -- handlers ----------------------------------------------------------------------------

    async def _dedupe(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not await asyncio.to_thread(self.service.first_time, PLATFORM,
                                       str(update.update_id)):
            raise ApplicationHandlerStop

    async def _on_migrate(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A group became a supergroup and changed its id: news for its threads goes there."""
        message = update.effective_message
        old, new = message.chat.id, message.migrate_to_chat_id
        if new:
            await asyncio.to_thread(self.runtime.connection.set, f"{MIGRATED}{old}", str(new),
                                    ex=365 * 86_400)

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        place = await self._place(message)
        if place is None:
            return  # group chatter not addressed to the bot
        text = self._strip_mention(message.text or "")
        author = _author(update)
        typing = asyncio.create_task(self._keep_typing(message))
        try:
            outs = await asyncio.to_thread(self.service.message, place, author, text,
                                           language=_language(update))
        finally:
            typing.cancel()
        await self._post(place, outs, reply_to=message)

    async def _keep_typing(self, message: Message) -> None:
        """Telegram shows "typing…" for 5 seconds: repeat it while the model works."""
        while True:
            await self._typing(message)
            await asyncio.sleep(TYPING_SECONDS)

    async def _on_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        place = await self._place(message)
        if place is None:
            return  # a photo shared in a group, not sent to the bot
        largest = max(message.photo, key=lambda size: size.width * size.height)
        await self._image(update, place, largest.file_id, largest.file_size)

    async def _on_document(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        place = await self._place(message)
        if place is None:
            return
        document = message.document
        if is_batch_file(document.file_name or "", document.mime_type or ""):
            await self._batch(update, place, document)
            return
        if not (document.mime_type or "").startswith("image/"):
            outs = await asyncio.to_thread(self.service.unsupported_file, place,
                                           document.file_name or "file",
                                           language=_language(update))
            await self._post(place, outs, reply_to=message)
            return
        await self._image(update, place, document.file_id, document.file_size,
                          file_name=document.file_name or "")

    async def _batch(self, update: Update, place: Place, document) -> None:
        """A CSV file: a video for each row. Refused by the size Telegram tells, unfetched."""
        message, name, language = update.effective_message, document.file_name or "", \
            _language(update)
        if (document.file_size or 0) > self.runtime.settings.batch.max_bytes:
            outs = await asyncio.to_thread(batch_too_large, self.service, place, name,
                                           language=language)
        else:
            file = await with_flood_control(lambda: self.bot.get_file(document.file_id))
            data = bytes(await file.download_as_bytearray())
            outs = await asyncio.to_thread(self.service.batch, place, _author(update), data,
                                           name, language=language)
        await self._post(place, outs, reply_to=message)

    async def _on_other_file(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        place = await self._place(message)
        if place is None:
            return
        name = "video" if message.video else "voice" if message.voice else "file"
        outs = await asyncio.to_thread(self.service.unsupported_file, place, name,
                                       language=_language(update))
        await self._post(place, outs, reply_to=message)

    async def _image(self, update: Update, place: Place, file_id: str, size: int | None,
                     *, file_name: str = "") -> None:
        message = update.effective_message
        author, language = _author(update), _language(update)
        if size and size > self.runtime.settings.bot.max_image_mb * 2**20:
            outs = await asyncio.to_thread(self.service.image_too_large, place, size,
                                           language=language)
        else:
            file = await with_flood_control(lambda: self.bot.get_file(file_id))
            data = bytes(await file.download_as_bytearray())
            outs = await asyncio.to_thread(self.service.image, place, author, data,
                                           caption=message.caption or "", file_name=file_name,
                                           language=language)
        await self._post(place, outs, reply_to=message)

    async def _on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        data = query.data or ""
        token = data[len(CALLBACK_PREFIX):] if data.startswith(CALLBACK_PREFIX) else ""
        # Answer at once: Telegram shows a spinner on the button until the query is answered.
        with _quietly():  # "query is too old" after downtime: the press still counts
            await with_flood_control(lambda: query.answer())
        message = query.message if isinstance(query.message, Message) else None
        ref = await asyncio.to_thread(self.service.action_ref, token)
        if ref is not None and message is not None and ref.place.chat != str(message.chat.id):
            token = ""  # a button of another chat's card: treated as expired
        place, outs = await asyncio.to_thread(self.service.action, token, _author(update),
                                              language=_language(update))
        if place is None:
            if message is None:
                return
            thread = await asyncio.to_thread(self._thread_of, message.chat.id,
                                             message.message_id)
            place = (Place(PLATFORM, str(message.chat.id), thread) if thread
                     else await self._place(message, addressed=True))
        force_reply = bool(outs) and bool(token) and ref is not None and ref.action == "edit"
        # ForceReply(selective) reaches only users @mentioned in the text: name the presser.
        user = update.effective_user
        mention = f"@{user.username} " if force_reply and user and user.username and \
            place.thread else ""
        await self._post(place, outs, reply_to=message, force_reply=bool(force_reply),
                         mention=mention)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("Telegram handler failed: %s", context.error.__class__.__name__,
                  exc_info=context.error)
        if isinstance(update, Update) and update.effective_message is not None:
            with _quietly():
                place = await self._place(update.effective_message, addressed=True)
                lang = _language(update) or "en"
                await self._post(place, [Out(say(lang, "internal"), language=lang)],
                                 reply_to=update.effective_message)

    # -- places ------------------------------------------------------------------------------

    async def _place(self, message: Message, *, addressed: bool = False) -> Place | None:
        chat = message.chat
        if chat.type == "private":
            return Place(PLATFORM, str(chat.id), "")
        if message.is_topic_message and message.message_thread_id:
            # A topic is a conversation once it has a storyboard; until then only messages
            # to the bot count (with privacy mode off, the bot sees all the chatter too).
            topic = Place(PLATFORM, str(chat.id), f"t{message.message_thread_id}")
            if addressed or self._mentions_bot(message) or self._replies_to_bot(message) or \
                    await asyncio.to_thread(self.service.has_storyboard, topic):
                return topic
            return None
        replied = message.reply_to_message
        if self._replies_to_bot(message):
            thread = await asyncio.to_thread(self._thread_of, chat.id, replied.message_id)
            if thread:
                return Place(PLATFORM, str(chat.id), thread)
        if addressed or self._mentions_bot(message):
            return Place(PLATFORM, str(chat.id), f"m{message.message_id}")
        return None

    def _replies_to_bot(self, message: Message) -> bool:
        replied = message.reply_to_message
        return bool(replied and replied.from_user and replied.from_user.id == self.bot.id)

    def _mentions_bot(self, message: Message) -> bool:
        text = message.text or message.caption or ""
        username = (self.bot.username if self.bot._bot_user else "").lower()
        if text.startswith("/"):  # a command, unless it names another bot: /poll@otherbot
            _, at, addressee = text.split(maxsplit=1)[0].partition("@")
            return not at or addressee.lower() == username
        return bool(username and f"@{username}" in text.lower())

    def _strip_mention(self, text: str) -> str:
        username = self.bot.username if self.bot._bot_user else ""
        if not username:
            return text
        return re.sub(rf"@{re.escape(username)}\b", " ", text, flags=re.IGNORECASE).strip()

    def _thread_of(self, chat_id: int, message_id: int) -> str | None:
        raw = self.runtime.connection.get(f"lessonreel:tg:msg:{chat_id}:{message_id}")
        return raw.decode() if raw else None

    def _remember(self, place: Place, sent: Message) -> None:
        if place.thread.startswith("m"):  # a group reply chain: replies to this continue it
            self.runtime.connection.set(f"lessonreel:tg:msg:{place.chat}:{sent.message_id}",
                                        place.thread, ex=30 * 86_400)

    # -- sending -----------------------------------------------------------------------------

    def _where(self, place: Place, reply_to: Message | None) -> dict:
        moved = self.runtime.connection.get(f"{MIGRATED}{place.chat}")
        where: dict = {"chat_id": int(moved or place.chat)}
        if place.thread.startswith("t"):
            where["message_thread_id"] = int(place.thread[1:])
        if reply_to is not None and place.thread.startswith("m"):
            where["reply_parameters"] = ReplyParameters(reply_to.message_id,
                                                        allow_sending_without_reply=True)
        elif place.thread.startswith("m"):
            where["reply_parameters"] = ReplyParameters(int(place.thread[1:]),
                                                        allow_sending_without_reply=True)
        return where

    async def _post(self, place: Place, outs: Sequence[Out], *, reply_to: Message | None = None,
                    force_reply: bool = False, mention: str = "") -> None:
        where = self._where(place, reply_to)
        for out in outs:
            markup = None
            text = mention + out.text
            if out.card is not None:
                text = "\n".join(filter(None, (out.text, *out.card.lines())))
                markup = InlineKeyboardMarkup([[
                    InlineKeyboardButton(button.label,
                                         callback_data=CALLBACK_PREFIX + button.token)
                    for button in out.card.buttons]])
            elif force_reply:
                markup = ForceReply(selective=True)
            sent = await with_flood_control(lambda text=text, markup=markup: self.bot.send_message(
                text=_fit(text, TEXT_LIMIT), reply_markup=markup, **where))
            await asyncio.to_thread(self._remember, place, sent)
            if out.follows_job:
                await asyncio.to_thread(self.service.routes.claim_status, out.follows_job,
                                        str(sent.message_id))

    async def _typing(self, message: Message) -> None:
        with _quietly():
            await self.bot.send_chat_action(
                chat_id=message.chat.id, action="typing",
                message_thread_id=message.message_thread_id if message.is_topic_message else None)

    # -- the relay's Notifier ----------------------------------------------------------------

    async def post_status(self, route: Route, text: str) -> str:
        sent = await with_flood_control(lambda: self.bot.send_message(
            text=_fit(text, TEXT_LIMIT), **self._where(route.place, None)))
        await asyncio.to_thread(self._remember, route.place, sent)
        return str(sent.message_id)

    async def edit_status(self, route: Route, ref: str, text: str) -> None:
        try:
            await with_flood_control(lambda: self.bot.edit_message_text(
                text=_fit(text, TEXT_LIMIT), chat_id=int(route.place.chat),
                message_id=int(ref)))
        except BadRequest as exc:
            reason = str(exc).lower()
            if "not modified" in reason:
                return
            if "not found" in reason or "can't be edited" in reason:
                # Deleted by someone, or too old to edit: the status is cosmetic; the result is
                # still posted (the relay must not retry, and so lose, the final message).
                log.warning("Telegram status message %s of job %s cannot be edited (%s)", ref,
                            route.job_id, exc)
                return
            raise

    async def show_preview(self, route: Route, ref: str | None, picture: Path,
                           caption: str) -> str:
        """Without flood control: at a rate limit the picture is given up, not waited for
        (the relay handles events one at a time; a wait would hold up every job's news)."""
        data = picture.read_bytes()
        where = self._where(route.place, None)
        caption = _fit(caption, CAPTION_LIMIT)
        if ref is not None:
            try:
                await self.bot.edit_message_media(media=InputMediaPhoto(data, caption=caption),
                                                  chat_id=where["chat_id"],
                                                  message_id=int(ref))
                return ref
            except BadRequest as exc:
                reason = str(exc).lower()
                if "not modified" in reason:
                    return ref
                if "not found" not in reason and "can't be edited" not in reason:
                    raise  # kept: the same message is edited next time
                log.info("live preview %s of job %s is gone (%s); posting anew", ref,
                         route.job_id, exc)
        sent = await self.bot.send_photo(photo=data, caption=caption,
                                         disable_notification=True, **where)
        await asyncio.to_thread(self._remember, route.place, sent)
        return str(sent.message_id)

    async def remove_preview(self, route: Route, ref: str) -> None:
        """Raises while the message may still be there (the relay tries again later)."""
        try:
            await with_flood_control(lambda: self.bot.delete_message(
                chat_id=self._where(route.place, None)["chat_id"], message_id=int(ref)))
        except Forbidden:  # no longer in the chat: nothing there is ours to tidy
            return
        except BadRequest as exc:
            reason = str(exc).lower()
            if "not found" in reason:
                return  # already gone
            if "can't be deleted" in reason:  # over 48 hours old: it stays, said once
                log.warning("live preview %s of job %s cannot be deleted (%s)", ref,
                            route.job_id, exc)
                return
            raise

    async def deliver(self, route: Route, delivery: Delivery) -> None:
        try:
            await self._deliver(route, delivery)
        except Forbidden:  # removed from the group, or blocked: retrying for a day won't help
            log.warning("the bot may no longer post in chat %s; job %s's result stays in "
                        "the library", route.place.chat, route.job_id)

    async def _deliver(self, route: Route, delivery: Delivery) -> None:
        where = self._where(route.place, None)
        video = delivery.video
        text = delivery.text
        if video is not None and video.stat().st_size <= self.upload_limit:
            caption = delivery.text if len(delivery.text) <= CAPTION_LIMIT else None
            try:
                sent = await with_flood_control(lambda: self._send_video(video, caption, where))
            except (BadRequest, NetworkError) as exc:
                # Refused (a 413 from a server with a smaller limit, a format it rejects) or
                # lost on the way: the share link is posted all the same, never given up on.
                log.warning("Telegram did not take the video of job %s (%s); sending the link",
                            route.job_id, exc)
            else:
                await asyncio.to_thread(self._remember, route.place, sent)
                if caption is not None:
                    return
        elif video is not None:
            text += "\n" + say(route.language, "too_big_to_upload")
        sent = await with_flood_control(lambda: self.bot.send_message(
            text=_fit(text, TEXT_LIMIT), **where))
        await asyncio.to_thread(self._remember, route.place, sent)

    async def _send_video(self, video, caption: str | None, where: dict) -> Message:
        with open(video, "rb") as handle:
            return await self.bot.send_video(video=handle, caption=caption,
                                             supports_streaming=True, filename=video.name,
                                             read_timeout=UPLOAD_TIMEOUT_SECONDS,
                                             write_timeout=UPLOAD_TIMEOUT_SECONDS, **where)

    # -- running -----------------------------------------------------------------------------

    async def register_commands(self) -> None:
        await with_flood_control(lambda: self.bot.set_my_commands(
            [BotCommand(name, COMMAND_HELP[name]) for name in COMMANDS]))

    async def run_polling(self, stop: asyncio.Event) -> None:
        """Long polling until `stop` is set: the usual case, no public URL needed."""
        use_bot_executor()
        relay_stop = asyncio.Event()
        async with self.app:
            await self.register_commands()
            await self.app.start()
            await asyncio.to_thread(self.relay.ensure_group)
            relay = asyncio.create_task(self.relay.run(relay_stop))
            await self.app.updater.start_polling(poll_interval=0.0, timeout=10,
                                                 drop_pending_updates=False,
                                                 allowed_updates=ALLOWED_UPDATES)
            try:
                await stop.wait()
            finally:
                relay_stop.set()
                await self.app.updater.stop()
                await self.app.stop()
                await relay

    def webhook_routes(self, secret: str):
        """POST /telegram/webhook: Telegram's secret-token header must match, in constant time."""
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route as WebRoute

        expected = secret.encode()

        async def webhook(request: Request):
            given = request.headers.get(SECRET_HEADER, "").encode()
            if not hmac.compare_digest(given, expected):
                return PlainTextResponse("forbidden", status_code=403)
            try:
                data = await request.json()
                if not isinstance(data, dict):
                    raise TypeError("an update is a JSON object")
                update = Update.de_json(data, self.bot)
            except (ValueError, TypeError, KeyError, AttributeError):
                return PlainTextResponse("bad update", status_code=400)
            if update is None:
                return PlainTextResponse("bad update", status_code=400)
            await self.app.update_queue.put(update)
            return PlainTextResponse("ok")

        return [WebRoute(WEBHOOK_PATH, webhook, methods=["POST"])]

    def webhook_part(self, secret: str, public_url: str) -> WebPart:
        """The webhook route, and while the web app serves: the webhook registered with
        Telegram (at `public_url`), PTB taking the updates it posts, and the event relay."""

        @contextlib.asynccontextmanager
        async def running():
            relay_stop = asyncio.Event()
            async with self.app:
                await self.register_commands()
                await with_flood_control(lambda: self.bot.set_webhook(
                    url=public_url.rstrip("/") + WEBHOOK_PATH, secret_token=secret,
                    allowed_updates=ALLOWED_UPDATES))
                await self.app.start()
                await asyncio.to_thread(self.relay.ensure_group)
                relay = asyncio.create_task(self.relay.run(relay_stop))
                try:
                    yield
                finally:
                    relay_stop.set()
                    await self.app.stop()
                    await relay

        return WebPart(f"Telegram webhook at POST {WEBHOOK_PATH}", self.webhook_routes(secret),
                       running)

    def webhook_app(self, secret: str, public_url: str):
        """The web app with the webhook: `lessonreel bot telegram --webhook`."""
        runtime = self.runtime
        return web_app(runtime.settings, runtime.secret, runtime.connection,
                       [self.webhook_part(secret, public_url)])


def telegram_bot(runtime: Runtime, config: dict[str, str]) -> TelegramBot:
    """The bot `telegram_settings` describes; its token (which Telegram puts in every URL)
    and webhook secret are kept out of the logs from now on."""
    for secret in (config["token"], config["webhook_secret"]):
        redact_token_in_logs(secret)
    return TelegramBot(runtime, token=config["token"], api_url=config["api_url"])


def run_telegram(runtime: Runtime, config: dict[str, str], *, webhook: bool, host: str,
                 port: int) -> int:
    bot = telegram_bot(runtime, config)
    if webhook:
        run_web(bot.webhook_app(config["webhook_secret"], runtime.settings.public_url), host,
                port)
        return 0

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await bot.run_polling(stop)

    asyncio.run(main())
    return 0


class _quietly:
    """Best effort: a failed typing indicator or apology must not raise again."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None and isinstance(exc, TelegramError | OSError | ValueError):
            log.warning("Telegram call failed: %s", exc)
            return True
        return False


def _author(update: Update) -> Author:
    user, chat = update.effective_user, update.effective_chat
    groups = (f"telegram-chat:{chat.id}",) if chat else ()
    return Author(str(user.id), user.full_name, groups) if user else Author("", "", groups)


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
