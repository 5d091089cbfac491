"""The export bundle, unpacked and played back with real ffmpeg."""

from __future__ import annotations

import re
import subprocess
import wave
import zipfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from engine.storyboard import Storyboard
from tests.conftest import make_storyboard
from worker.encode import probe
from worker.export import BUNDLE_FILE, ExportError, build_bundle, clip_names, scene_slug
from worker.qc import SceneSpan, write_report
from worker.render import render_to_folder


def tone(path: Path, seconds: float, rate: int = 22050) -> Path:
    """A WAV of a 440 Hz tone: narration stands in as sound ffmpeg must decode."""
    samples = (np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 440 / rate) * 8000)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(samples.astype("<i2").tobytes())
    return path


def decoded_audio_samples(path: Path) -> int:
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path),
                          "-f", "s16le", "-ac", "1", "-"], capture_output=True, check=True).stdout
    return len(raw) // 2


def frames_of(path: Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    return [np.frombuffer(raw, np.uint8).reshape(height, width, 3).astype(np.int16)
            for raw in reader]


@pytest.fixture
def rendered(settings, tmp_path):
    """A real animatic render: 1 s title card, then scenes of 3 and 2 s."""
    storyboard = make_storyboard((3, 2), title_card_seconds=1)
    folder = tmp_path / "r-test"
    render_to_folder(storyboard, folder, settings)
    return storyboard, folder


def test_the_bundle_unpacks_to_files_that_play_and_a_storyboard_that_loads_back(
        rendered, tmp_path):
    storyboard, folder = rendered
    wavs = [tone(tmp_path / "one.wav", 2.5), tone(tmp_path / "two.wav", 1.5)]

    bundle = build_bundle(folder, scene_clips=None, narration_wavs=wavs)

    assert bundle == folder / BUNDLE_FILE
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(bundle) as archive:
        assert archive.testzip() is None
        archive.extractall(unpacked)
        names = sorted(archive.namelist())
    assert names == sorted([
        "README.txt", "storyboard.json", "video.mp4", "captions.srt", "captions.vtt",
        "scenes/00b-title-card.mp4", "scenes/01-step-0.mp4", "scenes/02-step-1.mp4",
        "narration/01.wav", "narration/02.wav",
    ])
    loaded = Storyboard.model_validate_json((unpacked / "storyboard.json").read_text())
    assert loaded == storyboard
    assert probe(unpacked / "video.mp4").seconds == pytest.approx(6.0)
    for clip, seconds in [("00b-title-card", 1), ("01-step-0", 3), ("02-step-1", 2)]:
        info = probe(unpacked / "scenes" / f"{clip}.mp4")
        assert info.frames == seconds * 24, clip
        assert (info.width, info.height) == (832, 480)
    assert decoded_audio_samples(unpacked / "narration/01.wav") == int(2.5 * 22050)
    assert decoded_audio_samples(unpacked / "narration/02.wav") == int(1.5 * 22050)
    assert (unpacked / "captions.srt").read_bytes() == (folder / "captions.srt").read_bytes()
    readme = (unpacked / "README.txt").read_text()
    for name in set(names) - {"README.txt"}:
        assert name.split("/")[-1] in readme, name


def test_scene_clips_are_cut_at_the_exact_frames_of_the_rendered_timeline(tmp_path):
    # Moving footage whose scene times are not the storyboard's (as narration makes them):
    # a keyframe-bound stream copy could not start 2.5 s in.
    folder = tmp_path / "r-moving"
    folder.mkdir()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=s=320x180:r=24:d=6", "-c:v", "libx264", "-preset", "veryfast",
                    "-pix_fmt", "yuv420p", str(folder / "video.mp4")], check=True)
    storyboard = make_storyboard((3, 3), title_card_seconds=0)
    (folder / "storyboard.json").write_text(storyboard.model_dump_json())
    spans = [SceneSpan(scene_index=0, start=0.0, end=2.5),
             SceneSpan(scene_index=1, start=2.5, end=6.0)]

    bundle = build_bundle(folder, scenes=spans)

    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "out")
    video = frames_of(folder / "video.mp4")
    second = frames_of(tmp_path / "out/scenes/02-step-1.mp4")
    assert len(second) == 84  # 3.5 s
    assert np.abs(second[0] - video[60]).mean() < 4, "starts on frame 60 (2.5 s)"
    assert np.abs(second[0] - video[59]).mean() > 2 * np.abs(second[0] - video[60]).mean()
    assert np.abs(second[-1] - video[143]).mean() < 4, "ends on the last frame"
    assert len(frames_of(tmp_path / "out/scenes/01-step-0.mp4")) == 60


def test_scene_times_come_from_the_stored_quality_report(rendered, tmp_path):
    storyboard, folder = rendered
    # As if narration had made the scenes 1-2.5 s and 2.5-6 s: the report keeps the spans.
    spans = [SceneSpan(scene_index=None, start=0.0, end=1.0, kind="title"),
             SceneSpan(scene_index=0, start=1.0, end=2.5, kind="still"),
             SceneSpan(scene_index=1, start=2.5, end=6.0, kind="still")]
    write_report(folder, storyboard=storyboard, scenes=spans)
    with zipfile.ZipFile(build_bundle(folder)) as archive:
        archive.extractall(tmp_path / "out")
    assert probe(tmp_path / "out/scenes/01-step-0.mp4").frames == 36
    assert probe(tmp_path / "out/scenes/02-step-1.mp4").frames == 84


def test_the_renderers_own_clips_go_in_as_they_are(rendered, tmp_path):
    _storyboard, folder = rendered
    clips = []
    for number in (1, 2):
        clip = tmp_path / f"clip{number}.mp4"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                        f"testsrc2=s=64x64:r=16:d={number}", "-pix_fmt", "yuv420p", str(clip)],
                       check=True)
        clips.append(clip)
    with zipfile.ZipFile(build_bundle(folder, scene_clips=clips)) as archive:
        assert archive.read("scenes/01-step-0.mp4") == clips[0].read_bytes()
        assert archive.read("scenes/02-step-1.mp4") == clips[1].read_bytes()
        assert "scenes/00b-title-card.mp4" in archive.namelist()
        assert not any(name.startswith("narration/") for name in archive.namelist())


def test_media_is_stored_and_text_is_compressed(rendered):
    _storyboard, folder = rendered
    with zipfile.ZipFile(build_bundle(folder)) as archive:
        methods = {info.filename: info.compress_type for info in archive.infolist()}
    assert methods["video.mp4"] == methods["scenes/01-step-0.mp4"] == zipfile.ZIP_STORED
    assert methods["storyboard.json"] == methods["captions.vtt"] == zipfile.ZIP_DEFLATED


def test_archive_names_are_safe_whatever_the_scene_titles_say(settings, tmp_path):
    storyboard = make_storyboard((2, 2, 2), title_card_seconds=0)
    titles = ["../../etc/passwd", "光合作用", "C:\\Windows\\System32 . . ."]
    storyboard = storyboard.revise(scenes=[
        dict(scene.model_dump(), on_screen_text=title)
        for scene, title in zip(storyboard.scenes, titles, strict=True)])
    render_to_folder(storyboard, tmp_path, settings)
    with zipfile.ZipFile(build_bundle(tmp_path)) as archive:
        names = archive.namelist()
    assert "scenes/01-etc-passwd.mp4" in names
    assert f"scenes/02-{storyboard.scenes[1].id}.mp4" in names  # no ASCII: the scene's id
    assert "scenes/03-c-windows-system32.mp4" in names
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?", name), name
        assert ".." not in name and "\\" not in name


def test_slugs_are_short_ascii(settings):
    scene = make_storyboard((2,)).scenes[0].model_copy(update={
        "on_screen_text": "Ünïcode & the  WATER cycle — explained for everyone today"})
    assert scene_slug(scene) == "unicode-the-water-cycle-explaine"


def test_a_linked_video_is_refused_and_no_bundle_is_left(rendered, tmp_path):
    _storyboard, folder = rendered
    (folder / BUNDLE_FILE).unlink(missing_ok=True)  # the render made one; none must come back
    secret = tmp_path / "secret.mp4"
    (folder / "video.mp4").rename(secret)
    (folder / "video.mp4").symlink_to(secret)
    with pytest.raises(ExportError, match=r"video\.mp4 .* is not a plain file"):
        build_bundle(folder)
    assert not (folder / BUNDLE_FILE).exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_a_failed_export_keeps_the_bundle_made_before(rendered, tmp_path):
    _storyboard, folder = rendered
    before = build_bundle(folder).read_bytes()
    linked = tmp_path / "linked.wav"
    linked.symlink_to(tone(tmp_path / "real.wav", 1.0))
    with pytest.raises(ExportError, match="scene 2's narration is not a plain file"):
        build_bundle(folder, narration_wavs=[tone(tmp_path / "ok.wav", 1.0), linked])
    with pytest.raises(ExportError, match="narration_wavs has 1 files for 2 scenes"):
        build_bundle(folder, narration_wavs=[tone(tmp_path / "ok.wav", 1.0)])
    (tmp_path / "fake.wav").write_bytes(b"ID3 not a wave file")
    with pytest.raises(ExportError, match=r"narration/02\.wav is not a WAV file"):
        build_bundle(folder, narration_wavs=[tmp_path / "ok.wav", tmp_path / "fake.wav"])
    assert (folder / BUNDLE_FILE).read_bytes() == before
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_a_folder_without_a_render_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"has no storyboard\.json"):
        build_bundle(tmp_path)


def test_clips_of_a_branded_video_are_named_and_sorted_in_the_videos_order():
    from engine.settings import BrandingSettings
    from engine.timeline import build_timeline
    from worker.qc import scene_kinds, scene_spans

    storyboard = make_storyboard((2, 3), title_card_seconds=1)
    timeline = build_timeline(storyboard, 24, branding=BrandingSettings(cards="on"))
    spans = scene_spans(timeline, storyboard, scene_kinds(storyboard, None))
    names = list(clip_names(storyboard, spans).values())
    assert [name.split("/")[1].split("-")[0] for name in names] == ["00a", "00b", "01", "02",
                                                                    "02"]
    assert names[0].endswith("intro.mp4") and names[-1].endswith("z-outro.mp4")
    assert names == sorted(names)  # an editor's file list shows them in the video's order
