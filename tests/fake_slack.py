"""A local stand-in for the Slack Web API, and helpers that post to a Bolt app like Slack does.

``FakeSlack`` serves the Web API methods the bot uses from a Starlette app under uvicorn, in a
background thread on 127.0.0.1. Point the real clients at it::

    with FakeSlack() as slack:
        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        client.chat_postMessage(channel="C1", text="hi")
        assert slack.messages_in("C1")[0]["text"] == "hi"

Every call is recorded (``slack.calls``) with its arguments parsed the same whichever way
slack_sdk sent them: a JSON body (chat.*, views.*), a form body (the sync client's
``params=`` methods), or a query string (the async client sends ``params=`` as one). JSON
fields that travel as strings in a form (``blocks``, ``attachments``, ``view``, ``files``...)
are decoded. The state a user would see is kept too: ``messages`` (after updates and deletes),
``ephemerals``, ``views``, ``reactions`` and ``uploads`` (with the exact bytes).

The other half (``signed_post``, ``event_callback``, ``block_actions_payload``,
``slash_command_form``, ``view_submission_payload``) drives a Bolt HTTP endpoint with requests
shaped and signed as Slack sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.local_server import LocalServer, LocalService

TEAM_ID = "T1"
TEAM_NAME = "School"
TEAM_DOMAIN = "school"
BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
APP_ID = "A1"
VERIFICATION_TOKEN = "verification-token"  # the deprecated `token` field Slack still sends

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

UPLOAD = "upload"  # the method name recorded for a POST to an upload URL
RESPONSE_URL = "response_url"  # ... and for a POST to a response_url

# Fields that slack_sdk (or a form-encoding caller) sends as JSON text inside a form.
_JSON_FIELDS = frozenset({
    "blocks", "attachments", "view", "files", "metadata", "user_auth_blocks", "unfurls",
    "chunks",
})
_FIRST_TS_MICROS = 1_700_000_000_000_100  # "1700000000.000100"
_TS_STEP_MICROS = 100


@dataclass(frozen=True)
class Call:
    """One request the fake received. ``status`` and ``response`` are what it answered."""

    method: str
    args: dict[str, Any]
    token: str | None
    status: int = 200
    response: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool((self.response or {}).get("ok", True))

    def summary(self) -> str:
        outcome = "ok" if self.ok else (
            f"HTTP {self.status}" if self.status != 200 else "error"
        )
        error = (self.response or {}).get("error")
        if error:
            outcome += f" {error}"
        args = _short(self.args, 240)
        return f"{self.method} {args} -> {outcome}"


@dataclass(frozen=True)
class _Fault:
    error: str
    status: int
    retry_after: int | None


# The server FakeSlack runs on, also handy for the app under test (e.g. a Bolt app behind
# ``slack_bolt.adapter.starlette.SlackRequestHandler``): ``BackgroundServer(app)``.
BackgroundServer = LocalServer


class FakeSlack(LocalService):
    """The Slack Web API, in memory, on ``base_url``. Start it with ``with`` or ``start()``.

    ``tokens``: when given, only these tokens are accepted (others get ``invalid_auth``);
    by default any token is, and a call without one gets ``not_authed`` as on Slack.
    """

    def __init__(self, *, tokens: set[str] | None = None) -> None:
        self.tokens = tokens
        self._lock = threading.RLock()
        self._calls: list[Call] = []
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._views: dict[str, dict[str, Any]] = {}
        self._reactions: list[dict[str, Any]] = []
        self._pending_files: dict[str, dict[str, Any]] = {}
        self._uploads: list[dict[str, Any]] = []  # without the deleted ones
        self._deleted_files: list[str] = []
        self._users: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._faults: dict[str, deque[_Fault]] = {}
        self._ts_counter = itertools.count()
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[
            Route("/api/{method}", self._api, methods=["GET", "POST"]),
            Route("/upload/v1/{file_id}", self._upload, methods=["POST"]),
            Route("/response/{response_id}", self._response_url, methods=["POST"]),
        ])
        self._server = LocalServer(self.app, name="fake-slack")

    # ----------------------------------------------------------------- lifecycle

    @property
    def root_url(self) -> str:
        return self._server.url

    @property
    def base_url(self) -> str:
        """What to pass as ``WebClient(base_url=...)``. The trailing slash matters: slack_sdk
        joins with ``urljoin``, which would drop a last path segment without one."""
        return f"{self.root_url}/api/"

    # ----------------------------------------------------------------- state for tests

    @property
    def calls(self) -> list[Call]:
        """A snapshot of every call so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [call for call in self._calls if call.method == method]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    @property
    def messages(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(channel, ts) -> the message as it stands now (updated, not yet deleted)."""
        with self._lock:
            return {key: _copy(message) for key, message in self._messages.items()}

    def messages_in(self, channel: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """The channel's messages oldest first; with ``thread_ts``, only that thread's replies."""
        with self._lock:
            found = [
                _copy(message) for (chan, _), message in self._messages.items()
                if chan == channel and (thread_ts is None or message.get("thread_ts") == thread_ts)
            ]
        return sorted(found, key=lambda message: _ts_key(message["ts"]))

    @property
    def ephemerals(self) -> list[dict[str, Any]]:
        with self._lock:
            return _copy(self._ephemerals)

    @property
    def views(self) -> dict[str, dict[str, Any]]:
        """view id -> the view as last opened or updated."""
        with self._lock:
            return _copy(self._views)

    @property
    def reactions(self) -> list[dict[str, Any]]:
        """Every reaction added: dicts of channel, timestamp, name."""
        with self._lock:
            return _copy(self._reactions)

    @property
    def deleted_files(self) -> list[str]:
        with self._lock:
            return list(self._deleted_files)

    @property
    def uploads(self) -> list[dict[str, Any]]:
        """Completed uploads: file_id, filename, title, bytes, channel_id, thread_ts,
        initial_comment."""
        with self._lock:
            return _copy(self._uploads)

    def add_user(
        self, user_id: str, *, name: str | None = None, real_name: str | None = None,
        locale: str | None = None, tz: str = "America/New_York", tz_offset: int = -18000,
        is_bot: bool = False, **extra: Any,
    ) -> dict[str, Any]:
        """Define what users.info answers for this user. Unknown users get a default one
        (without a locale)."""
        user = _user(user_id, name=name, real_name=real_name, tz=tz, tz_offset=tz_offset,
                     is_bot=is_bot)
        if locale is not None:
            user["locale"] = locale
        user.update(extra)
        with self._lock:
            self._users[user_id] = user
        return user

    def add_channel(
        self, channel_id: str, *, name: str | None = None, is_private: bool = False,
        locale: str | None = None, **extra: Any,
    ) -> dict[str, Any]:
        """Define what conversations.info answers for this channel (a "D..." id is a DM)."""
        channel = _channel(channel_id, name=name, is_private=is_private)
        if locale is not None:
            channel["locale"] = locale
        channel.update(extra)
        with self._lock:
            self._channels[channel_id] = channel
        return channel

    def next_ts(self) -> str:
        """A fresh message ts, later than every ts handed out so far (use it for the ts of a
        user's message in an event, so that the bot's replies sort after it)."""
        micros = _FIRST_TS_MICROS + next(self._ts_counter) * _TS_STEP_MICROS
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def new_response_url(self) -> str:
        """A response_url for a command or action payload; posts to it are recorded as calls
        to ``RESPONSE_URL``."""
        return f"{self.root_url}/response/R{next(self._ids):06d}"

    def fail_next(
        self, method: str, error: str = "ratelimited", status: int = 429,
        retry_after: int | None = 1,
    ) -> None:
        """Make the next call to ``method`` fail. With status 429 it answers as Slack rate-limits
        (HTTP 429, ``Retry-After``); with status 200 as an API error ({"ok": false, "error"}).
        Calls stack: two fail_next make the next two calls fail."""
        with self._lock:
            self._faults.setdefault(method, deque()).append(_Fault(error, status, retry_after))

    def wait_for(
        self, predicate: Callable[[FakeSlack], Any], timeout: float = 10,
        message: str = "",
    ) -> Any:
        """Poll until ``predicate(self)`` is truthy and return its value; on timeout raise an
        AssertionError listing the calls so far. A KeyError or IndexError in the predicate
        (``s.messages[(channel, ts)]`` before it exists) counts as not yet."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate(self)
            except (KeyError, IndexError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"FakeSlack.wait_for timed out after {timeout}s"
                    + (f": {message}" if message else "") + "\n" + self.describe_calls()
                )
            time.sleep(0.02)

    def describe_calls(self) -> str:
        calls = self.calls
        if not calls:
            return "  (no calls to the fake Slack)"
        return "\n".join(f"  {i}. {call.summary()}" for i, call in enumerate(calls, 1))

    # ----------------------------------------------------------------- HTTP side

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(method)
            return queue.popleft() if queue else None

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def _fault_response(self, method: str, args: dict, token: str | None) -> Response | None:
        fault = self._take_fault(method)
        if fault is None:
            return None
        body = {"ok": False, "error": fault.error}
        headers = {}
        if fault.retry_after is not None and fault.status == 429:
            headers["Retry-After"] = str(fault.retry_after)
        self._record(Call(method, args, token, fault.status, body))
        return JSONResponse(body, status_code=fault.status, headers=headers)

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        try:
            args = await _request_args(request)
        except ValueError as error:
            body = {"ok": False, "error": "invalid_json", "detail": str(error)}
            self._record(Call(method, {}, _bearer(request), 200, body))
            return JSONResponse(body)
        token = _bearer(request) or _as_str(args.pop("token", None))
        failed = self._fault_response(method, args, token)
        if failed is not None:
            return failed
        if not token:
            body = {"ok": False, "error": "not_authed"}
        elif self.tokens is not None and token not in self.tokens:
            body = {"ok": False, "error": "invalid_auth"}
        else:
            handler = self._handlers().get(method)
            body = handler(args) if handler else {"ok": False, "error": "unknown_method"}
        self._record(Call(method, args, token, 200, body))
        return JSONResponse(body)

    async def _upload(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        raw = await request.body()
        content_type = request.headers.get("content-type", "")
        filename = None
        if content_type.lower().startswith("multipart/form-data"):
            parts = _parse_multipart(raw, content_type)
            chosen = next((p for p in parts if p["filename"] is not None), None)
            chosen = chosen or next((p for p in parts if p["name"] == "file"), None)
            raw = chosen["content"] if chosen else b""
            filename = chosen["filename"] if chosen else None
        args = {"file_id": file_id, "length": len(raw)}
        failed = self._fault_response(UPLOAD, args, None)
        if failed is not None:
            return failed
        with self._lock:
            pending = self._pending_files.get(file_id)
            if pending is not None:
                pending["bytes"] = raw
                if filename and not pending.get("filename"):
                    pending["filename"] = filename
        status = 200 if pending is not None else 404
        self._record(Call(UPLOAD, args, None, status, {"ok": status == 200}))
        if pending is None:
            return PlainTextResponse("file not found", status_code=404)
        return PlainTextResponse(f"OK - {len(raw)}")

    async def _response_url(self, request: Request) -> Response:
        try:
            args = await _request_args(request)
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        args["response_id"] = request.path_params["response_id"]
        self._record(Call(RESPONSE_URL, args, None, 200, {"ok": True}))
        return PlainTextResponse("ok")

    # ----------------------------------------------------------------- Web API methods

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.delete": self._chat_delete,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "reactions.add": self._reactions_add,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
            "files.delete": self._files_delete,
        }

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True, "url": f"https://{TEAM_DOMAIN}.slack.com/", "team": TEAM_NAME,
            "user": "lessonreel", "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = _as_str(args.get("channel"))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not any(args.get(key) for key in ("text", "blocks", "attachments", "markdown_text")):
            return {"ok": False, "error": "no_text"}
        with self._lock:
            if self._shows_missing_file(args.get("blocks")):
                return {"ok": False, "error": "invalid_blocks"}
            ts = self.next_ts()
            message = {
                "type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "app_id": APP_ID,
                "team": TEAM_ID, "ts": ts, "text": _as_str(args.get("text")) or "",
            }
            for key in ("blocks", "attachments", "thread_ts", "metadata", "reply_broadcast",
                        "markdown_text"):
                if args.get(key) is not None:
                    message[key] = args[key]
            self._messages[(channel, ts)] = message
            return {"ok": True, "channel": channel, "ts": ts, "message": _copy(message)}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = _as_str(args.get("channel")), _as_str(args.get("ts"))
        with self._lock:
            message = self._messages.get((channel or "", ts or ""))
            if message is None:
                return {"ok": False, "error": "message_not_found"}
            if self._shows_missing_file(args.get("blocks")):
                return {"ok": False, "error": "invalid_blocks"}
            # As on Slack: blocks and attachments that are not sent are kept; [] removes them.
            if "text" in args:
                message["text"] = _as_str(args["text"]) or ""
            for key in ("blocks", "attachments", "metadata", "markdown_text"):
                if key in args:
                    if args[key] in ([], "[]"):
                        message.pop(key, None)
                    else:
                        message[key] = args[key]
            message["edited"] = {"user": BOT_USER_ID, "ts": self.next_ts()}
            return {
                "ok": True, "channel": channel, "ts": ts, "text": message["text"],
                "message": _copy(message),
            }

    def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, user = _as_str(args.get("channel")), _as_str(args.get("user"))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not user:
            return {"ok": False, "error": "user_not_in_channel"}
        if not any(args.get(key) for key in ("text", "blocks", "attachments")):
            return {"ok": False, "error": "no_text"}
        with self._lock:
            ts = self.next_ts()
            ephemeral = {"channel": channel, "user": user, "ts": ts,
                         "text": _as_str(args.get("text")) or ""}
            for key in ("blocks", "attachments", "thread_ts"):
                if args.get(key) is not None:
                    ephemeral[key] = args[key]
            self._ephemerals.append(ephemeral)
        return {"ok": True, "message_ts": ts}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = _as_str(args.get("channel")) or "", _as_str(args.get("ts")) or ""
        with self._lock:
            if self._messages.pop((channel, ts), None) is None:
                return {"ok": False, "error": "message_not_found"}
        return {"ok": True, "channel": channel, "ts": ts}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if not isinstance(view, dict):
            return {"ok": False, "error": "invalid_arguments"}
        if not (args.get("trigger_id") or args.get("interactivity_pointer")):
            return {"ok": False, "error": "invalid_arguments"}
        with self._lock:
            view_id = f"V{next(self._ids):06d}"
            stored = _full_view(view, view_id, previous=None)
            self._views[view_id] = stored
            return {"ok": True, "view": _copy(stored)}

    def _views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if not isinstance(view, dict):
            return {"ok": False, "error": "invalid_arguments"}
        view_id, external_id = args.get("view_id"), args.get("external_id")
        with self._lock:
            if not view_id and external_id:
                view_id = next((vid for vid, v in self._views.items()
                                if v.get("external_id") == external_id), None)
            previous = self._views.get(view_id or "")
            if previous is None:
                return {"ok": False, "error": "not_found"}
            if args.get("hash") and args["hash"] != previous["hash"]:
                return {"ok": False, "error": "hash_conflict"}
            stored = _full_view(view, view_id, previous=previous)
            self._views[view_id] = stored
            return {"ok": True, "view": _copy(stored)}

    def _reactions_add(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = _as_str(args.get("channel")), _as_str(args.get("timestamp"))
        name = _as_str(args.get("name"))
        if not (channel and ts):
            return {"ok": False, "error": "message_not_found"}
        if not name:
            return {"ok": False, "error": "invalid_name"}
        reaction = {"channel": channel, "timestamp": ts, "name": name}
        with self._lock:
            if reaction in self._reactions:
                return {"ok": False, "error": "already_reacted"}
            self._reactions.append(reaction)
            message = self._messages.get((channel, ts))  # a user's message is not stored here
            if message is not None:
                message.setdefault("reactions", []).append(
                    {"name": name, "users": [BOT_USER_ID], "count": 1})
        return {"ok": True}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = _as_str(args.get("user"))
        if not user_id:
            return {"ok": False, "error": "user_not_found"}
        with self._lock:
            user = _copy(self._users.get(user_id)) or _user(user_id)
        if not _truthy(args.get("include_locale")):
            user.pop("locale", None)
        return {"ok": True, "user": user}

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        channel_id = _as_str(args.get("channel"))
        if not channel_id:
            return {"ok": False, "error": "channel_not_found"}
        with self._lock:
            channel = _copy(self._channels.get(channel_id)) or _channel(channel_id)
        if not _truthy(args.get("include_locale")):
            channel.pop("locale", None)
        return {"ok": True, "channel": channel}

    def _files_get_upload_url_external(self, args: dict[str, Any]) -> dict[str, Any]:
        filename = _as_str(args.get("filename"))
        try:
            length = int(args.get("length"))
        except (TypeError, ValueError):
            return {"ok": False, "error": "invalid_arguments"}
        if not filename:
            return {"ok": False, "error": "invalid_arguments"}
        with self._lock:
            file_id = f"F{next(self._ids):08d}"
            self._pending_files[file_id] = {
                "file_id": file_id, "filename": filename, "length": length, "bytes": None,
                "alt_txt": args.get("alt_txt"),
            }
        return {"ok": True, "upload_url": f"{self.root_url}/upload/v1/{file_id}",
                "file_id": file_id}

    def _files_complete_upload_external(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files")
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}
        channel_id = _as_str(args.get("channel_id"))
        channels = [c for c in (_as_str(args.get("channels")) or "").split(",") if c]
        if channel_id is None and len(channels) == 1:
            channel_id = channels[0]
        thread_ts = _as_str(args.get("thread_ts"))
        initial_comment = _as_str(args.get("initial_comment"))
        with self._lock:
            pending = [self._pending_files.get(_as_str(f.get("id")) or "") for f in files]
            if any(p is None or p["bytes"] is None for p in pending):
                return {"ok": False, "error": "file_not_found"}
            answered = []
            for spec, upload in zip(files, pending, strict=True):
                del self._pending_files[upload["file_id"]]
                title = _as_str(spec.get("title")) or upload["filename"]
                self._uploads.append({
                    "file_id": upload["file_id"], "filename": upload["filename"],
                    "title": title, "bytes": upload["bytes"], "channel_id": channel_id,
                    "channels": channels, "thread_ts": thread_ts,
                    "initial_comment": initial_comment,
                })
                answered.append({
                    "id": upload["file_id"], "name": upload["filename"], "title": title,
                    "size": len(upload["bytes"]), "user": BOT_USER_ID,
                    "permalink": f"https://{TEAM_DOMAIN}.slack.com/files/{BOT_USER_ID}/"
                                 f"{upload['file_id']}/{upload['filename']}",
                })
        return {"ok": True, "files": answered}

    def _shows_missing_file(self, blocks: Any) -> bool:
        """Whether an image block points at a file that was never uploaded or is deleted."""
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                return False
        known = {upload["file_id"] for upload in self._uploads}
        return any(isinstance(block, dict) and block.get("type") == "image"
                   and (block.get("slack_file") or {}).get("id") not in known | {None}
                   for block in blocks or [])

    def _files_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = _as_str(args.get("file"))
        with self._lock:
            kept = [u for u in self._uploads if u["file_id"] != file_id]
            if len(kept) == len(self._uploads):
                return {"ok": False, "error": "file_not_found"}
            self._uploads[:] = kept
            self._deleted_files.append(file_id)
        return {"ok": True}


# ----------------------------------------------------------------------- request parsing


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    if value.lower().startswith("bearer "):
        return value[7:].strip() or None
    return None


async def _request_args(request: Request) -> dict[str, Any]:
    """Query string + body (JSON, form or multipart), with JSON-in-form fields decoded."""
    args: dict[str, Any] = dict(request.query_params)
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if raw:
        if media_type == JSON:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as error:
                raise ValueError(f"body is not JSON: {error}") from None
            if not isinstance(body, dict):
                raise ValueError("JSON body is not an object")
            args.update(body)
        elif media_type == "multipart/form-data":
            for part in _parse_multipart(raw, content_type):
                if part["filename"] is not None:
                    args[part["name"]] = part["content"]
                else:
                    args[part["name"]] = part["content"].decode("utf-8", "replace")
        else:
            args.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    for key in _JSON_FIELDS & args.keys():
        value = args[key]
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            with contextlib.suppress(json.JSONDecodeError):
                args[key] = json.loads(value)
    return args


def _parse_multipart(raw: bytes, content_type: str) -> list[dict[str, Any]]:
    """Split a multipart/form-data body exactly (byte for byte) into its parts."""
    boundary = None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        return []
    delimiter = b"--" + boundary.encode("latin-1")
    parts = []
    for chunk in raw.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, _, content = chunk.partition(b"\r\n\r\n")
        name, filename = "", None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            header, _, value = line.partition(":")
            if header.strip().lower() != "content-disposition":
                continue
            for param in value.split(";")[1:]:
                key, _, val = param.strip().partition("=")
                val = val.strip().strip('"')
                if key.lower() == "name":
                    name = val
                elif key.lower() == "filename":
                    filename = val
        parts.append({"name": name, "filename": filename, "content": content})
    return parts


# ----------------------------------------------------------------------- small helpers


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true"))


def _copy(value: Any) -> Any:
    """A deep copy of JSON-like state (bytes kept as they are)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds), int(micros or 0)


def _short(value: Any, limit: int) -> str:
    def shrink(v: Any) -> Any:
        if isinstance(v, bytes):
            return f"<{len(v)} bytes>"
        if isinstance(v, dict):
            return {k: shrink(x) for k, x in v.items()}
        if isinstance(v, list):
            return [shrink(x) for x in v]
        return v

    text = repr(shrink(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _user(
    user_id: str, *, name: str | None = None, real_name: str | None = None,
    tz: str = "America/New_York", tz_offset: int = -18000, is_bot: bool = False,
) -> dict[str, Any]:
    name = name or user_id.lower()
    real_name = real_name or f"User {user_id}"
    return {
        "id": user_id, "team_id": TEAM_ID, "name": name, "deleted": False,
        "real_name": real_name, "tz": tz, "tz_label": tz, "tz_offset": tz_offset,
        "is_admin": False, "is_owner": False, "is_bot": is_bot, "is_app_user": False,
        "updated": 1_700_000_000,
        "profile": {
            "real_name": real_name, "real_name_normalized": real_name,
            "display_name": name, "display_name_normalized": name, "team": TEAM_ID,
            "image_48": f"https://example.invalid/{user_id}_48.png",
        },
    }


def _channel(channel_id: str, *, name: str | None = None,
             is_private: bool = False) -> dict[str, Any]:
    if channel_id.startswith("D"):
        return {"id": channel_id, "created": 1_700_000_000, "is_im": True, "is_org_shared": False,
                "user": "U1", "is_user_deleted": False}
    name = name or channel_id.lower()
    return {
        "id": channel_id, "name": name, "is_channel": not is_private, "is_group": is_private,
        "is_im": False, "is_mpim": False, "is_private": is_private, "created": 1_700_000_000,
        "is_archived": False, "is_general": False, "name_normalized": name,
        "is_shared": False, "is_org_shared": False, "is_member": True,
        "creator": "U1", "topic": {"value": "", "creator": "", "last_set": 0},
        "purpose": {"value": "", "creator": "", "last_set": 0},
    }


def _full_view(view: dict[str, Any], view_id: str, previous: dict[str, Any] | None) -> dict:
    stored = _copy(view)
    stored.update({
        "id": view_id, "team_id": TEAM_ID, "app_id": APP_ID, "bot_id": BOT_ID,
        "hash": f"{int(time.time())}.{hashlib.sha1(json.dumps(view, sort_keys=True).encode()).hexdigest()[:8]}",  # noqa: E501
        "root_view_id": previous["root_view_id"] if previous else view_id,
        "previous_view_id": None,
        "state": {"values": {}},
    })
    stored.setdefault("private_metadata", "")
    stored.setdefault("callback_id", "")
    stored.setdefault("external_id", "")
    return stored


# ----------------------------------------------------------------------- Slack -> the app


@dataclass(frozen=True)
class SignedResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def slack_signature(secret: str, timestamp: str | int, body: bytes) -> str:
    """``X-Slack-Signature`` for a body: v0= hex HMAC-SHA256 of ``v0:{timestamp}:{body}``."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def encode_body(body: bytes | str | Mapping[str, Any],
                content_type: str | None = None) -> tuple[bytes, str]:
    """The bytes and Content-Type Slack would send. A mapping is JSON by default, or a form
    with ``content_type=FORM`` (where non-string values, e.g. a ``payload`` dict, are JSON)."""
    if isinstance(body, Mapping):
        if content_type is not None and content_type.startswith(FORM):
            fields = {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
                      for k, v in body.items()}
            return urlencode(fields).encode(), content_type
        return json.dumps(body).encode(), content_type or JSON
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if content_type is None:
        content_type = JSON if raw.lstrip()[:1] == b"{" else FORM
    return raw, content_type


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def signed_post(
    url: str, body: bytes | str | Mapping[str, Any], secret: str, *,
    timestamp: int | None = None, content_type: str | None = None,
    headers: Mapping[str, str] | None = None, timeout: float = 10.0,
) -> SignedResponse:
    """POST ``body`` to a Bolt endpoint signed as Slack signs it (``X-Slack-Request-Timestamp``
    and ``X-Slack-Signature``). ``timestamp`` defaults to now (Bolt rejects > 5 minutes old).
    Events: ``signed_post(url, event_callback(...), secret)``; commands:
    ``content_type=FORM`` with ``slash_command_form(...)``; interactivity: ``content_type=FORM``
    with ``{"payload": block_actions_payload(...)}``. HTTP errors are returned, not raised."""
    raw, ctype = encode_body(body, content_type)
    ts = str(int(time.time()) if timestamp is None else timestamp)
    request_headers = {
        "Content-Type": ctype,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": slack_signature(secret, ts, raw),
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        **(headers or {}),
    }
    request = urllib.request.Request(url, data=raw, method="POST", headers=request_headers)
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as response:
            return SignedResponse(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return SignedResponse(error.code, dict(error.headers), error.read())


async def async_signed_post(url: str, body: bytes | str | Mapping[str, Any], secret: str,
                            **kwargs: Any) -> SignedResponse:
    """``signed_post`` from async code (runs in a worker thread)."""
    return await asyncio.to_thread(signed_post, url, body, secret, **kwargs)


def _trigger_id() -> str:
    return f"{int(time.time())}.{TEAM_ID}.{hashlib.md5(str(time.time_ns()).encode()).hexdigest()}"


def _user_object(user_id: str, team_id: str, user_name: str | None = None) -> dict[str, str]:
    name = user_name or user_id.lower()
    return {"id": user_id, "username": name, "name": name, "team_id": team_id}


def event_callback(
    event: dict[str, Any], event_id: str, team_id: str = TEAM_ID, *,
    api_app_id: str = APP_ID, event_time: int | None = None, bot_user_id: str = BOT_USER_ID,
) -> dict[str, Any]:
    """An Events API envelope (``type: event_callback``) around ``event``."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "context_team_id": team_id,
        "context_enterprise_id": None,
        "api_app_id": api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [{
            "enterprise_id": None, "team_id": team_id, "user_id": bot_user_id, "is_bot": True,
            "is_enterprise_install": False,
        }],
        "is_ext_shared_channel": False,
        "event_context": f"4-{event_id}",
    }


def message_event(text: str, *, user: str = "U1", channel: str = "C1", ts: str,
                  thread_ts: str | None = None, channel_type: str | None = None) -> dict:
    """A ``message`` event as a person's message arrives (use FakeSlack.next_ts() for ts)."""
    event = {
        "type": "message", "user": user, "text": text, "ts": ts, "channel": channel,
        "event_ts": ts, "team": TEAM_ID,
        "channel_type": channel_type or ("im" if channel.startswith("D") else "channel"),
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


def block_actions_payload(
    action_id: str, value: str | None = None, *, user_id: str = "U1", channel_id: str = "C1",
    message_ts: str | None = None, block_id: str = "actions", team_id: str = TEAM_ID,
    trigger_id: str | None = None, response_url: str | None = None,
    message: dict[str, Any] | None = None, action_type: str = "button",
    button_text: str = "Button", thread_ts: str | None = None,
) -> dict[str, Any]:
    """An interactive ``block_actions`` payload for a button in a message. Send it as the form
    field ``payload``: ``signed_post(url, {"payload": p}, secret, content_type=FORM)``."""
    now = time.time()
    message_ts = message_ts or f"{int(now)}.000100"
    action: dict[str, Any] = {
        "action_id": action_id, "block_id": block_id, "type": action_type,
        "action_ts": f"{now:.6f}",
    }
    if action_type == "button":
        action["text"] = {"type": "plain_text", "text": button_text, "emoji": True}
    if value is not None:
        action["value"] = value
    if message is None:
        message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": message_ts,
                   "text": "", "blocks": []}
    if thread_ts is not None:
        message = {**message, "thread_ts": thread_ts}
    container = {"type": "message", "message_ts": message_ts, "channel_id": channel_id,
                 "is_ephemeral": False}
    if thread_ts is not None:
        container["thread_ts"] = thread_ts
    return {
        "type": "block_actions",
        "user": _user_object(user_id, team_id),
        "api_app_id": APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": container,
        "trigger_id": trigger_id or _trigger_id(),
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_id.lower()},
        "message": message,
        "state": {"values": {}},
        "response_url": response_url
        or f"https://hooks.slack.com/actions/{team_id}/1/fake-response-url",
        "actions": [action],
    }


def slash_command_form(
    command: str, text: str, user_id: str = "U1", channel_id: str = "C1", *,
    team_id: str = TEAM_ID, channel_name: str | None = None, user_name: str | None = None,
    trigger_id: str | None = None, response_url: str | None = None,
) -> dict[str, str]:
    """The form fields of a slash command request (post with ``content_type=FORM``)."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_name
        or ("directmessage" if channel_id.startswith("D") else channel_id.lower()),
        "user_id": user_id,
        "user_name": user_name or user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url
        or f"https://hooks.slack.com/commands/{team_id}/1/fake-response-url",
        "trigger_id": trigger_id or _trigger_id(),
    }


def view_submission_payload(
    callback_id: str, values: dict[str, dict[str, Any]], *, user_id: str = "U1",
    team_id: str = TEAM_ID, view_id: str = "V000001", private_metadata: str = "",
    title: str = "Lesson", blocks: list[dict[str, Any]] | None = None,
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """A ``view_submission`` payload. ``values`` is ``{block_id: {action_id: state}}`` as in
    ``view.state.values``; a plain string state stands for a plain_text_input's value."""
    state = {
        block_id: {
            action_id: ({"type": "plain_text_input", "value": entry}
                        if isinstance(entry, str) or entry is None else entry)
            for action_id, entry in actions.items()
        }
        for block_id, actions in values.items()
    }
    return {
        "type": "view_submission",
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "user": _user_object(user_id, team_id),
        "api_app_id": APP_ID,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id or _trigger_id(),
        "view": {
            "id": view_id, "team_id": team_id, "type": "modal",
            "blocks": blocks or [], "private_metadata": private_metadata,
            "callback_id": callback_id, "state": {"values": state},
            "hash": "1700000000.abcdefgh",
            "title": {"type": "plain_text", "text": title, "emoji": True},
            "clear_on_close": False, "notify_on_close": False, "close": None,
            "submit": {"type": "plain_text", "text": "Submit", "emoji": True},
            "previous_view_id": None, "root_view_id": view_id, "app_id": APP_ID,
            "external_id": "", "app_installed_team_id": team_id, "bot_id": BOT_ID,
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
