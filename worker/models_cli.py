"""`lessonreel models`: which presets are installed, and fetching one on a connected machine."""

from __future__ import annotations

from pathlib import Path

from engine.errors import UserError
from engine.presets import ModelPreset, load_presets
from engine.settings import Settings


def installed_presets(settings: Settings) -> list[tuple[ModelPreset, Path, bool]]:
    """Every preset, its folder, and whether its weights are there."""
    return [(preset, settings.models_path / preset.folder,
             (settings.models_path / preset.folder / "model_index.json").is_file())
            for preset in load_presets().values()]


def pull(settings: Settings, name: str) -> Path:
    """Download a preset's weights into the models folder (needs internet access)."""
    presets = load_presets()
    if name not in presets:
        raise UserError(f"There is no preset {name!r}; the presets are: {', '.join(presets)}.")
    preset = presets[name]
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError("Downloading needs huggingface_hub: pip install -e '.[worker]'.") \
            from None
    target = settings.models_path / preset.folder
    try:
        snapshot_download(repo_id=preset.repo, revision=preset.revision, local_dir=target)
    except Exception as exc:  # offline, unknown repo, refused: all end the same way for us
        raise UserError(
            f"Could not download {preset.repo} ({exc.__class__.__name__}); this needs internet "
            f"access to the model hub. On a machine without it, copy the folder to {target}."
        ) from None
    return target
