"""The bot commands as an IT person starts them: `chat`, `serve`, `bot slack|telegram`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.test_cli import run_cli

LESSONREEL = Path(sys.executable).with_name("lessonreel")
COMMAND = [str(LESSONREEL)] if LESSONREEL.exists() else [sys.executable, "-m", "bot.cli"]
ROOT = Path(__file__).resolve().parents[1]


def _env(data_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LESSONREEL_", "SLACK_", "TELEGRAM_"))}
    env.update({"LESSONREEL_DATA_DIR": str(data_dir), **extra})
    return env


def test_chat_holds_a_conversation_in_the_terminal_and_renders_a_preview(tmp_path):
    lines = "\n".join(["Explain photosynthesis to grade 7 in 20 seconds",
                       "make scene 2 shorter", "preview", ""])
    result = subprocess.run([*COMMAND, "chat"], input=lines, env=_env(tmp_path / "data"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Here is a first draft" in out and "Version 2." in out
    assert "Your preview is ready" in out and "/v/" in out
    previews = list((tmp_path / "data" / "media").glob("*/preview.mp4"))
    assert len(previews) == 1 and previews[0].stat().st_size > 1000


def test_chat_answers_commands_in_chinese_without_a_storyboard(tmp_path):
    result = subprocess.run([*COMMAND, "chat", "--no-render"], input="帮助\n队列\n",
                            env=_env(tmp_path / "data"), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "命令" in result.stdout and "队列是空的" in result.stdout


@pytest.mark.parametrize(("args", "env", "message"), [
    (["bot", "slack"], {}, "SLACK_BOT_TOKEN is not set"),
    (["bot", "slack"], {"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_APP_TOKEN is not set"),
    (["bot", "slack", "--http"], {"SLACK_BOT_TOKEN": "xoxb-1"},
     "SLACK_SIGNING_SECRET is not set"),
    (["bot", "telegram"], {}, "TELEGRAM_BOT_TOKEN is not set"),
    (["bot", "telegram", "--webhook"], {"TELEGRAM_BOT_TOKEN": "1:A"},
     "LESSONREEL_TELEGRAM_WEBHOOK_SECRET must be set"),
    (["bot", "telegram", "--webhook"], {"TELEGRAM_BOT_TOKEN": "1:A",
                                        "LESSONREEL_TELEGRAM_WEBHOOK_SECRET": "s" * 20},
     "LESSONREEL_PUBLIC_URL must be set"),
    (["bot", "slack", "--port", "99999"], {}, "port number"),
    (["serve"], {"LESSONREEL_SHARE_SECRET": "short"}, "at least 16 characters"),
])
def test_a_bot_missing_what_it_needs_says_so_in_one_sentence(tmp_path, args, env, message):
    result = run_cli(*args, env_extra=env, data_dir=tmp_path / "data")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serve_answers_and_refuses_an_unknown_link(tmp_path):
    port = free_port()
    process = subprocess.Popen([*COMMAND, "serve", "--host", "127.0.0.1", "--port", str(port)],
                               env=_env(tmp_path / "data"), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.read() == b"ok"
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v/forged.token", timeout=5)
        assert refused.value.code == 404
        assert "expired or is not valid" in refused.value.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_slack_manifest_asks_for_what_the_bot_listens_to():
    manifest = yaml.safe_load((ROOT / "config" / "slack-manifest.yaml").read_text())
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"app_mention", "message.channels", "message.im"} <= events
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"chat:write", "files:write", "app_mentions:read", "commands"} <= scopes
    assert manifest["features"]["slash_commands"][0]["command"] == "/lessonreel"
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True


@pytest.mark.parametrize(("request_text", "category"), [
    ("Make a video showing how to hurt yourself with a knife", "self-harm"),
    ("用30秒讲解怎么自杀", "自我伤害"),
])
def test_demo_refuses_what_must_never_be_generated(tmp_path, request_text, category):
    result = run_cli("demo", request_text, data_dir=tmp_path / "data")
    assert result.returncode == 2 and category in result.stderr
    assert not list((tmp_path / "data").rglob("*.mp4"))
