"""Batches: one CSV file, one video a row.

A teacher sends a CSV in a thread, or IT runs `lessonreel batch FILE.csv`. The file has a
header row naming its columns (any order, any case):

    title,request,duration,language,aspect,priority
    Photosynthesis,Explain photosynthesis to grade 7,30s,en,16:9,high

Only `request` is required. Reading (`read_batch`) checks the file as a whole first: a file
that cannot be used (empty, binary, no header, too many rows) is one sentence, a
`BatchError`, and nothing of it is queued. Then each row on its own: a bad row becomes a
`RowError` naming its line (the header is line 1) and what to fix, and the good rows still
run. Drafting a row (`draft_row`) takes the path a chat message takes: the moderation
policy on its text, the dialogue's first turn (the rule-based drafter, or the language
model when one is installed), the policy again on the storyboard.

The duration column is said to the dialogue in words ("…, 30 seconds"), as a teacher would
write it in a message, so the drafter and the language model both read it; a request that
names another length itself is an error, not a guess.

Cells are text, always: "=HYPERLINK(…)" is a title like any other and is never evaluated;
`text_cell` keeps such a cell from turning back into a formula where a report of the batch
may be opened in a spreadsheet.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from typing import cast

import redis

from engine.dialogue import Dialogue
from engine.errors import RequestError, UserError
from engine.fair_queue import PRIORITIES, FairQueue, Priority
from engine.jobs import RenderSpec, enqueue_render
from engine.moderation import Policy, Verdict
from engine.request import clean_text, find_duration, read_request
from engine.settings import Settings
from engine.storyboard import ASPECTS, LANGUAGES, Storyboard, format_seconds

COLUMNS: tuple[str, ...] = ("title", "request", "duration", "language", "aspect", "priority")
DELIMITERS = (",", ";", "\t")  # spreadsheets in many locales save CSV with ";"
MAX_TITLE_CHARS = 80  # a storyboard's title
QUOTED_CHARS = 24  # of a bad value, quoted back in an error
# Spreadsheets read a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Control characters other than tab and line ends: a file that holds them is not text.
_BINARY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SECONDS = re.compile(r"\d{1,5}")

SAY = {
    "en": {
        "empty": ("The file is empty; send a CSV whose first line names the columns "
                  "(title, request, duration, language, aspect, priority) and then has one "
                  "line per video."),
        "too_big": ("The file is larger than {limit:,} KB, the most a batch can be; split it "
                    "into smaller files."),
        "not_text": ("The file is not CSV text (it is binary, or not UTF-8); in your spreadsheet "
                     "choose “Save as… CSV UTF-8” and send that file."),
        "no_header": ("The first line must name the columns, e.g. “title,request,duration,"
                      "language,aspect,priority” (request is required), but it is “{first}”."),
        "unknown_columns": ("The header names {names}, which I don't know; the columns are "
                            "title, request, duration, language, aspect and priority."),
        "twice": "The header names the column {name} twice; keep one of them.",
        "only_header": "The file has a header but no rows; add one line per video under it.",
        "too_many_rows": ("The file has {count:,} rows; a batch can have at most {limit:,}, so "
                          "split it into smaller files."),
        "bad_csv": ("It cannot be read as CSV ({reason}); put text that holds a comma or a "
                    "line break in double quotes, and write a quote inside it twice."),
        "unclosed": ("It opens a quote that is never closed, so the lines after it could not "
                     "be read; close the quote, and write a quote inside text twice."),
        "huge_cell": ("It has a cell longer than {limit:,} characters; a request should be a "
                      "few sentences."),
        "line": "Line {line}: {message}",
        "too_many_cells": ("It has {count} cells but the header names {columns}; put text that "
                           "holds a comma in double quotes."),
        "no_request": "It has no request; write what the video should teach in its request cell.",
        "long_title": "Its title is {length} characters long; keep it to {limit}.",
        "duration": ("The duration “{value}” is not a length; write seconds (“30”), “30s” or "
                     "“2 min”."),
        "duration_range": ("The duration {value} is outside what a video may be ({low} to "
                           "{high}); change it."),
        "duration_twice": ("The request asks for {said} but the duration cell says {cell}; keep "
                           "one of them."),
        "language": ("The language “{value}” is not en or zh; leave it empty to take the "
                     "request's."),
        "aspect": ("The aspect “{value}” is not 16:9, 9:16 or 1:1 (a spreadsheet may have "
                   "made it a time: format that column as text)."),
        "priority": "The priority “{value}” is not low, normal or high; leave it empty for normal.",
    },
    "zh": {
        "empty": ("文件是空的；请发送一个 CSV：第一行写列名（title, request, duration, language, "
                  "aspect, priority），之后每行一个视频。"),
        "too_big": "文件超过了批量文件的上限 {limit:,} KB；请拆成几个小文件。",
        "not_text": ("这不是 CSV 文本（是二进制文件，或不是 UTF-8 编码）；请在表格软件里选择"
                     "“另存为 CSV UTF-8”再发送。"),
        "no_header": ("第一行必须写列名，例如“title,request,duration,language,aspect,priority”"
                      "（request 必填），但现在是“{first}”。"),
        "unknown_columns": ("表头里的 {names} 不是可用的列；可用的列是 title、request、"
                            "duration、language、aspect 和 priority。"),
        "twice": "表头里 {name} 列出现了两次；请只保留一个。",
        "only_header": "文件只有表头没有数据；请在表头下每行写一个视频。",
        "too_many_rows": "文件有 {count:,} 行，批量最多 {limit:,} 行；请拆成几个小文件。",
        "bad_csv": ("这一行无法按 CSV 读取（{reason}）；含逗号或换行的文字请加英文双引号，"
                    "文字里的双引号要写两次。"),
        "unclosed": ("这一行的引号没有闭合，后面的行都无法读取；请补上引号，文字里的双引号"
                     "要写两次。"),
        "huge_cell": "这一行有一个单元格超过 {limit:,} 个字符；要求写几句话就够了。",
        "line": "第 {line} 行：{message}",
        "too_many_cells": ("这一行有 {count} 个单元格，但表头只有 {columns} 列；"
                           "含逗号的文字请加英文双引号。"),
        "no_request": "这一行没有 request；请在 request 列写明视频要讲什么。",
        "long_title": "标题有 {length} 个字符；请控制在 {limit} 个以内。",
        "duration": "时长“{value}”不是有效的长度；请写秒数（“30”）、“30s”或“2 min”。",
        "duration_range": "时长 {value} 超出了视频允许的范围（{low} 到 {high}）；请修改。",
        "duration_twice": "request 里要求 {said}，但 duration 列写的是 {cell}；请只保留一个。",
        "language": "语言“{value}”不是 en 或 zh；留空则按 request 的语言。",
        "aspect": ("画面比例“{value}”不是 16:9、9:16 或 1:1（表格软件可能把它变成了时间："
                   "请把这一列设为文本）。"),
        "priority": "优先级“{value}”不是 low、normal 或 high；留空即为 normal。",
    },
}


class BatchError(UserError):
    """The file as a whole cannot be used; nothing of it is queued."""


@dataclass(frozen=True)
class BatchRow:
    """A row that can be drafted: its cells read and checked."""

    line: int  # where it starts in the file; the header is line 1
    title: str  # "" : keep the drafted title
    request: str  # what the dialogue is told, the duration cell included
    language: str | None  # None: the request's own
    aspect: str | None  # None: the settings' default
    priority: Priority


@dataclass(frozen=True)
class RowError:
    line: int
    title: str  # the row's title cell, cleaned ("" when it has none)
    message: str  # what is wrong and what to do, one sentence without the line number


@dataclass(frozen=True)
class Batch:
    rows: tuple[BatchRow, ...]
    errors: tuple[RowError, ...]
    language: str  # of the messages in `errors`

    def sentence(self, error: RowError) -> str:
        """"Line 7: It has no request; …": the error as one sentence naming its line."""
        return _say(self.language, "line", line=error.line, message=error.message)


def read_batch(data: bytes, settings: Settings, *, language: str = "en") -> Batch:
    """Read a CSV file into rows to draft and errors to report, in `language` ("en", "zh").
    BatchError, with one sentence, when the file as a whole cannot be used.

    A caller that fetches the file may stop after `batch.max_bytes` + 1 bytes: more is
    refused either way."""
    limits = settings.batch

    def fail(key: str, **values: object) -> BatchError:
        return BatchError(_say(language, key, **values))

    # 1. The file: size, encoding, text.
    if not data.strip():
        raise fail("empty")
    if len(data) > limits.max_bytes:
        raise BatchError(too_big_sentence(settings, language))
    text = _decode(data)
    if text is None or _BINARY.search(text):
        raise fail("not_text")
    if not text.strip():  # a byte-order mark and nothing else
        raise fail("empty")

    # 2. The header: which column is which.
    first = next((line for line in text.splitlines() if not _blank(line)), None)
    if first is None:  # only blank cells (",,")
        raise fail("empty")
    delimiter = max(DELIMITERS, key=lambda d: _known_columns(first, d))
    records = _records(text, delimiter, language)
    line, header = records.pop(0)
    if isinstance(header, str):
        raise BatchError(_say(language, "line", line=line, message=header))
    columns = [clean_text(name).lower() for name in header]
    if "request" not in columns:
        raise fail("no_header", first=_quoted(first, 60))
    unknown = [name for name in columns if name and name not in COLUMNS]
    if unknown:
        raise fail("unknown_columns", names=", ".join(f"“{_quoted(n)}”" for n in unknown))
    twice = next((name for name in columns if name and columns.count(name) > 1), None)
    if twice:
        raise fail("twice", name=twice)

    # 3. The rows: a bad one is reported, the others go on.
    records = [(line, cells) for line, cells in records
               if isinstance(cells, str) or any(cell.strip() for cell in cells)]
    if not records:
        raise fail("only_header")
    if len(records) > limits.max_rows:
        raise fail("too_many_rows", count=len(records), limit=limits.max_rows)
    rows: list[BatchRow] = []
    errors: list[RowError] = []
    for line, cells in records:
        row = (RowError(line, "", cells) if isinstance(cells, str)
               else _read_row(line, cells, columns, settings, language))
        (errors if isinstance(row, RowError) else rows).append(row)
    return Batch(tuple(rows), tuple(errors), language)


def too_big_sentence(settings: Settings, language: str = "en") -> str:
    """What a file larger than `batch.max_bytes` gets (said before fetching it, too)."""
    return _say(language, "too_big", limit=settings.batch.max_bytes // 1024)


def text_sample(data: bytes, chars: int = 4000) -> str:
    """The start of the file as text, however broken: enough to tell its language by."""
    return (_decode(data[: chars * 4], strict=False) or "")[:chars]


def text_cell(text: str) -> str:
    """`text` made safe to land in a spreadsheet cell: a leading = + - @ is shown, not run."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


# -- drafting and queueing a row ---------------------------------------------------------------


class RowBlocked(Exception):
    """The moderation policy refused a row: its text ("request") or its storyboard."""

    def __init__(self, verdict: Verdict, where: str) -> None:
        super().__init__(f"{where}: {verdict.category}")
        self.verdict = verdict
        self.where = where


@dataclass(frozen=True)
class DraftedRow:
    row: BatchRow
    conversation: str
    version: int
    storyboard: Storyboard


def check_row(policy: Policy, row: BatchRow) -> None:
    """The policy on what the row says, as on a chat message; RowBlocked if it refuses."""
    verdict = policy.check_text(f"{row.title}\n{row.request}" if row.title else row.request)
    if not verdict.allowed:
        raise RowBlocked(verdict, "request")


def draft_row(dialogue: Dialogue, policy: Policy, conversation: str, row: BatchRow
              ) -> DraftedRow:
    """Draft a row as a chat message is drafted, in a conversation of its own.

    RowBlocked when the policy refuses the row or its storyboard; UserError, with the
    dialogue's sentence, when the row cannot be drafted."""
    # 1. The text, before anything is drafted from it.
    check_row(policy, row)
    # 2. The dialogue's first turn: the drafter, or the language model.
    reply = dialogue.turn(conversation, row.request, language=row.language, aspect=row.aspect)
    if reply.failed or reply.storyboard is None or reply.version is None:
        raise UserError(reply.message)
    board, version = reply.storyboard, reply.version
    # 3. The title the teacher gave, as the next version.
    if row.title and row.title != board.title:
        board = board.revise(title=row.title)
        version = dialogue.history.append(conversation, board, "title from the batch file",
                                          after=version)
    # 4. Everything the render will show or be prompted with.
    verdict = policy.check_storyboard(board)
    if not verdict.allowed:
        raise RowBlocked(verdict, "storyboard")
    return DraftedRow(row, conversation, version, board)


def enqueue_row(connection: redis.Redis, settings: Settings, drafted: DraftedRow, *,
                job_id: str, owner: str, queue: FairQueue | None = None) -> None:
    """Queue the render of a drafted row at the row's priority, as `owner`'s job."""
    spec = RenderSpec(job_id=job_id, conversation=drafted.conversation,
                      version=drafted.version, owner=owner, storyboard=drafted.storyboard,
                      output=job_id)
    enqueue_render(connection, settings, spec, queue=queue, priority=drafted.row.priority)


# -- reading ---------------------------------------------------------------------------------


def _decode(data: bytes, *, strict: bool = True) -> str | None:
    """UTF-8 with or without a BOM, or UTF-16 with one (Excel's "Unicode text")."""
    errors = "strict" if strict else "replace"
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return data.decode("utf-16", errors)
        return data.decode("utf-8-sig", errors)
    except UnicodeDecodeError:
        return None


def _known_columns(line: str, delimiter: str) -> int:
    cells = next(csv.reader([line], delimiter=delimiter), [])
    return sum(clean_text(cell).lower() in COLUMNS for cell in cells)


def _records(text: str, delimiter: str, language: str) -> list[tuple[int, list[str] | str]]:
    """Every record with the line it starts on (a cell can span lines inside quotes), or,
    for a record that is not CSV, what is wrong with it: the reader goes on after it."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records: list[tuple[int, list[str] | str]] = []
    read_to = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return records
        except csv.Error as exc:
            reason = str(exc)
            if "field larger than field limit" in reason:
                problem = _say(language, "huge_cell", limit=csv.field_size_limit())
            elif "unexpected end of data" in reason:
                problem = _say(language, "unclosed")
            else:
                problem = _say(language, "bad_csv", reason=reason)
            records.append((read_to + 1, problem))
        else:
            # Lines of blank cells before the header (" ", ";;") are not records.
            if records or any(cell.strip() for cell in cells):
                records.append((read_to + 1, cells))
        read_to = reader.line_num


def _blank(line: str) -> bool:
    """Whether a line holds nothing but blank cells, whichever the delimiter."""
    return not line.strip().strip("".join(DELIMITERS) + " \"")


def _read_row(line: int, cells: list[str], columns: list[str], settings: Settings,
              language: str) -> BatchRow | RowError:
    values = {name: clean_text(cell) for name, cell in zip(columns, cells, strict=False)
              if name}
    title = values.get("title", "")

    def error(key: str, **details: object) -> RowError:
        return RowError(line, title[:MAX_TITLE_CHARS], _say(language, key, **details))

    if len(cells) > len(columns):
        return error("too_many_cells", count=len(cells), columns=len(columns))
    request = values.get("request", "")
    if not request:
        return error("no_request")
    if len(title) > MAX_TITLE_CHARS:
        return error("long_title", length=len(title), limit=MAX_TITLE_CHARS)
    row_language = values.get("language", "").lower() or None
    if row_language is not None and row_language not in LANGUAGES:
        return error("language", value=_quoted(values["language"]))
    aspect = values.get("aspect", "") or None
    if aspect is not None and aspect not in ASPECTS:
        return error("aspect", value=_quoted(aspect))
    priority = values.get("priority", "").lower() or "normal"
    if priority not in PRIORITIES:
        return error("priority", value=_quoted(values["priority"]))

    limits = settings.limits
    duration = values.get("duration", "")
    seconds = None
    if duration:
        seconds = _duration(duration)
        if seconds is None:
            return error("duration", value=_quoted(duration))
        if not limits.min_total_seconds <= seconds <= limits.max_total_seconds:
            return error("duration_range", value=format_seconds(seconds),
                         low=format_seconds(limits.min_total_seconds),
                         high=format_seconds(limits.max_total_seconds))
    try:
        read = read_request(request, max_chars=limits.max_request_chars,
                            max_seconds=limits.max_total_seconds,
                            min_seconds=limits.min_total_seconds, language=row_language)
        if seconds is not None and read.seconds is not None and read.seconds != seconds:
            return error("duration_twice", said=format_seconds(read.seconds),
                         cell=format_seconds(seconds))
        if seconds is not None and read.seconds is None:
            # Said as a teacher would say it, so the drafter and the language model read it.
            request = (f"{request}，{seconds}秒" if read.language == "zh"
                       else f"{request}, {seconds} seconds")
            read_request(request, max_chars=limits.max_request_chars,  # still short enough
                         max_seconds=limits.max_total_seconds,
                         min_seconds=limits.min_total_seconds, language=row_language)
    except RequestError as exc:
        return RowError(line, title[:MAX_TITLE_CHARS], str(exc))
    return BatchRow(line, title, request, row_language, aspect, cast(Priority, priority))


def _duration(value: str) -> int | None:
    """Seconds in "30", "30s", "2 min", "1 min 30 s", "90秒"; None when it is not only a length."""
    if _SECONDS.fullmatch(value):
        return int(value)
    seconds, span = find_duration(value)
    return seconds if span == (0, len(value)) else None


def _quoted(text: str, limit: int = QUOTED_CHARS) -> str:
    """A value quoted back in an error: cut short, on one line."""
    text = clean_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _say(language: str, key: str, **values: object) -> str:
    return SAY.get(language, SAY["en"])[key].format(**values)
