"""Speaking a whole storyboard: one phrase at a time, timed, and laid out scene by scene.

Each phrase (each caption) is synthesised on its own and trimmed of the silence the voice
adds around it, so its length is the time its words take: the plan (engine/narration.py)
turns those lengths into scene durations and caption cues. A scene whose words do not fit
its longest allowed length is spoken again faster (up to MAX_SPEED_UP); what still does
not fit is cut, with a note. Nothing here fails a render: a voice that is missing or breaks
falls back to espeak-ng, then to silence, and each fallback leaves a note.

    narration = speak_storyboard(storyboard, settings, folder)
    storyboard = narration.storyboard            # durations the voice decided
    timeline = narration.timeline(build_timeline(storyboard, fps))
    narration.write_track(timeline, folder / "narration.wav")
"""

from __future__ import annotations

import logging
import wave
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.narration import (
    NarrationPlan,
    VoicePreset,
    plan_narration,
    scene_phrases,
)
from engine.settings import Settings
from engine.storyboard import Storyboard
from engine.timeline import Timeline
from worker.tts import EspeakBackend, Speech, SpeechError, Voice, choose_voice

log = logging.getLogger(__name__)

# Every scene's audio and the whole track, whatever rate each voice speaks at (espeak-ng
# 22.05 kHz, MMS 16 kHz): the rate of video soundtracks.
SAMPLE_RATE = 48_000
# A voice is "speaking" where its 10 ms RMS is within this many dB of its loudest 10 ms.
SILENCE_DB = 40.0
SILENCE_WINDOW_SECONDS = 0.01
# Left around a trimmed phrase, so its first and last sounds are not clipped.
TRIM_MARGIN_SECONDS = 0.02
# A cut at a scene's end fades out over this long, without a click.
FADE_SECONDS = 0.03
# When no voice can say a phrase, its caption still gets about the time reading it takes.
READING_CHARS_PER_SECOND = {"en": 15.0, "zh": 4.5}


@dataclass
class NarrationAudio:
    """What speaking a storyboard gave: the retimed storyboard, its audio, and notes."""

    storyboard: Storyboard  # the durations the voice decided (unchanged when silent)
    plan: NarrationPlan | None  # None: nothing was spoken (narration off, or no voice)
    voice: str  # what spoke ("espeak-ng en-us", a preset's name); "" when silent
    sample_rate: int = SAMPLE_RATE
    scenes: list[np.ndarray] = field(default_factory=list)  # float32 mono, each scene's length
    files: list[Path] = field(default_factory=list)  # one WAV per scene, in order
    phrase_seconds: list[list[float]] = field(default_factory=list)  # as spoken, per scene
    notes: list[str] = field(default_factory=list)

    @property
    def spoken(self) -> bool:
        return self.plan is not None

    def timeline(self, timeline: Timeline) -> Timeline:
        """`timeline` (built from `self.storyboard`) with captions where the words are said;
        unchanged when nothing was spoken."""
        return self.plan.with_cues(timeline) if self.plan else timeline

    def track(self, timeline: Timeline) -> np.ndarray:
        """The whole video's narration: each scene's audio where its segment starts."""
        track = np.zeros(round(timeline.seconds * self.sample_rate), np.float32)
        for segment in timeline.segments:
            if segment.scene_index is None or segment.scene_index >= len(self.scenes):
                continue
            audio = self.scenes[segment.scene_index]
            start = round(segment.start_frame / timeline.fps * self.sample_rate)
            end = min(len(track), start + len(audio))
            track[start:end] = audio[: end - start]
        return track

    def speech_intervals(self, timeline: Timeline) -> list[tuple[float, float]]:
        """(start, end) seconds of the video where the voice speaks, one per phrase: where
        music ducks under the voice."""
        if self.plan is None:
            return []
        intervals = []
        for segment in timeline.segments:
            if segment.scene_index is None:
                continue
            offset, end = segment.start_frame / timeline.fps, segment.end_frame / timeline.fps
            for phrase in self.plan.scenes[segment.scene_index].phrases:
                if offset + phrase.start < end:
                    intervals.append((offset + phrase.start, min(end, offset + phrase.end)))
        return intervals

    def write_track(self, timeline: Timeline, path: Path) -> Path:
        write_wav(path, self.track(timeline), self.sample_rate)
        return path


def speak_storyboard(
    storyboard: Storyboard, settings: Settings, out_dir: Path, *,
    voice_name: str | None = None, speed: float | None = None,
    presets: Mapping[str, VoicePreset] | None = None, espeak: EspeakBackend | None = None,
) -> NarrationAudio:
    """Speak every scene's narration and time the storyboard by it; write one WAV per scene
    (scene-01.wav …) into `out_dir`. `voice_name` and `speed` are the storyboard's own
    choices over the settings'; `presets` and `espeak` replace config/voices.toml and the
    espeak-ng on the PATH (tests, benchmarks)."""
    language = storyboard.language
    voice, notes = choose_voice(settings, language, voice_name, presets=presets, espeak=espeak)
    if voice is None:
        return NarrationAudio(storyboard, None, "", notes=notes)
    speaker = _Speaker(voice, _fallback_for(voice, language, espeak), language)
    speed = speed or settings.narration.speed
    phrases = scene_phrases(storyboard)
    spoken = [[speaker.say(text, speed, scene) for text in texts]
              for scene, texts in enumerate(phrases)]

    def plan_for(spoken_now: list[list[Speech]]) -> NarrationPlan:
        return plan_narration(
            storyboard,
            [[(text, speech.seconds) for text, speech in zip(texts, speeches, strict=True)]
             for texts, speeches in zip(phrases, spoken_now, strict=True)],
            pause_seconds=settings.narration.pause_seconds,
            max_total_seconds=settings.limits.max_total_seconds,
        )

    plan = plan_for(spoken)
    faster = [i for i, timing in enumerate(plan.scenes) if timing.speed_up() > 1.0]
    for index in faster:  # too long for its scene: say it again, faster
        factor = plan.scenes[index].speed_up()
        spoken[index] = [speaker.say(text, speed * factor, index) for text in phrases[index]]
    if faster:
        plan = plan_for(spoken)
        notes.append(f"The narration of {_scenes(faster)} was spoken faster to fit the "
                     "scene length limit.")

    out_dir.mkdir(parents=True, exist_ok=True)
    label = (f"espeak-ng {voice.voice_for(language)}" if isinstance(voice, EspeakBackend)
             else voice.name)
    audio = NarrationAudio(plan.storyboard, plan, label,
                           notes=[*notes, *speaker.notes(), *plan.notes])
    for index, (timing, speeches) in enumerate(zip(plan.scenes, spoken, strict=True)):
        samples = np.zeros(timing.duration * SAMPLE_RATE, np.float32)
        for phrase, speech in zip(timing.phrases, speeches, strict=True):
            _place(samples, speech.samples, round(phrase.start * SAMPLE_RATE))
        audio.scenes.append(samples)
        audio.phrase_seconds.append([speech.seconds for speech in speeches])
        audio.files.append(write_wav(out_dir / f"scene-{index + 1:02d}.wav", samples,
                                     SAMPLE_RATE))
    return audio


class _Speaker:
    """Says phrases with the chosen voice, else with the fallback, else leaves a silence
    as long as reading the caption takes; remembers, per scene, what fell back."""

    def __init__(self, voice: Voice, fallback: Voice | None, language: str) -> None:
        self.voice, self.fallback, self.language = voice, fallback, language
        self.fell_back: dict[int, str] = {}  # scene index -> why (the first reason)
        self.unspoken: set[int] = set()

    def say(self, text: str, speed: float, scene: int) -> Speech:
        for voice in filter(None, (self.voice, self.fallback)):
            try:
                speech = voice.speak(text, self.language, speed)
            except SpeechError as exc:
                log.info("%s could not say a phrase of scene %d: %s", voice.name, scene + 1, exc)
                self.fell_back.setdefault(scene, str(exc))
                continue
            except Exception:  # a voice's bug must not fail a render: log it, fall back
                log.exception("%s failed on a phrase of scene %d", voice.name, scene + 1)
                self.fell_back.setdefault(scene, f"{voice.name} failed")
                continue
            return Speech(trim_silence(resample(speech, SAMPLE_RATE).samples, SAMPLE_RATE),
                          SAMPLE_RATE)
        self.unspoken.add(scene)
        reading = len(text) / READING_CHARS_PER_SECOND.get(self.language, 15.0) / speed
        return Speech(np.zeros(round(reading * SAMPLE_RATE), np.float32), SAMPLE_RATE)

    def notes(self) -> list[str]:
        notes = []
        spoken_by_fallback = sorted(set(self.fell_back) - self.unspoken)
        if spoken_by_fallback and self.fallback is not None:
            reason = self.fell_back[spoken_by_fallback[0]]
            notes.append(f"In {_scenes(spoken_by_fallback)}, {self.fallback.name} said what "
                         f"{self.voice.name} could not ({reason}).")
        if self.unspoken:
            notes.append(f"Part of the narration of {_scenes(sorted(self.unspoken))} could not "
                         "be spoken; its captions are shown without a voice.")
        return notes


def _fallback_for(voice: Voice, language: str, espeak: EspeakBackend | None) -> Voice | None:
    """espeak-ng behind a neural voice, for the phrases the neural voice cannot say."""
    if isinstance(voice, EspeakBackend):
        return None
    espeak = espeak or EspeakBackend()
    return espeak if espeak.available(language) else None


def _scenes(indices: list[int]) -> str:
    """[1] -> "scene 2"; [0, 2] -> "scenes 1 and 3"."""
    numbers = [str(i + 1) for i in indices]
    if len(numbers) == 1:
        return f"scene {numbers[0]}"
    return f"scenes {', '.join(numbers[:-1])} and {numbers[-1]}"


def _place(scene: np.ndarray, phrase: np.ndarray, start: int) -> None:
    """Mix `phrase` into `scene` at `start`; what passes the scene's end is cut, faded out."""
    room = max(0, len(scene) - start)
    if len(phrase) > room:
        phrase = phrase[:room].copy()
        fade = min(len(phrase), round(FADE_SECONDS * SAMPLE_RATE))
        if fade:
            phrase[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    scene[start:start + len(phrase)] += phrase


def resample(speech: Speech, rate: int) -> Speech:
    """Linear interpolation: voices come at 16-24 kHz, so this only ever upsamples here,
    where it adds nothing audible."""
    if speech.sample_rate == rate or not len(speech.samples):
        return Speech(speech.samples.astype(np.float32), rate)
    count = round(len(speech.samples) * rate / speech.sample_rate)
    times = np.arange(count) * (speech.sample_rate / rate)
    source = np.arange(len(speech.samples))
    return Speech(np.interp(times, source, speech.samples).astype(np.float32), rate)


def speech_envelope(samples: np.ndarray, sample_rate: int,
                    window_seconds: float = SILENCE_WINDOW_SECONDS) -> np.ndarray:
    """RMS per window of `window_seconds` (the last partial window dropped)."""
    window = max(1, round(window_seconds * sample_rate))
    count = len(samples) // window
    frames = samples[: count * window].reshape(count, window).astype(np.float64)
    return np.sqrt((frames ** 2).mean(axis=1))


def trim_silence(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """`samples` without the quiet the voice put before and after its words."""
    envelope = speech_envelope(samples, sample_rate)
    if not len(envelope) or envelope.max() <= 0:
        return samples[:0]
    loud = np.flatnonzero(envelope >= envelope.max() * 10 ** (-SILENCE_DB / 20))
    window = round(SILENCE_WINDOW_SECONDS * sample_rate)
    margin = round(TRIM_MARGIN_SECONDS * sample_rate)
    start = max(0, loud[0] * window - margin)
    end = min(len(samples), (loud[-1] + 1) * window + margin)
    return samples[start:end]


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM mono: what ffmpeg, players and the export bundle all read."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return path
