"""The Slack face: slack-bolt in Socket Mode (no public URL: the usual school) or over HTTP.

Slack wants an answer within 3 seconds and retries otherwise, so every listener acknowledges
first and does its work afterwards, in a thread (the conversation code is synchronous and the
language model may take many seconds). Slack may deliver one event several times: the event
id is remembered in Redis and a repeat is dropped, so one message makes one reply and at most
one job. A conversation is a thread: a mention starts one, replies continue it, colleagues
can join. Teacher text is escaped before it goes into Block Kit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.batch import batch_too_large, is_batch_file
from bot.core import ACTIONS, Author, Card, Out, Place, Route, parse_command
from bot.messages import COMMAND_WORDS, say
from bot.relay import Delivery
from bot.runtime import Runtime, redact_token_in_logs, relay_for, use_bot_executor
from bot.web import WebPart, run_web, web_app
from engine.errors import SettingsError, UserError
from engine.request import detect_language

log = logging.getLogger(__name__)

PLATFORM = "slack"
ACTION_PREFIX = "lr_"
EDIT_VIEW = "lr_edit_scene"
# Web API errors that mean "the bot may not post here", not "something broke".
NO_ACCESS = frozenset({"not_in_channel", "channel_not_found", "is_archived",
                       "restricted_action", "missing_scope", "cannot_dm_bot"})
SECTION_LIMIT = 2900  # Block Kit allows 3000 characters in a section's text
_MENTION = re.compile(r"<@[A-Z0-9]+>")
_MARKUP = re.compile(r"<([^<>\s][^<>]*)>")
_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))


def slack_settings(environ=None, *, http: bool = False) -> dict[str, str]:
    """The tokens from the environment; one sentence on what is missing for this mode."""
    environ = os.environ if environ is None else environ
    token = environ.get("SLACK_BOT_TOKEN", "")
    if not token:
        raise SettingsError("SLACK_BOT_TOKEN is not set: create the Slack app from "
                            "config/slack-manifest.yaml, install it, and set its Bot User "
                            "OAuth Token (xoxb-…).")
    if http and not environ.get("SLACK_SIGNING_SECRET"):
        raise SettingsError("SLACK_SIGNING_SECRET is not set: HTTP mode verifies every "
                            "request's signature (the app's Basic Information page has it).")
    if not http and not environ.get("SLACK_APP_TOKEN"):
        raise SettingsError("SLACK_APP_TOKEN is not set: Socket Mode needs an app-level token "
                            "(xapp-…) with connections:write; or run with --http --port PORT.")
    return {"token": token, "signing_secret": environ.get("SLACK_SIGNING_SECRET", ""),
            "app_token": environ.get("SLACK_APP_TOKEN", ""),
            "api_url": environ.get("LESSONREEL_SLACK_API_URL", "")}


def escape(text: str) -> str:
    """Slack's mrkdwn treats &, < and > as markup: a teacher's text must not become a link
    or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def readable(text: str) -> str:
    """What the teacher sees in Slack, as plain text for the storyboard (and the video).

    Slack sends message text as markup: mentions and links in angle brackets, and the
    characters &, < and > the person typed escaped. Left as it is, "<@U123>" would end up in a
    caption, and "cats & dogs" would come back as "cats &amp;amp; dogs" once escaped again.
    Mentions become "@U123", "@channel" (names would need the users:read scope), channels
    "#name", links their label or address."""

    def plain(match: re.Match) -> str:
        target, _, label = match.group(1).partition("|")
        if target.startswith("@"):  # a person: <@U123> or <@U123|name>
            return "@" + (label.lstrip("@") or target[1:])
        if target.startswith("#"):  # a channel: <#C123|general>
            return "#" + (label or target[1:])
        if target.startswith("!"):  # <!channel>, <!here>, <!subteam^S1|@staff>, <!date…|…>
            special = target[1:].split("^", 1)[0]
            if special in ("subteam", "date"):
                return label or "@" + special
            return "@" + special
        return label or target  # a link: <https://…|label> or <https://…>

    text = _MARKUP.sub(plain, text)
    for entity, character in _ENTITIES:
        text = text.replace(entity, character)
    return text


def clip(text: str, limit: int) -> str:
    """Cut escaped text to `limit` characters without leaving half an entity at the end."""
    if len(text) <= limit:
        return text
    text = text[:limit]
    cut = text.rfind("&", limit - 5)  # the longest entity, &amp;, has 5 characters
    return text[:cut] if cut != -1 and ";" not in text[cut:] else text


def card_blocks(card: Card, intro: str = "") -> list[dict]:
    blocks: list[dict] = []
    if intro:
        blocks.append(_section(escape(intro)))
    blocks.append(_section(f"*{escape(card.heading)}*"))
    for scene in card.scenes:
        line = say(card.language, "card_scene", number=scene.number, seconds=scene.seconds,
                   visual=escape(scene.visual))
        if scene.narration:
            line += "\n" + say(card.language, "card_narration",
                               narration=f"_{escape(scene.narration)}_")
        if scene.image:
            line += "\n" + say(card.language, "card_image", image=escape(scene.image))
        blocks.append(_section(line))
    blocks.append({"type": "actions", "block_id": "lr_card", "elements": [
        {"type": "button", "action_id": ACTION_PREFIX + button.action, "value": button.token,
         "text": {"type": "plain_text", "text": button.label},
         **({"style": "primary"} if button.action == "render" else {})}
        for button in card.buttons]})
    return blocks


def card_text(card: Card, intro: str = "") -> str:
    """The plain-text fallback (notifications, screen readers). Slack reads markup here too:
    it is escaped like the blocks, or a teacher's <!channel> would notify the channel."""
    return clip(escape("\n".join(filter(None, (intro, *card.lines())))), 3000)


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, SECTION_LIMIT)}}


def edit_view(card: Card, token: str) -> dict:
    """A modal to rewrite one scene: which scene, what we see, what is said, how long."""
    lang = card.language
    options = [{"text": {"type": "plain_text", "text": f"{s.number}. {s.visual}"[:75]},
                "value": str(s.number)} for s in card.scenes]

    def text_input(block_id: str, label: str, multiline: bool, max_length: int) -> dict:
        return {"type": "input", "block_id": block_id, "optional": True,
                "label": {"type": "plain_text", "text": label},
                "element": {"type": "plain_text_input", "action_id": "value",
                            "multiline": multiline, "max_length": max_length}}

    return {
        "type": "modal", "callback_id": EDIT_VIEW, "private_metadata": token,
        "title": {"type": "plain_text", "text": say(lang, "button_edit")[:24]},
        "submit": {"type": "plain_text", "text": "OK"},
        "blocks": [
            {"type": "input", "block_id": "scene",
             "label": {"type": "plain_text", "text": say(lang, "edit_scene_title", scene="")},
             "element": {"type": "static_select", "action_id": "value", "options": options,
                         "initial_option": options[0]}},
            text_input("visual", say(lang, "edit_visual"), True, 400),
            text_input("narration", say(lang, "edit_narration"), True, 400),
            text_input("seconds", say(lang, "edit_seconds"), False, 3),
        ],
    }


# Errors that say a message is gone, or out of the bot's reach for good.
GONE = ("message_not_found", "cant_update_message", "cant_delete_message", "channel_not_found",
        "not_in_channel", "is_archived")


class SlackBot:
    def __init__(self, runtime: Runtime, *, token: str, signing_secret: str = "",
                 api_url: str = "") -> None:
        self.runtime = runtime
        self.service = runtime.service
        kwargs = {"base_url": api_url} if api_url else {}
        self.client = AsyncWebClient(token=token, **kwargs)
        self.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=3))
        # Live previews give up at a rate limit instead of waiting: the relay handles events
        # one at a time, and a wait for a picture would hold up every job's news.
        self.preview_client = AsyncWebClient(token=token, **kwargs)
        self.app = AsyncApp(client=self.client, signing_secret=signing_secret or None,
                            request_verification_enabled=bool(signing_secret),
                            process_before_response=False,
                            ignoring_self_events_enabled=True)
        self.upload_limit = runtime.settings.bot.slack_upload_mb * 1024 * 1024
        self.relay = relay_for(runtime, PLATFORM, self)
        self._tasks: set[asyncio.Task] = set()
        self._register()

    # -- listeners ---------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.action(re.compile(f"^{ACTION_PREFIX}({'|'.join(ACTIONS)})$"))(self._on_button)
        app.view(EDIT_VIEW)(self._on_edit_submitted)
        app.command(re.compile(r"^/lessonreel"))(self._on_command)
        app.error(self._on_error)

    async def _on_mention(self, body: dict, event: dict, context: dict) -> None:
        if not await self._first_time(body):
            return
        # Only the bot's own mention goes: "<@UBOT> ask <@U123> about it" keeps the colleague.
        text = event.get("text", "")
        mine = self._mention_of(context)
        text = text.replace(mine, "") if mine else _MENTION.sub("", text)
        if not await self._first_message(event):
            return  # the same message also arrived as a plain message event
        if event.get("files"):  # "@lessonreel scene 3" with a photo
            await self._files(event)
            return
        await self._converse(event, readable(text))

    async def _on_message(self, body: dict, event: dict, context: dict) -> None:
        if event.get("bot_id") or event.get("subtype") not in (None, "file_share",
                                                                "thread_broadcast"):
            return  # our own posts, edits, joins…
        text = event.get("text", "")
        direct = event.get("channel_type") == "im"
        if not direct:
            # In a channel, only thread replies in our threads; a message that mentions the
            # bot arrives as app_mention too, and is answered there. A colleague's mention
            # ("<@U123> what do you think? make scene 2 shorter") is still an edit.
            mine = self._mention_of(context)
            mentioned = mine in text if mine else bool(_MENTION.search(text))
            # A file shared with a mention may come only as a message event (not app_mention).
            if (mentioned and not event.get("files")) or (
                    not mentioned and not event.get("thread_ts")):
                return
            if not mentioned and not await asyncio.to_thread(self.service.has_storyboard,
                                                             self._place(event)):
                return
            if mentioned:
                text = text.replace(mine, "") if mine else _MENTION.sub("", text)
        if not await self._first_time(body) or not await self._first_message(event):
            return
        if event.get("files"):
            await self._files(event)
            return
        await self._converse(event, readable(text))

    async def _on_button(self, ack, body: dict, action: dict) -> None:
        await ack()
        author = _author(body.get("user", {}))
        token = action.get("value", "")
        ref = await asyncio.to_thread(self.service.action_ref, token)
        if ref is not None and ref.action == "edit":
            card = await asyncio.to_thread(self.service.card, ref.place)
            if card is not None and card.card is not None and body.get("trigger_id"):
                try:
                    # The form edits the version it shows: if a colleague changes the
                    # storyboard meanwhile, the submit is refused politely, not misapplied.
                    await self.client.views_open(
                        trigger_id=body["trigger_id"],
                        view=edit_view(card.card, f"{token}:{card.card.version}"))
                    return
                except (TimeoutError, SlackClientError, OSError) as exc:
                    # e.g. expired_trigger_id after a slow moment
                    log.warning("edit form not opened: %s", exc.__class__.__name__)
                    # … then the thread says how to edit by text instead
        place, outs = await asyncio.to_thread(self.service.action, token, author)
        if place is None:
            channel = body.get("channel", {}).get("id", "")
            message = body.get("message", {})
            place = Place(PLATFORM, channel, message.get("thread_ts") or message.get("ts", ""))
        await self._post(place, outs)

    async def _on_edit_submitted(self, ack, body: dict, view: dict) -> None:
        await ack()
        token, _, shown = view.get("private_metadata", "").partition(":")
        ref = await asyncio.to_thread(self.service.action_ref, token)
        if ref is None or not shown.isdigit():
            return
        values = view.get("state", {}).get("values", {})

        def field(name: str) -> str:
            value = values.get(name, {}).get("value", {})
            if "selected_option" in value:
                return (value.get("selected_option") or {}).get("value", "")
            return value.get("value") or ""

        author = _author(body.get("user", {}))
        outs = await asyncio.to_thread(self._edit_from_form, ref, int(shown), field, author)
        await self._post(ref.place, outs)

    def _edit_from_form(self, ref, shown: int, field, author: Author) -> list[Out]:
        scene_field = field("scene")
        number = int(scene_field) if scene_field.isdigit() else 1
        try:
            version = self.service.history.get(ref.conversation, shown)
        except UserError:
            return self.service.message(ref.place, author, "show")
        if not 1 <= number <= len(version.storyboard.scenes):
            return self.service.message(ref.place, author, "show")
        scene = version.storyboard.scenes[number - 1]
        seconds = field("seconds").strip()
        return self.service.edit_scene(
            ref.conversation, shown, number,
            visual=field("visual").strip() or scene.visual,
            narration=field("narration").strip() or scene.narration,
            seconds=int(seconds) if seconds.isdigit() else None, author=author)

    async def _on_command(self, ack, body: dict, respond) -> None:
        await ack()
        try:
            await self._command(body)
        except SlackApiError as exc:
            if exc.response.get("error") not in NO_ACCESS:
                raise
            # Not a member of this channel (or not allowed to post): the slash command's
            # response URL still reaches the teacher, privately.
            lang = "zh" if detect_language(body.get("text") or "") == "zh" else "en"
            await respond(text=say(lang, "no_access"), response_type="ephemeral")

    async def _command(self, body: dict) -> None:
        channel, user = body.get("channel_id", ""), body.get("user_id", "")
        text = readable(body.get("text") or "").strip()
        name = text.partition(" ")[0]
        author = Author(user, body.get("user_name", ""), _team(body.get("team_id")))
        last = f"lessonreel:slack:last:{channel}:{user}"
        remembered = await asyncio.to_thread(self.runtime.connection.get, last)
        if name.lower() in ("new", "新建") or not remembered:
            # A slash command has no thread: start one with a message in the channel.
            posted = await self.client.chat_postMessage(
                channel=channel, text=f"<@{user}> /lessonreel {escape(text)}"[:3000])
            place = Place(PLATFORM, channel, posted["ts"])
            await asyncio.to_thread(self.runtime.connection.set, last, place.thread,
                                    ex=30 * 86_400)
        else:
            place = Place(PLATFORM, channel, remembered.decode())
        # "/lessonreel render" is a command; "/lessonreel Explain magnets…" a request.
        words = f"/{text}" if not text or name.lower() in COMMAND_WORDS else text
        outs = await asyncio.to_thread(self.service.message, place, author, words)
        await self._post(place, outs)

    async def _on_error(self, error: Exception, body: dict) -> None:
        log.error("Slack listener failed: %s", error.__class__.__name__, exc_info=error)

    # -- doing the work ----------------------------------------------------------------------

    async def _converse(self, event: dict, text: str) -> None:
        place = self._place(event)
        author = Author(event.get("user", ""), groups=_team(event.get("team")))
        await self._remember_thread(place, author)
        placeholder = None
        if self.service.llm is not None and parse_command(text) is None:
            # The model may take a while: say so at once, then put the answer in its place.
            lang = "zh" if detect_language(text) == "zh" else "en"
            posted = await self.client.chat_postMessage(
                channel=place.chat, thread_ts=place.thread or None, text=say(lang, "working"))
            placeholder = posted["ts"]
        outs = await asyncio.to_thread(self.service.message, place, author, text)
        await self._post(place, outs, replace=placeholder)

    async def _files(self, event: dict) -> None:
        place = self._place(event)
        author = Author(event.get("user", ""), groups=_team(event.get("team")))
        for item in event.get("files", [])[:4]:
            name = item.get("name") or "file"
            url = item.get("url_private_download") or item.get("url_private")
            if url and is_batch_file(name, str(item.get("mimetype", ""))):
                outs = await self._batch(place, author, name, url, int(item.get("size") or 0))
            elif not str(item.get("mimetype", "")).startswith("image/") or not url:
                outs = await asyncio.to_thread(self.service.unsupported_file, place, name)
            elif int(item.get("size") or 0) > self.runtime.settings.bot.max_image_mb * 2**20:
                outs = await asyncio.to_thread(self.service.image_too_large, place,
                                               int(item["size"]))
            else:
                try:
                    data = await self._download(url)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    log.warning("could not fetch a file from Slack: %s", exc.__class__.__name__)
                    data = b""  # answered as an image that could not be read
                outs = await asyncio.to_thread(self.service.image, place, author, data,
                                               caption=readable(event.get("text", "")),
                                               file_name=name)
            await self._post(place, outs)

    async def _batch(self, place: Place, author: Author, name: str, url: str, size: int
                     ) -> list[Out]:
        """A CSV file: a video for each row. Refused by the size Slack tells, unfetched."""
        limit = self.runtime.settings.batch.max_bytes
        if size > limit:
            return await asyncio.to_thread(batch_too_large, self.service, place, name)
        try:
            data = await self._download(url, limit=limit + 1)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("could not fetch a file from Slack: %s", exc.__class__.__name__)
            data = b""  # answered as an empty file
        return await asyncio.to_thread(self.service.batch, place, author, data, name)

    async def _download(self, url: str, *, limit: int | None = None) -> bytes:
        limit = limit or self.runtime.settings.bot.max_image_mb * 2**20 + 1
        headers = {"Authorization": f"Bearer {self.client.token}"}
        data = bytearray()
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
            r.raise_for_status()
            # read(n) returns whatever has arrived, up to n: a large image comes in chunks.
            async for chunk in r.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) >= limit:  # too large: the service says so, without the rest
                    break
        return bytes(data[:limit])

    async def _post(self, place: Place, outs: Sequence[Out], *, replace: str | None = None
                    ) -> None:
        """Post each Out in the thread; the first one replaces the message `replace`."""
        for out in outs:
            thread = place.thread or None
            if out.card is not None:
                content = {"text": card_text(out.card, out.text),
                           "blocks": card_blocks(out.card, out.text)}
            else:
                content = {"text": clip(escape(out.text), 3000), "blocks": []}
            if replace is not None:
                reply = await self.client.chat_update(channel=place.chat, ts=replace, **content)
                replace = None
            else:
                if not content["blocks"]:
                    del content["blocks"]
                reply = await self.client.chat_postMessage(channel=place.chat,
                                                           thread_ts=thread, **content)
            if out.follows_job:
                await asyncio.to_thread(self.service.routes.claim_status, out.follows_job,
                                        reply["ts"])

    async def _first_time(self, body: dict) -> bool:
        event_id = body.get("event_id") or ""
        if not event_id:
            return True
        return await asyncio.to_thread(self.service.first_time, PLATFORM, event_id)

    async def _first_message(self, event: dict) -> bool:
        """A message with a mention comes as app_mention and as message: act on it once."""
        key = f"msg:{event.get('channel', '')}:{event.get('ts', '')}"
        return await asyncio.to_thread(self.service.first_time, PLATFORM, key)

    async def _remember_thread(self, place: Place, author: Author) -> None:
        """So that a later slash command from this teacher talks about this thread."""
        if author.id and place.thread:
            await asyncio.to_thread(self.runtime.connection.set,
                                    f"lessonreel:slack:last:{place.chat}:{author.id}",
                                    place.thread, ex=30 * 86_400)

    @staticmethod
    def _mention_of(context: dict) -> str:
        """"<@UBOT>", the markup of a mention of this bot ("" before Bolt knows its id)."""
        user = context.get("bot_user_id") if context else None
        return f"<@{user}>" if user else ""

    @staticmethod
    def _place(event: dict) -> Place:
        channel = event.get("channel", "")
        if event.get("channel_type") == "im" and not event.get("thread_ts"):
            return Place(PLATFORM, channel, "")  # a direct message: the DM is the thread
        return Place(PLATFORM, channel, event.get("thread_ts") or event.get("ts", ""))

    # -- the relay's Notifier ----------------------------------------------------------------

    async def post_status(self, route: Route, text: str) -> str:
        reply = await self.client.chat_postMessage(
            channel=route.place.chat, thread_ts=route.place.thread or None, text=escape(text))
        return reply["ts"]

    async def edit_status(self, route: Route, ref: str, text: str) -> None:
        try:
            await self.client.chat_update(channel=route.place.chat, ts=ref, text=escape(text))
        except SlackApiError as exc:
            # Deleted by someone, too old to edit, still rate-limited after the retries: one
            # status line is lost, and the result must still be posted after it.
            log.warning("status of job %s not edited: %s", route.job_id,
                        exc.response.get("error"))

    async def show_preview(self, route: Route, ref: str | None, picture: Path,
                           caption: str) -> str:
        """A Slack message cannot change its file, but an image block can show a file by id:
        each picture is uploaded unshared, the preview message's image block is pointed at
        it, and the previous picture's file is deleted. The ref is "<message ts> <file id>"."""
        client = self.preview_client
        uploaded = await client.files_upload_v2(
            content=picture.read_bytes(), filename=f"{route.job_id}-live.jpg", title=caption)
        file_id = uploaded["files"][0]["id"]
        blocks = [{"type": "section", "text": {"type": "plain_text", "text": caption}},
                  {"type": "image", "slack_file": {"id": file_id}, "alt_text": caption}]
        ts, old_file = ref.split(" ", 1) if ref else (None, None)
        try:
            if ts is not None:
                try:
                    await client.chat_update(channel=route.place.chat, ts=ts,
                                             text=escape(caption), blocks=blocks)
                except SlackApiError as exc:
                    if exc.response.get("error") not in GONE:
                        raise  # kept: the same message is edited next time
                    ts = None  # deleted by someone: a new one takes its place
            if ts is None:
                posted = await client.chat_postMessage(
                    channel=route.place.chat, thread_ts=route.place.thread or None,
                    text=escape(caption), blocks=blocks)
                ts = posted["ts"]
        except Exception:
            await self._delete_file(file_id, client)  # shown nowhere: not left behind
            raise
        if old_file:
            await self._delete_file(old_file, client)
        return f"{ts} {file_id}"

    async def remove_preview(self, route: Route, ref: str) -> None:
        """Raises when the message is still there (the relay tries again later)."""
        ts, file_id = ref.split(" ", 1)
        try:
            await self.client.chat_delete(channel=route.place.chat, ts=ts)
        except SlackApiError as exc:
            if exc.response.get("error") not in GONE:
                raise
        await self._delete_file(file_id)

    async def _delete_file(self, file_id: str, client: AsyncWebClient | None = None) -> None:
        """A file shared nowhere: one left behind is seen by no one, so a failure is logged."""
        try:
            await (client or self.client).files_delete(file=file_id)
        except SlackApiError as exc:
            log.warning("live preview file %s not deleted: %s", file_id,
                        exc.response.get("error"))

    async def deliver(self, route: Route, delivery: Delivery) -> None:
        thread = route.place.thread or None
        video = delivery.video
        text = delivery.text
        if video is not None and video.stat().st_size <= self.upload_limit:
            try:
                with open(video, "rb") as handle:  # given a path, slack_sdk leaves it open
                    await self.client.files_upload_v2(
                        channel=route.place.chat, thread_ts=thread, file=handle,
                        filename=f"{route.job_id}-preview.mp4", title=route.title,
                        initial_comment=escape(delivery.text))
                return
            except Exception as exc:  # no files:write, uploads off, a slow uplink timing out:
                log.warning("preview of job %s not uploaded: %s", route.job_id,
                            exc.__class__.__name__)
                # the link, which the text always has, still goes out
        elif video is not None:
            text += "\n" + say(route.language, "too_big_to_upload")
        await self.client.chat_postMessage(channel=route.place.chat, thread_ts=thread,
                                           text=escape(text))

    # -- running -----------------------------------------------------------------------------

    async def start_relay(self) -> asyncio.Event:
        stop = asyncio.Event()
        await asyncio.to_thread(self.relay.ensure_group)
        task = asyncio.create_task(self.relay.run(stop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stop

    async def stop_relay(self, stop: asyncio.Event) -> None:
        """Stop the relay and wait for it to finish the event in hand."""
        stop.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)


def http_part(bot: SlackBot) -> WebPart:
    """POST /slack/events (Bolt checks each request's signature), and the bot's event relay
    running while the web app serves."""
    from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
    from starlette.routing import Route as WebRoute

    handler = AsyncSlackRequestHandler(bot.app)

    async def events(request):
        return await handler.handle(request)

    @contextlib.asynccontextmanager
    async def relaying():
        stop = await bot.start_relay()
        try:
            yield
        finally:
            await bot.stop_relay(stop)

    return WebPart("Slack events at POST /slack/events",
                   [WebRoute("/slack/events", events, methods=["POST"])], relaying)


def http_app(bot: SlackBot):
    """The web app with the Slack events endpoint: `lessonreel bot slack --http`."""
    runtime = bot.runtime
    return web_app(runtime.settings, runtime.secret, runtime.connection, [http_part(bot)])


def slack_bot(runtime: Runtime, config: dict[str, str]) -> SlackBot:
    """The bot `slack_settings` describes; its secrets are kept out of the logs from now on."""
    for secret in (config["token"], config["app_token"], config["signing_secret"]):
        redact_token_in_logs(secret)
    return SlackBot(runtime, token=config["token"], signing_secret=config["signing_secret"],
                    api_url=config["api_url"])


def run_slack(runtime: Runtime, config: dict[str, str], *, http: bool, host: str,
              port: int) -> int:
    bot = slack_bot(runtime, config)
    if http:
        run_web(http_app(bot), host, port)
        return 0
    asyncio.run(socket_mode(bot, config["app_token"]))
    return 0


async def socket_mode(bot: SlackBot, app_token: str, *,
                      web_client: AsyncWebClient | None = None) -> None:
    """Hold a Socket Mode connection (and the relay) until cancelled. `web_client` is the
    client that opens the connection; by default the bot's own (LESSONREEL_SLACK_API_URL)."""
    from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler

    use_bot_executor()
    stop = await bot.start_relay()
    handler = AsyncSocketModeHandler(bot.app, app_token, web_client=web_client)
    try:
        await handler.start_async()
    finally:
        await handler.close_async()
        await bot.stop_relay(stop)


def _author(user: dict) -> Author:
    return Author(user.get("id", ""), user.get("name") or user.get("username") or "",
                  _team(user.get("team_id")))


def _team(team_id: str | None) -> tuple[str, ...]:
    """The workspace as a roles group ("slack-team:T…")."""
    return (f"slack-team:{team_id}",) if team_id else ()
