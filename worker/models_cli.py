"""`lessonreel models`: which presets are installed, and fetching one on a connected machine.

Three kinds of preset live in the models folder (diffusion.models_dir, <data dir>/models):

    kind        presets in               `pull` fetches           installed when there is
    video       config/models.toml       the repo, into <folder>  <folder>/model_index.json
    voice       config/voices.toml       the repo, into <folder>  <folder>/config.json + vocab.json
    classifier  config/classifiers.toml  one GGUF file, <file>    <file>

Nothing else in lessonreel downloads: renders and the bot only read these folders. The model
hub is reached through `Hub`, so tests hand in one that writes files instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from engine.classifier import ClassifierPreset, load_classifier_presets
from engine.errors import UserError
from engine.narration import VoicePreset, load_voice_presets, voice_folder, voice_installed
from engine.presets import ModelPreset, load_presets
from engine.settings import Settings


def _download_repo(repo: str, revision: str, folder: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo, revision=revision, local_dir=folder)


def _download_file(repo: str, revision: str, file: str, folder: Path) -> None:
    from huggingface_hub import hf_hub_download

    hf_hub_download(repo_id=repo, filename=file, revision=revision, local_dir=folder)


@dataclass(frozen=True)
class Hub:
    """The model hub, reached only here (huggingface_hub, imported when first used)."""

    download_repo: Callable[[str, str, Path], object] = _download_repo  # repo, revision, folder
    # repo, revision, file, folder: the file lands at folder / file
    download_file: Callable[[str, str, str, Path], object] = _download_file


# --- what is installed ---------------------------------------------------------------------


def installed_presets(settings: Settings) -> list[tuple[ModelPreset, Path, bool]]:
    """Every video preset, its folder, and whether its weights are there."""
    return [(preset, settings.models_path / preset.folder,
             (settings.models_path / preset.folder / "model_index.json").is_file())
            for preset in load_presets().values()]


def installed_voices(settings: Settings) -> list[tuple[VoicePreset, Path, bool]]:
    """Every voice preset, its folder, and whether its files are there."""
    return [(preset, voice_folder(settings, preset),
             voice_installed(voice_folder(settings, preset)))
            for preset in load_voice_presets().values()]


def installed_classifiers(settings: Settings) -> list[tuple[ClassifierPreset, Path, bool]]:
    """Every classifier preset, its GGUF file in the models folder, and whether it is there.
    (moderation.model_path may name a file elsewhere; `lessonreel doctor` checks that one.)"""
    return [(preset, settings.models_path / preset.file,
             (settings.models_path / preset.file).is_file())
            for preset in load_classifier_presets().values()]


# --- pulling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """What `pull` fetches for one preset: a whole repository into a folder, or one file."""

    repo: str
    revision: str
    target: Path  # the folder, or the file
    file: str = ""  # the one file of the repo to fetch; "": all of it


def download_for(settings: Settings, name: str) -> Download:
    """The download preset `name` asks for; UserError naming every preset when none is."""
    videos, voices = load_presets(), load_voice_presets()
    classifiers = load_classifier_presets()
    if name in videos:
        video = videos[name]
        return Download(video.repo, video.revision, settings.models_path / video.folder)
    if name in voices:
        voice = voices[name]
        return Download(voice.repo, voice.revision, voice_folder(settings, voice))
    if name in classifiers:
        classifier = classifiers[name]
        return Download(classifier.repo, classifier.revision,
                        settings.models_path / classifier.file, file=classifier.file)
    raise UserError(f"There is no preset {name!r}; the video presets are: {', '.join(videos)}; "
                    f"the voice presets: {', '.join(voices)}; the moderation classifier "
                    f"presets: {', '.join(classifiers)}.")


def pull(settings: Settings, name: str, *, hub: Hub | None = None) -> Path:
    """Download a preset into the models folder (needs internet access); where it now is."""
    download = download_for(settings, name)
    hub = hub or Hub()
    try:
        if download.file:
            hub.download_file(download.repo, download.revision, download.file,
                              download.target.parent)
        else:
            hub.download_repo(download.repo, download.revision, download.target)
    except ImportError:
        raise UserError("Downloading needs huggingface_hub: pip install huggingface_hub (it "
                        "comes with pip install -e '.[worker]').") from None
    except Exception as exc:  # offline, unknown repo, refused: all end the same way for us
        copy = (f"{download.file} to {download.target.parent}" if download.file
                else f"the folder to {download.target}")
        raise UserError(
            f"Could not download {download.repo} ({exc.__class__.__name__}); this needs "
            f"internet access to the model hub. On a machine without it, copy {copy}."
        ) from None
    return download.target


# --- the command ---------------------------------------------------------------------------


def run(args: argparse.Namespace, settings: Settings, *, hub: Hub | None = None,
        out: TextIO | None = None) -> int:
    """`models list` prints every preset and whether it is installed; `models pull NAME`
    downloads one. UserError for what the operator can fix (the CLI exits 2 with it)."""
    out = out or sys.stdout
    if args.action == "pull":
        if not args.preset:
            raise UserError("Name the preset to pull, e.g. 'lessonreel models pull "
                            "wan2.1-t2v-1.3b'; 'lessonreel models list' shows them.")
        out.write(f"Downloaded to {pull(settings, args.preset, hub=hub)}\n")
        return 0
    print_presets(settings, out)
    return 0


def print_presets(settings: Settings, out: TextIO) -> None:
    """One table per kind of preset, each row marked installed (where) or not."""
    from rich.console import Console
    from rich.table import Table

    def installed(present: bool, where: Path) -> str:
        return f"yes ({where})" if present else "no"

    where = settings.models_path
    videos = Table(title=f"Video model presets (weights in {where})")
    voices = Table(title=f"Voice presets for narration (in {where})")
    classifiers = Table(title=f"Moderation classifier presets (GGUF files in {where})")
    for table, columns in ((videos, ("model", "pipelines")), (voices, ("voice", "language")),
                           (classifiers, ("model", "file"))):
        table.add_column("preset", no_wrap=True)
        for column in (*columns, "installed"):
            table.add_column(column, overflow="fold")
    for video, folder, present in installed_presets(settings):
        pipelines = " + ".join(filter(None, (video.text_to_video, video.image_to_video)))
        videos.add_row(video.name, video.title, pipelines, installed(present, folder))
    for voice, folder, present in installed_voices(settings):
        voices.add_row(voice.name, voice.title, voice.language, installed(present, folder))
    for classifier, file, present in installed_classifiers(settings):
        classifiers.add_row(classifier.name, classifier.title, classifier.file,
                            installed(present, file))
    console = Console(file=out)
    for table in (videos, voices, classifiers):
        console.print(table)
