"""Composition: a renderer's frames, with captions burned in, into the encoder, in order.

Captions come from the timeline's cues, the same ones the SRT and WebVTT files are written
from, so what is burned in and what the subtitle files say can never drift apart. The
renderer draws the title card and the scenes; the school's intro and outro cards, when the
timeline has them, come from worker/branding.py.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.jobs import JobCancelled
from engine.timeline import Segment, Timeline
from worker.branding import BrandCards
from worker.encode import VideoEncoder
from worker.frames import FrameRun, SceneRenderer
from worker.text import Overlay, load_font, text_panel, wrap

CAPTION_BOX = (0, 0, 0, 170)
CAPTION_TEXT = (255, 255, 255)

# Called after each run of frames with (frames done, frames in all).
Progress = Callable[[int, int], None]


@dataclass
class Stills:
    """Frames kept while encoding, for the poster and the contact sheet (no decoding later)."""

    poster: np.ndarray | None = None
    scenes: list[np.ndarray] = field(default_factory=list)


class CaptionPainter:
    """Draws each caption once, bottom-centre in a dark box, and reuses it for its frames."""

    def __init__(self, font: Path, size: tuple[int, int]) -> None:
        self.width, self.height = size
        unit = min(size)
        self.font = load_font(font, round(unit * 0.052))
        self.padding = round(unit * 0.022)
        self.bottom_margin = round(self.height * 0.035)
        self._cache: dict[str, Overlay] = {}

    def overlay(self, text: str) -> Overlay:
        if text not in self._cache:
            lines = wrap(text, self.font, round(self.width * 0.86), 3)
            image = text_panel(lines, self.font, fill=CAPTION_TEXT, box=CAPTION_BOX,
                               padding=self.padding, line_gap=0.12)
            x = (self.width - image.width) // 2
            y = self.height - self.bottom_margin - image.height
            self._cache[text] = Overlay.from_image(image, x, y)
        return self._cache[text]


def compose(
    timeline: Timeline, renderer: SceneRenderer, encoder: VideoEncoder, *,
    font: Path, cards: BrandCards | None = None, progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Stills:
    """Render, caption and encode every segment of the timeline; return stills for the sheets.

    `cards` draws the intro and outro segments (a timeline built with branding has them).
    `should_stop` is asked before each segment: a cancel stops an animatic or a render from
    cached clips too, not only a model's denoising steps."""
    painter = CaptionPainter(font, (renderer.width, renderer.height))
    stills = Stills()
    if cards is None and any(s.kind in ("intro", "outro") for s in timeline.segments):
        raise ValueError("the timeline has the school's intro or outro card: pass `cards`")
    for segment in timeline.segments:
        if should_stop and should_stop():
            raise JobCancelled
        middle = segment.start_frame + segment.frame_count // 2
        position = segment.start_frame
        for run in _segment_runs(renderer, cards, segment):
            for start, count in _cut(position, run.count, timeline.cue_boundaries):
                cue = timeline.cue_at(start)
                frame = painter.overlay(cue.text).blend_onto(run.frame) if cue else run.frame
                encoder.write(frame, count)
                if start <= middle < start + count:
                    if segment.kind == "title":
                        stills.poster = frame
                    elif segment.kind == "scene":
                        stills.scenes.append(frame)
            position += run.count
            if progress:
                progress(position, timeline.frame_count)
    if stills.poster is None and stills.scenes:
        stills.poster = stills.scenes[0]
    return stills


def _segment_runs(renderer: SceneRenderer, cards: BrandCards | None,
                  segment: Segment) -> Iterator[FrameRun]:
    if segment.kind == "scene":
        return renderer.scene(segment.scene_index, segment.frame_count)
    if segment.kind == "title":
        return renderer.title_card(segment.frame_count)
    return cards.card(segment.kind, segment.frame_count)


def _cut(start: int, count: int, boundaries: list[int]) -> Iterator[tuple[int, int]]:
    """Split frames [start, start+count) wherever a caption appears or disappears."""
    end = start + count
    first = bisect.bisect_right(boundaries, start)
    for boundary in boundaries[first:]:
        if boundary >= end:
            break
        yield start, boundary - start
        start = boundary
    yield start, end - start
