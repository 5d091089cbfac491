"""`lessonreel models list|pull` for every kind of preset: video models, voices, moderation
classifiers. Nothing is downloaded: in-process, a hand-written hub writes what the real one
would; as a process, the real hub runs offline (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import build_parser
from bot.doctor import check_classifier, check_voice
from engine.classifier import load_classifier_presets
from engine.errors import UserError
from engine.narration import load_voice_presets, voice_installed
from engine.presets import load_presets
from engine.settings import Settings, load_settings
from tests.tiny_gguf import build_tiny_gguf
from worker.models_cli import Hub, run

LESSONREEL = Path(sys.executable).with_name("lessonreel")
VOICE, CLASSIFIER, VIDEO = "mms-tts-eng", "llama-guard-3-1b", "wan2.1-t2v-1.3b"
# What each repository holds, as far as lessonreel looks.
REPOS = {
    "facebook/mms-tts-eng": ("config.json", "vocab.json", "tokenizer_config.json",
                             "model.safetensors"),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": ("model_index.json",),
}


class FakeHub:
    """Stands in for the model hub: writes a repository's files (a GGUF file: a tiny real one)
    where the real hub would, records what it was asked, and knows only REPOS and the
    classifier's repository."""

    def __init__(self) -> None:
        self.asked: list[tuple] = []

    def hub(self) -> Hub:
        return Hub(download_repo=self.download_repo, download_file=self.download_file)

    def download_repo(self, repo: str, revision: str, folder: Path) -> None:
        self.asked.append((repo, revision, folder))
        if repo not in REPOS:
            raise FileNotFoundError(f"no repository {repo}")  # as the hub's errors are
        folder.mkdir(parents=True, exist_ok=True)
        for name in REPOS[repo]:
            (folder / name).write_text("{}")

    def download_file(self, repo: str, revision: str, file: str, folder: Path) -> None:
        self.asked.append((repo, revision, file, folder))
        if repo != load_classifier_presets()[CLASSIFIER].repo:
            raise FileNotFoundError(f"no repository {repo}")
        folder.mkdir(parents=True, exist_ok=True)
        build_tiny_gguf(folder / file)


def models(settings: Settings, *argv: str, hub: Hub | None = None) -> tuple[int, str]:
    """`lessonreel models ARGV`, parsed by the real CLI parser; its status and its output."""
    out = io.StringIO()
    code = run(build_parser().parse_args(["models", *argv]), settings, hub=hub, out=out)
    return code, out.getvalue()


def rows(output: str) -> dict[str, str]:
    """The table rows of `models list`, by preset name."""
    return {line.split("│")[1].strip(): line for line in output.splitlines()
            if line.count("│") >= 5 and "preset" not in line}


def lessonreel(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    """The command as an operator runs it, offline, with only this test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSONREEL_")}
    env.update({"LESSONREEL_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"})
    command = [str(LESSONREEL)] if LESSONREEL.exists() else [sys.executable, "-m", "bot.cli"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(autouse=True)
def wide_tables(monkeypatch):
    """Rich folds a table to COLUMNS: wide enough that each row is one line."""
    monkeypatch.setenv("COLUMNS", "300")


# --- list ----------------------------------------------------------------------------------


def test_list_shows_every_kind_of_preset_each_marked_installed_or_not(settings):
    _, before = models(settings, "list")
    voice = settings.models_path / load_voice_presets()[VOICE].folder
    voice.mkdir(parents=True)
    for name in ("config.json", "vocab.json"):
        (voice / name).write_text("{}")
    classifier = build_tiny_gguf(settings.models_path / load_classifier_presets()[CLASSIFIER].file)

    code, after = models(settings, "list")

    assert code == 0
    for title in ("Video model presets", "Voice presets for narration",
                  "Moderation classifier presets"):
        assert title in after
    names = [*load_presets(), *load_voice_presets(), *load_classifier_presets()]
    assert sorted(rows(before)) == sorted(rows(after)) == sorted(names)
    assert all(row.split("│")[-2].strip() == "no" for row in rows(before).values())
    listed = rows(after)
    assert f"yes ({voice})" in listed[VOICE] and "│ en " in listed[VOICE]
    assert f"yes ({classifier})" in listed[CLASSIFIER]
    assert listed[VIDEO].split("│")[-2].strip() == "no"


# --- pull ----------------------------------------------------------------------------------


def test_pulling_a_voice_fetches_its_repository_into_its_folder(monkeypatch, settings):
    hub = FakeHub()
    folder = settings.models_path / load_voice_presets()[VOICE].folder

    code, output = models(settings, "pull", VOICE, hub=hub.hub())

    assert code == 0 and output == f"Downloaded to {folder}\n"
    assert hub.asked == [("facebook/mms-tts-eng", "main", folder)]
    assert voice_installed(folder)
    assert "yes" in rows(models(settings, "list")[1])[VOICE]
    monkeypatch.setenv("LESSONREEL_NARRATION__ENABLED", "true")
    spoken = check_voice(load_settings(), find_program=lambda _program: "/usr/bin/espeak-ng")
    assert f"en: {VOICE} (neural, from {folder})" in spoken.detail  # the worker would use it


def test_pulling_a_classifier_fetches_its_one_gguf_file_into_the_models_folder(monkeypatch,
                                                                               settings):
    hub = FakeHub()
    preset = load_classifier_presets()[CLASSIFIER]
    file = settings.models_path / preset.file

    code, output = models(settings, "pull", CLASSIFIER, hub=hub.hub())

    assert code == 0 and output == f"Downloaded to {file}\n"
    assert hub.asked == [(preset.repo, preset.revision, preset.file, settings.models_path)]
    assert file.read_bytes()[:4] == b"GGUF"
    assert "yes" in rows(models(settings, "list")[1])[CLASSIFIER]
    monkeypatch.setenv("LESSONREEL_MODERATION__CLASSIFIER", CLASSIFIER)
    assert check_classifier(load_settings()).status == "ok"  # the bot would start with it


def test_pulling_a_video_preset_still_fetches_its_repository(settings):
    hub = FakeHub()
    folder = settings.models_path / load_presets()[VIDEO].folder

    code, output = models(settings, "pull", VIDEO, hub=hub.hub())

    assert code == 0 and output == f"Downloaded to {folder}\n"
    assert hub.asked == [("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "main", folder)]
    assert (folder / "model_index.json").is_file()


def test_a_failed_download_says_what_to_copy_where(settings, monkeypatch):
    monkeypatch.delitem(REPOS, "facebook/mms-tts-eng")  # the hub lacks it
    voice_folder = settings.models_path / load_voice_presets()[VOICE].folder
    preset = load_classifier_presets()[CLASSIFIER]

    class Refusing(FakeHub):
        def download_file(self, repo: str, revision: str, file: str, folder: Path) -> None:
            raise ConnectionError("offline")

    with pytest.raises(UserError) as voice:
        models(settings, "pull", VOICE, hub=FakeHub().hub())
    with pytest.raises(UserError) as classifier:
        models(settings, "pull", CLASSIFIER, hub=Refusing().hub())

    assert str(voice.value).startswith("Could not download facebook/mms-tts-eng "
                                       "(FileNotFoundError)")
    assert f"copy the folder to {voice_folder}." in str(voice.value)
    assert str(classifier.value).startswith(f"Could not download {preset.repo} "
                                            "(ConnectionError)")
    assert f"copy {preset.file} to {settings.models_path}." in str(classifier.value)


def test_pull_without_a_name_says_how_to_find_one(settings):
    with pytest.raises(UserError, match="'lessonreel models list' shows them"):
        models(settings, "pull", hub=FakeHub().hub())


def test_preset_names_are_unique_across_kinds():
    """`pull NAME` looks in models.toml, then voices.toml, then classifiers.toml: a name in
    two of them could never reach the second."""
    kinds = [set(load_presets()), set(load_voice_presets()), set(load_classifier_presets())]
    assert sum(map(len, kinds)) == len(set().union(*kinds))


# --- as a process: exit codes and the real hub, offline ------------------------------------


def test_an_unknown_preset_exits_2_and_names_every_preset(tmp_path):
    result = lessonreel("models", "pull", "llama-guard-9", data_dir=tmp_path / "d")

    assert result.returncode == 2 and result.stdout == ""
    assert "There is no preset 'llama-guard-9'" in result.stderr
    for name in (*load_presets(), *load_voice_presets(), *load_classifier_presets()):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("name", "repo", "copy"), [
    (VOICE, "facebook/mms-tts-eng", "copy the folder to"),
    (CLASSIFIER, "QuantFactory/Llama-Guard-3-1B-GGUF", "copy Llama-Guard-3-1B.Q4_K_M.gguf to"),
])
def test_pull_offline_exits_2_and_says_what_to_do(tmp_path, name, repo, copy):
    """The real huggingface_hub call, refused for being offline: the arguments it was given
    were accepted (a wrong one would be a TypeError)."""
    result = lessonreel("models", "pull", name, data_dir=tmp_path / "d")

    assert result.returncode == 2
    assert f"Could not download {repo} (LocalEntryNotFoundError)" in result.stderr
    assert copy in result.stderr and "Traceback" not in result.stderr
