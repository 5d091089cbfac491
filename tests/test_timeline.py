"""Caption timing: cues inside their scene, inside the video, and the same in SRT and WebVTT."""

import re

import pytest

from engine.timeline import MAX_CUE_CHARS, build_timeline, split_caption, to_srt, to_webvtt
from tests.conftest import make_storyboard

SRT_TIME = re.compile(r"(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)")


def _seconds(h, m, s, ms):
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_segments_cover_title_card_and_scenes_back_to_back():
    timeline = build_timeline(make_storyboard((3, 5), title_card_seconds=2), fps=24)
    assert [(s.scene_index, s.start_frame, s.frame_count) for s in timeline.segments] == [
        (None, 0, 48), (0, 48, 72), (1, 120, 120),
    ]
    assert timeline.frame_count == 240
    assert timeline.seconds == 10


def test_cues_lie_inside_their_scene_in_order_without_overlap():
    storyboard = make_storyboard((4, 6, 2), title_card_seconds=2)
    timeline = build_timeline(storyboard, fps=24)
    assert timeline.cues
    for segment in timeline.segments[1:]:
        inside = [c for c in timeline.cues
                  if segment.start_frame <= c.start_frame < segment.end_frame]
        assert inside, "every narrated scene has captions"
        assert all(c.end_frame <= segment.end_frame for c in inside)
    for earlier, later in zip(timeline.cues, timeline.cues[1:], strict=False):
        assert earlier.end_frame <= later.start_frame
        assert earlier.start_frame < earlier.end_frame
    assert timeline.cues[0].start_frame >= 48  # nothing over the title card


def test_long_narration_is_cut_into_caption_sized_phrases():
    text = ("Plants take in carbon dioxide through tiny pores in their leaves, and water through "
            "their roots, then use the energy of sunlight to turn them into sugar and oxygen.")
    phrases = split_caption(text, "en")
    assert len(phrases) >= 2
    assert all(len(p) <= MAX_CUE_CHARS["en"] for p in phrases)
    assert " ".join(phrases) == text


def test_decimals_abbreviations_and_addresses_stay_whole():
    text = ("Pi is about 3.14 and a kilometre is 1,000 metres, e.g. a long walk. "
            "Read more at example.com today, then try the quiz.")
    phrases = split_caption(text, "en")
    joined = " | ".join(phrases)
    for whole in ("3.14", "1,000", "e.g.", "example.com"):
        assert whole in joined
    assert " ".join(phrases) == text


def test_chinese_narration_is_cut_at_punctuation():
    text = ("植物通过叶片上的气孔吸收二氧化碳，通过根吸收水分。"
            "然后利用阳光的能量，把它们变成糖和氧气。")
    phrases = split_caption(text, "zh")
    assert len(phrases) >= 2
    assert all(len(p) <= MAX_CUE_CHARS["zh"] for p in phrases)
    assert "".join(phrases) == text


def test_srt_and_webvtt_carry_the_same_cues_inside_the_video():
    storyboard = make_storyboard((3, 4), title_card_seconds=1)
    timeline = build_timeline(storyboard, fps=24)
    srt = to_srt(timeline)
    vtt = to_webvtt(timeline)
    srt_times = [(_seconds(*m.groups()[:4]), _seconds(*m.groups()[4:]))
                 for m in SRT_TIME.finditer(srt)]
    vtt_times = re.findall(r"(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)", vtt)
    assert vtt.startswith("WEBVTT\n\n")
    assert len(srt_times) == len(vtt_times) == len(timeline.cues)
    for (start, end), (vtt_start, vtt_end) in zip(srt_times, vtt_times, strict=True):
        assert 0 <= start < end <= timeline.seconds
        assert vtt_start.replace(".", ",") in srt and vtt_end.replace(".", ",") in srt
    first = timeline.cues[0]
    assert srt_times[0] == pytest.approx((first.start_frame / 24, first.end_frame / 24), abs=1e-3)


def test_webvtt_escapes_markup_characters():
    storyboard = make_storyboard((3,), narrations=("If x < 5 & y > 2 then stop.",))
    vtt = to_webvtt(build_timeline(storyboard, fps=24))
    assert "x &lt; 5 &amp; y &gt; 2" in vtt


def test_a_scene_without_narration_has_no_captions():
    storyboard = make_storyboard((3, 3), narrations=("Only the first speaks.", ""))
    timeline = build_timeline(storyboard, fps=24)
    second = timeline.segments[2]
    assert all(c.end_frame <= second.start_frame for c in timeline.cues)


def test_cue_at_finds_the_caption_on_screen_at_each_frame():
    timeline = build_timeline(make_storyboard((3, 3), title_card_seconds=1), fps=24)
    for cue in timeline.cues:
        assert timeline.cue_at(cue.start_frame) is cue
        assert timeline.cue_at(cue.end_frame - 1) is cue
    assert timeline.cue_at(0) is None  # the title card
    assert timeline.cue_at(timeline.frame_count) is None
