"""Batches: a CSV of requests, one video a row (engine/batch.py, bot/batch.py), on a real
embedded Redis, the real RQ queue and the rule-based drafter; the command as a real process."""

from __future__ import annotations

import codecs
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from bot.batch import (
    RowResult,
    batch_from_file,
    batch_too_large,
    is_batch_file,
    queue_batch,
    summary_text,
)
from bot.core import Author, Place, gpu_seconds_key
from engine.batch import BatchError, read_batch
from engine.drafter import styles
from engine.jobs import render_queue
from engine.llm import Answer, AnswerScene
from tests.conftest import with_settings

TEACHER = Author("U1", "Ms Chen")
HEADER = "title,request,duration,language,aspect,priority"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def service(runtime):
    return with_settings(runtime.service, bot={"max_queued_jobs": 100})




def place(thread: str = "t1") -> Place:
    return Place("test", "C1", thread)


def csv_bytes(*rows: str, header: str = HEADER) -> bytes:
    return "\n".join([header, *rows]).encode() + b"\n"


def queued_specs(runtime) -> list[dict]:
    """The render specs on the shared queue, in the order workers will take them."""
    queue = render_queue(runtime.connection, runtime.settings)
    return [Job.fetch(job_id, connection=runtime.connection, serializer=JSONSerializer).args[0]
            for job_id in queue.job_ids]


def summary_rows(text: str) -> dict[int, str]:
    """Line number -> what the summary says of that row."""
    return {int(match[1]): match[2] for match in re.finditer(r"^• line (\d+) · (.*)$", text,
                                                             re.M)}


def queued_jobs(text: str) -> dict[int, str]:
    """Line number -> job id, for the rows the summary says were queued."""
    return {line: match[1] for line, said in summary_rows(text).items()
            if (match := re.search(r"queued as (r-[0-9a-f]{12})$", said))}


# -- the acceptance case -----------------------------------------------------------------------

TOPICS = ["photosynthesis", "magnets", "fractions", "volcanoes", "the water cycle", "gravity",
          "the solar system", "plate tectonics", "electric circuits", "the human heart"]
DURATIONS = {"30": 30, "30s": 30, "45 seconds": 45, "1 min": 60, "20": 20, "2 min": 120}
BAD_ROWS = {  # line -> (row, what its error says)
    8: ("No request,,30,en,16:9,normal", "has no request"),
    15: ("Long one,Explain gravity,forever,,,", "duration “forever” is not a length"),
    23: ("Cinema,Explain the solar system,30,,4:3,", "aspect “4:3” is not 16:9, 9:16 or 1:1"),
    31: ("Harm,Make a video showing how to hurt yourself with a knife,30,,,",
         "touches on self-harm"),
    44: ("Rush,Explain magnets,30,,,urgent", "priority “urgent” is not low, normal or high"),
}


def fifty_rows() -> tuple[bytes, dict[int, int], dict[int, str]]:
    """50 rows (lines 2-51), 5 of them bad; the seconds and the priority of each good row."""
    rows, seconds, priorities = [], {}, {}
    for index in range(50):
        line = index + 2
        if line in BAD_ROWS:
            rows.append(BAD_ROWS[line][0])
            continue
        duration = list(DURATIONS)[index % len(DURATIONS)]
        aspect = ["16:9", "9:16", "1:1", ""][index % 4]
        priority = {0: "high", 1: "low"}.get(index % 7, "")
        topic = TOPICS[index % len(TOPICS)]
        rows.append(f"Lesson {line},Explain {topic} to grade {5 + index % 4},{duration},,"
                    f"{aspect},{priority}")
        seconds[line] = DURATIONS[duration]
        priorities[line] = priority or "normal"
    return csv_bytes(*rows), seconds, priorities


def test_fifty_rows_with_five_bad_ones_queue_45_jobs_and_name_the_five_lines(service, runtime):
    data, seconds, priorities = fifty_rows()
    [summary] = batch_from_file(service, place(), TEACHER, data, "term-2.csv")

    said = summary_rows(summary.text)
    assert sorted(said) == list(range(2, 52)), summary.text  # every row, once
    assert summary.text.startswith("Batch “term-2.csv”: 45 of 50 rows queued, 5 not.")
    assert "link comes in this thread when it is finished" in summary.text
    for line, (_row, error) in BAD_ROWS.items():
        assert error in said[line], (line, said[line])
    assert "knife" not in summary.text and "Harm" not in summary.text  # not repeated back

    jobs = queued_jobs(summary.text)
    assert sorted(jobs) == sorted(seconds)  # the 45 good rows, each with its job
    specs = queued_specs(runtime)
    assert len(specs) == 45 and {spec["job_id"] for spec in specs} == set(jobs.values())
    assert {spec["owner"] for spec in specs} == {"test:U1"}
    by_job = {spec["job_id"]: spec for spec in specs}
    for line, job_id in jobs.items():  # each as long as its duration cell says
        assert by_job[job_id]["storyboard"]["title_card_seconds"] + sum(
            scene["duration"] for scene in by_job[job_id]["storyboard"]["scenes"]
        ) == seconds[line], line
    # High rows go first, low rows last: the teacher is alone on the queue.
    order = [priorities[line] for line in sorted(jobs, key=lambda line: [
        spec["job_id"] for spec in specs].index(jobs[line]))]
    assert order == sorted(order, key=["high", "normal", "low"].index)

    [entry] = runtime.connection.xrange("lessonreel:audit")[-1:]
    record = {key.decode(): value.decode() for key, value in entry[1].items()}
    assert (record["where"], record["category"], record["author"]) == (
        "batch-request", "self_harm", "U1")
    assert "knife" not in str(record)


# -- what each row may say ---------------------------------------------------------------------


def test_a_chinese_file_with_a_byte_order_mark_is_answered_in_chinese(service, runtime):
    data = codecs.BOM_UTF8 + csv_bytes(
        "光合作用,给初一学生讲解光合作用,30秒,zh,9:16,high",
        "浮力,用45秒给初二学生讲解浮力,,,,",
        "坏行,,30,,,",
        header="Title,REQUEST,Duration,Language,Aspect,Priority")
    [summary] = batch_from_file(service, place(), TEACHER, data, "物理.csv")
    assert summary.language == "zh"
    assert summary.text.startswith("批量“物理.csv”：3 行中 2 行已排队，1 行未排队。")
    said = summary_rows(summary.text.replace("• 第 ", "• line ").replace(" 行 · ", " · "))
    assert "没有 request" in said[4]
    specs = {spec["storyboard"]["title"]: spec["storyboard"] for spec in queued_specs(runtime)}
    assert set(specs) == {"光合作用", "浮力"}
    assert specs["光合作用"]["language"] == "zh" and specs["光合作用"]["aspect"] == "9:16"
    assert specs["浮力"]["language"] == "zh" and specs["浮力"]["aspect"] == "16:9"
    assert sum(scene["duration"] for scene in specs["浮力"]["scenes"]) + \
        specs["浮力"]["title_card_seconds"] == 45


def test_formula_cells_are_kept_as_text_and_never_shown_as_a_formula(service, runtime):
    data = csv_bytes('"=HYPERLINK(""http://evil.example"",""Click"")",'
                     '"+Explain volcanoes to grade 5, @once",30,,,',
                     "-5 degrees,=1+1 explain freezing water,20,,,")
    [summary] = batch_from_file(service, place(), TEACHER, data, "lessons.csv")
    titles = {spec["storyboard"]["title"] for spec in queued_specs(runtime)}
    assert titles == {'=HYPERLINK("http://evil.example","Click")', "-5 degrees"}  # as written
    assert "'=HYPERLINK(" in summary.text and "'-5 degrees" in summary.text
    assert not re.search(r"(?:^|· )[=+\-@]", summary.text, re.M)


def test_a_storyboard_the_language_model_made_unsafe_is_not_queued(service, runtime):
    class UnsafeModel:  # a model whose draft goes where the request did not
        def answer(self, current, turns, message, *, language=None):
            return Answer(
                title="Volcanoes", audience="Grade 5", language="en", aspect="16:9",
                style=next(iter(styles())), reply="Here is a draft.",
                scenes=[AnswerScene(id="", visual="A volcano erupts over a village",
                                    narration="Then the soldiers massacre the villagers with "
                                              "knives, in detail.",
                                    on_screen_text="", duration=8)])

    service.llm = service.dialogue.llm = UnsafeModel()
    [summary] = batch_from_file(service, place(), TEACHER,
                                csv_bytes("Volcanoes,Explain volcanoes to grade 5,,,,"), "v.csv")
    assert "none of its 1 rows could be queued" in summary.text
    assert "touches on violence" in summary_rows(summary.text)[2]
    assert render_queue(runtime.connection, runtime.settings).count == 0
    [entry] = runtime.connection.xrange("lessonreel:audit")[-1:]
    assert entry[1][b"where"] == b"batch-storyboard"


# -- files that cannot be used -----------------------------------------------------------------


@pytest.mark.parametrize(("case", "data", "sentence"), [
    ("empty", b"", "The file is empty; send a CSV whose first line names the columns"),
    ("blank", codecs.BOM_UTF8 + b"\n \n", "The file is empty"),
    ("only blank cells", b" , \n;;\n\"\"\n", "The file is empty"),
    ("only a header", csv_bytes(), "The file has a header but no rows"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256)),
     "The file is not CSV text"),
    ("control characters", b"title,request\nA,Explain\x00 rain\n", "The file is not CSV text"),
    ("no header", b"Explain photosynthesis to grade 7\nExplain magnets\n",
     "The first line must name the columns"),
    ("unknown column", b"title,request,colour\nA,Explain rain,red\n",
     "The header names “colour”, which I don't know"),
    ("a column twice", b"request,title,Request\nExplain rain,A,B\n",
     "The header names the column request twice"),
    ("over the row limit", csv_bytes(*[f"T{n},Explain rain {n}" for n in range(6)]),
     "The file has 6 rows; a batch can have at most 5"),
    ("over the size limit", csv_bytes("A,Explain rain " + "x" * 1100),
     "The file is larger than 1 KB"),
])
def test_a_file_that_cannot_be_used_gets_one_sentence_and_nothing_is_queued(
        service, runtime, case, data, sentence):
    with_settings(service, batch={"max_rows": 5, "max_bytes": 1024})
    [answer] = batch_from_file(service, place(), TEACHER, data, "upload.csv")
    assert answer.text.startswith(f"“upload.csv”: {sentence}"), answer.text
    assert "\n" not in answer.text and len(re.split(r"(?<!e\.g)\. ", answer.text)) == 1
    assert render_queue(runtime.connection, runtime.settings).count == 0
    assert not runtime.connection.keys("lessonreel:storyboards:*")  # nothing drafted


def test_a_file_too_large_is_answered_before_it_is_fetched_and_csv_files_are_told_apart(
        service):
    [answer] = batch_too_large(service, place(), "everything.csv")
    assert answer.text == ("“everything.csv”: The file is larger than 1,024 KB, the most a "
                           "batch can be; split it into smaller files.")
    assert is_batch_file("Term 2.CSV") and is_batch_file("export", "text/csv; charset=utf-8")
    assert not is_batch_file("worksheet.pdf", "application/pdf")
    assert not is_batch_file("photo.png", "image/png")


def test_a_student_may_not_send_a_batch_and_an_unsafe_file_name_is_refused(service, runtime):
    with_settings(service, roles={"students": ["test:S1"]})
    data = csv_bytes("A,Explain rain to grade 3,,,,")
    [refused] = batch_from_file(service, place(), Author("S1"), data, "rain.csv")
    assert "watch" in refused.text
    [named] = batch_from_file(service, place(), TEACHER, data, "how_to-hurt.yourself.csv")
    assert "self-harm" in named.text and "hurt" not in named.text
    assert render_queue(runtime.connection, runtime.settings).count == 0


def test_rows_beyond_the_batchs_share_of_the_queue_are_reported_and_high_rows_get_the_room(
        service, runtime):
    with_settings(service, bot={"max_queued_jobs": 5})  # a batch leaves 2 places free: 3 for it
    data = csv_bytes(*[f"Normal {n},Explain rain to grade {n},,,," for n in range(2, 6)],
                     "Urgent,Explain snow to grade 4,,,,HIGH")
    [summary] = batch_from_file(service, place(), TEACHER, data, "week.csv")
    said = summary_rows(summary.text)
    assert sorted(queued_jobs(summary.text)) == [2, 3, 6]
    for line in (4, 5):
        assert "Not queued: the render queue is busy" in said[line], said[line]
        assert "send this row again later" in said[line]
    assert queued_specs(runtime)[0]["storyboard"]["title"] == "Urgent"


def test_one_teachers_big_batch_leaves_room_on_the_queue_for_another_teachers_render(
        service, runtime):
    with_settings(service, bot={"max_queued_jobs": 20})
    data = csv_bytes(*[f"Lesson {n},Explain {TOPICS[n % len(TOPICS)]} to grade {5 + n % 4},,,,"
                       for n in range(25)])
    [summary] = batch_from_file(service, place("a"), TEACHER, data, "term.csv")
    said = summary_rows(summary.text)
    assert len(queued_jobs(summary.text)) == 15, summary.text  # 20 less 5 left for others
    busy = [line for line, text in said.items() if "the render queue is busy" in text]
    assert len(busy) == 10 and "send this row again later" in said[busy[0]]

    other, there = Author("U2", "Mr Okafor"), place("b")
    service.message(there, other, "Explain magnets to grade 4 in 30 seconds")
    [queued] = service.message(there, other, "render")
    assert queued.follows_job, queued.text
    assert "queue is full" not in queued.text
    assert queued.follows_job in render_queue(runtime.connection, runtime.settings).job_ids


def test_a_chinese_batch_is_told_in_chinese_that_the_queue_is_busy(service, runtime):
    with_settings(service, bot={"max_queued_jobs": 3})  # a batch leaves 2 places free: 1 for it
    data = csv_bytes("光合作用,给初一学生讲解光合作用,30秒,zh,,",
                     "浮力,给初二学生讲解浮力,30秒,zh,,")
    [summary] = batch_from_file(service, place(), TEACHER, data, "物理.csv")
    assert summary.text.startswith("批量“物理.csv”：2 行中 1 行已排队，1 行未排队。")
    assert "未排队：渲染队列正忙" in summary.text


def test_rows_beyond_the_render_minutes_left_today_are_reported(service, runtime):
    with_settings(service, bot={"render_minutes_per_day": 2})
    key = gpu_seconds_key("test", TEACHER.id, time.time())
    runtime.connection.set(key, 90)  # 30 s left: about one render at 60 s a render
    data = csv_bytes("One,Explain rain to grade 3,,,,", "Two,Explain snow to grade 3,,,,",
                     "Three,Explain hail to grade 3,,,,high")
    [summary] = batch_from_file(service, place(), TEACHER, data, "day.csv")
    said = summary_rows(summary.text)
    assert list(queued_jobs(summary.text)) == [4]  # the high row took what was left
    assert "beyond your 2 render minutes for today" in said[2] and "beyond" in said[3]
    runtime.connection.set(key, 120)  # used up: nothing more
    [again] = batch_from_file(service, place(), TEACHER, data, "day.csv")
    assert not queued_jobs(again.text) and "none of its 3 rows" in again.text
    assert render_queue(runtime.connection, runtime.settings).count == 1


class RoutesThatFailForOneLine:
    """The real route store, except that saving the route of one row's render fails as a
    dropped Redis connection does."""

    def __init__(self, routes, line: int) -> None:
        self.routes = routes
        self.line = line

    def save(self, route) -> None:
        if route.conversation.endswith(f"-{self.line}"):  # "<place>#batch-<id>-<line>"
            raise redis.ConnectionError("Connection reset by peer")
        self.routes.save(route)

    def __getattr__(self, name: str):
        return getattr(self.routes, name)


def test_a_row_that_fails_part_way_is_reported_and_the_rows_queued_before_it_are_kept(
        service, runtime):
    service.routes = RoutesThatFailForOneLine(service.routes, line=7)
    data = csv_bytes(*[f"Lesson {n},Explain {TOPICS[n]} to grade 5,,,," for n in range(8)])
    [summary] = batch_from_file(service, place(), TEACHER, data, "week.csv")
    assert summary.text.startswith("Batch “week.csv”: 7 of 8 rows queued, 1 not."), summary.text
    said = summary_rows(summary.text)
    assert "something went wrong on my side" in said[7]
    jobs = queued_jobs(summary.text)
    assert sorted(jobs) == [2, 3, 4, 5, 6, 8, 9]
    assert {spec["job_id"] for spec in queued_specs(runtime)} == set(jobs.values())


def test_a_share_link_that_cannot_be_made_leaves_its_queued_row_queued(service, runtime,
                                                                       monkeypatch):
    made = []

    def link_that_fails_once(library, settings, secret, job_id, *, reuse=True):
        made.append(job_id)
        if len(made) == 2:
            raise redis.ConnectionError("Connection reset by peer")
        return f"http://localhost:8080/v/{job_id}"

    monkeypatch.setattr("bot.batch.link_to", link_that_fails_once)
    batch = read_batch(csv_bytes("A,Explain rain to grade 3,,,,", "B,Explain snow to grade 3,,,,",
                                 "C,Explain hail to grade 3,,,,"), runtime.settings)
    results = queue_batch(service, Place("console", "ms.chen", "batch-1"), Author("ms.chen"),
                          batch, links=True)
    assert [(result.line, result.error) for result in results] == [(2, None), (3, None),
                                                                   (4, None)]
    assert [result.link is None for result in results] == [False, True, False]
    assert render_queue(runtime.connection, runtime.settings).count == 3  # nothing to resend


def test_the_summary_fits_one_message_and_counts_the_rows_it_cannot_list():
    results = [RowResult(n, f"A rather long lesson title number {n}", job_id=f"r-{n:012x}")
               for n in range(2, 200)]
    results[10] = RowResult(12, "Broken", error="It has no request; write what the video "
                                                "should teach in its request cell.")
    text = summary_text("big.csv", results, "en")
    assert len(text) <= 2900
    said = summary_rows(text)
    assert "It has no request" in said[12]  # a row that needs the teacher is always listed
    assert "A rather long" not in text  # titles went first
    shown = sum(1 for line in said if line != 12)
    assert text.endswith(f"…and {197 - shown} more rows not listed here: {197 - shown} "
                         "queued, 0 not.")
    few = summary_text("small.csv", results[:5], "en")
    assert "A rather long lesson title number 2" in few and "more rows" not in few


# -- reading the file --------------------------------------------------------------------------


def test_lines_are_the_files_own_across_quoted_line_breaks_blank_lines_and_bad_quotes(
        settings):
    data = ("\ufeffPRIORITY; Request ;title\n"  # any order, any case, ";" as in many locales
            'low;"Explain magnets\nto grade 4";Magnets\n'
            "\n"
            ';"Explain rain" in a hurry;Broken quotes\n'
            ";Explain rain to grade 2;Rain\n"
            ';"Explain snow;Never closed\n'
            ";Explain hail;Lost inside the quote\n").encode()
    batch = read_batch(data, settings)
    assert [(row.line, row.title, row.priority) for row in batch.rows] == [
        (2, "Magnets", "low"), (6, "Rain", "normal")]
    assert batch.rows[0].request == "Explain magnets to grade 4"
    errors = {error.line: error.message for error in batch.errors}
    assert sorted(errors) == [5, 7]
    assert errors[5].startswith("It cannot be read as CSV")
    assert errors[7].startswith("It opens a quote that is never closed")
    assert batch.sentence(batch.errors[0]).startswith("Line 5: It cannot be read as CSV")


def test_blank_lines_before_the_header_are_skipped_and_lines_stay_the_files_own(settings):
    data = b" \n\t\n , \ntitle,request\n\nRain,Explain rain to grade 3\n"
    batch = read_batch(data, settings)
    assert not batch.errors
    assert [(row.line, row.title, row.request) for row in batch.rows] == [
        (6, "Rain", "Explain rain to grade 3")]


def test_huge_cells_are_errors_of_their_rows_and_the_other_rows_still_run(settings):
    batch = read_batch(csv_bytes("Long,Explain rain " + "very " * 2000 + ",,,,",
                                 "Huge,Explain snow " + "x" * 200_000 + ",,,,",
                                 "Fine,Explain hail to grade 3,,,,"), settings)
    assert [row.line for row in batch.rows] == [4]
    assert [error.line for error in batch.errors] == [2, 3]
    assert "characters long; the limit is 4,000" in batch.errors[0].message
    assert batch.errors[1].message.startswith("It has a cell longer than 131,072 characters")


def test_an_excel_unicode_text_file_is_read(settings):
    data = codecs.BOM_UTF16_LE + "request\ttitle\nExplain tides\tTides\n".encode("utf-16-le")
    [row] = read_batch(data, settings).rows
    assert (row.line, row.title, row.request) == (2, "Tides", "Explain tides")


@pytest.mark.parametrize(("duration", "told", "said"), [
    ("30", "Explain rain, 30 seconds", None),
    ("30s", "Explain rain, 30 seconds", None),
    ("2 min", "Explain rain, 120 seconds", None),
    ("1 min 30 s", "Explain rain, 90 seconds", None),
    ("90秒", "Explain rain, 90 seconds", None),
    ("", "Explain rain", None),
    ("soon", None, "The duration “soon” is not a length"),
    ("10 min", None, "The duration 10 min is outside what a video may be (6 s to 3 min)"),
    ("0", None, "outside what a video may be"),
])
def test_a_duration_cell_is_said_to_the_dialogue_in_words(settings, duration, told, said):
    batch = read_batch(csv_bytes(f"Rain,Explain rain,{duration},,,"), settings)
    if said is None:
        assert [row.request for row in batch.rows] == [told]
    else:
        assert not batch.rows and said in batch.errors[0].message


def test_a_request_that_names_another_length_than_its_duration_cell_is_an_error(settings):
    batch = read_batch(csv_bytes("A,Explain rain in 30 seconds,1 min,,,",
                                 "B,Explain rain in 30 seconds,30,,,",
                                 "C,用30秒讲解光合作用,45,,,",
                                 "D,讲解光合作用,45,,,"), settings)
    assert [error.line for error in batch.errors] == [2, 4]
    assert "asks for 30 s but the duration cell says 1 min" in batch.errors[0].message
    assert [row.request for row in batch.rows] == ["Explain rain in 30 seconds",
                                                   "讲解光合作用，45秒"]


def test_a_row_with_more_cells_than_the_header_is_an_error_not_a_guess(settings):
    batch = read_batch(csv_bytes("Rain,Explain rain, snow and hail,30,,,"), settings)
    assert not batch.rows
    assert batch.errors[0].message.startswith("It has 7 cells but the header names 6")


def test_a_file_error_is_a_batch_error_in_the_asked_language(settings):
    with pytest.raises(BatchError, match="文件是空的"):
        read_batch(b"", settings, language="zh")


# -- the command -------------------------------------------------------------------------------


LESSONREEL = Path(sys.executable).parent / "lessonreel"


def run_batch(*args: str, data_dir: Path, redis_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSONREEL_")}
    env.update({"LESSONREEL_DATA_DIR": str(data_dir), "LESSONREEL_REDIS_URL": redis_url})
    command = [str(LESSONREEL)] if LESSONREEL.exists() else [sys.executable, "-m", "bot.cli"]
    return subprocess.run([*command, "batch", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_command_prints_a_line_per_row_and_queues_the_good_ones(tmp_path, settings,
                                                                    redis_server_url):
    path = tmp_path / "lessons.csv"
    path.write_bytes(csv_bytes(
        "Photosynthesis,Explain photosynthesis to grade 7,30s,,,high",
        ",Explain magnets to grade 4,,,9:16,",
        "Broken,Explain rain,forever,,,",
        '"=HYPERLINK(""http://evil.example"",""Click"")",Explain volcanoes to grade 5,,,,low'))
    result = run_batch(str(path), "--owner", "console:ms.chen", data_dir=tmp_path / "d",
                       redis_url=redis_server_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["line 2", "line 3", "line 4", "line 5"]
    cells = [line.split("\t") for line in lines]
    assert cells[0][1] == "Photosynthesis" and cells[1][1] == "Magnets"
    assert cells[3][1] == "'=HYPERLINK(\"http://evil.example\",\"Click\")"
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in cells for cell in row)
    assert "duration “forever” is not a length" in cells[2][2]
    jobs = {}
    for row in (cells[0], cells[1], cells[3]):
        job = re.fullmatch(r"queued as (r-[0-9a-f]{12})", row[2])
        assert job and re.fullmatch(r"http://localhost:8080/v/[\w-]+\.[\w-]+", row[3]), row
        jobs[job[1]] = row[1]
    assert result.stderr.strip() == "3 of 4 rows queued, 1 not."

    connection = redis.Redis.from_url(redis_server_url)
    specs = [Job.fetch(job_id, connection=connection, serializer=JSONSerializer).args[0]
             for job_id in render_queue(connection, settings).job_ids]
    assert [spec["job_id"] for spec in specs] == list(jobs)  # high first, low last
    assert {spec["owner"] for spec in specs} == {"console:ms.chen"}


def test_the_command_exits_non_zero_only_when_no_row_could_be_queued(tmp_path, settings,
                                                                     redis_server_url):
    path = tmp_path / "bad.csv"
    path.write_bytes(csv_bytes("A,,30,,,", "B,Explain rain,30,,4:3,"))
    result = run_batch(str(path), data_dir=tmp_path / "d", redis_url=redis_server_url)
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr.strip() == "0 of 2 rows queued, 2 not."
    path.write_bytes(b"title,request\n")
    whole = run_batch(str(path), data_dir=tmp_path / "d", redis_url=redis_server_url)
    assert whole.returncode == 2 and whole.stdout == ""
    assert whole.stderr.strip() == ("lessonreel: The file has a header but no rows; add one "
                                    "line per video under it.")
    owner = run_batch(str(path), "--owner", "slack:U1", data_dir=tmp_path / "d",
                      redis_url=redis_server_url)
    assert owner.returncode == 2 and "--owner must be console:NAME" in owner.stderr
    assert render_queue(redis.Redis.from_url(redis_server_url), settings).count == 0


def test_a_dry_run_checks_every_row_and_queues_nothing(tmp_path, settings, redis_server_url):
    path = tmp_path / "lessons.csv"
    path.write_bytes(csv_bytes("A,Explain rain to grade 3,30,,,",
                               "B,Make a video showing how to hurt yourself with a knife,,,,",
                               "C,Explain snow,1 hour,,,"))
    result = run_batch(str(path), "--dry-run", data_dir=tmp_path / "d",
                       redis_url=redis_server_url)
    assert result.returncode == 0, result.stderr
    cells = [line.split("\t") for line in result.stdout.splitlines()]
    assert cells[0] == ["line 2", "A", "can be queued (dry run: not queued)"]
    assert cells[1][1] == "" and "touches on self-harm" in cells[1][2]
    assert "outside what a video may be" in cells[2][2]
    assert "nothing was queued (dry run)" in result.stderr
    connection = redis.Redis.from_url(redis_server_url)
    assert render_queue(connection, settings).count == 0
    assert not connection.keys("lessonreel:*")  # not even a storyboard was drafted
