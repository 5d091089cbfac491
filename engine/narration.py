"""Narration planning: voice presets, spoken phrases, and the timing the voice decides.

A scene's narration is spoken one phrase at a time; the phrases are the timeline's caption
phrases (`engine.timeline.split_caption`), so each caption is exactly one spoken phrase.
Given how long each phrase takes to say (the worker measures it by speaking it), the plan
says how long each scene lasts — as long as its voice needs plus a pause, within the scene
length limits — and where each caption goes: on screen when its words are said.

Nothing here speaks: no torch, no subprocess. The worker (worker/tts.py,
worker/narration_audio.py) speaks, measures, and asks this module for the plan.

    [ lead | phrase 1 | gap | phrase 2 | pause ... ]   one scene, whole seconds long
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.paths import CONFIG_DIR
from engine.preset_files import read_presets
from engine.settings import Settings
from engine.storyboard import MAX_SCENE_SECONDS, MIN_SCENE_SECONDS, Language, Storyboard
from engine.timeline import Cue, Timeline, split_caption

# The voice starts this long after its scene's first frame: a cut needs a breath.
LEAD_SECONDS = 0.2
# Silence between two phrases of one scene.
PHRASE_GAP_SECONDS = 0.15
# The last caption of a scene stays this long after its words (phrases before it stay until
# the next phrase starts, so captions do not blink off between phrases).
CAPTION_HOLD_SECONDS = 0.3
# Speaking faster than this to fit a scene's limit is harder to follow than losing the end.
MAX_SPEED_UP = 1.5
# Voices do not speed up exactly in proportion (pauses stay): ask for a little more.
SPEED_UP_MARGIN = 1.05
# Files a VITS voice folder holds (what `save_pretrained` writes for model and tokenizer).
VOICE_FILES = ("config.json", "vocab.json")


# -- voice presets (config/voices.toml) ------------------------------------------------------

class VoicePreset(BaseModel):
    """A neural voice: which backend runs it, for which language, and where its files live."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = ""
    title: str
    backend: Literal["vits"]
    language: Language
    repo: str
    revision: str = "main"
    folder: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    sample_rate: int = Field(ge=8000, le=48_000)
    license: str = ""


@cache
def load_voice_presets(path: Path = CONFIG_DIR / "voices.toml") -> dict[str, VoicePreset]:
    return read_presets(path, VoicePreset, "Voice preset")


def voice_folder(settings: Settings, preset: VoicePreset) -> Path:
    """Where a preset's files live: beside the video models, one folder each."""
    return settings.models_path / preset.folder


def voice_installed(folder: Path) -> bool:
    return all((folder / name).is_file() for name in VOICE_FILES)


# -- phrases and timing ----------------------------------------------------------------------

def scene_phrases(storyboard: Storyboard) -> list[list[str]]:
    """Each scene's narration as the phrases to speak one by one (its captions)."""
    return [split_caption(scene.narration, storyboard.language) for scene in storyboard.scenes]


@dataclass(frozen=True)
class SpokenPhrase:
    text: str
    start: float  # seconds from the scene's first frame
    end: float


@dataclass(frozen=True)
class SceneTiming:
    duration: int  # whole seconds, as the storyboard shows it
    phrases: tuple[SpokenPhrase, ...]

    @property
    def speech_end(self) -> float:
        return self.phrases[-1].end if self.phrases else 0.0

    @property
    def overflow(self) -> float:
        """Seconds of voice past the scene's end (its limit would not let it grow enough)."""
        return max(0.0, self.speech_end - self.duration)

    def speed_up(self, lead: float = LEAD_SECONDS, gap: float = PHRASE_GAP_SECONDS) -> float:
        """How much faster the phrases must be said to end by the scene's last frame; 1 when
        they already do, at most MAX_SPEED_UP."""
        if not self.overflow:
            return 1.0
        speech = sum(p.end - p.start for p in self.phrases)
        available = self.duration - lead - gap * (len(self.phrases) - 1)
        if available <= 0:
            return MAX_SPEED_UP
        return min(MAX_SPEED_UP, speech / available * SPEED_UP_MARGIN)


@dataclass(frozen=True)
class NarrationPlan:
    storyboard: Storyboard  # with the durations the voice decided: the card shows these
    scenes: tuple[SceneTiming, ...]
    notes: tuple[str, ...]

    def cues(self, timeline: Timeline) -> tuple[Cue, ...]:
        """A caption per spoken phrase, in `timeline`'s frames (a timeline built from
        `self.storyboard`): it appears on the frame its words start and stays until the next
        phrase starts, or a moment after the scene's last words."""
        cues: list[Cue] = []
        fps = timeline.fps
        for segment in timeline.segments:
            if segment.scene_index is None:
                continue
            phrases = self.scenes[segment.scene_index].phrases
            starts = [segment.start_frame + math.floor(p.start * fps) for p in phrases]
            for index, phrase in enumerate(phrases):
                if index + 1 < len(phrases):
                    end = starts[index + 1]
                else:
                    end = segment.start_frame + math.ceil((phrase.end + CAPTION_HOLD_SECONDS)
                                                          * fps)
                end = min(end, segment.end_frame)
                if end > starts[index]:  # a phrase cut off at the scene's end has no caption
                    cues.append(Cue(starts[index], end, phrase.text))
        return tuple(cues)

    def with_cues(self, timeline: Timeline) -> Timeline:
        """`timeline` with its captions placed where the voice says them."""
        return replace(timeline, cues=self.cues(timeline))


def plan_narration(
    storyboard: Storyboard, spoken: Sequence[Sequence[tuple[str, float]]], *,
    pause_seconds: float, max_total_seconds: int, lead_seconds: float = LEAD_SECONDS,
    gap_seconds: float = PHRASE_GAP_SECONDS,
) -> NarrationPlan:
    """Time every scene by its voice. `spoken` holds, per scene, each phrase and the seconds
    it takes to say. A scene lasts lead + phrases + gaps + pause, rounded up to whole seconds
    and kept within MIN_SCENE_SECONDS..MAX_SCENE_SECONDS; a scene with nothing to say keeps
    its duration. If the video would pass `max_total_seconds`, the scenes that grew give
    seconds back, the most grown first."""
    if len(spoken) != len(storyboard.scenes):
        raise ValueError(f"{len(spoken)} scenes spoken for {len(storyboard.scenes)} scenes")
    layouts = [_lay_out(phrases, lead_seconds, gap_seconds) for phrases in spoken]
    durations = []
    for scene, layout in zip(storyboard.scenes, layouts, strict=True):
        if not layout:
            durations.append(scene.duration)
            continue
        needed = math.ceil(layout[-1].end + pause_seconds - 1e-6)
        durations.append(min(MAX_SCENE_SECONDS, max(MIN_SCENE_SECONDS, needed)))
    wanted = list(durations)
    _fit_total(durations, [scene.duration for scene in storyboard.scenes],
               max_total_seconds - storyboard.title_card_seconds)

    scenes = tuple(SceneTiming(d, tuple(layout)) for d, layout in zip(durations, layouts,
                                                                      strict=True))
    notes = []
    for number, (timing, want) in enumerate(zip(scenes, wanted, strict=True), start=1):
        if not timing.overflow:
            continue
        limit = (f"a scene lasts at most {MAX_SCENE_SECONDS} s" if want == timing.duration
                 else f"the video may last at most {max_total_seconds} s")
        notes.append(f"The end of scene {number}'s narration is cut off: it needs "
                     f"{timing.speech_end:.1f} s and {limit}; shorten its narration.")
    revised = storyboard.revise(scenes=[
        {**scene.model_dump(), "duration": duration}
        for scene, duration in zip(storyboard.scenes, durations, strict=True)
    ])
    return NarrationPlan(revised, scenes, tuple(notes))


def _lay_out(phrases: Sequence[tuple[str, float]], lead: float,
             gap: float) -> list[SpokenPhrase]:
    laid: list[SpokenPhrase] = []
    cursor = lead
    for text, seconds in phrases:
        laid.append(SpokenPhrase(text, cursor, cursor + seconds))
        cursor += seconds + gap
    return laid


def _fit_total(durations: list[int], originals: list[int], budget: int) -> None:
    """Take seconds back from the scenes that grew most until the scenes fit `budget`. A
    storyboard already over it before narration stays over it: check_total says so."""
    while sum(durations) > budget:
        growth = [d - o for d, o in zip(durations, originals, strict=True)]
        most = max(range(len(durations)), key=growth.__getitem__)
        if growth[most] <= 0:
            return
        durations[most] -= 1
