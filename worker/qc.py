"""The quality report: what a finished video really holds, checked against what was asked for.

One ffmpeg pass decodes the video and keeps a few small grey frames a second; numpy then
measures each sample (how dark, how sharp, how different from the one before), and the
same pass measures the sound's loudness (EBU R128). A 60 s video is checked in about a
second. What is off becomes a `Problem`: a machine code and one sentence a teacher
understands. What is worth knowing but not wrong becomes a note.

A picture that stands still is not always a fault: the title card and the animatic's scenes
are still on purpose, and an uploaded image only drifts. So a frozen stretch is a problem
only inside a scene a video model made (kind "video"), where it means the model gave up;
where the kind is unknown (any video, checked from the command line) it is a note.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import imageio_ffmpeg
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from engine.errors import UserError
from engine.presets import DiffusionPlan
from engine.storyboard import Storyboard
from engine.timeline import Timeline

REPORT_FILE = "qc.json"

# Sampling: a few small grey frames a second are plenty to see black, frozen and soft.
SAMPLES_PER_SECOND = 4
ANALYSIS_LONG_SIDE = 320
# Rows of the picture (as shares of its height) between the scene's title at the top and
# the burned-in captions at the bottom: captions change over a frozen picture, and text
# is sharp over a blurred one, so sharpness and stillness are measured here only.
PICTURE_BAND = (0.20, 0.74)
# Black: most of the frame darker than this (0-255 grey), for at least this long. Not all
# of it: captions and titles are burned in over a black picture too.
DARK_LUMA = 32
BLACK_SHARE = 0.90
MIN_BLACK_SECONDS = 0.5
# Frozen: neighbouring samples differ by less than this (mean absolute grey difference
# in the picture band; encoding noise on a still picture stays under 0.1).
FROZEN_DIFFERENCE = 0.5
MIN_FROZEN_SECONDS = 2.0
# Sharpness: variance of the Laplacian of the picture band at the analysis size. Model
# footage reads in the hundreds (ffmpeg's testsrc2: about 480); blurred with a Gaussian of
# sigma 3 at 832x480 it reads about 40, of sigma 8 about 5.
BLURRY_SHARPNESS = 20.0
# Length against the storyboard: whichever is larger.
DURATION_TOLERANCE_SECONDS = 0.5
DURATION_TOLERANCE_SHARE = 0.03
# Captions: share of narrated time they must cover. The first and last moments of a
# narrated scene are a breath and a pause, not narration.
MIN_CAPTION_COVERAGE = 0.80
NARRATION_EDGE_SECONDS = 0.5
# Loudness: integrated EBU R128, in LUFS; below SILENT_LUFS the track is silence.
TARGET_LUFS = -16.0
LOUDNESS_TOLERANCE_LU = 4.0
SILENT_LUFS = -60.0
SILENCE_LUFS = -70.0  # what ebur128 reports for digital silence
# Below these a video is not fit to show: captions cannot be read, movement judders.
MIN_SHORT_SIDE = 240
MIN_FPS = 15.0
ASPECT_TOLERANCE = 0.03

# What made a stretch of the video, which decides what "still" means there:
# title: the lesson's title card; intro, outro: the school's cards (settings [branding]);
# still: an animatic scene (a card, still on purpose); image: an uploaded picture the
# animatic pans over; video: a video model's clip; unknown: a video checked without
# knowing how it was made.
Kind = Literal["title", "intro", "outro", "still", "image", "video", "unknown"]
MAY_NOT_FREEZE: frozenset[str] = frozenset({"video"})
MAY_FREEZE_WITH_A_NOTE: frozenset[str] = frozenset({"unknown"})
SHARPNESS_CHECKED: frozenset[str] = frozenset({"video"})
# The school's cards are in the school's colours: a navy card is not a black picture.
MAY_BE_DARK: frozenset[str] = frozenset({"intro", "outro"})
CARD_NAMES = {"title": "the title card", "intro": "the intro card", "outro": "the outro card"}


class QualityCheckError(UserError):
    """The file cannot be read as a video; the message says which file and why."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SceneSpan(_Model):
    """A stretch of the video in seconds: one scene, or a card (scene_index None)."""

    scene_index: int | None
    start: float
    end: float
    kind: Kind = "unknown"
    narrated: bool = False  # the storyboard gives this scene narration

    @property
    def name(self) -> str:
        if self.scene_index is not None:
            return f"scene {self.scene_index + 1}"
        return CARD_NAMES.get(self.kind, "the video")


class SceneQuality(SceneSpan):
    sharpness: float | None  # median over the scene's samples that are not black; None: none


class Stretch(_Model):
    start: float
    end: float
    scene: str  # SceneSpan.name of the span it lies in
    scene_index: int | None = None  # the storyboard scene's, when it lies in one

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Problem(_Model):
    code: str  # stable, for machines: "black", "frozen", "blurry", "duration", …
    message: str  # one sentence for the teacher
    start: float | None = None
    end: float | None = None
    scene_index: int | None = None  # the storyboard scene at fault: re-rendering it may help


class QualityReport(_Model):
    file: str  # the video's name only: a report may be shared, a path may not
    width: int
    height: int
    codec: str
    fps: float
    seconds: float
    expected_seconds: float | None
    audio: bool
    loudness_lufs: float | None
    caption_coverage: float | None  # share of narrated time with a caption; None: not known
    damaged_frames: int
    scenes: list[SceneQuality]
    black: list[Stretch]
    frozen: list[Stretch]  # in scenes where stillness is worth reporting (video, unknown)
    problems: list[Problem]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


# -- what the renderer knows, in the report's terms -------------------------------------------


def scene_kinds(storyboard: Storyboard, plan: DiffusionPlan | None) -> list[Kind]:
    """Each scene's kind as worker/render.py renders it: with a plan, a scene goes to the
    model when the plan has a pipeline for it (image-to-video for an image scene), else it
    is the animatic's, as in DiffusionRenderer.scene."""
    kinds: list[Kind] = []
    for scene in storyboard.scenes:
        pipeline = None
        if plan is not None:
            pipeline = plan.image_to_video if scene.image else plan.text_to_video
        if pipeline:
            kinds.append("video")
        else:
            kinds.append("image" if scene.image else "still")
    return kinds


def scene_spans(timeline: Timeline, storyboard: Storyboard,
                kinds: Sequence[Kind]) -> list[SceneSpan]:
    """The timeline's segments in seconds, each with its kind and whether it is narrated."""
    spans = []
    for segment in timeline.segments:
        index = segment.scene_index
        spans.append(SceneSpan(
            scene_index=index, start=segment.start_frame / timeline.fps,
            end=segment.end_frame / timeline.fps,
            kind=segment.kind if index is None else kinds[index],
            narrated=index is not None and bool(storyboard.scenes[index].narration),
        ))
    return spans


def cue_spans(timeline: Timeline) -> list[tuple[float, float]]:
    """The caption cues in seconds, as the SRT and WebVTT files give them."""
    return [(cue.start_frame / timeline.fps, cue.end_frame / timeline.fps)
            for cue in timeline.cues]


def storyboard_spans(storyboard: Storyboard) -> list[SceneSpan]:
    """Spans from the storyboard's durations alone, when the rendered timeline is not known.
    The scenes' kinds are unknown: the storyboard does not say which renderer drew them."""
    spans, cursor = [], 0.0
    if storyboard.title_card_seconds:
        spans.append(SceneSpan(scene_index=None, start=0.0,
                               end=float(storyboard.title_card_seconds), kind="title"))
        cursor = float(storyboard.title_card_seconds)
    for index, scene in enumerate(storyboard.scenes):
        spans.append(SceneSpan(scene_index=index, start=cursor, end=cursor + scene.duration,
                               narrated=bool(scene.narration)))
        cursor += scene.duration
    return spans


# -- the report ---------------------------------------------------------------------------------


def quality_report(
    video: Path, *, storyboard: Storyboard | None = None,
    cues: Sequence[tuple[float, float]] | None = None,
    scenes: Sequence[SceneSpan] | None = None, narration_expected: bool = False,
    target_lufs: float = TARGET_LUFS, speech: Sequence[tuple[float, float]] | None = None,
) -> QualityReport:
    """Check `video`. `scenes` are the rendered spans (see scene_spans); without them the
    storyboard's durations are used, and without a storyboard the video is one unknown
    span. `cues` are caption times in seconds (see cue_spans). `narration_expected`: a
    missing or silent sound track is a problem, not a note. `speech`: the seconds where the
    voice speaks, which the captions should cover (by default, each narrated scene)."""
    header = read_header(video)
    samples = _sample(video, header)
    fps = header.fps
    seconds = samples.frames / fps if samples.frames and fps else header.seconds
    if scenes is not None:
        spans = list(scenes)
    elif storyboard is not None:
        spans = storyboard_spans(storyboard)
    else:
        spans = [SceneSpan(scene_index=None, start=0.0, end=seconds)]
    if scenes:
        expected: float | None = spans[-1].end
    else:
        expected = float(storyboard.total_seconds) if storyboard is not None else None

    problems: list[Problem] = []
    notes: list[str] = []
    problems += _format_problems(header, storyboard)
    if samples.damaged:
        problems.append(Problem(code="damaged", message=(
            f"{samples.damaged} of the video's frames could not be decoded and may show as "
            "glitches; render it again.")))
    if expected is not None:
        problems += _duration_problems(seconds, expected)

    times = np.arange(len(samples.dark_share)) / SAMPLES_PER_SECOND
    # A black picture is one fault, reported once: not also as frozen, nor as blurry.
    dark = samples.dark_share >= BLACK_SHARE
    black = _black_stretches(times, dark, spans, seconds)
    problems += [Problem(code="black", start=s.start, end=s.end, scene_index=s.scene_index,
                         message=f"The picture is black from {_at(s.start)} to {_at(s.end)}"
                                 f"{_where(s)}") for s in black]

    frozen = _frozen_stretches(times, np.where(dark, np.inf, samples.difference), spans,
                               seconds)
    for stretch, kind in frozen:
        if kind in MAY_NOT_FREEZE:
            problems.append(Problem(
                code="frozen", start=stretch.start, end=stretch.end,
                scene_index=stretch.scene_index,
                message=f"The picture freezes from {_at(stretch.start)} to "
                        f"{_at(stretch.end)}{_where(stretch)}"))
    if still := [stretch for stretch, kind in frozen if kind not in MAY_NOT_FREEZE]:
        longest = max(still, key=lambda stretch: stretch.seconds)
        where = (f"from {_at(longest.start)} to {_at(longest.end)}" if len(still) == 1 else
                 f"in {len(still)} stretches, the longest from {_at(longest.start)} to "
                 f"{_at(longest.end)}")
        notes.append(f"The picture stands still {where}: fine for slides and titles, a "
                     "fault in moving footage.")

    qualities = []
    for span in spans:
        inside = (times >= span.start) & (times < span.end) & ~dark
        sharpness = (round(float(np.median(samples.sharpness[inside])), 1) if inside.any()
                     else None)
        qualities.append(SceneQuality(**span.model_dump(), sharpness=sharpness))
        if (span.kind in SHARPNESS_CHECKED and sharpness is not None
                and sharpness < BLURRY_SHARPNESS):
            problems.append(Problem(code="blurry", start=span.start, end=span.end,
                                    scene_index=span.scene_index, message=(
                f"{span.name.capitalize()} looks blurry (sharpness {sharpness:.0f}, at least "
                f"{BLURRY_SHARPNESS:.0f} expected); render it again or change its seed.")))

    coverage = None
    if cues is not None:
        coverage = _caption_coverage(spans, cues, speech)
        if coverage is not None and coverage < MIN_CAPTION_COVERAGE:
            problems.append(Problem(code="captions", message=(
                "The narration has no captions." if coverage == 0 else
                f"Captions cover only {coverage:.0%} of the narration "
                f"(at least {MIN_CAPTION_COVERAGE:.0%} expected).")))

    sound_problems, sound_notes = _sound(header.audio, samples.loudness, narration_expected,
                                         target_lufs)
    problems += sound_problems
    notes += sound_notes
    return QualityReport(
        file=video.name, width=header.width, height=header.height, codec=header.codec,
        fps=round(fps, 3),
        seconds=round(seconds, 3), expected_seconds=expected, audio=header.audio,
        loudness_lufs=samples.loudness, caption_coverage=coverage,
        damaged_frames=samples.damaged, scenes=qualities, black=black,
        frozen=[stretch for stretch, _kind in frozen], problems=problems, notes=notes,
    )


def write_report(folder: Path, *, video_name: str = "video.mp4",
                 **checks: Any) -> QualityReport:
    """Check `folder`/video.mp4 (quality_report's keywords pass through) and store the report
    beside it as qc.json, written whole or not at all."""
    report = quality_report(folder / video_name, **checks)
    handle, partial = tempfile.mkstemp(prefix=".qc-", suffix=".json", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(report.model_dump_json(indent=2) + "\n")
        os.replace(partial, folder / REPORT_FILE)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return report


# -- reading the file -------------------------------------------------------------------------


class Header(_Model):
    width: int
    height: int
    fps: float
    seconds: float
    codec: str
    audio: bool


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #0:\d+\S*: Video: (\w+)[^\n]*?, (\d+)x(\d+)[^\n]*")
_RATE = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_AUDIO = re.compile(r"Stream #0:\d+\S*: Audio: ")


def read_header(video: Path) -> Header:
    """What the container says: the first video stream's size, rate and codec, the length,
    and whether there is sound. QualityCheckError when it is not a readable video."""
    if not video.is_file():
        raise QualityCheckError(f"There is no video file at {video}.")
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-noautorotate", "-i", str(video)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=60,
    )
    log = result.stderr
    match = next((m for m in _VIDEO.finditer(log) if "attached pic" not in m.group(0)), None)
    if match is None:
        reason = _last_line(log, str(video)) if "Input #0" not in log else "no picture stream"
        raise QualityCheckError(f"Cannot read {video.name} as a video ({reason}).")
    rate = _RATE.search(match.group(0))
    fps = float(rate.group(1)) * (1000 if rate.group(2) else 1) if rate else 0.0
    duration = _DURATION.search(log)
    seconds = 0.0
    if duration:
        hours, minutes, secs = duration.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    return Header(width=int(match.group(2)), height=int(match.group(3)), fps=fps,
                  seconds=seconds, codec=match.group(1), audio=bool(_AUDIO.search(log)))


class _Samples:
    """Per sample (SAMPLES_PER_SECOND a second): the share of dark pixels, the picture band's
    sharpness and its difference from the sample before (the first: infinity)."""

    def __init__(self) -> None:
        self.dark_share: np.ndarray = np.zeros(0)
        self.sharpness: np.ndarray = np.zeros(0)
        self.difference: np.ndarray = np.zeros(0)
        self.frames = 0  # decoded, all of them: the video's exact length
        self.damaged = 0
        self.loudness: float | None = None


_DECODED = re.compile(r"Input stream #0:\d+ \(video\):.*?(\d+) frames decoded; (\d+) decode err")
_INTEGRATED = re.compile(r"Integrated loudness:\s*I:\s*(-?[\d.]+|-inf) LUFS")


def _sample(video: Path, header: Header) -> _Samples:
    width, height = _analysis_size(header.width, header.height)
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "verbose",
        "-noautorotate", "-i", str(video),
        "-map", "0:v:0", "-vf",
        f"fps={SAMPLES_PER_SECOND},scale={width}:{height}:flags=area,format=gray",
        "-f", "rawvideo", "pipe:1",
    ]
    if header.audio:  # the same pass measures the sound
        command += ["-map", "0:a:0", "-af", "ebur128=framelog=quiet", "-f", "null", "-"]
    samples = _Samples()
    dark, sharp, diff = [], [], []
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=log)
        try:
            previous = None
            for frame in _frames(process.stdout, width, height):
                band = frame[round(height * PICTURE_BAND[0]):round(height * PICTURE_BAND[1])]
                dark.append(float(np.count_nonzero(frame <= DARK_LUMA)) / frame.size)
                sharp.append(laplacian_variance(band))
                diff.append(float("inf") if previous is None
                            else float(np.abs(band - previous).mean()))
                previous = band
        finally:
            process.stdout.close()
            code = process.wait()
        log.seek(0)
        text = log.read().decode(errors="replace")
    if code != 0 or not dark:
        reason = _last_line(text, "no pictures could be decoded")
        raise QualityCheckError(f"Cannot read {video.name} as a video ({reason}).")
    samples.dark_share, samples.sharpness = np.array(dark), np.array(sharp)
    samples.difference = np.array(diff)
    if decoded := _DECODED.search(text):
        samples.frames, samples.damaged = int(decoded.group(1)), int(decoded.group(2))
    if header.audio and (loudness := _INTEGRATED.search(text)):
        value = loudness.group(1)
        samples.loudness = SILENCE_LUFS if value == "-inf" else float(value)
    return samples


def _frames(stream, width: int, height: int) -> Iterator[np.ndarray]:
    size = width * height
    while True:
        raw = stream.read(size)
        if len(raw) < size:
            return
        yield np.frombuffer(raw, np.uint8).reshape(height, width).astype(np.float32)


def _analysis_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, ANALYSIS_LONG_SIDE / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: high where edges are crisp, low where soft."""
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    centre = grey[1:-1, 1:-1]
    laplacian = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
                 - 4 * centre)
    return float(laplacian.var())


def _last_line(log: str, fallback: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("[") or "rror" in line]
    line = (useful or lines or [fallback])[-1]
    return line.split("] ", 1)[-1].rstrip(".")[:200]


# -- the checks ---------------------------------------------------------------------------------


def _format_problems(header: Header, storyboard: Storyboard | None) -> list[Problem]:
    problems = []
    size = f"{header.width}x{header.height}"
    if min(header.width, header.height) < MIN_SHORT_SIDE:
        problems.append(Problem(code="resolution", message=(
            f"The video is only {size} pixels: too small for its captions to be read.")))
    if 0 < header.fps < MIN_FPS:  # 0: the header does not say
        problems.append(Problem(code="fps", message=(
            f"The video plays at {header.fps:g} frames a second: movement will judder.")))
    if storyboard is not None:
        wide, high = (int(part) for part in storyboard.aspect.split(":"))
        ratio = header.width / header.height
        if abs(ratio / (wide / high) - 1) > ASPECT_TOLERANCE:
            problems.append(Problem(code="aspect", message=(
                f"The video is {size}, not the {storyboard.aspect} shape the storyboard "
                "asks for.")))
    return problems


def _duration_problems(seconds: float, expected: float) -> list[Problem]:
    tolerance = max(DURATION_TOLERANCE_SECONDS, DURATION_TOLERANCE_SHARE * expected)
    if abs(seconds - expected) <= tolerance:
        return []
    return [Problem(code="duration", message=(
        f"The video runs {_at(seconds)}, but the storyboard adds up to {_at(expected)}."))]


def _runs(flags: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first, last) index of each run of True."""
    start = None
    for index, flag in enumerate(flags):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            yield start, index - 1
            start = None
    if start is not None:
        yield start, len(flags) - 1


def _span_at(spans: Sequence[SceneSpan], time: float) -> SceneSpan | None:
    return next((span for span in spans if span.start <= time < span.end), None)


def _black_stretches(times: np.ndarray, dark: np.ndarray, spans: Sequence[SceneSpan],
                     seconds: float) -> list[Stretch]:
    stretches = []
    for span in spans:
        if span.kind in MAY_BE_DARK:
            dark = dark & ~((times >= span.start) & (times < span.end))
    for first, last in _runs(dark):
        start, end = times[first], min(times[last] + 1 / SAMPLES_PER_SECOND, seconds)
        if (last - first + 1) / SAMPLES_PER_SECOND < MIN_BLACK_SECONDS:
            continue
        span = _span_at(spans, float(start))
        stretches.append(Stretch(start=round(float(start), 2), end=round(float(end), 2),
                                 scene=span.name if span else "the end",
                                 scene_index=span.scene_index if span else None))
    return stretches


def _frozen_stretches(times: np.ndarray, difference: np.ndarray, spans: Sequence[SceneSpan],
                      seconds: float) -> list[tuple[Stretch, Kind]]:
    """Runs of samples that do not change, looked for inside each scene on its own: a cut
    from one still card to the next is no change of interest, and only some kinds count."""
    stretches = []
    for span in spans:
        if span.kind not in MAY_NOT_FREEZE | MAY_FREEZE_WITH_A_NOTE:
            continue
        inside = np.flatnonzero((times >= span.start) & (times < span.end))
        if not inside.size:
            continue
        # A sample is "still" when it equals the one before it, inside this scene.
        still = difference[inside] < FROZEN_DIFFERENCE
        still[0] = False
        for first, last in _runs(still):
            # The run's samples and the one before it all show the same picture.
            count = last - first + 2
            if count / SAMPLES_PER_SECOND < MIN_FROZEN_SECONDS:
                continue
            start = float(times[inside[first - 1]])
            end = min(float(times[inside[last]]) + 1 / SAMPLES_PER_SECOND, span.end, seconds)
            stretches.append((Stretch(start=round(start, 2), end=round(end, 2),
                                      scene=span.name, scene_index=span.scene_index),
                              span.kind))
    return stretches


def _caption_coverage(spans: Sequence[SceneSpan], cues: Sequence[tuple[float, float]],
                      speech: Sequence[tuple[float, float]] | None = None) -> float | None:
    """The share of narrated time with a caption. `speech`: where the voice speaks, when the
    render knows it; else each narrated scene, less a breath at each end."""
    if speech is not None:
        narrated = [(start, end) for start, end in _merged(speech) if end > start]
    else:
        narrated = [(span.start + NARRATION_EDGE_SECONDS, span.end - NARRATION_EDGE_SECONDS)
                    for span in spans if span.narrated]
    narrated = [(start, end) for start, end in narrated if end > start]
    total = sum(end - start for start, end in narrated)
    if not total:
        return None
    covered = sum(max(0.0, min(end, cue_end) - max(start, cue_start))
                  for start, end in narrated for cue_start, cue_end in _merged(cues))
    return round(covered / total, 3)


def _merged(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _sound(audio: bool, loudness: float | None, narration_expected: bool,
           target: float) -> tuple[list[Problem], list[str]]:
    if not audio:
        if narration_expected:
            return [Problem(code="no_audio", message=(
                "The video has no sound, but its narration should be heard."))], []
        return [], ["The video has no sound track."]
    if loudness is None or loudness < SILENT_LUFS:
        if narration_expected:
            return [Problem(code="silent", message=(
                "The sound track is silent, but the narration should be heard."))], []
        return [], ["The sound track is silent."]
    if loudness < target - LOUDNESS_TOLERANCE_LU:
        return [Problem(code="quiet", message=(
            f"The sound is too quiet ({loudness:.1f} LUFS; about {target:.0f} expected)."))], []
    if loudness > target + LOUDNESS_TOLERANCE_LU:
        return [Problem(code="loud", message=(
            f"The sound is too loud ({loudness:.1f} LUFS; about {target:.0f} expected)."))], []
    return [], []


def _where(stretch: Stretch) -> str:
    """The end of a sentence about `stretch`: where it is, and what to do."""
    if stretch.scene_index is not None:
        return f" ({stretch.scene}); render that scene again."
    if stretch.scene == "the title card":
        return " (the title card); render the video again."
    return "."


def _at(seconds: float) -> str:
    return f"{seconds:.1f} s"


# -- `lessonreel qc FILE.mp4` ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="the video to check (any MP4, WebM, MOV…); "
                        "beside a render's storyboard.json, captions.srt and qc.json it is "
                        "checked against them")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, *, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    """Check, print; exit 0 when clean, 1 when there are problems, 2 when unreadable."""
    out, err = out or sys.stdout, err or sys.stderr
    video: Path = args.video
    try:
        report = quality_report(video, **_beside(video))
    except QualityCheckError as exc:
        err.write(f"lessonreel qc: {exc}\n")
        return 2
    if args.json:
        out.write(report.model_dump_json(indent=2) + "\n")
    else:
        out.write(format_report(report))
    return 0 if report.ok else 1


def _beside(video: Path) -> dict:
    """What a render left beside its video: the storyboard, the captions, and the scene
    spans (with their kinds) of an earlier report of this same video."""
    folder, checks = video.parent, {}
    with contextlib.suppress(OSError, ValidationError):
        checks["storyboard"] = Storyboard.model_validate_json(
            (folder / "storyboard.json").read_text(encoding="utf-8"))
    if (spans := stored_spans(folder, video.name)) is not None:
        checks["scenes"] = spans
    with contextlib.suppress(OSError, UnicodeDecodeError):
        checks["cues"] = parse_cue_times((folder / "captions.srt").read_text(encoding="utf-8"))
    return checks


def stored_spans(folder: Path, video_name: str = "video.mp4") -> list[SceneSpan] | None:
    """The scene spans, as rendered, from the report stored in `folder` for `video_name`;
    None when there is no such report (or it cannot be read)."""
    try:
        stored = QualityReport.model_validate_json(
            (folder / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValidationError):
        return None
    if stored.file != video_name or not stored.scenes:
        return None
    keys = SceneSpan.model_fields.keys()
    return [SceneSpan(**scene.model_dump(include=set(keys))) for scene in stored.scenes]


_CUE_TIME = re.compile(
    r"(\d+):(\d\d):(\d\d)[,.](\d{3})\s*-->\s*(\d+):(\d\d):(\d\d)[,.](\d{3})")


def parse_cue_times(text: str) -> list[tuple[float, float]]:
    """Cue start and end times, in seconds, from an SRT or WebVTT file."""
    def seconds(hours: str, minutes: str, secs: str, millis: str) -> float:
        return int(hours) * 3600 + int(minutes) * 60 + int(secs) + int(millis) / 1000

    return [(seconds(*match.groups()[:4]), seconds(*match.groups()[4:]))
            for match in _CUE_TIME.finditer(text)]


def format_report(report: QualityReport) -> str:
    """The report as a person reads it on a terminal."""
    count = len(report.problems)
    verdict = (f"{count} problem{'s' * (count != 1)}" if count else "no problems found")
    lines = [f"{report.file}: {verdict}"]
    length = _at(report.seconds)
    if report.expected_seconds is not None:
        length += f" (storyboard: {_at(report.expected_seconds)})"
    sound = "no sound" if not report.audio else (
        f"{report.loudness_lufs:.1f} LUFS" if report.loudness_lufs is not None else "sound")
    lines.append(f"  {report.width}x{report.height} {report.codec}, {report.fps:g} fps, "
                 f"{length}, {sound}")
    if report.caption_coverage is not None:
        lines.append(f"  captions cover {report.caption_coverage:.0%} of the narration")
    for scene in report.scenes:
        sharpness = f"{scene.sharpness:.0f}" if scene.sharpness is not None else "-"
        times = f"{scene.start:.1f}-{scene.end:.1f} s"
        lines.append(f"  {scene.name:<15} {times:<14} {scene.kind:<7}  sharpness {sharpness}")
    lines += [f"PROBLEM  {problem.message}" for problem in report.problems]
    lines += [f"note     {note}" for note in report.notes]
    return "\n".join(lines) + "\n"
