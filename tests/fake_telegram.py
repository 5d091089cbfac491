"""A local stand-in for the Telegram Bot API server, for tests.

`FakeTelegram` serves the Bot API's HTTP interface on 127.0.0.1 from a background thread, so
the real python-telegram-bot (PTB) can talk to it unchanged:

    with FakeTelegram() as fake:
        bot = Bot("123:ABC", base_url=fake.base_url, base_file_url=fake.base_file_url)
        fake.push_update(fake.text_message(42, "/start"))
        ...
        fake.wait_for(lambda: fake.calls_to("sendMessage"))

What it imitates, and where it is stricter or looser than Telegram:

* Bodies are read as PTB sends them (form-encoded, or multipart when it uploads a file) and
  also as JSON. Values are decoded by field name: ids and counts to ints, flags to bools,
  reply_markup / reply_parameters / commands / ... from JSON; everything else stays a string.
* Answers are ``{"ok": true, "result": ...}`` with real Bot API object shapes; errors carry the
  status codes and the descriptions Telegram uses (PTB maps 400 to BadRequest, 403 to
  Forbidden, 401/404 to InvalidToken, 409 to Conflict, and any answer with
  ``parameters.retry_after`` to RetryAfter).
* getUpdates has Telegram's offset semantics (an offset confirms every update below it), long
  polling capped at `long_poll_cap` seconds, allowed_updates, the 409 while a webhook is set and
  the 409 "terminated by other getUpdates request" when a second poller arrives.
* Message ids are per chat and shared by the user's and the bot's messages. Replying to a
  message the chat never had is a 400 (unless allow_sending_without_reply), as on Telegram.
  In forum topics, a message that replies to nothing carries ``reply_to_message`` = the topic's
  creation message, as Telegram does.
* parse_mode HTML and MarkdownV2 are checked the way Telegram checks them (unsupported or
  unbalanced tags, a bare ``<``, unescaped reserved characters in MarkdownV2) and the stored
  ``text`` / ``caption`` is the plain text a user sees; entities are not produced. The wording
  of these parse errors is close to Telegram's but not guaranteed to be identical.
* Limits: text 4096 and caption 1024 characters, callback_data 64 bytes, command names
  ``[a-z0-9_]{1,32}``, uploads 50 MB, getFile 20 MB.
* setWebhook accepts any URL (Telegram requires HTTPS); `deliver_webhook` posts an update to it.
* Files sent by URL cannot be fetched (there is no network): such a send is a 400.
"""

from __future__ import annotations

import asyncio
import copy
import html
import io
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.local_server import LocalServer, LocalService

T = TypeVar("T")

BOT_ID = 999
BOT_USERNAME = "lessonreel_bot"
BOT_USER: dict[str, Any] = {
    "id": BOT_ID,
    "is_bot": True,
    "first_name": "lessonreel",
    "username": BOT_USERNAME,
}
GET_ME: dict[str, Any] = {
    **BOT_USER,
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
    "can_connect_to_business": False,
    "has_main_web_app": False,
}

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA_BYTES = 64
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
QUERY_INVALID = (
    "Bad Request: query is too old and response timeout expired or query ID is invalid"
)

_JSON_FIELDS = frozenset({
    "reply_markup", "reply_parameters", "entities", "caption_entities", "commands", "scope",
    "allowed_updates", "link_preview_options", "media", "reaction", "menu_button",
})
_INT_FIELDS = frozenset({
    "message_id", "message_thread_id", "reply_to_message_id", "offset", "limit", "timeout",
    "user_id", "cache_time", "duration", "width", "height", "max_connections", "from_chat_id",
})
_BOOL_FIELDS = frozenset({
    "show_alert", "disable_notification", "protect_content", "drop_pending_updates",
    "supports_streaming", "has_spoiler", "allow_sending_without_reply",
    "disable_web_page_preview", "disable_content_type_detection", "show_caption_above_media",
    "allow_paid_broadcast", "is_big",
})
_CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note",
    "upload_video_note",
})
_UPDATE_KINDS = (
    "message", "edited_message", "channel_post", "edited_channel_post", "callback_query",
    "inline_query", "chosen_inline_result", "my_chat_member", "chat_member",
    "chat_join_request", "message_reaction", "poll", "poll_answer",
)
_COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")
_MEDIA_FOLDERS = {"photo": "photos", "video": "videos", "document": "documents"}
_DEFAULT_MIME = {
    "photo": "image/jpeg", "video": "video/mp4", "document": "application/octet-stream",
}


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One file part of a multipart request."""

    data: bytes
    filename: str
    content_type: str


@dataclass
class Call:
    """One request the fake answered, in arrival order.

    `params` are decoded (ints, bools, JSON objects); `files` maps each multipart file field's
    name to its bytes, `uploads` to the full `Upload`. `status` is the HTTP status of the answer
    and `answer` its body (``{"ok": ..., ...}``).
    """

    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    status: int = 200
    answer: dict[str, Any] = field(default_factory=dict)
    token: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class SentFile:
    """A photo, video or document the bot sent."""

    kind: str  # "photo" | "video" | "document"
    chat_id: int
    message_id: int
    data: bytes
    filename: str | None
    mime_type: str
    caption: str | None
    message_thread_id: int | None
    reply_markup: dict[str, Any] | None
    file_id: str
    params: dict[str, Any]


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_name: str | None
    mime_type: str | None


class ApiError(Exception):
    """An error answer: HTTP status `code` and the Bot API's `description`."""

    def __init__(
        self, code: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "ok": False, "error_code": self.code, "description": self.description,
        }
        if self.parameters:
            answer["parameters"] = self.parameters
        return answer


def bad_request(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: {detail}")


# --- request decoding ---------------------------------------------------------------------


def _decode_value(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if name in _JSON_FIELDS:
        try:
            return json.loads(value)
        except ValueError as exc:
            raise bad_request(f"can't parse {name} JSON object") from exc
    if name in _INT_FIELDS or name == "chat_id":
        if re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if name == "chat_id":
            return value
        raise bad_request(f"invalid {name} specified")
    if name in _BOOL_FIELDS:
        return value.strip().lower() in ("true", "1")
    return value


def decode_params(raw: dict[str, Any]) -> dict[str, Any]:
    """Decode Bot API parameters by name (form values all arrive as strings)."""
    return {name: _decode_value(name, value) for name, value in raw.items()}


def _disposition_param(disposition: str, key: str) -> str | None:
    match = re.search(rf'(?:^|;)\s*{key}="((?:[^"\\]|\\.)*)"', disposition)
    if match is None:
        match = re.search(rf"(?:^|;)\s*{key}=([^;\s]+)", disposition)
        return match.group(1) if match else None
    return match.group(1).replace("%22", '"').replace("\\\\", "\\").replace('\\"', '"')


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, Upload]]:
    """Split a multipart/form-data body into plain fields and file uploads, byte-exact."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise bad_request("multipart boundary is missing")
    delimiter = b"\r\n--" + match.group(1).encode("latin-1")
    fields: dict[str, str] = {}
    uploads: dict[str, Upload] = {}
    for part in (b"\r\n" + body).split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name = _disposition_param(disposition, "name")
        if name is None:
            continue
        filename = _disposition_param(disposition, "filename")
        if filename is None:
            fields[name] = data.decode("utf-8")
        else:
            content = headers.get("content-type", "application/octet-stream")
            uploads[name] = Upload(data=data, filename=filename, content_type=content)
    return fields, uploads


# --- formatting ---------------------------------------------------------------------------

_HTML_TAGS = frozenset({
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
    "tg-emoji", "code", "pre", "blockquote",
})
_HTML_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*)?)>")
_MDV2_NAMES = {
    "*": "Bold", "_": "Italic", "__": "Underline", "~": "Strikethrough", "||": "Spoiler",
    "[": "TextUrl",
}


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


def _plain_from_html(text: str) -> str:
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    while True:
        lt = text.find("<", pos)
        if lt == -1:
            out.append(text[pos:])
            break
        out.append(text[pos:lt])
        offset = _byte_offset(text, lt)
        match = _HTML_TAG.match(text, lt)
        if match is None:
            raise bad_request(
                f"can't parse entities: Unsupported start tag at byte offset {offset}"
            )
        closing, name, attrs = match.group(1), match.group(2).lower(), match.group(3)
        if name not in _HTML_TAGS:
            raise bad_request(
                f'can\'t parse entities: Unsupported start tag "{name}" at byte offset {offset}'
            )
        if closing:
            if not stack or stack[-1] != name:
                expected = f'"</{stack[-1]}>"' if stack else "no end tag"
                raise bad_request(
                    f"can't parse entities: Unmatched end tag at byte offset {offset}, "
                    f'expected {expected}, found "</{name}>"'
                )
            stack.pop()
        else:
            if name == "span" and "tg-spoiler" not in attrs:
                raise bad_request(
                    f'can\'t parse entities: Tag "span" must have class "tg-spoiler" at byte '
                    f"offset {offset}"
                )
            stack.append(name)
        pos = match.end()
    if stack:
        raise bad_request(
            f'can\'t parse entities: Can\'t find end tag corresponding to start tag "{stack[-1]}"'
        )
    return html.unescape("".join(out))


def _plain_from_markdown_v2(text: str) -> str:
    out: list[str] = []
    open_marks: list[tuple[str, int]] = []
    i = 0
    line_start = True
    while i < len(text):
        ch = text[i]
        at_line_start, line_start = line_start, ch == "\n"
        if ch == "\\":
            if i + 1 < len(text):
                out.append(text[i + 1])
            i += 2
            continue
        if ch == "`":
            fence = "```" if text.startswith("```", i) else "`"
            end = i + len(fence)
            while True:
                end = text.find(fence, end)
                if end == -1:
                    name = "Pre" if fence == "```" else "Code"
                    raise bad_request(
                        f"can't parse entities: Can't find end of {name} entity at byte offset "
                        f"{_byte_offset(text, i)}"
                    )
                if text[end - 1] != "\\":
                    break
                end += 1
            body = text[i + len(fence):end]
            if fence == "```" and "\n" in body:
                body = body.split("\n", 1)[1]  # the first line names the language
            out.append(re.sub(r"\\([`\\])", r"\1", body))
            i = end + len(fence)
            continue
        mark = None
        if text.startswith("__", i):
            mark = "__"
        elif text.startswith("||", i):
            mark = "||"
        elif ch in "*_~":
            mark = ch
        if mark is not None:
            if open_marks and open_marks[-1][0] == mark:
                open_marks.pop()
            elif any(m == mark for m, _ in open_marks):
                raise bad_request(
                    f"can't parse entities: Can't find end of {_MDV2_NAMES[mark]} entity at "
                    f"byte offset {_byte_offset(text, i)}"
                )
            else:
                open_marks.append((mark, i))
            i += len(mark)
            continue
        if ch == "[":
            open_marks.append(("[", i))
            i += 1
            continue
        if ch == "]" and open_marks and open_marks[-1][0] == "[":
            open_marks.pop()
            if text.startswith("(", i + 1):
                close = i + 2
                while close < len(text) and (text[close] != ")" or text[close - 1] == "\\"):
                    close += 1
                i = close + 1
            else:
                i += 1
            continue
        if ch == ">" and at_line_start:
            i += 1
            continue
        if ch in "_*[]()~`>#+-=|{}.!":
            raise bad_request(
                f"can't parse entities: Character '{ch}' is reserved and must be escaped with "
                "the preceding '\\'"
            )
        out.append(ch)
        i += 1
    if open_marks:
        mark, start = open_marks[-1]
        raise bad_request(
            f"can't parse entities: Can't find end of {_MDV2_NAMES[mark]} entity at byte "
            f"offset {_byte_offset(text, start)}"
        )
    return "".join(out)


def _plain_from_markdown(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "_*`[":
            out.append(text[i + 1])
            i += 2
            continue
        if ch in "*_`":
            fence = "```" if text.startswith("```", i) else ch
            end = text.find(fence, i + len(fence))
            if end == -1:
                raise bad_request(
                    "can't parse entities: Can't find end of the entity starting at byte offset "
                    f"{_byte_offset(text, i)}"
                )
            out.append(text[i + len(fence):end])
            i = end + len(fence)
            continue
        link = re.match(r"\[([^\]]*)\]\(([^)]*)\)", text[i:])
        if link:
            out.append(link.group(1))
            i += link.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def plain_text(text: str, parse_mode: str | None) -> str:
    """What a user sees of `text` sent with `parse_mode`; raises ApiError where Telegram would."""
    mode = (parse_mode or "").lower()
    if mode == "html":
        return _plain_from_html(text)
    if mode == "markdownv2":
        return _plain_from_markdown_v2(text)
    if mode == "markdown":
        return _plain_from_markdown(text)
    if mode:
        raise bad_request(f"unsupported parse_mode {parse_mode}")
    return text


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --- the fake -----------------------------------------------------------------------------


class FakeTelegram(LocalService):
    """A Telegram Bot API server on 127.0.0.1 for PTB to talk to.

    `token`: when given, requests with another token get 401 Unauthorized (like a wrong token
    on Telegram); by default any token is served. `long_poll_cap`: the most seconds getUpdates
    waits, whatever `timeout` the client asks for.
    """

    def __init__(self, *, token: str | None = None, long_poll_cap: float = 1.0) -> None:
        self.token = token
        self.long_poll_cap = long_poll_cap
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._handlers = self._method_table()
        self.reset()
        self.app = Starlette(routes=[
            Route("/bot{token}/{method}", self._api, methods=["GET", "POST"]),
            Route("/file/bot{token}/{file_path:path}", self._download, methods=["GET"]),
        ])
        self._server = LocalServer(self.app, name="fake-telegram")

    def reset(self) -> None:
        """Forget every call, update, message, file and fault (the server keeps running)."""
        with self._lock:
            self._calls: list[Call] = []
            self._updates: list[dict[str, Any]] = []
            self._update_ids = itertools.count(1)
            self._allowed_updates: list[str] | None = None
            self._poll_generation = 0
            self._messages: dict[tuple[int, int], dict[str, Any]] = {}
            self._next_message_id: dict[int, int] = {}
            self._chats: dict[int, dict[str, Any]] = {}
            self._files: dict[str, StoredFile] = {}
            self._paths: dict[str, str] = {}
            self._file_numbers = itertools.count(1)
            self._callback_ids: set[str] = set()
            self._callback_numbers = itertools.count(1)
            self._sent_files: list[SentFile] = []
            self._edited_media: list[tuple[int, int, bytes]] = []
            self._commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
            self._faults: dict[str, list[ApiError]] = {}
            self.webhook: dict[str, Any] | None = None
            self.callback_answers: list[dict[str, Any]] = []
            self.chat_actions: list[dict[str, Any]] = []

    # --- lifecycle ---

    @property
    def root(self) -> str:
        """The server's root, like "https://api.telegram.org"."""
        return self._server.url

    @property
    def base_url(self) -> str:
        """For PTB's `base_url`: PTB appends the token, then "/{method}"."""
        return f"{self.root}/bot"

    @property
    def base_file_url(self) -> str:
        """For PTB's `base_file_url`: PTB appends the token, then "/{file_path}"."""
        return f"{self.root}/file/bot"

    def stop(self) -> None:
        """Stop serving; long polls end at once, so this takes well under 2 s."""
        self._stopping.set()
        super().stop()

    # --- what the bot did ---

    @property
    def calls(self) -> list[Call]:
        """Every request so far, in order (a snapshot)."""
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        wanted = method.lower()
        return [call for call in self.calls if call.method.lower() == wanted]

    def last_call(self, method: str) -> Call:
        calls = self.calls_to(method)
        if not calls:
            raise AssertionError(f"no {method} call.\n{self.summary()}")
        return calls[-1]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    @property
    def messages(self) -> dict[tuple[int, int], dict[str, Any]]:
        """The bot's messages as they stand now (after edits, without deleted ones), keyed by
        (chat_id, message_id)."""
        with self._lock:
            return {
                key: copy.deepcopy(message) for key, message in self._messages.items()
                if message.get("from", {}).get("id") == BOT_ID
            }

    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's current messages in one chat, oldest first."""
        return [m for (chat, _), m in sorted(self.messages.items()) if chat == chat_id]

    def texts(self, chat_id: int) -> list[str]:
        """The current text (or caption) of each of the bot's messages in a chat, oldest first."""
        return [m.get("text", m.get("caption", "")) for m in self.bot_messages(chat_id)]

    def message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._messages[(chat_id, message_id)])

    @property
    def edited_media(self) -> list[tuple[int, int, bytes]]:
        """(chat_id, message_id, new photo bytes) of each editMessageMedia, in order."""
        with self._lock:
            return list(self._edited_media)

    @property
    def sent_files(self) -> list[SentFile]:
        with self._lock:
            return list(self._sent_files)

    @property
    def sent_videos(self) -> list[SentFile]:
        return [f for f in self.sent_files if f.kind == "video"]

    @property
    def sent_photos(self) -> list[SentFile]:
        return [f for f in self.sent_files if f.kind == "photo"]

    @property
    def sent_documents(self) -> list[SentFile]:
        return [f for f in self.sent_files if f.kind == "document"]

    def my_commands(
        self, scope: dict[str, Any] | None = None, language_code: str | None = None
    ) -> list[dict[str, Any]]:
        """The commands set for a scope (default scope) and language ("" = all languages)."""
        with self._lock:
            return copy.deepcopy(self._commands.get(_commands_key(scope, language_code), []))

    @property
    def polls_begun(self) -> int:
        """How many getUpdates requests have arrived, counting ones still waiting."""
        with self._lock:
            return self._poll_generation

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates pushed and not yet confirmed by a getUpdates offset."""
        with self._lock:
            return copy.deepcopy(self._updates)

    def summary(self, limit: int = 40) -> str:
        """A readable list of the calls so far (getUpdates counted, not listed)."""
        calls = self.calls
        polls = sum(1 for call in calls if call.method == "getUpdates")
        lines = [f"{len(calls)} call(s) to the fake Telegram, {polls} of them getUpdates:"]
        shown = [call for call in calls if call.method != "getUpdates"]
        if len(shown) > limit:
            lines.append(f"  ... {len(shown) - limit} earlier call(s) not shown")
        for call in shown[-limit:]:
            params = ", ".join(f"{k}={_short(v)}" for k, v in call.params.items())
            files = f" files={sorted(call.files)}" if call.files else ""
            outcome = "" if call.ok else f"  -> {call.status} {call.answer.get('description')}"
            lines.append(f"  {call.method}({params}){files}{outcome}")
        return "\n".join(lines)

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 10.0, *, what: str | None = None,
        interval: float = 0.02,
    ) -> T:
        """Poll `predicate` until it returns something truthy, and return that. Blocks the
        thread: from a coroutine that shares its loop with PTB, use `wait_for_async`."""
        check = self._checker(predicate, timeout, what)
        while not (result := check()):
            time.sleep(interval)
        return result

    async def wait_for_async(
        self, predicate: Callable[[], T], timeout: float = 10.0, *, what: str | None = None,
        interval: float = 0.02,
    ) -> T:
        """`wait_for` that yields to the event loop between polls."""
        check = self._checker(predicate, timeout, what)
        while not (result := check()):
            await asyncio.sleep(interval)
        return result

    def _checker(
        self, predicate: Callable[[], T], timeout: float, what: str | None,
    ) -> Callable[[], T]:
        """A function that returns what `predicate()` returns, or raises AssertionError
        (listing the calls so far) when that is falsy and `timeout` seconds have passed."""
        deadline = time.monotonic() + timeout

        def check() -> T:
            result = predicate()
            if result or time.monotonic() <= deadline:
                return result
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"timed out after {timeout} s waiting for {name}\n"
                                 f"{self.summary()}")

        return check

    # --- faults ---

    def fail_next(
        self, method: str, *, retry_after: int | None = None, error_code: int | None = None,
        description: str | None = None, times: int = 1,
    ) -> None:
        """Make the next `times` calls to `method` fail.

        With no error_code (or 429): HTTP 429 "Too Many Requests: retry after N" with
        ``parameters.retry_after`` (N = retry_after, default 1), which PTB raises as RetryAfter.
        Otherwise: that status with `description`, e.g. error_code=400,
        description="Bad Request: chat not found" (PTB: BadRequest), 403 (Forbidden).
        """
        if error_code is None or error_code == 429:
            seconds = 1 if retry_after is None else retry_after
            error = ApiError(
                429, description or f"Too Many Requests: retry after {seconds}",
                {"retry_after": seconds},
            )
        else:
            parameters = {"retry_after": retry_after} if retry_after is not None else None
            error = ApiError(error_code, description or f"Error {error_code}", parameters)
        with self._lock:
            self._faults.setdefault(method.lower(), []).extend([error] * times)

    # --- files ---

    def register_file(
        self, data: bytes, *, kind: str = "document", file_name: str | None = None,
        mime_type: str | None = None,
    ) -> StoredFile:
        """Store bytes the way Telegram stores a file, so getFile and downloads serve them."""
        with self._lock:
            number = next(self._file_numbers)
            extension = _extension(file_name, mime_type, kind)
            stored = StoredFile(
                file_id=f"{kind[:3].upper()}Ag{number:08d}fake",
                file_unique_id=f"AQAD{number:06d}",
                file_path=f"{_MEDIA_FOLDERS.get(kind, 'documents')}/file_{number}{extension}",
                data=bytes(data), file_name=file_name, mime_type=mime_type,
            )
            self._files[stored.file_id] = stored
            self._paths[stored.file_path] = stored.file_id
            return stored

    def file_bytes(self, file_id: str) -> bytes:
        with self._lock:
            return self._files[file_id].data

    # --- updates ---

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates; assigns update_id if absent and returns it."""
        with self._lock:
            update = copy.deepcopy(update)
            self._assign_update_id(update)
            self._remember_incoming(update)
            self._updates.append(update)
            return update["update_id"]

    def webhook_update_json(self, update: dict[str, Any]) -> str:
        """The body Telegram would POST to a webhook for this update (update_id assigned)."""
        with self._lock:
            update = copy.deepcopy(update)
            self._assign_update_id(update)
            self._remember_incoming(update)
            return json.dumps(update)

    def deliver_webhook(self, update: dict[str, Any], *, timeout: float = 10.0) -> int:
        """POST an update to the webhook set with setWebhook (with its secret token header),
        as Telegram does; returns the HTTP status the bot answered."""
        import httpx  # PTB's HTTP client

        with self._lock:
            if not self.webhook or not self.webhook.get("url"):
                raise AssertionError(f"no webhook is set.\n{self.summary()}")
            url, secret = self.webhook["url"], self.webhook.get("secret_token")
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        body = self.webhook_update_json(update)
        return httpx.post(url, content=body, headers=headers, timeout=timeout).status_code

    def _assign_update_id(self, update: dict[str, Any]) -> None:
        if "update_id" not in update:
            update["update_id"] = next(self._update_ids)
        else:
            used = update["update_id"]
            self._update_ids = itertools.count(max(used + 1, next(self._update_ids)))

    def _remember_incoming(self, update: dict[str, Any]) -> None:
        for kind in ("message", "edited_message", "channel_post", "edited_channel_post"):
            message = update.get(kind)
            if isinstance(message, dict) and "chat" in message and "message_id" in message:
                chat = message["chat"]
                self._chats.setdefault(chat["id"], copy.deepcopy(chat))
                stored = copy.deepcopy(message)
                self._messages[(chat["id"], message["message_id"])] = stored
                used = self._next_message_id.get(chat["id"], 1)
                self._next_message_id[chat["id"]] = max(used, message["message_id"] + 1)
        query = update.get("callback_query")
        if isinstance(query, dict) and "id" in query:
            self._callback_ids.add(str(query["id"]))

    # --- update builders (they return Update dicts; push them with push_update) ---

    def text_message(
        self, chat_id: int, text: str, *, user_id: int | None = None,
        first_name: str = "Teacher", last_name: str | None = None, username: str | None = None,
        language_code: str | None = "en", message_thread_id: int | None = None,
        reply_to_message_id: int | None = None, chat_type: str | None = None,
        chat_title: str | None = None, is_topic_message: bool | None = None,
        entities: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An Update with a text message from a user. A leading "/command" gets its bot_command
        entity, as Telegram adds it (PTB's CommandHandler needs it)."""
        message = self._incoming_message(
            chat_id, user_id=user_id, first_name=first_name, last_name=last_name,
            username=username, language_code=language_code,
            message_thread_id=message_thread_id, reply_to_message_id=reply_to_message_id,
            chat_type=chat_type, chat_title=chat_title, is_topic_message=is_topic_message,
        )
        message["text"] = text
        if entities is None and text.startswith("/"):
            command = text.split(maxsplit=1)[0] if text.strip() else text
            entities = [{"type": "bot_command", "offset": 0, "length": _utf16_len(command)}]
        if entities:
            message["entities"] = entities
        return {"message": message}

    def photo_message(
        self, chat_id: int, image_bytes: bytes, caption: str | None = None, *,
        width: int | None = None, height: int | None = None, **sender: Any,
    ) -> dict[str, Any]:
        """An Update with a photo from a user, in several sizes; the largest serves exactly
        `image_bytes` through getFile and the file endpoint. `sender` takes text_message's
        keyword arguments (user_id, chat_type, message_thread_id, ...)."""
        message = self._incoming_message(chat_id, **sender)
        message["photo"] = self._photo_sizes(image_bytes, width, height)
        if caption is not None:
            message["caption"] = caption
        return {"message": message}

    def document_message(
        self, chat_id: int, data: bytes, file_name: str, mime_type: str,
        caption: str | None = None, **sender: Any,
    ) -> dict[str, Any]:
        """An Update with a document from a user; its file is registered for download."""
        message = self._incoming_message(chat_id, **sender)
        stored = self.register_file(data, kind="document", file_name=file_name,
                                    mime_type=mime_type)
        message["document"] = {
            "file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
            "file_name": file_name, "mime_type": mime_type, "file_size": len(data),
        }
        if caption is not None:
            message["caption"] = caption
        return {"message": message}

    def callback_query(
        self, chat_id: int, message_id: int, data: str, *, user_id: int | None = None,
        first_name: str = "Teacher", username: str | None = None,
        language_code: str | None = "en",
    ) -> dict[str, Any]:
        """An Update for a press on an inline button of message (chat_id, message_id), which
        carries that message as it stands now (or an inaccessible stub if it is unknown)."""
        with self._lock:
            chat = self._chat(chat_id)
            user = _user(self._default_user_id(chat, user_id), first_name, None, username,
                         language_code)
            query_id = str(4_000_000_000_000 + next(self._callback_numbers))
            self._callback_ids.add(query_id)
            current = self._messages.get((chat_id, message_id))
            message = (
                copy.deepcopy(current) if current is not None
                else {"chat": chat, "message_id": message_id, "date": 0}
            )
        return {"callback_query": {
            "id": query_id, "from": user, "message": message,
            "chat_instance": str(abs(chat_id) * 7919 + 1), "data": data,
        }}

    def _incoming_message(
        self, chat_id: int, *, user_id: int | None = None, first_name: str = "Teacher",
        last_name: str | None = None, username: str | None = None,
        language_code: str | None = "en", message_thread_id: int | None = None,
        reply_to_message_id: int | None = None, chat_type: str | None = None,
        chat_title: str | None = None, is_topic_message: bool | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            chat = self._chat(chat_id, chat_type=chat_type, title=chat_title,
                              first_name=first_name, forum=message_thread_id is not None)
            user = _user(self._default_user_id(chat, user_id), first_name, last_name, username,
                         language_code)
            topic = message_thread_id is not None and (
                chat.get("is_forum") if is_topic_message is None else is_topic_message)
            root = self._topic_root(chat, message_thread_id, user) if topic else None
            message: dict[str, Any] = {
                "message_id": self._allocate_message_id(chat_id), "from": user,
                "chat": copy.deepcopy(chat), "date": int(time.time()),
            }
            if message_thread_id is not None:
                message["message_thread_id"] = message_thread_id
            if topic:
                message["is_topic_message"] = True
            if reply_to_message_id is not None:
                message["reply_to_message"] = self._reply_copy(chat_id, reply_to_message_id)
            elif root is not None:
                message["reply_to_message"] = root
            return message

    def _topic_root(
        self, chat: dict[str, Any], thread_id: int, user: dict[str, Any]
    ) -> dict[str, Any]:
        """The service message that created forum topic `thread_id` (its id is the thread's),
        created on first use; in a topic, a message that replies to nothing replies to it."""
        key = (chat["id"], thread_id)
        if key not in self._messages:
            self._messages[key] = {
                "message_id": thread_id, "from": copy.deepcopy(user),
                "chat": copy.deepcopy(chat), "date": int(time.time()) - 3600,
                "message_thread_id": thread_id,
                "forum_topic_created": {"name": "Lessons", "icon_color": 7322096},
                "is_topic_message": True,
            }
            used = self._next_message_id.get(chat["id"], 1)
            self._next_message_id[chat["id"]] = max(used, thread_id + 1)
        return self._reply_copy(chat["id"], thread_id)

    def _default_user_id(self, chat: dict[str, Any], user_id: int | None) -> int:
        if user_id is not None:
            return user_id
        return chat["id"] if chat["type"] == "private" else 4242

    def _chat(
        self, chat_id: int, *, chat_type: str | None = None, title: str | None = None,
        first_name: str = "Teacher", forum: bool = False,
    ) -> dict[str, Any]:
        """The chat with this id, created on first use (positive ids are private chats)."""
        with self._lock:
            chat = self._chats.get(chat_id)
            if chat is None or (chat_type is not None and chat["type"] != chat_type):
                kind = chat_type or ("private" if chat_id > 0 else "supergroup")
                chat = {"id": chat_id, "type": kind}
                if kind == "private":
                    chat["first_name"] = first_name
                else:
                    chat["title"] = title or "Lesson planning"
                self._chats[chat_id] = chat
            if forum and chat["type"] == "supergroup":
                chat["is_forum"] = True
            return chat

    def _allocate_message_id(self, chat_id: int) -> int:
        with self._lock:
            number = self._next_message_id.get(chat_id, 1)
            self._next_message_id[chat_id] = number + 1
            return number

    def _reply_copy(self, chat_id: int, message_id: int) -> dict[str, Any]:
        target = self._messages.get((chat_id, message_id))
        if target is None:
            return {"message_id": message_id, "chat": self._chat(chat_id), "date": 0}
        reply = copy.deepcopy(target)
        reply.pop("reply_to_message", None)  # Telegram does not nest replies
        return reply

    def _photo_sizes(
        self, data: bytes, width: int | None, height: int | None
    ) -> list[dict[str, Any]]:
        image = _open_image(data)
        if image is not None:
            width, height = width or image.width, height or image.height
        width, height = width or 1280, height or 720
        sizes = []
        for box in (90, 320, 800):
            if box >= max(width, height) and sizes:
                break
            scale = min(1.0, box / max(width, height))
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            sizes.append((w, h, _thumbnail(image, w, h) if image is not None else data))
        sizes.append((width, height, data))
        result = []
        for w, h, blob in sizes:
            stored = self.register_file(blob, kind="photo", mime_type="image/jpeg")
            result.append({
                "file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                "file_size": len(blob), "width": w, "height": h,
            })
        return result

    # --- the HTTP side ---

    async def _api(self, request: Request) -> Response:
        token = request.path_params["token"]
        name = request.path_params["method"]
        canonical, handler = self._handlers.get(name.lower(), (name, None))
        params: dict[str, Any] = {}
        uploads: dict[str, Upload] = {}
        try:
            params, uploads = await _read_params(request)
            if self.token is not None and token != self.token:
                raise ApiError(401, "Unauthorized")
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            with self._lock:
                faults = self._faults.get(canonical.lower())
                if faults:
                    raise faults.pop(0)
            if canonical == "getUpdates":
                result = await self._get_updates(params)
            else:
                with self._lock:
                    result = handler(params, uploads)
            status, answer = 200, {"ok": True, "result": result}
        except ApiError as error:
            status, answer = error.code, error.body()
        except Exception as exc:  # a bug in the fake: answer it rather than drop the call
            status = 500
            answer = {"ok": False, "error_code": 500,
                      "description": f"Internal Server Error: the fake failed: {exc!r}"}
        with self._lock:
            self._calls.append(Call(
                method=canonical, params=params,
                files={name: upload.data for name, upload in uploads.items()},
                uploads=uploads, status=status, answer=answer, token=token,
            ))
        return JSONResponse(answer, status_code=status)

    async def _download(self, request: Request) -> Response:
        token = request.path_params["token"]
        file_path = request.path_params["file_path"]
        with self._lock:
            file_id = self._paths.get(file_path)
            stored = self._files.get(file_id) if file_id else None
        if stored is None or (self.token is not None and token != self.token):
            return JSONResponse(
                {"ok": False, "error_code": 404, "description": "Not Found"}, status_code=404
            )
        return Response(stored.data, media_type=stored.mime_type or "application/octet-stream")

    def _method_table(self) -> dict[str, tuple[str, Callable[..., Any]]]:
        handlers: dict[str, Callable[..., Any]] = {
            "getMe": lambda params, uploads: copy.deepcopy(GET_ME),
            "getUpdates": lambda params, uploads: None,  # served by _get_updates
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "editMessageMedia": self._edit_message_media,
            "deleteMessage": self._delete_message,
            "answerCallbackQuery": self._answer_callback_query,
            "sendChatAction": self._send_chat_action,
            "sendVideo": lambda params, uploads: self._send_media("video", params, uploads),
            "sendPhoto": lambda params, uploads: self._send_media("photo", params, uploads),
            "sendDocument": lambda params, uploads: self._send_media("document", params, uploads),
            "getFile": self._get_file,
        }
        for name in ("setMyDescription", "setMyShortDescription", "setMyName",
                     "setChatMenuButton", "logOut", "close"):
            handlers[name] = lambda params, uploads: True
        return {name.lower(): (name, handler) for name, handler in handlers.items()}

    # --- methods ---

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = params.get("offset")
        limit = max(1, min(100, params.get("limit") or 100))
        wait = min(max(0, params.get("timeout") or 0), self.long_poll_cap)
        with self._lock:
            if self.webhook and self.webhook.get("url"):
                raise ApiError(409, "Conflict: can't use getUpdates method while webhook is "
                                    "active; use deleteWebhook to delete the webhook first")
            if "allowed_updates" in params:
                self._allowed_updates = params["allowed_updates"] or None
            self._poll_generation += 1
            generation = self._poll_generation
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                if self._poll_generation != generation:
                    raise ApiError(409, "Conflict: terminated by other getUpdates request; make "
                                        "sure that only one bot instance is running")
                ready = self._take_updates(offset, limit)
            if ready or time.monotonic() >= deadline or self._stopping.is_set():
                return ready
            await asyncio.sleep(0.01)

    def _take_updates(self, offset: int | None, limit: int) -> list[dict[str, Any]]:
        if offset is not None and offset < 0:
            self._updates = self._updates[offset:]
        elif offset is not None:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if self._allowed_updates:
            allowed = set(self._allowed_updates)
            self._updates = [
                u for u in self._updates if any(kind in u for kind in allowed)
                or not any(kind in u for kind in _UPDATE_KINDS)
            ]
        return copy.deepcopy(self._updates[:limit])

    def _set_webhook(self, params: dict[str, Any], uploads: dict[str, Upload]) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        if "allowed_updates" in params:
            self._allowed_updates = params["allowed_updates"] or None
        url = params.get("url") or ""
        self.webhook = {**params, "url": url} if url else None
        return True

    def _delete_webhook(self, params: dict[str, Any], uploads: dict[str, Upload]) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self.webhook = None
        return True

    def _get_webhook_info(self, params: dict[str, Any], uploads: dict[str, Upload]) -> dict:
        info: dict[str, Any] = {
            "url": (self.webhook or {}).get("url", ""), "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook and self.webhook.get("allowed_updates"):
            info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    def _set_my_commands(self, params: dict[str, Any], uploads: dict[str, Upload]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise bad_request("commands must be a JSON array")
        for command in commands:
            if not _COMMAND_NAME.fullmatch(str(command.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        key = _commands_key(params.get("scope"), params.get("language_code"))
        self._commands[key] = copy.deepcopy(commands)
        return True

    def _get_my_commands(self, params: dict[str, Any], uploads: dict[str, Upload]) -> list:
        key = _commands_key(params.get("scope"), params.get("language_code"))
        return copy.deepcopy(self._commands.get(key, []))

    def _delete_my_commands(self, params: dict[str, Any], uploads: dict[str, Upload]) -> bool:
        self._commands.pop(_commands_key(params.get("scope"), params.get("language_code")), None)
        return True

    def _send_message(self, params: dict[str, Any], uploads: dict[str, Upload]) -> dict:
        text = params.get("text")
        if not text or not str(text).strip():
            raise bad_request("message text is empty")
        shown = plain_text(str(text), params.get("parse_mode"))
        if not shown.strip():
            raise bad_request("message text is empty")
        if len(shown) > MAX_TEXT:
            raise bad_request("message is too long")
        return self._new_bot_message(params, {"text": shown})

    def _send_media(self, kind: str, params: dict[str, Any], uploads: dict[str, Upload]) -> dict:
        caption = self._caption(params)
        data, filename, mime_type = self._media_input(kind, params, uploads)
        if kind == "photo":
            if _open_image(data) is None:
                raise bad_request("IMAGE_PROCESS_FAILED")
            sizes = self._photo_sizes(data, None, None)
            media: Any = sizes
            file_id = sizes[-1]["file_id"]
        else:
            stored = self.register_file(data, kind=kind, file_name=filename, mime_type=mime_type)
            file_id = stored.file_id
            media = {
                "file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                "file_size": len(data), "mime_type": mime_type,
            }
            if filename:
                media["file_name"] = filename
            if kind == "video":
                media.update({
                    "width": params.get("width") or 0, "height": params.get("height") or 0,
                    "duration": params.get("duration") or 0,
                })
        extra: dict[str, Any] = {kind: media}
        if caption is not None:
            extra["caption"] = caption
        message = self._new_bot_message(params, extra)
        markup = params.get("reply_markup")
        self._sent_files.append(SentFile(
            kind=kind, chat_id=message["chat"]["id"], message_id=message["message_id"],
            data=data, filename=filename, mime_type=mime_type, caption=caption,
            message_thread_id=params.get("message_thread_id"),
            reply_markup=markup if isinstance(markup, dict) else None, file_id=file_id,
            params=copy.deepcopy(params),
        ))
        return message

    def _media_input(
        self, kind: str, params: dict[str, Any], uploads: dict[str, Upload]
    ) -> tuple[bytes, str | None, str]:
        value = params.get(kind)
        upload = uploads.get(kind)
        if upload is None and isinstance(value, str) and value.startswith("attach://"):
            upload = uploads.get(value.removeprefix("attach://"))
            if upload is None:
                raise bad_request("wrong file identifier/HTTP URL specified")
        if upload is not None:
            if not upload.data:
                raise bad_request("file must be non-empty")
            if len(upload.data) > MAX_UPLOAD_BYTES:
                raise ApiError(413, "Request Entity Too Large")
            mime = upload.content_type
            if not mime or mime == "application/octet-stream":
                mime = _guess_mime(upload.filename) or _DEFAULT_MIME[kind]
            return upload.data, upload.filename, mime
        if isinstance(value, str) and value in self._files:
            stored = self._files[value]
            return stored.data, stored.file_name, stored.mime_type or _DEFAULT_MIME[kind]
        if isinstance(value, str) and re.match(r"https?://", value):
            raise bad_request("failed to get HTTP URL content")
        if value is None:
            raise bad_request(f"there is no {kind} in the request")
        raise bad_request("wrong file identifier/HTTP URL specified")

    def _caption(self, params: dict[str, Any]) -> str | None:
        caption = params.get("caption")
        if caption is None:
            return None
        shown = plain_text(str(caption), params.get("parse_mode"))
        if len(shown) > MAX_CAPTION:
            raise bad_request("message caption is too long")
        return shown

    def _new_bot_message(self, params: dict[str, Any], content: dict[str, Any]) -> dict:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise bad_request("chat_id is empty")
        if not isinstance(chat_id, int):
            raise bad_request("chat not found")
        chat = self._chat(chat_id)
        reply_to, allow_missing = _reply_target(params)
        if reply_to is not None and (chat_id, reply_to) not in self._messages \
                and not allow_missing:
            raise bad_request("message to be replied not found")
        markup = _inline_markup(params.get("reply_markup"))
        thread = params.get("message_thread_id")
        topic = thread is not None and bool(chat.get("is_forum"))
        root = (self._topic_root(chat, thread, _user(4242, "Teacher", None, None, None))
                if topic else None)
        message: dict[str, Any] = {
            "message_id": self._allocate_message_id(chat_id), "from": copy.deepcopy(BOT_USER),
            "chat": copy.deepcopy(chat), "date": int(time.time()),
        }
        if thread is not None:
            message["message_thread_id"] = thread
        if topic:
            message["is_topic_message"] = True
        if reply_to is not None and (chat_id, reply_to) in self._messages:
            message["reply_to_message"] = self._reply_copy(chat_id, reply_to)
        elif root is not None:
            message["reply_to_message"] = root
        message.update(content)
        if markup is not None:
            message["reply_markup"] = markup
        self._messages[(chat_id, message["message_id"])] = message
        return copy.deepcopy(message)

    def _editable(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("inline_message_id"):
            raise bad_request("inline messages are not supported by the fake")
        chat_id, message_id = params.get("chat_id"), params.get("message_id")
        if chat_id is None:
            raise bad_request("chat_id is empty")
        if message_id is None:
            raise bad_request("message identifier is not specified")
        message = self._messages.get((chat_id, message_id))
        if message is None:
            raise bad_request("message to edit not found")
        if message.get("from", {}).get("id") != BOT_ID:
            raise bad_request("message can't be edited")
        return message

    def _apply_edit(
        self, message: dict[str, Any], field_name: str | None, value: str | None,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        # As on Telegram, an edit without reply_markup removes the inline keyboard.
        markup = _inline_markup(params.get("reply_markup"))
        same_content = field_name is None or message.get(field_name) == value
        if same_content and message.get("reply_markup") == markup:
            raise ApiError(400, NOT_MODIFIED)
        if field_name is not None:
            message[field_name] = value
        if markup is None:
            message.pop("reply_markup", None)
        else:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    def _edit_message_text(self, params: dict[str, Any], uploads: dict[str, Upload]) -> dict:
        message = self._editable(params)
        if "text" not in message:
            raise bad_request("there is no text in the message to edit")
        text = params.get("text")
        if not text or not str(text).strip():
            raise bad_request("message text is empty")
        shown = plain_text(str(text), params.get("parse_mode"))
        if len(shown) > MAX_TEXT:
            raise bad_request("MESSAGE_TOO_LONG")
        return self._apply_edit(message, "text", shown, params)

    def _edit_message_caption(self, params: dict[str, Any], uploads: dict[str, Upload]) -> dict:
        message = self._editable(params)
        if "text" in message:
            raise bad_request("there is no caption in the message to edit")
        return self._apply_edit(message, "caption", self._caption(params), params)

    def _edit_message_reply_markup(
        self, params: dict[str, Any], uploads: dict[str, Upload]
    ) -> dict:
        return self._apply_edit(self._editable(params), None, None, params)

    def _edit_message_media(self, params: dict[str, Any], uploads: dict[str, Upload]) -> dict:
        """Photos only (what the bot replaces): the new photo's sizes and caption. The new
        bytes are kept in `edited_media`."""
        message = self._editable(params)
        if "text" in message:
            raise bad_request("there is no media in the message to edit")
        media = params.get("media")
        if not isinstance(media, dict) or media.get("type") != "photo":
            raise bad_request("can't parse InputMedia: photo expected by the fake")
        data, _name, _mime = self._media_input("photo", {"photo": media.get("media")}, uploads)
        if _open_image(data) is None:
            raise bad_request("IMAGE_PROCESS_FAILED")
        message["photo"] = self._photo_sizes(data, None, None)
        caption = self._caption(media)
        if caption is None:
            message.pop("caption", None)
        else:
            message["caption"] = caption
        message["edit_date"] = int(time.time())
        self._edited_media.append((params.get("chat_id"), params.get("message_id"), data))
        return copy.deepcopy(message)

    def _delete_message(self, params: dict[str, Any], uploads: dict[str, Upload]) -> bool:
        key = (params.get("chat_id"), params.get("message_id"))
        if key not in self._messages:
            raise bad_request("message to delete not found")
        del self._messages[key]
        return True

    def _answer_callback_query(self, params: dict[str, Any], uploads: dict[str, Upload]) -> bool:
        if str(params.get("callback_query_id")) not in self._callback_ids:
            raise ApiError(400, QUERY_INVALID)
        self.callback_answers.append(copy.deepcopy(params))
        return True

    def _send_chat_action(self, params: dict[str, Any], uploads: dict[str, Upload]) -> bool:
        if params.get("chat_id") is None:
            raise bad_request("chat_id is empty")
        if params.get("action") not in _CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        self.chat_actions.append(copy.deepcopy(params))
        return True

    def _get_file(self, params: dict[str, Any], uploads: dict[str, Upload]) -> dict:
        stored = self._files.get(str(params.get("file_id")))
        if stored is None:
            raise bad_request("invalid file_id")
        if len(stored.data) > MAX_DOWNLOAD_BYTES:
            raise bad_request("file is too big")
        return {
            "file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data), "file_path": stored.file_path,
        }


# --- helpers ------------------------------------------------------------------------------


async def _read_params(request: Request) -> tuple[dict[str, Any], dict[str, Upload]]:
    raw: dict[str, Any] = dict(request.query_params)
    uploads: dict[str, Upload] = {}
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if body and media_type == "application/json":
        try:
            decoded = json.loads(body)
        except ValueError as exc:
            raise bad_request("can't parse JSON object") from exc
        if not isinstance(decoded, dict):
            raise bad_request("parameters must be a JSON object")
        raw.update(decoded)
    elif body and media_type == "multipart/form-data":
        fields, uploads = parse_multipart(body, content_type)
        raw.update(fields)
    elif body:
        raw.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    return decode_params(raw), uploads


def _reply_target(params: dict[str, Any]) -> tuple[int | None, bool]:
    allow_missing = bool(params.get("allow_sending_without_reply"))
    reply = params.get("reply_parameters")
    if isinstance(reply, dict) and reply.get("message_id") is not None:
        allow_missing = allow_missing or bool(reply.get("allow_sending_without_reply"))
        return int(reply["message_id"]), allow_missing
    if params.get("reply_to_message_id") is not None:
        return params["reply_to_message_id"], allow_missing
    return None, allow_missing


def _inline_markup(markup: Any) -> dict[str, Any] | None:
    """The reply_markup a Message carries: only an inline keyboard, validated like Telegram."""
    if not isinstance(markup, dict) or "inline_keyboard" not in markup:
        return None
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise bad_request("can't parse inline keyboard button: InlineKeyboardButton must be an "
                          "Object")
    for row in rows:
        for button in row:
            if not button.get("text"):
                raise bad_request("can't parse inline keyboard button: Text must be non-empty")
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode("utf-8")) <= \
                    MAX_CALLBACK_DATA_BYTES:
                raise bad_request("BUTTON_DATA_INVALID")
    if not any(rows):
        return None  # an empty keyboard removes the keyboard
    return copy.deepcopy(markup)


def _commands_key(scope: Any, language_code: Any) -> tuple[str, str]:
    scope = scope or {"type": "default"}
    return json.dumps(scope, sort_keys=True), str(language_code or "")


def _user(
    user_id: int, first_name: str, last_name: str | None, username: str | None,
    language_code: str | None,
) -> dict[str, Any]:
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
    if last_name:
        user["last_name"] = last_name
    if username:
        user["username"] = username
    if language_code:
        user["language_code"] = language_code
    return user


def _open_image(data: bytes) -> Any:
    try:
        from PIL import Image

        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception:  # not an image Pillow can read
        return None


def _thumbnail(image: Any, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").resize((width, height)).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _guess_mime(filename: str | None) -> str | None:
    import mimetypes

    return mimetypes.guess_type(filename or "", strict=False)[0] if filename else None


def _extension(file_name: str | None, mime_type: str | None, kind: str) -> str:
    import mimetypes

    if file_name and "." in file_name:
        return "." + file_name.rsplit(".", 1)[1]
    guessed = mimetypes.guess_extension(mime_type or _DEFAULT_MIME.get(kind, "")) or ""
    return ".jpg" if guessed in (".jpe", ".jpeg") else guessed


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = repr(text) if isinstance(value, str) else text
    return text if len(text) <= width else text[: width - 3] + "..."


def updates_of(calls: Iterable[Call]) -> list[dict[str, Any]]:
    """Every update the fake handed out in these getUpdates calls."""
    return [u for call in calls if call.method == "getUpdates" and call.ok
            for u in call.answer.get("result", [])]
