"""Text to speech: espeak-ng in English and Chinese, a tiny random VITS voice through the real
loading path, and every way a voice can be missing falling back with a note."""

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import VitsConfig, VitsModel, VitsTokenizer

from engine.narration import VoicePreset, load_voice_presets
from engine.settings import load_settings
from tests.conftest import make_storyboard
from worker import tts
from worker.narration_audio import speak_storyboard, trim_silence
from worker.tts import (
    CannotSay,
    EspeakBackend,
    VitsBackend,
    VoiceUnavailable,
    choose_voice,
    measure_tts,
)


@pytest.fixture(autouse=True)
def voice_on(monkeypatch):
    """conftest keeps renders silent; these tests are about the voice."""
    monkeypatch.setenv("LESSONREEL_NARRATION__ENABLED", "true")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt install espeak-ng)")

# Letters and space only, like MMS English: no digits, no hanzi.
TINY_ALPHABET = list(" abcdefghijklmnopqrstuvwxyz'")


def build_tiny_vits(folder: Path, *, sampling_rate: int = 16_000) -> Path:
    """A random-weight VITS voice (~90 kB) saved as a real one is: config.json,
    model.safetensors, vocab.json, tokenizer_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", *TINY_ALPHABET])}
    vocab_file = folder / "vocab.json"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = VitsTokenizer(str(vocab_file), language="eng", add_blank=True, normalize=True,
                              phonemize=False)
    config = VitsConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ffn_dim=16, flow_size=8, spectrogram_bins=9, upsample_initial_channel=16,
        upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        duration_predictor_filter_channels=16, duration_predictor_num_flows=1,
        prior_encoder_num_flows=1, prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1, depth_separable_num_layers=1,
        sampling_rate=sampling_rate,
    )
    torch.manual_seed(0)
    VitsModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_voice(tmp_path, monkeypatch):
    """A models dir holding the tiny voice, and presets read from a voices.toml naming it."""
    models = tmp_path / "models"
    build_tiny_vits(models / "tiny-vits")
    monkeypatch.setenv("LESSONREEL_DIFFUSION__MODELS_DIR", str(models))
    voices = tmp_path / "voices.toml"
    voices.write_text(
        '["tiny-eng"]\ntitle = "Tiny random VITS"\nbackend = "vits"\nlanguage = "en"\n'
        'repo = "nobody/tiny"\nfolder = "tiny-vits"\nsample_rate = 16000\n'
        '["absent-eng"]\ntitle = "Not installed"\nbackend = "vits"\nlanguage = "en"\n'
        'repo = "nobody/absent"\nfolder = "absent"\nsample_rate = 16000\n', encoding="utf-8")
    tts._loaded.clear()
    yield load_voice_presets(voices)
    tts._loaded.clear()


@pytest.fixture
def voice_settings(tiny_voice):
    """Settings read after the models dir points at the tiny voice."""
    return load_settings()


def _missing_espeak(tmp_path) -> EspeakBackend:
    return EspeakBackend(executable=str(tmp_path / "no-such-espeak-ng"))


def _spoken_seconds(speech) -> float:
    return len(trim_silence(speech.samples, speech.sample_rate)) / speech.sample_rate


def _rms(samples) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


# -- espeak-ng ------------------------------------------------------------------------------

@needs_espeak
def test_espeak_speaks_english_at_a_plausible_rate():
    text = "Plants take in carbon dioxide through tiny pores in their leaves."
    speech = EspeakBackend().speak(text, "en")
    assert speech.samples.dtype == np.float32 and speech.sample_rate == 22_050
    assert _rms(speech.samples) > 0.03
    words_per_second = len(text.split()) / _spoken_seconds(speech)
    assert 1.5 < words_per_second < 5.0


@needs_espeak
def test_espeak_speaks_chinese_hanzi_at_a_plausible_rate():
    text = "植物通过叶片上的气孔吸收二氧化碳。"
    speech = EspeakBackend().speak(text, "zh")
    assert _rms(speech.samples) > 0.03
    hanzi_per_second = 16 / _spoken_seconds(speech)
    assert 2.0 < hanzi_per_second < 8.0


@needs_espeak
def test_chinese_voice_reads_hanzi_not_tone_digits_in_english():
    # espeak-ng 1.51's "cmn" says 你好 as "ni three hao three" (about twice as long).
    seconds = _spoken_seconds(EspeakBackend().speak("你好", "zh"))
    assert seconds < 0.8


@needs_espeak
def test_faster_speed_speaks_the_same_text_in_less_time():
    text = "Water moves up from the roots to the leaves."
    normal = _spoken_seconds(EspeakBackend().speak(text, "en", 1.0))
    fast = _spoken_seconds(EspeakBackend().speak(text, "en", 1.5))
    assert fast < normal * 0.8


@needs_espeak
def test_text_starting_with_a_dash_is_spoken_not_taken_as_an_option():
    dashed = EspeakBackend().speak("-v xx --help", "en")  # as options: an unknown voice, help
    plain = EspeakBackend().speak("v xx help", "en")
    assert 0.7 < _spoken_seconds(dashed) / _spoken_seconds(plain) < 1.5


@needs_espeak
def test_shell_characters_are_spoken_not_run(tmp_path):
    marker = tmp_path / "ran"
    text = f"$(touch {marker}) `touch {marker}`; touch {marker} && echo | cat"
    speech = EspeakBackend().speak(text, "en")
    assert not marker.exists()
    assert _spoken_seconds(speech) > 2.0  # all of it, symbols read out


@needs_espeak
def test_phoneme_brackets_are_read_as_text_not_as_phonemes():
    # espeak-ng takes [[...]] as phoneme codes: this would say "hello" in half the time.
    brackets = _spoken_seconds(EspeakBackend().speak("[[h@l'oU]]", "en"))
    hello = _spoken_seconds(EspeakBackend().speak("hello", "en"))
    assert brackets > 1.5 * hello


def test_a_missing_espeak_is_unavailable_not_a_crash(tmp_path):
    backend = _missing_espeak(tmp_path)
    with pytest.raises(VoiceUnavailable, match="not installed"):
        backend.speak("hello", "en")  # the executable is missing
    assert not backend.available("en")


def test_a_hung_espeak_is_stopped_at_its_timeout(tmp_path):
    hung = tmp_path / "espeak-ng"
    hung.write_text("#!/bin/sh\nsleep 10\n")
    hung.chmod(hung.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(CannotSay, match="took over"):
        EspeakBackend(executable=str(hung), timeout=0.3).speak("hello", "en")


# -- the neural backend, through its real loading path ---------------------------------------

def test_tiny_vits_voice_loads_by_preset_name_and_speaks(tiny_voice, voice_settings):
    voice, notes = choose_voice(voice_settings, "en", "tiny-eng", presets=tiny_voice)
    assert isinstance(voice, VitsBackend) and notes == []
    speech = voice.speak("plants make sugar from light", "en")
    assert speech.sample_rate == 16_000 and speech.samples.dtype == np.float32
    assert speech.seconds > 0.2 and _rms(speech.samples) > 0.01
    again = voice.speak("plants make sugar from light", "en")
    np.testing.assert_array_equal(speech.samples, again.samples)  # seeded: repeatable
    assert voice.speak("plants make sugar from light", "en", 2.0).seconds < speech.seconds
    voice.speak("once more", "en")
    assert tts.load_counts[str(voice.folder.resolve())] == 1  # loaded once, kept


def test_auto_takes_the_installed_preset_of_the_language(tiny_voice, voice_settings):
    only_tiny = {"tiny-eng": tiny_voice["tiny-eng"]}
    voice, notes = choose_voice(voice_settings, "en", presets=only_tiny)
    assert voice is not None and voice.name == "tiny-eng" and notes == []


def test_neural_voice_refuses_letters_it_has_no_sound_for(tiny_voice, voice_settings):
    voice, _ = choose_voice(voice_settings, "en", "tiny-eng", presets=tiny_voice)
    with pytest.raises(CannotSay, match="134"):  # the digits it lacks, sorted
        voice.speak("pi is about 3.14", "en")  # MMS would drop the digits silently
    with pytest.raises(CannotSay):
        voice.speak("你好", "zh")


@needs_espeak
def test_phrases_the_neural_voice_cannot_say_are_spoken_by_espeak(
    tiny_voice, voice_settings, tmp_path
):
    storyboard = make_storyboard((3, 3), narrations=("Plants make sugar.", "Pi is about 3.14."))
    audio = speak_storyboard(storyboard, voice_settings, tmp_path / "voice",
                             voice_name="tiny-eng", presets=tiny_voice)
    assert audio.voice == "tiny-eng"
    assert [note for note in audio.notes if "espeak-ng" in note] == [
        "In scene 2, espeak-ng said what tiny-eng could not "
        "(tiny-eng has no sound for '134').",
    ]
    assert all(seconds > 0.2 for scene in audio.phrase_seconds for seconds in scene)


@needs_espeak
def test_a_preset_whose_folder_is_missing_falls_back_to_espeak_with_a_note(
    tiny_voice, voice_settings
):
    voice, notes = choose_voice(voice_settings, "en", "absent-eng", presets=tiny_voice)
    assert isinstance(voice, EspeakBackend)
    assert any("absent-eng" in n and "lessonreel models pull absent-eng" in n for n in notes)


@needs_espeak
def test_auto_without_any_voice_installed_uses_espeak_quietly(settings):
    # "auto" means exactly this: no note for the teacher on every video.
    absent = {"absent-eng": VoicePreset(name="absent-eng", title="x", backend="vits",
                                        language="en", repo="x/y", folder="absent",
                                        sample_rate=16_000)}
    voice, notes = choose_voice(settings, "en", presets=absent)
    assert isinstance(voice, EspeakBackend) and notes == []


@needs_espeak
def test_backend_neural_without_a_voice_for_chinese_falls_back_with_a_note(
    tiny_voice, monkeypatch
):
    monkeypatch.setenv("LESSONREEL_NARRATION__BACKEND", "neural")
    voice, notes = choose_voice(load_settings(), "zh", presets=tiny_voice)
    assert any("no neural voice for 'zh'" in note for note in notes)
    assert isinstance(voice, EspeakBackend) and voice.voice_for("zh") == "cmn-latn-pinyin"


def test_a_voice_folder_at_another_sample_rate_is_refused_with_a_note(
    tiny_voice, voice_settings
):
    wrong = {"tiny-eng": tiny_voice["tiny-eng"].model_copy(update={"sample_rate": 22_050})}
    voice, notes = choose_voice(voice_settings, "en", "tiny-eng", presets=wrong)
    assert not isinstance(voice, VitsBackend)
    assert any("16000 Hz" in note and "22050 Hz" in note for note in notes)


def test_no_voice_at_all_is_silence_with_a_note_never_an_exception(
    tiny_voice, voice_settings, tmp_path
):
    voice, notes = choose_voice(voice_settings, "en", "absent-eng", presets=tiny_voice,
                                espeak=_missing_espeak(tmp_path))
    assert voice is None
    assert notes == ["The voice absent-eng is unavailable (not installed; 'lessonreel models "
                     "pull absent-eng' installs it), and the narration is silent: espeak-ng is "
                     "not installed on the worker (apt install espeak-ng)."]
    storyboard = make_storyboard((3, 4))
    audio = speak_storyboard(storyboard, voice_settings, tmp_path / "voice",
                             voice_name="absent-eng", presets=tiny_voice,
                             espeak=_missing_espeak(tmp_path))
    assert not audio.spoken and audio.storyboard == storyboard
    assert any("silent" in note for note in audio.notes)


@needs_espeak
def test_an_unknown_espeak_voice_falls_back_to_the_default_with_a_note(settings):
    voice, notes = choose_voice(settings, "en", "xx-nosuch", presets={})
    assert isinstance(voice, EspeakBackend) and voice.voice_for("en") == "en-us"
    assert any("xx-nosuch" in note for note in notes)


def test_narration_switched_off_chooses_no_voice_and_says_nothing(monkeypatch):
    monkeypatch.setenv("LESSONREEL_NARRATION__BACKEND", "none")
    assert choose_voice(load_settings(), "en") == (None, [])


def test_the_shipped_voice_preset_is_english_mms():
    preset = load_voice_presets()["mms-tts-eng"]
    assert (preset.backend, preset.language, preset.repo, preset.sample_rate) == (
        "vits", "en", "facebook/mms-tts-eng", 16_000)


# -- measuring --------------------------------------------------------------------------------

@needs_espeak
def test_measure_tts_gives_seconds_of_synthesis_per_second_of_speech(
    tiny_voice, voice_settings
):
    ticks = iter(range(1000))
    figure = measure_tts(EspeakBackend(), "en", repeat=1, clock=lambda: next(ticks))
    speech = sum(EspeakBackend().speak(t, "en").seconds for t in tts.BENCH_TEXTS["en"])
    assert figure == pytest.approx(1 / speech)  # one tick over the whole round's speech
    voice, _ = choose_voice(voice_settings, "en", "tiny-eng", presets=tiny_voice)
    assert 0 < measure_tts(voice, "en", repeat=1) < 10
    assert 0 < measure_tts(EspeakBackend(), "zh", repeat=1) < 1


def test_a_voice_of_another_language_is_not_used_and_says_why():
    settings = load_settings()
    voice, notes = choose_voice(settings, "zh", "en-gb")
    assert voice is not None and voice.voice_for("zh") == "cmn-latn-pinyin"
    assert notes and "does not speak Chinese" in notes[0]
    english, none = choose_voice(settings, "en", "en-gb")
    assert english.voice_for("en") == "en-gb" and none == []
