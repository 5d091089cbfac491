"""Batches in a thread and on the command line: a CSV of requests, one video a row.

`batch_from_file` is what a thread calls when a teacher sends a CSV. It answers with one
summary message: each row with its line number, queued with its job id or not queued and
why. Each video's share link comes into the thread when it is finished, as any render's.

`run` is `lessonreel batch FILE.csv [--owner console:NAME] [--dry-run]`. It prints one line
per row on stdout, tab-separated (line, title, status, then job id and share link for a
queued row), and the totals on stderr. It exits 0 when at least one row was queued (with
--dry-run: could be), 1 when none, and 2 when the file as a whole cannot be used.

Both take the same steps (`queue_batch`). engine/batch.py reads the file and drafts each
row as a chat message is drafted; here are the rules a person meets: students may not;
rows beyond the teacher's render minutes for today or beyond the batch's share of the
queue (`batch_room`: the last places stay free for other teachers' renders) are reported,
not dropped; a row the moderation policy refuses is audited like a refused message, and
its words are not repeated back; a row that fails (a bug, Redis gone for a moment) is
reported as failed and the rows queued before it are still reported as queued, so they
are not sent again. High rows go first, so they get what room there is, and they take no
turn from another teacher (engine/fair_queue.py).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import math
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bot.core import Author, ChatService, Out, Place, Route, gpu_seconds_key, job_seconds
from bot.messages import SAY, say
from engine.batch import (
    Batch,
    BatchRow,
    RowBlocked,
    check_row,
    draft_row,
    enqueue_row,
    read_batch,
    text_cell,
    text_sample,
    too_big_sentence,
)
from engine.errors import UserError
from engine.fair_queue import FairQueue
from engine.jobs import new_job_id, render_queue
from engine.library import link_to
from engine.moderation import Policy, Verdict
from engine.request import clean_text, detect_language
from engine.settings import Settings, load_settings
from engine.storyboard import format_seconds

log = logging.getLogger(__name__)

EXIT_NOTHING_QUEUED = 1
EXIT_BAD_INPUT = 2
# The summary is one message: Slack shows 3,000 characters of a section, Telegram 4,096.
SUMMARY_MAX_CHARS = 2900
SHOWN_TITLE_CHARS = 40
QUEUE_ORDER = {"high": 0, "normal": 1, "low": 2}  # the order rows go onto the queue
# A batch leaves this many of the render queue's places (bot.max_queued_jobs) free, or a
# quarter of them if more, so one teacher's file does not turn every other away for hours.
BATCH_FREE_PLACES = 2
BATCH_FREE_SHARE = 4
DEFAULT_FILE_NAME = "batch.csv"
_OWNER = re.compile(r"console:([A-Za-z0-9_.\-]{1,64})")


@dataclass(frozen=True)
class RowResult:
    line: int
    title: str  # "" for a row the policy refused: its words are not repeated
    job_id: str | None = None
    link: str | None = None  # a share link, made only where asked (the command line)
    error: str | None = None  # why it was not queued, one sentence


# -- in a thread -------------------------------------------------------------------------------


def batch_from_file(service: ChatService, place: Place, author: Author, data: bytes,
                    name: str, *, language: str | None = None) -> list[Out]:
    """A teacher sent a CSV file in a thread: queue its rows; one summary message."""
    lang = service._language(place, language, text_sample(data))
    if service.role_of(place, author) == "student":
        return [Out(say(lang, "students_only_watch"), language=lang)]
    name = _file_name(name)
    try:
        # The summary repeats the file's name: the policy reads it first, as an image's.
        verdict = service.policy.check_text(re.sub(r"[_\-.+~]+", " ", Path(name).stem))
        if not verdict.allowed:
            service._audit(place, author, "file_name", verdict)
            return [Out(say(lang, "blocked", category=_category(lang, verdict)), language=lang)]
        batch = read_batch(data, service.settings, language=lang)
        results = queue_batch(service, place, author, batch)
    except UserError as exc:  # the file as a whole, or moderation that cannot answer
        return [Out(say(lang, "batch_unusable", name=name, reason=str(exc)), language=lang)]
    except Exception:
        log.exception("a batch failed in %s", place.key)
        return [Out(say(lang, "internal"), language=lang)]
    return [Out(summary_text(name, results, lang), language=lang)]


def batch_too_large(service: ChatService, place: Place, name: str, *,
                    language: str | None = None) -> list[Out]:
    """Answer a file too large to be a batch (the platform told its size) without fetching."""
    lang = service._language(place, language, "")
    sentence = too_big_sentence(service.settings, lang)
    return [Out(say(lang, "batch_unusable", name=_file_name(name), reason=sentence),
                language=lang)]


def is_batch_file(name: str, mimetype: str = "") -> bool:
    """Whether a file sent in a thread is meant as a batch: a .csv, whatever the platform
    calls its type (Windows says application/vnd.ms-excel)."""
    return Path(name or "").suffix.lower() == ".csv" or mimetype.split(";")[0].strip() in (
        "text/csv", "application/csv", "text/comma-separated-values")


def summary_text(name: str, results: list[RowResult], lang: str) -> str:
    """The summary message: the totals, then a line per row, in the file's order, cut to
    fit one message (titles go first, then rows past what fits, which are counted)."""
    queued = sum(result.job_id is not None for result in results)
    failed = len(results) - queued
    head = (say(lang, "batch_summary", name=name, queued=queued, total=len(results),
                failed=failed) if queued else
            say(lang, "batch_summary_none", name=name, total=len(results)))
    lines = [_summary_line(result, lang, titles=True) for result in results]
    if _length(head, lines) <= SUMMARY_MAX_CHARS:
        return "\n".join([head, *lines])
    lines = [_summary_line(result, lang, titles=result.error is not None)
             for result in results]
    if _length(head, lines) <= SUMMARY_MAX_CHARS:
        return "\n".join([head, *lines])
    # Still too long: the rows that need the teacher first, then what room is left.
    room = SUMMARY_MAX_CHARS - len(head) - len(say(lang, "batch_more", count=99_999,
                                                   queued=99_999, failed=99_999)) - 2
    shown: set[int] = set()
    for index in sorted(range(len(results)), key=lambda i: results[i].error is None):
        if len(lines[index]) + 1 <= room:
            shown.add(index)
            room -= len(lines[index]) + 1
    hidden = [results[i] for i in range(len(results)) if i not in shown]
    hidden_queued = sum(result.job_id is not None for result in hidden)
    more = say(lang, "batch_more", count=len(hidden), queued=hidden_queued,
               failed=len(hidden) - hidden_queued)
    return "\n".join([head, *(lines[i] for i in sorted(shown)), more])


# -- the steps both take -----------------------------------------------------------------------


def queue_batch(service: ChatService, place: Place, author: Author, batch: Batch, *,
                links: bool = False) -> list[RowResult]:
    """Draft and queue the rows of `batch` as `author`'s in `place`; a result per row of the
    file, in its order. With `links`, each queued row gets its share link now."""
    lang = batch.language
    if service.role_of(place, author) == "student":
        raise UserError(say(lang, "students_only_watch"))
    settings = service.settings
    results = {error.line: RowResult(error.line, error.title, error=error.message)
               for error in batch.errors}
    queue = render_queue(service.redis, settings, service.queue_name)
    room = batch_room(settings)
    renders_left = _renders_left_today(service, place, author)
    batch_id = secrets.token_hex(4)
    for row in sorted(batch.rows, key=lambda row: QUEUE_ORDER[row.priority]):
        try:
            if queue.count >= room:
                result = RowResult(row.line, row.title, error=say(
                    lang, "batch_queue_busy", room=room, limit=settings.bot.max_queued_jobs))
            elif renders_left is not None and renders_left <= 0:
                result = RowResult(row.line, row.title, error=say(
                    lang, "batch_quota", limit=settings.bot.render_minutes_per_day))
            else:
                # A conversation of its own per row: a storyboard with its versions, as in chat.
                conversation = f"{place.key}#batch-{batch_id}-{row.line}"
                result = _queue_row(service, place, author, row, conversation, lang,
                                    queue=queue, links=links, batch_id=batch_id)
        except Exception:  # one row's failure costs that row, not the rows queued before it:
            # answering "internal error" for the whole file would have them sent twice
            log.exception("batch row %d failed in %s", row.line, place.key)
            result = RowResult(row.line, row.title, error=say(lang, "internal"))
        results[row.line] = result
        if renders_left is not None and result.job_id:
            renders_left -= 1
    return [results[line] for line in sorted(results)]


def batch_room(settings: Settings) -> int:
    """How many jobs may be waiting on the render queue before a batch adds no more rows:
    the rest of the queue stays free for other teachers' renders."""
    limit = settings.bot.max_queued_jobs
    return max(0, limit - max(BATCH_FREE_PLACES, limit // BATCH_FREE_SHARE))


def _queue_row(service: ChatService, place: Place, author: Author, row: BatchRow,
               conversation: str, lang: str, *, queue: FairQueue, links: bool,
               batch_id: str) -> RowResult:
    try:
        drafted = draft_row(service.dialogue, service.policy, conversation, row)
    except RowBlocked as blocked:
        service._audit(place, author, f"batch-{blocked.where}", blocked.verdict)
        return RowResult(row.line, "", error=say(
            lang, "batch_blocked", category=_category(lang, blocked.verdict)))
    except UserError as exc:
        return RowResult(row.line, row.title, error=str(exc))
    board = drafted.storyboard
    job_id = new_job_id()
    # The route first, as for a render pressed in chat: the relay finds the thread for the
    # job's news (and charges the render to the teacher's day) from its first event on.
    service.routes.save(Route(
        job_id=job_id, place=place, conversation=conversation, version=drafted.version,
        language=lang, author=author.id, title=board.title,
        total=format_seconds(board.total_seconds), preview=False, created_at=time.time(),
        batch=batch_id))
    enqueue_row(service.redis, service.settings, drafted, job_id=job_id,
                owner=f"{place.platform}:{author.id}", queue=queue)
    link = None
    if links:
        try:
            link = link_to(service.library, service.settings, service.share_secret, job_id,
                           reuse=False)
        except Exception:  # the render is queued all the same: a row reported as failed
            # would be sent again and rendered twice; the link can be made when it is done
            log.exception("no share link for batch row %d (%s)", row.line, job_id)
    return RowResult(row.line, board.title, job_id=job_id, link=link)


def _renders_left_today(service: ChatService, place: Place, author: Author) -> int | None:
    """About how many more renders fit in the teacher's render minutes for today, at what a
    render has taken lately; None: no limit (none set, or an admin)."""
    limit = service.settings.bot.render_minutes_per_day
    if not limit or service.role_of(place, author) == "admin":
        return None
    used = float(service.redis.get(gpu_seconds_key(place.platform, author.id, time.time()))
                 or 0)
    left = limit * 60 - used
    if left <= 0:
        return 0
    # As in chat, a teacher with any time left may start one more render.
    return max(1, math.floor(left / job_seconds(service.redis)))


def _file_name(name: str) -> str:
    return clean_text(Path(name or DEFAULT_FILE_NAME).name)[:80] or DEFAULT_FILE_NAME


def _category(lang: str, verdict: Verdict) -> str:
    key = f"category_{verdict.category}"
    return say(lang, key if key in SAY["en"] else "category_other")


def _summary_line(result: RowResult, lang: str, *, titles: bool) -> str:
    parts = [say(lang, "batch_line", line=result.line)]
    if titles and result.title:
        parts.append(_shown_title(result.title))
    parts.append(result.error if result.error else say(lang, "batch_queued_as",
                                                       job=result.job_id))
    return "• " + " · ".join(parts)


def _shown_title(title: str) -> str:
    title = text_cell(title)
    return title if len(title) <= SHOWN_TITLE_CHARS else title[: SHOWN_TITLE_CHARS - 1] + "…"


def _length(head: str, lines: list[str]) -> int:
    return len(head) + sum(len(line) + 1 for line in lines)


# -- on the command line -----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a CSV file: a header row naming the columns "
                        "(title, request, duration, language, aspect, priority; request is "
                        "required), then one row per video")
    parser.add_argument("--owner", metavar="console:NAME", help="whose videos they are "
                        "(default: console:<your login name>); [roles] in the settings "
                        "applies to it")
    parser.add_argument("--dry-run", action="store_true", help="check the file and each "
                        "row, moderation included; draft and queue nothing")


def run(args: argparse.Namespace, *, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    """Queue a CSV file's rows; one line per row. UserError when the file cannot be used."""
    out = out or sys.stdout
    err = err or sys.stderr
    settings = load_settings()
    name = _owner_name(args.owner)
    data = _read_file(args.file, settings.batch.max_bytes)
    sample = text_sample(data)
    lang = "zh" if sample and detect_language(sample) == "zh" else settings.storyboard.language
    batch = read_batch(data, settings, language=lang)
    if args.dry_run:  # nothing is drafted, queued or even connected to
        results = _checked(Policy.load(settings=settings), batch, lang)
    else:
        from bot.runtime import build_runtime  # the model, Redis: only when rows are queued

        runtime = build_runtime(settings)
        place = Place("console", name, f"batch-{secrets.token_hex(4)}")
        results = queue_batch(runtime.service, place, Author(name), batch, links=True)
    for result in results:
        out.write(_cli_line(result, lang, dry_run=args.dry_run) + "\n")
    good = sum(result.error is None for result in results)
    totals = "batch_totals_dry_run" if args.dry_run else "batch_totals"
    err.write(say(lang, totals, queued=good, total=len(results),
                  failed=len(results) - good) + "\n")
    return 0 if good else EXIT_NOTHING_QUEUED


def _checked(policy: Policy, batch: Batch, lang: str) -> list[RowResult]:
    """--dry-run: each row as far as it can go without drafting it."""
    results = {error.line: RowResult(error.line, error.title, error=error.message)
               for error in batch.errors}
    for row in batch.rows:
        try:
            check_row(policy, row)
        except RowBlocked as blocked:
            results[row.line] = RowResult(row.line, "", error=say(
                lang, "batch_blocked", category=_category(lang, blocked.verdict)))
            continue
        except UserError as exc:
            results[row.line] = RowResult(row.line, row.title, error=str(exc))
            continue
        results[row.line] = RowResult(row.line, row.title)
    return [results[line] for line in sorted(results)]


def _cli_line(result: RowResult, lang: str, *, dry_run: bool) -> str:
    """Tab-separated cells; none starts like a formula, should it land in a spreadsheet."""
    cells = [say(lang, "batch_line", line=result.line), text_cell(result.title)]
    if result.error:
        cells.append(text_cell(result.error))
    elif dry_run:
        cells.append(say(lang, "batch_dry_run"))
    else:
        cells += [say(lang, "batch_queued_as", job=result.job_id), result.link or ""]
    return "\t".join(cells)


def _owner_name(owner: str | None) -> str:
    if owner is None:
        try:
            login = getpass.getuser()
        except Exception:  # no login name in a bare container
            login = ""
        return re.sub(r"[^A-Za-z0-9_.\-]", "", login)[:64] or "batch"
    match = _OWNER.fullmatch(owner)
    if match is None:
        raise UserError(f"--owner must be console:NAME, with a name of letters, digits, "
                        f"'_', '.' and '-' (at most 64), not {owner[:80]!r}.")
    return match.group(1)


def _read_file(path: Path, max_bytes: int) -> bytes:
    """At most one byte more than a batch may have: a larger file is refused anyway."""
    try:
        with path.open("rb") as handle:
            return handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserError(f"There is no file {path}.") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; name a CSV file.") from None
    except OSError as exc:
        raise UserError(f"Cannot read {path} ({exc.strerror}).") from None
