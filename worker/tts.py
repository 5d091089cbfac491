"""Text to speech, offline, behind one small interface: `voice.speak(text, language, speed)`.

Two backends:

- `EspeakBackend`: the espeak-ng program (Debian's `espeak-ng` package). Always there on a
  worker built from our image, fast (a sentence in ~10 ms), robotic. The text goes in on
  stdin, never on the command line, so a narration starting with "-" is said, not parsed.
- `VitsBackend`: a transformers VITS voice (e.g. facebook/mms-tts-eng) from a folder in the
  models dir, named by a preset in config/voices.toml. Natural-sounding, 36M parameters;
  it runs on the CPU, so the GPU stays with the video model.

`choose_voice` picks one from the settings (or a storyboard's own choice) and says, in
notes for the teacher, what it could not honour. It never raises: no voice at all is a
result too (silent narration), not an error.
"""

from __future__ import annotations

import logging
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.narration import (
    VOICE_FILES,
    VoicePreset,
    load_voice_presets,
    voice_folder,
    voice_installed,
)
from engine.settings import Settings

log = logging.getLogger(__name__)

ESPEAK = "espeak-ng"
# Chinese: espeak-ng 1.51 (Debian 12) reads many hanzi with voice "cmn" as pinyin with its
# tone digits spoken in English ("ni three hao three"); "cmn-latn-pinyin" reads them right
# (it only changes how Latin letters are read: as pinyin).
ESPEAK_VOICES = {"en": "en-us", "zh": "cmn-latn-pinyin"}
ESPEAK_WORDS_PER_MINUTE = 175  # espeak-ng's own default: speed 1.0
ESPEAK_RATE_RANGE = (80, 450)  # what espeak-ng accepts for -s
ESPEAK_TIMEOUT_SECONDS = 30.0  # per phrase; a phrase takes milliseconds
# "[[...]]" is espeak-ng's phoneme input: a narration must not be able to use it.
_PHONEME_BRACKETS = re.compile(r"\[(?=\[)")
# Same text, same voice, same audio: a re-render sounds the same and caches the same.
VITS_SEED = 0


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # float32, mono, in [-1, 1]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


class SpeechError(Exception):
    """Speaking failed; the narration code turns it into a fallback and a note."""


class VoiceUnavailable(SpeechError):
    """This voice cannot speak on this machine at all (not installed, cannot load)."""


class CannotSay(SpeechError):
    """This voice cannot say this text (letters it has no sound for, a timeout)."""


class Voice(Protocol):
    name: str  # what the notes say spoke: "espeak-ng", "mms-tts-eng"

    def speak(self, text: str, language: str, speed: float = 1.0) -> Speech: ...


# -- espeak-ng -------------------------------------------------------------------------------

class EspeakBackend:
    """espeak-ng in a subprocess, writing a WAV to its stdout."""

    def __init__(self, voices: Mapping[str, str] | None = None, *, executable: str = ESPEAK,
                 timeout: float = ESPEAK_TIMEOUT_SECONDS) -> None:
        self.voices = {**ESPEAK_VOICES, **(voices or {})}
        self.executable = executable
        self.timeout = timeout

    name = "espeak-ng"

    def voice_for(self, language: str) -> str:
        return self.voices.get(language, ESPEAK_VOICES["en"])

    def available(self, language: str) -> bool:
        """Whether the program runs and knows this language's voice (one short word)."""
        try:
            return self.speak("a", language).seconds > 0
        except SpeechError:
            return False

    def speak(self, text: str, language: str, speed: float = 1.0) -> Speech:
        text = _PHONEME_BRACKETS.sub("[ ", text.strip())
        low, high = ESPEAK_RATE_RANGE
        rate = min(high, max(low, round(ESPEAK_WORDS_PER_MINUTE * speed)))
        voice = self.voice_for(language)
        command = [self.executable, "--stdout", "-v", voice, "-s", str(rate)]
        try:
            done = subprocess.run(command, input=text.encode("utf-8"), capture_output=True,
                                  timeout=self.timeout, check=False)
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            raise VoiceUnavailable(f"{self.executable} is not installed") from None
        except subprocess.TimeoutExpired:
            raise CannotSay(f"espeak-ng took over {self.timeout:g} s") from None
        if done.returncode != 0:
            reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise VoiceUnavailable(
                f"espeak-ng voice {voice!r} failed: {reason[0] if reason else done.returncode}")
        if not done.stdout:  # nothing to say (punctuation only): no header either
            return Speech(np.zeros(0, np.float32), 22_050)
        return _read_wav(done.stdout)


def _read_wav(data: bytes) -> Speech:
    """A 16-bit PCM mono WAV. espeak-ng streams, so its header says the sizes are 0x7ffff000
    ("unknown"): the data chunk is whatever follows it."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise CannotSay("espeak-ng did not write a WAV")
    position, rate, samples = 12, 0, None
    while position + 8 <= len(data) and samples is None:
        chunk, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8],
                                                                  "little")
        body = position + 8
        if chunk == b"fmt ":
            encoding, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body:body + 16])
            if (encoding, channels, bits) != (1, 1, 16):
                raise CannotSay(f"espeak-ng wrote {channels}-channel {bits}-bit audio")
        elif chunk == b"data":
            end = min(body + size, len(data))
            end -= (end - body) % 2
            samples = np.frombuffer(data[body:end], "<i2").astype(np.float32) / 32768.0
        position = body + size + (size & 1)
    if samples is None or not rate:
        raise CannotSay("espeak-ng wrote a WAV without audio")
    return Speech(samples, rate)


# -- VITS (transformers) ---------------------------------------------------------------------

_loaded: dict[str, tuple[object, object]] = {}  # folder -> (model, tokenizer), per process
load_counts: dict[str, int] = {}  # folder -> loads, for tests


class VitsBackend:
    """A VITS voice from a preset's folder, loaded once per worker process."""

    def __init__(self, preset: VoicePreset, folder: Path) -> None:
        self.preset = preset
        self.folder = folder
        self.name = preset.name

    def load(self) -> None:
        """Load the model now (VoiceUnavailable if it cannot be), not at the first phrase."""
        self._model_and_tokenizer()

    def speak(self, text: str, language: str, speed: float = 1.0) -> Speech:
        if language != self.preset.language:
            raise CannotSay(f"{self.name} speaks {self.preset.language}, not {language}")
        import torch

        model, tokenizer = self._model_and_tokenizer()
        unsayable = _unsayable(text, tokenizer)
        if unsayable:
            raise CannotSay(f"{self.name} has no sound for {''.join(sorted(unsayable))!r}")
        inputs = tokenizer(text, return_tensors="pt")
        if inputs["input_ids"].shape[-1] == 0:
            return Speech(np.zeros(0, np.float32), self.preset.sample_rate)
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(VITS_SEED)  # VITS samples its noise from the global generator
            output = model(**inputs, speaking_rate=speed)
        samples = output.waveform[0, : int(output.sequence_lengths[0])]
        return Speech(samples.float().numpy().astype(np.float32), self.preset.sample_rate)

    def _model_and_tokenizer(self):
        key = str(self.folder.resolve())
        if key in _loaded:
            return _loaded[key]
        if not voice_installed(self.folder):  # the notes go to teachers: no paths in them
            log.info("voice %s: no %s in %s", self.name, " or ".join(VOICE_FILES), self.folder)
            raise VoiceUnavailable("not installed")
        try:
            from transformers import VitsModel, VitsTokenizer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
            # A folder, never the hub: a render downloads nothing.
            model = VitsModel.from_pretrained(self.folder, local_files_only=True).eval()
            tokenizer = VitsTokenizer.from_pretrained(self.folder, local_files_only=True)
        except (ImportError, OSError, ValueError) as exc:
            log.warning("voice %s cannot load from %s: %s", self.name, self.folder, exc)
            raise VoiceUnavailable(f"it cannot load: {exc.__class__.__name__}") from None
        if model.config.sampling_rate != self.preset.sample_rate:
            raise VoiceUnavailable(
                f"its folder holds a {model.config.sampling_rate} Hz voice, but the preset "
                f"says {self.preset.sample_rate} Hz: is it the right folder?")
        _loaded[key] = (model, tokenizer)
        load_counts[key] = load_counts.get(key, 0) + 1
        log.info("loaded voice %s from %s", self.name, self.folder)
        return model, tokenizer


def _unsayable(text: str, tokenizer) -> set[str]:
    """Letters and digits the voice's alphabet lacks: MMS drops them silently, so "3.14"
    would vanish from a lesson. (A tokenizer that romanises or phonemizes has its own
    alphabet: not checked.)"""
    if tokenizer.is_uroman or tokenizer.phonemize:
        return set()
    known = tokenizer.get_vocab()
    return {ch for ch in text.lower() if ch.isalnum() and ch not in known}


# -- choosing ---------------------------------------------------------------------------------

def choose_voice(
    settings: Settings, language: str, storyboard_voice: str | None = None, *,
    presets: Mapping[str, VoicePreset] | None = None, espeak: EspeakBackend | None = None,
) -> tuple[Voice | None, list[str]]:
    """The voice for narration in `language`, and notes on what could not be honoured.

    A voice named by the storyboard (else by narration.voice_<language>) wins: a preset of
    config/voices.toml, or else an espeak-ng voice. With no name, narration.backend decides:
    "auto" takes the language's preset when it is installed, else espeak-ng; "neural" wants
    the preset and notes when it cannot have it; "espeak" takes espeak-ng; "none" is silence.
    Whatever is missing falls back to espeak-ng; without espeak-ng, no voice. Never raises."""
    options = settings.narration
    if not options.enabled or options.backend == "none":
        return None, []
    presets = load_voice_presets() if presets is None else presets
    asked = storyboard_voice or getattr(options, f"voice_{language}", "")
    espeak = espeak or EspeakBackend()
    problem = ""  # why the voice asked for is not the one speaking

    if asked in presets or (not asked and options.backend in ("auto", "neural")):
        explicit = bool(asked) or options.backend == "neural"
        voice, problem = _neural_voice(settings, presets, asked, language, explicit)
        if voice is not None:
            return voice, []
    elif asked and not _fits(asked, language):
        # An English voice reading Chinese says "Chinese letter" for every character.
        problem = f"the voice {asked!r} does not speak {LANGUAGE_NAMES.get(language, language)}"
    elif asked:
        named = EspeakBackend({**espeak.voices, language: asked},
                              executable=espeak.executable, timeout=espeak.timeout)
        if named.available(language):
            return named, []
        if _installed(espeak.executable):
            problem = f"espeak-ng has no voice {asked!r}"
    if espeak.available(language):
        spoke = f"espeak-ng ({espeak.voice_for(language)}) spoke the narration."
        return espeak, [f"{problem}; {spoke}"] if problem else []
    silent = ("the narration is silent: espeak-ng is not installed on the worker "
              "(apt install espeak-ng)")
    return None, [f"{problem}, and {silent}." if problem else f"{silent[0].upper()}{silent[1:]}."]


# espeak-ng voice names by the language they speak (their first part, as `-v` takes them).
VOICE_FAMILIES = {"en": ("en",), "zh": ("cmn", "zh", "yue", "hak")}
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}


def _fits(voice: str, language: str) -> bool:
    """Whether an espeak-ng voice speaks `language` ("en-gb" English, "cmn-latn-pinyin"
    Chinese); a language we do not know the voices of takes any."""
    families = VOICE_FAMILIES.get(language)
    return families is None or voice.lower().split("-")[0].split("_")[0] in families


def _neural_voice(settings: Settings, presets: Mapping[str, VoicePreset], asked: str,
                  language: str, explicit: bool) -> tuple[VitsBackend | None, str]:
    """The preset asked for (or the language's), loaded; else None and, when the teacher
    or the operator asked for a neural voice, why not."""
    preset = presets.get(asked) or next(
        (p for p in presets.values() if p.language == language), None)
    if preset is None:
        return None, (f"There is no neural voice for {language!r} in config/voices.toml"
                      if explicit else "")
    if preset.language != language:
        return None, f"The voice {preset.name} speaks {preset.language!r}, not {language!r}"
    voice = VitsBackend(preset, voice_folder(settings, preset))
    try:
        voice.load()
    except VoiceUnavailable as exc:
        if not explicit and not voice_installed(voice.folder):
            return None, ""  # "auto" with no voice installed: espeak-ng is the plan
        return None, (f"The voice {preset.name} is unavailable ({exc}; "
                      f"'lessonreel models pull {preset.name}' installs it)")
    return voice, ""


def _installed(executable: str) -> bool:
    return shutil.which(executable) is not None or Path(executable).is_file()


# -- measuring --------------------------------------------------------------------------------

BENCH_TEXTS = {
    "en": ("Plants take in carbon dioxide through tiny pores in their leaves.",
           "Then they use the energy of sunlight to turn water and carbon dioxide into sugar."),
    "zh": ("植物通过叶片上的气孔吸收二氧化碳。", "然后利用阳光的能量，把水和二氧化碳变成糖。"),
}


def measure_tts(voice: Voice, language: str = "en", *, repeat: int = 3,
                clock=time.perf_counter) -> float:
    """Seconds of synthesis per second of speech (lower is faster; below 1 is faster than
    real time), the best of `repeat` rounds over BENCH_TEXTS. One phrase is spoken first
    and not counted, so a model's loading is not either."""
    texts = BENCH_TEXTS[language]
    voice.speak(texts[0], language)
    best = float("inf")
    for _ in range(repeat):
        started = clock()
        spoken = sum(voice.speak(text, language).seconds for text in texts)
        best = min(best, (clock() - started) / max(spoken, 1e-9))
    return best


def bench_tts(settings: Settings, *, repeat: int = 3) -> dict[str, float | str]:
    """measure_tts for espeak-ng in each language and every installed voice preset."""
    results: dict[str, float | str] = {}
    espeak = EspeakBackend()
    for language in ESPEAK_VOICES:
        key = f"espeak-ng {espeak.voice_for(language)} ({language})"
        results[key] = (round(measure_tts(espeak, language, repeat=repeat), 5)
                        if espeak.available(language) else "espeak-ng is not installed")
    for preset in load_voice_presets().values():
        voice = VitsBackend(preset, voice_folder(settings, preset))
        key = f"{preset.name} ({preset.language})"
        try:
            results[key] = round(measure_tts(voice, preset.language, repeat=repeat), 5)
        except VoiceUnavailable as exc:
            results[key] = str(exc)
    return results
