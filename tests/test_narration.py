"""Narration drives timing: scenes last as long as their voice needs, within bounds, and each
caption is on screen while its words are heard — measured on the spoken waveform."""

import shutil
import wave

import numpy as np
import pytest

from engine.narration import (
    CAPTION_HOLD_SECONDS,
    LEAD_SECONDS,
    MAX_SPEED_UP,
    PHRASE_GAP_SECONDS,
    plan_narration,
    scene_phrases,
)
from engine.settings import load_settings
from engine.storyboard import MAX_SCENE_SECONDS, MIN_SCENE_SECONDS
from engine.timeline import MAX_CUE_CHARS, build_timeline, to_srt
from tests.conftest import make_storyboard
from worker.narration_audio import SAMPLE_RATE, speak_storyboard, speech_envelope


@pytest.fixture(autouse=True)
def voice_on(monkeypatch):
    """conftest keeps renders silent; these tests are about the voice."""
    monkeypatch.setenv("LESSONREEL_NARRATION__ENABLED", "true")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt install espeak-ng)")

LONG_EN = ("Plants take in carbon dioxide through tiny pores in their leaves, and water "
           "through their roots. Then they use the energy of sunlight to make sugar.")
LONG_ZH = "植物通过叶片上的气孔吸收二氧化碳，通过根吸收水分。然后利用阳光的能量，把它们变成糖。"
FPS = 24


def _plan(storyboard, seconds_per_scene, *, pause=0.4, max_total=180):
    """A plan where every phrase takes the given seconds (no voice needed)."""
    spoken = [[(text, seconds) for text in texts]
              for texts, seconds in zip(scene_phrases(storyboard), seconds_per_scene,
                                        strict=True)]
    return plan_narration(storyboard, spoken, pause_seconds=pause, max_total_seconds=max_total)


# -- phrases ---------------------------------------------------------------------------------

def test_english_narration_is_spoken_in_caption_sized_phrases():
    long = LONG_EN + " " + LONG_EN.replace("Plants", "Trees")
    phrases = scene_phrases(make_storyboard((3,), narrations=(long,)))[0]
    assert len(phrases) >= 3
    assert all(len(p) <= MAX_CUE_CHARS["en"] for p in phrases)
    assert " ".join(phrases) == long


def test_chinese_narration_is_spoken_in_phrases_cut_at_its_punctuation():
    phrases = scene_phrases(make_storyboard((3,), language="zh", narrations=(LONG_ZH,)))[0]
    assert len(phrases) >= 2
    assert all(len(p) <= MAX_CUE_CHARS["zh"] for p in phrases)
    assert all(p[-1] in "，。" for p in phrases)
    assert "".join(phrases) == LONG_ZH


# -- durations -------------------------------------------------------------------------------

def test_a_scene_lasts_its_speech_plus_the_pause_in_whole_seconds_within_bounds():
    storyboard = make_storyboard((3, 8, 5, 4), narrations=("One.", "Two.", "Three.", ""))
    plan = _plan(storyboard, (4.5, 0.5, 30.0, 1.0), pause=0.4)
    durations = [s.duration for s in plan.storyboard.scenes]
    assert durations[0] == 6  # 0.2 lead + 4.5 speech + 0.4 pause = 5.1 s -> 6 s
    assert durations[1] == MIN_SCENE_SECONDS  # 1.1 s needed: the shortest scene there is
    assert durations[2] == MAX_SCENE_SECONDS  # 30.6 s needed: the longest there is
    assert durations[3] == 4  # nothing said: the storyboard's own length
    assert [s.duration for s in plan.scenes] == durations


def test_long_narration_lengthens_its_scene_and_short_narration_shortens_it():
    storyboard = make_storyboard((3, 9), narrations=(LONG_EN, "Yes."))
    plan = _plan(storyboard, (2.5, 0.4))  # three phrases of 2.5 s, one of 0.4 s
    first, second = (s.duration for s in plan.storyboard.scenes)
    assert first > 3 and second < 9
    assert second >= MIN_SCENE_SECONDS and first <= MAX_SCENE_SECONDS
    assert plan.storyboard.title == storyboard.title  # only durations change


def test_phrases_follow_each_other_after_the_lead_with_short_gaps():
    storyboard = make_storyboard((5,), narrations=(LONG_EN,))
    timing = _plan(storyboard, (1.5,)).scenes[0]
    assert timing.phrases[0].start == pytest.approx(LEAD_SECONDS)
    for before, after in zip(timing.phrases, timing.phrases[1:], strict=False):
        assert after.start - before.end == pytest.approx(PHRASE_GAP_SECONDS)
        assert before.end - before.start == pytest.approx(1.5)


def test_growth_that_would_pass_the_video_limit_is_given_back_with_a_note():
    storyboard = make_storyboard((3, 3), title_card_seconds=1)
    plan = _plan(storyboard, (4.0, 2.0), max_total=10)
    durations = [s.duration for s in plan.storyboard.scenes]
    assert plan.storyboard.total_seconds <= 10
    assert durations[0] >= 3  # gave back growth, never below what the teacher had
    assert any("video may last at most 10 s" in note for note in plan.notes)


def test_a_narration_longer_than_a_scene_may_last_asks_to_be_spoken_faster():
    storyboard = make_storyboard((5,), narrations=(LONG_EN,))
    timing = _plan(storyboard, (4.0,)).scenes[0]  # 3 x 4 s + gaps: over 10 s
    assert timing.duration == MAX_SCENE_SECONDS and timing.overflow > 0
    assert 1.0 < timing.speed_up() <= MAX_SPEED_UP
    assert _plan(storyboard, (1.0,)).scenes[0].speed_up() == 1.0
    assert "cut off" in _plan(storyboard, (4.0,)).notes[0]


# -- cues ------------------------------------------------------------------------------------

def test_each_phrase_becomes_one_cue_starting_where_it_is_said():
    storyboard = make_storyboard((3, 3), narrations=(LONG_EN, "Short."), title_card_seconds=2)
    plan = _plan(storyboard, (2.0, 0.6))
    timeline = plan.with_cues(build_timeline(plan.storyboard, FPS))
    phrases = [p for scene in plan.scenes for p in scene.phrases]
    assert [c.text for c in timeline.cues] == [p.text for p in phrases]
    scene_starts = {0: 2 * FPS, 1: (2 + plan.storyboard.scenes[0].duration) * FPS}
    index = 0
    for scene_index, timing in enumerate(plan.scenes):
        for phrase in timing.phrases:
            cue = timeline.cues[index]
            assert cue.start_frame == scene_starts[scene_index] + int(phrase.start * FPS)
            index += 1
    last = timeline.cues[-1]
    spoken_end = scene_starts[1] + plan.scenes[1].phrases[-1].end * FPS
    assert last.end_frame == pytest.approx(spoken_end + CAPTION_HOLD_SECONDS * FPS, abs=1)
    for before, after in zip(timeline.cues, timeline.cues[1:], strict=False):
        assert before.start_frame < before.end_frame <= after.start_frame
    assert to_srt(timeline).count(" --> ") == len(phrases)


def test_a_phrase_cut_off_at_the_scene_end_has_no_caption_past_it():
    storyboard = make_storyboard((5,), narrations=(LONG_EN,))
    plan = _plan(storyboard, (5.0,))  # phrases start at 0.2, 5.35 and 10.5 s
    timeline = plan.with_cues(build_timeline(plan.storyboard, FPS))
    assert len(timeline.cues) == 2  # the third would start after the scene's 10 s
    assert timeline.cues[-1].end_frame == timeline.frame_count  # cut where the scene ends


# -- speaking, measured on the waveform ------------------------------------------------------

def _check_cues_follow_the_voice(audio, timeline):
    """Each cue holds speech, its first words come right after it appears, the moment
    before a phrase's cue is the pause between phrases, and no speech is left uncaptioned."""
    track = audio.track(timeline)
    envelope = speech_envelope(track, SAMPLE_RATE)  # 10 ms windows
    speaking = envelope > envelope.max() * 0.05
    covered = np.zeros_like(speaking)
    for number, cue in enumerate(timeline.cues):
        start, end = (round(f / FPS * 100) for f in (cue.start_frame, cue.end_frame))
        covered[start:end] = True
        assert speaking[start:end].mean() > 0.3, f"cue {number} {cue.text!r} is not spoken"
        assert speaking[start:start + 15].any(), f"cue {number} appears before its words"
        if number and timeline.cues[number - 1].end_frame == cue.start_frame:
            assert not speaking[start - 6:start].any(), f"cue {number} starts mid-phrase"
    energy = np.square(envelope)
    assert energy[~covered].sum() < 0.01 * energy.sum(), "speech without a caption"
    said = np.zeros_like(speaking)  # where the result says the voice speaks (music ducks)
    for start, end in audio.speech_intervals(timeline):
        said[round(start * 100):round(end * 100)] = True
    assert energy[~said].sum() < 0.01 * energy.sum()
    assert said.sum() < 1.6 * speaking.sum()  # the phrases, not the pauses around them


@needs_espeak
@pytest.mark.parametrize(("language", "narrations"), [
    ("en", (LONG_EN, "Yes.", "")),
    ("zh", (LONG_ZH, "是的。", "")),
])
def test_spoken_storyboard_is_retimed_and_its_captions_overlap_the_voice(
    settings, tmp_path, language, narrations
):
    storyboard = make_storyboard((3, 8, 4), language=language, narrations=narrations)
    audio = speak_storyboard(storyboard, settings, tmp_path / "voice")
    assert audio.spoken
    assert audio.voice == {"en": "espeak-ng en-us", "zh": "espeak-ng cmn-latn-pinyin"}[language]
    first, second, silent = (s.duration for s in audio.storyboard.scenes)
    assert first > 3 and second == MIN_SCENE_SECONDS and silent == 4
    timeline = audio.timeline(build_timeline(audio.storyboard, FPS))
    assert len(timeline.cues) == len(scene_phrases(storyboard)[0]) + 1
    _check_cues_follow_the_voice(audio, timeline)


@needs_espeak
def test_the_timeline_without_narration_cues_fails_the_waveform_check(settings, tmp_path):
    # The check above can fail: captions spread by text length miss the real phrases.
    storyboard = make_storyboard((3, 8, 4), narrations=(LONG_EN, "Yes.", ""))
    audio = speak_storyboard(storyboard, settings, tmp_path / "voice")
    proportional = build_timeline(audio.storyboard, FPS)
    with pytest.raises(AssertionError):
        _check_cues_follow_the_voice(audio, proportional)


@needs_espeak
def test_each_scene_gets_a_wav_file_exactly_as_long_as_the_scene(settings, tmp_path):
    storyboard = make_storyboard((3, 5), narrations=("Leaves are green.", "Roots drink water."))
    audio = speak_storyboard(storyboard, settings, tmp_path / "voice")
    assert [p.name for p in audio.files] == ["scene-01.wav", "scene-02.wav"]
    for path, scene, samples in zip(audio.files, audio.storyboard.scenes, audio.scenes,
                                    strict=True):
        with wave.open(str(path)) as handle:
            assert (handle.getnchannels(), handle.getsampwidth()) == (1, 2)
            assert handle.getframerate() == SAMPLE_RATE
            assert handle.getnframes() == scene.duration * SAMPLE_RATE == len(samples)
            pcm = np.frombuffer(handle.readframes(handle.getnframes()), "<i2")
        assert np.abs(pcm).max() > 1000  # a voice, not silence
    assert all(len(seconds) == 1 and seconds[0] > 0.5 for seconds in audio.phrase_seconds)


@needs_espeak
def test_a_narration_too_long_for_any_scene_is_spoken_faster_and_noted(settings, tmp_path):
    longer = LONG_EN + " Oxygen leaves through the same pores, and the plant keeps the sugar."
    storyboard = make_storyboard((4,), narrations=(longer,))
    audio = speak_storyboard(storyboard, settings, tmp_path / "voice")
    assert audio.storyboard.scenes[0].duration == MAX_SCENE_SECONDS
    assert any("spoken faster" in note for note in audio.notes)
    assert audio.plan.scenes[0].overflow == 0  # it fits now: nothing is cut
    assert not any("cut off" in note for note in audio.notes)
    normal = speak_storyboard(make_storyboard((4,), narrations=(LONG_EN,)), settings,
                              tmp_path / "normal")
    assert not any("spoken faster" in note for note in normal.notes)


@needs_espeak
def test_what_does_not_fit_even_faster_is_cut_at_the_scene_end_with_a_note(settings,
                                                                         tmp_path):
    storyboard = make_storyboard((4,), narrations=(LONG_EN + " " + LONG_EN,))
    audio = speak_storyboard(storyboard, settings, tmp_path / "voice")
    assert any("cut off" in note and "shorten" in note for note in audio.notes)
    samples = audio.scenes[0]
    assert len(samples) == MAX_SCENE_SECONDS * SAMPLE_RATE
    assert np.abs(samples[-10:]).max() < 0.01  # faded out, no click


def test_narration_switched_off_leaves_the_storyboard_and_its_captions_alone(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("LESSONREEL_NARRATION__ENABLED", "false")
    storyboard = make_storyboard((3, 8), narrations=(LONG_EN, "Yes."))
    audio = speak_storyboard(storyboard, load_settings(), tmp_path / "voice")
    assert not audio.spoken and audio.notes == [] and audio.storyboard == storyboard
    timeline = build_timeline(storyboard, FPS)
    assert audio.timeline(timeline) is timeline
