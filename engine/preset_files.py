"""Preset files in config/ (video models, voices, moderation classifiers): each TOML table is
one preset, named by its key, validated into its record; a bad one stops start-up with one
sentence that names the file, the preset and the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from engine.errors import SettingsError

Preset = TypeVar("Preset", bound=BaseModel)


def read_presets(path: Path, record: type[Preset], kind: str) -> dict[str, Preset]:
    """`kind` names the presets in the sentence ("Model preset", "Voice preset" …)."""
    presets = {}
    for name, values in tomllib.loads(path.read_text(encoding="utf-8")).items():
        try:
            presets[name] = record(name=name, **values)
        except ValidationError as exc:
            problem = exc.errors()[0]
            key = ".".join(str(part) for part in problem["loc"])
            raise SettingsError(f"{kind} {name!r} in {path}: {key}: {problem['msg']}.") \
                from None
    return presets
