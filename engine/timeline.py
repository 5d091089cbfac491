"""When everything happens in the video, in frames: the cards, each scene, each caption.

    [ intro | title card | scene 1 | scene 2 | ... | outro ]

The intro and outro are the school's cards (settings [branding]); the title card is the
lesson's. Only scenes have captions, so the cards shift every cue, and the SRT/WebVTT
times with them. The same cue list decides which caption is burned into a frame and what
the SRT/WebVTT files say, so the two can never disagree. Times are whole frames; the files
print them in milliseconds.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from engine.settings import BrandingSettings
from engine.storyboard import Storyboard

# Captions longer than this are split at a sentence or clause, then at a word.
MAX_CUE_CHARS = {"en": 84, "zh": 32}
# Latin punctuation ends a sentence only before a space ("3.14", "e.g.", "example.com" stay
# whole); Chinese punctuation always does.
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])\s*")
CLAUSE_END = re.compile(r"(?<=[,:])\s+|(?<=[，、：])\s*")
# A short breath at the start and end of a scene with no caption on screen.
EDGE_SECONDS = 0.25


# What fills a segment: a scene, or a card that belongs to no scene (scene_index None).
SegmentKind = Literal["intro", "title", "scene", "outro"]


@dataclass(frozen=True)
class Segment:
    """A stretch of the video: one scene, or a card (the school's intro or outro, the
    lesson's title card), which has no scene_index."""

    scene_index: int | None
    start_frame: int
    frame_count: int
    kind: SegmentKind = "scene"

    def __post_init__(self) -> None:
        if (self.kind == "scene") != (self.scene_index is not None):
            raise ValueError(f"a {self.kind} segment cannot have scene_index "
                             f"{self.scene_index!r}: scenes have one, cards do not")

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.frame_count


@dataclass(frozen=True)
class Cue:
    start_frame: int
    end_frame: int  # exclusive
    text: str


@dataclass(frozen=True)
class Timeline:
    fps: int
    segments: tuple[Segment, ...]
    cues: tuple[Cue, ...]

    @property
    def frame_count(self) -> int:
        return self.segments[-1].end_frame if self.segments else 0

    @property
    def seconds(self) -> float:
        return self.frame_count / self.fps

    def cue_at(self, frame: int) -> Cue | None:
        """The caption on screen at `frame`, if any (cues are sorted and never overlap)."""
        index = bisect.bisect_right(self._cue_starts, frame) - 1
        if index >= 0 and frame < self.cues[index].end_frame:
            return self.cues[index]
        return None

    @cached_property
    def _cue_starts(self) -> list[int]:
        return [cue.start_frame for cue in self.cues]

    @cached_property
    def cue_boundaries(self) -> list[int]:
        """Every frame where a caption appears or disappears, in order."""
        return sorted({f for cue in self.cues for f in (cue.start_frame, cue.end_frame)})


def build_timeline(storyboard: Storyboard, fps: int, *,
                   branding: BrandingSettings | None = None) -> Timeline:
    """The storyboard's segments and captions at `fps`; with `branding` whose cards are
    shown (see cards_shown), the school's intro card first and its outro card last."""
    intro_frames, outro_frames = card_frames(branding, fps)
    segments: list[Segment] = []
    cues: list[Cue] = []
    cursor = 0
    if intro_frames:
        segments.append(Segment(None, cursor, intro_frames, "intro"))
        cursor = segments[-1].end_frame
    if storyboard.title_card_seconds:
        segments.append(Segment(None, cursor, storyboard.title_card_seconds * fps, "title"))
        cursor = segments[-1].end_frame
    for index, scene in enumerate(storyboard.scenes):
        segment = Segment(index, cursor, scene.duration * fps)
        segments.append(segment)
        cues.extend(_scene_cues(scene.narration, segment, fps, storyboard.language))
        cursor = segment.end_frame
    if outro_frames:
        segments.append(Segment(None, cursor, outro_frames, "outro"))
    return Timeline(fps, tuple(segments), tuple(cues))


def cards_shown(branding: BrandingSettings) -> bool:
    """Whether videos get the school's intro and outro cards: branding.cards "on", or
    "auto" with a logo set (a logo that then fails to load still leaves the cards, with
    the school's name and the lesson's title, and a note)."""
    if branding.cards == "auto":
        return bool(branding.logo_path.strip())
    return branding.cards == "on"


def card_frames(branding: BrandingSettings | None, fps: int) -> tuple[int, int]:
    """(intro, outro) lengths in frames; (0, 0) without cards."""
    if branding is None or not cards_shown(branding):
        return 0, 0
    return round(branding.intro_seconds * fps), round(branding.outro_seconds * fps)


def split_caption(text: str, language: str) -> list[str]:
    """Cut narration into caption-sized phrases at sentence, then clause, then word boundaries."""
    limit = MAX_CUE_CHARS.get(language, MAX_CUE_CHARS["en"])
    pieces: list[str] = []
    for sentence in filter(None, (s.strip() for s in SENTENCE_END.split(text))):
        if len(sentence) <= limit:
            pieces.append(sentence)
            continue
        for clause in filter(None, (c.strip() for c in CLAUSE_END.split(sentence))):
            pieces.extend(_split_long(clause, limit))
    return _merge_short(pieces, limit)


def _split_long(text: str, limit: int) -> list[str]:
    if len(text) <= limit:
        return [text]
    words = text.split(" ") if " " in text else list(text)
    joiner = " " if " " in text else ""
    parts: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current}{joiner}{word}" if current else word
        if len(candidate) > limit and current:
            parts.append(current)
            current = word
        else:
            current = candidate
    if current:
        parts.append(current)
    return parts


def _merge_short(pieces: list[str], limit: int) -> list[str]:
    """Join neighbours that fit together, so captions do not flash by one word at a time."""
    merged: list[str] = []
    for piece in pieces:
        joiner = "" if _is_cjk(piece) else " "
        if merged and len(merged[-1]) + len(joiner) + len(piece) <= limit // 2:
            merged[-1] = f"{merged[-1]}{joiner}{piece}"
        else:
            merged.append(piece)
    return merged


def _scene_cues(narration: str, segment: Segment, fps: int, language: str) -> list[Cue]:
    phrases = split_caption(narration, language)
    if not phrases:
        return []
    edge = round(EDGE_SECONDS * fps) if segment.frame_count > 4 * EDGE_SECONDS * fps else 0
    start = segment.start_frame + edge
    available = segment.frame_count - 2 * edge
    # Each phrase stays on screen in proportion to its length: roughly the time to say it.
    weights = [max(len(phrase), 4) for phrase in phrases]
    total = sum(weights)
    cues: list[Cue] = []
    used = 0
    for phrase, weight in zip(phrases, weights, strict=True):
        used_next = used + weight
        cue_start = start + round(available * used / total)
        cue_end = start + round(available * used_next / total)
        if cue_end > cue_start:
            cues.append(Cue(cue_start, cue_end, phrase))
        used = used_next
    return cues


def _is_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in text)


def _timestamp(frame: int, fps: int, separator: str) -> str:
    millis = round(frame * 1000 / fps)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def to_srt(timeline: Timeline) -> str:
    blocks = [
        f"{number}\n{_timestamp(cue.start_frame, timeline.fps, ',')} --> "
        f"{_timestamp(cue.end_frame, timeline.fps, ',')}\n{cue.text}\n"
        for number, cue in enumerate(timeline.cues, start=1)
    ]
    return "\n".join(blocks)


def to_webvtt(timeline: Timeline) -> str:
    blocks = [
        f"{_timestamp(cue.start_frame, timeline.fps, '.')} --> "
        f"{_timestamp(cue.end_frame, timeline.fps, '.')}\n{_vtt_escape(cue.text)}\n"
        for cue in timeline.cues
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # WebVTT cue text is markup: "x < 5" would open a tag.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
