"""A whole render with the voice on: espeak-ng, the school's music, the quality report and
the export bundle, through render_to_folder as a worker runs it."""

from __future__ import annotations

import json
import subprocess
import zipfile

import imageio_ffmpeg
import pytest

from engine.settings import load_settings
from engine.storyboard import Storyboard
from tests.conftest import make_storyboard
from worker.encode import probe
from worker.render import render_to_folder


def audio_seconds(path) -> float:
    pcm = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path),
                          "-map", "0:a:0", "-f", "s16le", "-ac", "1", "-ar", "48000", "-"],
                         capture_output=True, check=True).stdout
    return len(pcm) / 2 / 48000


@pytest.fixture
def voiced(monkeypatch, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=4", str(music / "calm.mp3")], check=True)
    monkeypatch.setenv("LESSONREEL_NARRATION__ENABLED", "true")
    monkeypatch.setenv("LESSONREEL_AUDIO__MUSIC_DIR", str(music))
    return load_settings()


def test_a_full_render_speaks_mixes_checks_and_bundles(voiced, tmp_path):
    board = make_storyboard((2, 9))  # a short narration in a long scene
    result = render_to_folder(board, tmp_path / "out", voiced)
    video = probe(result.files["video"])
    assert audio_seconds(result.files["video"]) == pytest.approx(video.seconds, abs=0.1)
    assert audio_seconds(result.files["preview"]) == pytest.approx(video.seconds, abs=0.1)
    # The voice retimed the scenes; the saved storyboard and the video agree.
    spoken = result.storyboard
    assert [s.duration for s in spoken.scenes] != [s.duration for s in board.scenes]
    saved = Storyboard.model_validate_json(result.files["storyboard"].read_text("utf-8"))
    assert saved == spoken and video.seconds == pytest.approx(spoken.total_seconds, abs=0.05)
    report = json.loads(result.files["qc"].read_text("utf-8"))
    assert report["problems"] == [] and result.problems == []
    with zipfile.ZipFile(result.files["bundle"]) as bundle:
        names = bundle.namelist()
    assert "video.mp4" in names and "storyboard.json" in names
    assert sum(name.startswith("narration/") for name in names) == len(board.scenes)


def test_a_preview_has_the_voice_but_no_bundle_and_a_missing_track_is_a_note(voiced, tmp_path):
    board = make_storyboard((3,)).revise(music="nosuch.mp3")
    result = render_to_folder(board, tmp_path / "out", voiced, animatic=True)
    assert "bundle" not in result.files and not (tmp_path / "out" / "bundle.zip").exists()
    assert audio_seconds(result.files["video"]) > 0
    assert any("nosuch.mp3" in note for note in result.notes)


def test_narration_off_keeps_the_storyboards_timing_and_no_sound(tmp_path, settings):
    board = make_storyboard((3, 4))
    result = render_to_folder(board, tmp_path / "out", settings)
    assert probe(result.files["video"]).seconds == pytest.approx(board.total_seconds, abs=0.05)
    with pytest.raises(subprocess.CalledProcessError):
        audio_seconds(result.files["video"])


def test_bench_render_times_the_finish_per_second_of_the_voiced_video(voiced, tmp_path,
                                                                     use_model):
    """(d) of `lessonreel bench render`: the voice, the soundtrack, the stills and the check,
    apart from the model, over a tiny Wan's cached clips."""
    from worker.bench import FINISH_STAGES, _bench_finish
    from worker.synthetic import build_tiny_wan

    settings = use_model(build_tiny_wan(tmp_path / "wan"),
                         LESSONREEL_NARRATION__ENABLED="true")
    board = make_storyboard((2, 2))
    report = _bench_finish(board, tmp_path / "out", settings)
    video = probe(tmp_path / "out" / "video.mp4")
    assert report["finish_video_seconds"] == pytest.approx(video.frames / video.fps, abs=0.01)
    assert report["finish_video_seconds"] > board.total_seconds  # the voice set the timing
    assert set(report["finish_stage_seconds"]) == set(FINISH_STAGES)
    assert all(seconds > 0 for seconds in report["finish_stage_seconds"].values())
    assert report["finish_seconds"] == pytest.approx(
        sum(report["finish_stage_seconds"].values()), abs=0.01)
    assert report["finish_seconds_per_output_second"] == pytest.approx(
        report["finish_seconds"] / report["finish_video_seconds"], rel=0.01)
