"""The quality report, on real videos: rendered by the real compose and encoder (with captions
burned in), by the animatic, or made by ffmpeg's own test sources."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine.timeline import build_timeline, to_srt, to_webvtt
from tests.conftest import make_storyboard
from worker.animatic import AnimaticRenderer
from worker.compose import compose
from worker.encode import EncodeOptions, VideoEncoder
from worker.frames import FrameRun
from worker.qc import (
    REPORT_FILE,
    QualityCheckError,
    QualityReport,
    add_arguments,
    cue_spans,
    parse_cue_times,
    quality_report,
    run,
    scene_kinds,
    scene_spans,
    write_report,
)
from worker.render import render_to_folder
from worker.text import BUNDLED_FONT

SIZE = (416, 240)
FPS = 24


class Footage:
    """A stand-in video model: each scene is moving, black, frozen or blurry footage, drawn
    by numpy; the title card is the animatic's. Compose burns the captions in as always."""

    def __init__(self, storyboard, contents: tuple[str, ...]) -> None:
        self.width, self.height = SIZE
        self.contents = contents
        self.animatic = AnimaticRenderer(storyboard, fps=FPS, font=BUNDLED_FONT,
                                         uploads=Path("/nonexistent"), size=SIZE)
        rng = np.random.default_rng(7)
        blocks = rng.integers(0, 256, (SIZE[1] // 4, SIZE[0] // 4, 3), dtype=np.uint8)
        self.texture = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))  # twice the frame
        self.blurred = np.asarray(Image.fromarray(self.texture).filter(
            ImageFilter.GaussianBlur(8)))

    def title_card(self, frame_count: int):
        return self.animatic.title_card(frame_count)

    def scene(self, index: int, frame_count: int):
        content = self.contents[index]
        if content == "black":
            yield FrameRun(np.zeros((self.height, self.width, 3), np.uint8), frame_count)
        elif content == "frozen":
            yield FrameRun(self._window(self.texture, 40), frame_count)
        else:
            source = self.blurred if content == "blurry" else self.texture
            for number in range(frame_count):
                yield FrameRun(self._window(source, 3 * number), 1)

    def _window(self, source: np.ndarray, shift: int) -> np.ndarray:
        x, y = shift % self.width, (shift // 2) % self.height
        return np.ascontiguousarray(source[y:y + self.height, x:x + self.width])


def model_video(tmp_path: Path, contents: tuple[str, ...], durations: tuple[int, ...] = ()):
    """A video whose scenes a (stand-in) video model made; with its spans and cues."""
    storyboard = make_storyboard(durations or (3,) * len(contents), title_card_seconds=1)
    timeline = build_timeline(storyboard, FPS)
    video = tmp_path / "video.mp4"
    encoder = VideoEncoder(video, tmp_path / "preview.mp4", SIZE, EncodeOptions(fps=FPS))
    compose(timeline, Footage(storyboard, contents), encoder, font=BUNDLED_FONT)
    encoder.finish()
    spans = scene_spans(timeline, storyboard, ["video"] * len(contents))
    return video, storyboard, spans, cue_spans(timeline)


def lavfi_video(path: Path, *sources: str, audio: str | None = None) -> Path:
    """Concatenate ffmpeg test sources (e.g. 'testsrc2=d=2', 'color=black:d=1') into an MP4."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    for source in sources:
        command += ["-f", "lavfi", "-i", f"{source}:s=416x240:r=24"]
    if audio:
        command += ["-f", "lavfi", "-i", audio]
    graph = "".join(f"[{i}:v]" for i in range(len(sources)))
    graph += f"concat=n={len(sources)}:v=1:a=0,format=yuv420p[v]"
    command += ["-filter_complex", graph, "-map", "[v]", "-c:v", "libx264", "-preset",
                "veryfast"]
    if audio:
        command += ["-map", f"{len(sources)}:a", "-c:a", "aac", "-shortest"]
    subprocess.run([*command, str(path)], check=True)
    return path


def codes(report: QualityReport) -> list[str]:
    return [problem.code for problem in report.problems]


# -- clean videos pass ----------------------------------------------------------------------------


def test_a_clean_animatic_render_has_no_problems(settings, tmp_path):
    storyboard = make_storyboard((3, 3), title_card_seconds=1)
    render_to_folder(storyboard, tmp_path, settings)
    timeline = build_timeline(storyboard, settings.render.fps)
    spans = scene_spans(timeline, storyboard, scene_kinds(storyboard, None))

    report = quality_report(tmp_path / "video.mp4", storyboard=storyboard, scenes=spans,
                            cues=cue_spans(timeline))

    assert report.problems == []
    assert report.ok
    assert (report.width, report.height, report.fps) == (832, 480, 24)
    assert report.seconds == pytest.approx(7.0)
    assert report.expected_seconds == 7.0
    assert report.caption_coverage >= 0.95
    assert [scene.kind for scene in report.scenes] == ["title", "still", "still"]
    assert all(scene.sharpness > 0 for scene in report.scenes)
    assert report.notes == ["The video has no sound track."]


def test_clean_model_footage_has_no_problems(tmp_path):
    video, storyboard, spans, cues = model_video(tmp_path, ("moving", "moving", "moving"))
    report = quality_report(video, storyboard=storyboard, scenes=spans, cues=cues)
    assert report.problems == []
    assert report.black == [] and report.frozen == []


# -- what is off is flagged ---------------------------------------------------------------------


def test_an_injected_black_scene_is_flagged_with_its_time(tmp_path):
    # 1 s title, then scenes at 1-4 s, 4-7 s (black, captions burned over it), 7-10 s.
    video, storyboard, spans, cues = model_video(tmp_path, ("moving", "black", "moving"))
    report = quality_report(video, storyboard=storyboard, scenes=spans, cues=cues)

    assert codes(report) == ["black"]
    problem = report.problems[0]
    assert problem.start == pytest.approx(4.0, abs=0.25)
    assert problem.end == pytest.approx(7.0, abs=0.25)
    assert problem.message == (f"The picture is black from {problem.start:.1f} s to "
                               f"{problem.end:.1f} s (scene 2); render that scene again.")
    assert problem.scene_index == 1  # what the bot's "re-render scene 2" button needs
    assert [stretch.scene for stretch in report.black] == ["scene 2"]


def test_a_black_stretch_in_any_video_is_flagged(tmp_path):
    video = lavfi_video(tmp_path / "any.mp4", "testsrc2=d=2", "color=black:d=1.5",
                        "testsrc2=d=2")
    report = quality_report(video)
    assert codes(report) == ["black"]
    assert report.problems[0].message.endswith(" s.")  # no scene to re-render: no advice
    assert report.black[0].start == pytest.approx(2.0, abs=0.25)
    assert report.black[0].end == pytest.approx(3.5, abs=0.25)


def test_a_frozen_scene_from_a_video_model_is_flagged(tmp_path):
    video, storyboard, spans, cues = model_video(tmp_path, ("moving", "frozen", "moving"))
    report = quality_report(video, storyboard=storyboard, scenes=spans, cues=cues)

    assert codes(report) == ["frozen"]
    problem = report.problems[0]
    assert problem.start == pytest.approx(4.0, abs=0.25)
    assert problem.end == pytest.approx(7.0, abs=0.25)
    assert "(scene 2); render that scene again" in problem.message
    assert problem.scene_index == 1


def test_a_still_picture_is_no_fault_where_the_scene_is_still_on_purpose(tmp_path):
    video, storyboard, spans, cues = model_video(tmp_path, ("moving", "frozen", "moving"))
    as_animatic = [span.model_copy(update={"kind": "still"}) if span.scene_index == 1
                   else span for span in spans]
    report = quality_report(video, storyboard=storyboard, scenes=as_animatic, cues=cues)
    assert report.problems == [] and report.frozen == []


def test_a_still_stretch_in_a_video_of_unknown_origin_is_a_note(tmp_path):
    video, *_ = model_video(tmp_path, ("moving", "frozen", "moving"))
    report = quality_report(video)
    assert "frozen" not in codes(report)
    assert len(report.frozen) == 1
    assert (report.frozen[0].start, report.frozen[0].end) == pytest.approx((4.0, 7.0), abs=0.25)
    assert any("stands still from 4.0 s" in note for note in report.notes)


def test_a_blurry_model_scene_is_flagged_and_sharp_ones_are_not(tmp_path):
    video, storyboard, spans, cues = model_video(tmp_path, ("moving", "blurry", "moving"))
    report = quality_report(video, storyboard=storyboard, scenes=spans, cues=cues)
    assert codes(report) == ["blurry"]
    assert "Scene 2 looks blurry" in report.problems[0].message
    sharpness = [scene.sharpness for scene in report.scenes]
    assert sharpness[2] < 20 < min(sharpness[1], sharpness[3])


def test_a_video_shorter_than_its_storyboard_is_flagged(tmp_path):
    video, storyboard, _spans, cues = model_video(tmp_path, ("moving", "moving"))
    longer = make_storyboard((3, 6), title_card_seconds=1)

    report = quality_report(video, storyboard=longer, cues=cues)

    assert "duration" in codes(report)
    message = next(p.message for p in report.problems if p.code == "duration")
    assert message == "The video runs 7.0 s, but the storyboard adds up to 10.0 s."
    assert "duration" not in codes(quality_report(video, storyboard=storyboard, cues=cues))


def test_the_wrong_shape_for_the_storyboard_is_flagged(tmp_path):
    video, *_ = model_video(tmp_path, ("moving", "moving"))
    portrait = make_storyboard((3, 3), title_card_seconds=1, aspect="9:16")
    assert "aspect" in codes(quality_report(video, storyboard=portrait))


def test_narration_without_captions_is_flagged(tmp_path):
    video, _storyboard, spans, _cues = model_video(tmp_path, ("moving", "moving"))

    assert "captions" in codes(quality_report(video, scenes=spans, cues=[]))
    half = quality_report(video, scenes=spans, cues=[(1.0, 4.0)])  # scene 1's only
    assert half.caption_coverage == pytest.approx(0.5, abs=0.02)
    assert "Captions cover only 50%" in half.problems[0].message


def test_cue_times_read_from_srt_and_vtt_agree_with_the_timeline():
    storyboard = make_storyboard((3, 3), title_card_seconds=1)
    timeline = build_timeline(storyboard, FPS)
    expected = np.array(cue_spans(timeline))
    assert len(expected) == 4
    np.testing.assert_allclose(parse_cue_times(to_srt(timeline)), expected, atol=0.001)
    np.testing.assert_allclose(parse_cue_times(to_webvtt(timeline)), expected, atol=0.001)


# -- sound ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("gain", "problem"), [
    ("-8dB", "quiet"), ("5.8dB", None), ("18dB", "loud"),
])
def test_loudness_is_measured_and_judged(tmp_path, gain, problem):
    # ffmpeg's sine source measures -21.8 LUFS; the gain moves it.
    video = lavfi_video(tmp_path / "tone.mp4", "testsrc2=d=3",
                        audio=f"sine=f=440:d=3,volume={gain}")
    report = quality_report(video)
    assert report.audio
    assert report.loudness_lufs == pytest.approx(-21.8 + float(gain[:-2]), abs=1.0)
    assert codes(report) == ([problem] if problem else [])


def test_no_sound_is_a_note_unless_narration_was_expected(tmp_path):
    video = lavfi_video(tmp_path / "mute.mp4", "testsrc2=d=2")
    assert quality_report(video).notes == ["The video has no sound track."]
    expected = quality_report(video, narration_expected=True)
    assert codes(expected) == ["no_audio"]


def test_a_silent_sound_track_fails_when_narration_was_expected(tmp_path):
    video = lavfi_video(tmp_path / "silent.mp4", "testsrc2=d=2",
                        audio="anullsrc=r=48000:cl=mono:d=2")
    assert codes(quality_report(video, narration_expected=True)) == ["silent"]
    assert quality_report(video).notes == ["The sound track is silent."]


def test_a_file_that_is_not_a_video_raises_a_sentence(tmp_path):
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(b"this is not a video at all")
    with pytest.raises(QualityCheckError, match=r"^Cannot read notes\.mp4 as a video \("):
        quality_report(junk)
    with pytest.raises(QualityCheckError, match="There is no video file"):
        quality_report(tmp_path / "missing.mp4")


# -- stored beside the video ----------------------------------------------------------------------


def test_write_report_stores_qc_json_that_loads_back(tmp_path):
    _video, storyboard, spans, cues = model_video(tmp_path, ("moving", "black"))
    report = write_report(tmp_path, storyboard=storyboard, scenes=spans, cues=cues)
    stored = QualityReport.model_validate_json((tmp_path / REPORT_FILE).read_text())
    assert stored == report
    assert codes(stored) == ["black"]
    assert stored.file == "video.mp4"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_60_second_video_is_checked_in_a_few_seconds(tmp_path):
    import time

    video = lavfi_video(tmp_path / "long.mp4", "testsrc2=d=60", audio="sine=d=60")
    started = time.perf_counter()
    report = quality_report(video)
    assert time.perf_counter() - started < 5
    assert report.seconds == pytest.approx(60)


# -- `lessonreel qc FILE.mp4` -------------------------------------------------------------------


def cli(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="lessonreel qc")
    add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = run(parser.parse_args(list(argv)), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_prints_a_clean_report_and_exits_0(settings, tmp_path):
    storyboard = make_storyboard((3, 3), title_card_seconds=1)
    render_to_folder(storyboard, tmp_path, settings)
    code, out, err = cli(str(tmp_path / "video.mp4"))
    assert (code, err) == (0, "")
    assert out.startswith("video.mp4: no problems found\n")
    assert "832x480 h264, 24 fps, 7.0 s (storyboard: 7.0 s), no sound" in out
    assert "scene 2" in out and "PROBLEM" not in out


def test_cli_uses_the_scene_kinds_of_the_report_stored_beside_the_video(tmp_path):
    _video, storyboard, spans, cues = model_video(tmp_path, ("moving", "frozen"))
    (tmp_path / "storyboard.json").write_text(storyboard.model_dump_json())
    code, out, _err = cli(str(tmp_path / "video.mp4"))
    assert code == 0 and "stands still" in out  # kinds unknown: a note

    write_report(tmp_path, storyboard=storyboard, scenes=spans, cues=cues)
    code, out, _err = cli(str(tmp_path / "video.mp4"))
    assert code == 1
    assert "PROBLEM  The picture freezes from 4.0 s to 7.0 s (scene 2)" in out


def test_cli_exits_1_with_the_problem_in_json(tmp_path):
    video = lavfi_video(tmp_path / "clip.mp4", "testsrc2=d=2", "color=black:d=1")
    code, out, _err = cli(str(video), "--json")
    assert code == 1
    report = json.loads(out)
    assert [problem["code"] for problem in report["problems"]] == ["black"]
    assert report["width"] == 416


def test_cli_says_one_sentence_and_exits_2_for_a_file_it_cannot_read(tmp_path):
    junk = tmp_path / "essay.mp4"
    junk.write_text("not a video")
    script = ("import argparse, sys; from worker import qc; "
              "p = argparse.ArgumentParser(); qc.add_arguments(p); "
              "sys.exit(qc.run(p.parse_args(sys.argv[1:])))")
    done = subprocess.run([sys.executable, "-c", script, str(junk)], capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("lessonreel qc: Cannot read essay.mp4 as a video (")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
