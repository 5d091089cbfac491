"""When everything happens in the video, in frames: the title card, each scene, each caption.

The same cue list decides which caption is burned into a frame and what the SRT/WebVTT
files say, so the two can never disagree. Times are whole frames; the files print them
in milliseconds.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import cached_property

from engine.storyboard import Storyboard

# Captions longer than this are split at a sentence or clause, then at a word.
MAX_CUE_CHARS = {"en": 84, "zh": 32}
# Latin punctuation ends a sentence only before a space ("3.14", "e.g.", "example.com" stay
# whole); Chinese punctuation always does.
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])\s*")
CLAUSE_END = re.compile(r"(?<=[,:])\s+|(?<=[，、：])\s*")
# A short breath at the start and end of a scene with no caption on screen.
EDGE_SECONDS = 0.25


@dataclass(frozen=True)
class Segment:
    """A stretch of the video: the title card (scene_index None) or one scene."""

    scene_index: int | None
    start_frame: int
    frame_count: int

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


def build_timeline(storyboard: Storyboard, fps: int) -> Timeline:
    segments: list[Segment] = []
    cues: list[Cue] = []
    cursor = 0
    if storyboard.title_card_seconds:
        segments.append(Segment(None, 0, storyboard.title_card_seconds * fps))
        cursor = segments[-1].end_frame
    for index, scene in enumerate(storyboard.scenes):
        segment = Segment(index, cursor, scene.duration * fps)
        segments.append(segment)
        cues.extend(_scene_cues(scene.narration, segment, fps, storyboard.language))
        cursor = segment.end_frame
    return Timeline(fps, tuple(segments), tuple(cues))


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
