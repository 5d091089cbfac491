"""The soundtrack: music choice, ducking, loudness and the AAC mux, with real ffmpeg.

Loudness is checked with pyloudnorm, a BS.1770 implementation independent of the ebur128
filter that worker/audio.py normalises with. The signals are synthetic: noise bursts below
2 kHz stand in for spoken phrases, and a 5 kHz tone stands in for the music, so the music's
level can be read out of the mix at any moment by projecting onto that tone.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pyloudnorm
import pytest
from scipy.signal import resample_poly

from engine.settings import AudioSettings
from worker import audio
from worker.audio import (
    SAMPLE_RATE,
    TRUE_PEAK_DBTP,
    MixedAudio,
    VoiceClip,
    measure_mixing,
    mix,
    mux_audio,
    pick_music,
)
from worker.encode import EncodeError, EncodeOptions, VideoEncoder, probe

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
MUSIC_HZ = 5000
VOICE_RATE = 22_050  # espeak-ng's rate: the mixer resamples it


def ffmpeg(*arguments: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run([FFMPEG, "-hide_banner", "-y", *arguments], capture_output=True)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-500:]
    return result


def write_music(path: Path, source: str) -> Path:
    """An audio file of an ffmpeg lavfi `source`, in the format its extension names."""
    ffmpeg("-f", "lavfi", "-i", source, "-ac", "2", str(path))
    return path


def tone(seconds: float, hz: int = MUSIC_HZ) -> str:
    return f"sine=f={hz}:d={seconds}:r=48000"


def phrase(seconds: float, rng: np.random.Generator, level: float = 0.1) -> np.ndarray:
    """Noise with nothing above 2 kHz, at VOICE_RATE: a spoken phrase, to a loudness meter."""
    spectrum = np.fft.rfft(rng.standard_normal(round(seconds * VOICE_RATE)))
    spectrum[np.fft.rfftfreq(round(seconds * VOICE_RATE), 1 / VOICE_RATE) > 2000] = 0
    noise = np.fft.irfft(spectrum, round(seconds * VOICE_RATE))
    return (noise / noise.std() * level).astype(np.float32)


def loudness(samples: np.ndarray) -> float:
    return pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(samples.astype(np.float64))


def window(samples: np.ndarray, start: float, end: float) -> np.ndarray:
    return samples[round(start * SAMPLE_RATE):round(end * SAMPLE_RATE)].mean(axis=1)


def tone_level_db(samples: np.ndarray, start: float, end: float, hz: int = MUSIC_HZ) -> float:
    """The amplitude of the `hz` tone in [start, end), in dB: the music's level alone."""
    x = window(samples, start, end)
    t = np.arange(len(x)) / SAMPLE_RATE
    amplitude = 2 * abs(np.dot(x, np.exp(-2j * np.pi * hz * t))) / len(x)
    return 20 * np.log10(amplitude + 1e-12)


def rms_db(samples: np.ndarray, start: float, end: float) -> float:
    return 20 * np.log10(np.sqrt(np.mean(window(samples, start, end) ** 2)) + 1e-12)


def true_peak_db(samples: np.ndarray) -> float:
    oversampled = resample_poly(samples.astype(np.float64), 4, 1, axis=0)
    return 20 * np.log10(np.abs(oversampled).max())


def decoded_audio(path: Path) -> np.ndarray:
    result = ffmpeg("-i", str(path), "-map", "0:a:0", "-f", "f32le", "-ac", "2",
                    "-ar", str(SAMPLE_RATE), "pipe:1")
    return np.frombuffer(result.stdout, "<f4").reshape(-1, 2)


def stream_descriptions(path: Path) -> list[str]:
    result = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True)
    return re.findall(r"Stream #\S+: (.*)", result.stderr.decode(errors="replace"))


def video_stream_md5(path: Path) -> str:
    return ffmpeg("-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "md5",
                  "-").stdout.decode().strip()


def write_video(path: Path, frames: int, fps: int = 24) -> Path:
    encoder = VideoEncoder(path, path.with_name("preview.mp4"), (64, 48),
                           EncodeOptions(fps=fps, preview_max_side=64))
    for index in range(frames):  # frames that differ, so a re-encode would show
        encoder.write(np.full((48, 64, 3), index * 3 % 256, np.uint8))
    encoder.finish()
    return path


PHRASES = [(1.5, 2.0), (5.5, 2.0), (9.5, 2.0)]  # start, length: gaps of 2 s between
UNDER_SPEECH = [(2.3, 2.7), (6.3, 6.7), (10.3, 10.7)]
BETWEEN_PHRASES = [(4.3, 4.7), (8.3, 8.7)]


def spoken(rng: np.random.Generator, *, as_int16: bool = False) -> list[VoiceClip]:
    clips = []
    for start, seconds in PHRASES:
        samples = phrase(seconds, rng)
        if as_int16:
            samples = np.round(samples * 32767).astype(np.int16)
        clips.append(VoiceClip(start, samples, VOICE_RATE))
    return clips


# Choosing the music -----------------------------------------------------------------------

@pytest.fixture
def music_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "music"
    folder.mkdir()
    for name in ("calm.mp3", "bright.ogg"):
        (folder / name).write_bytes(b"not decoded when picking")
    (folder / "notes.txt").write_text("not music")
    (folder / "._calm.mp3").write_bytes(b"a Mac's companion file")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.mp3").write_bytes(b"outside the music folder")
    (folder / "escape.mp3").symlink_to(outside / "secret.mp3")
    return folder


def test_pick_music_plays_a_named_track_inside_the_folder(music_dir):
    settings = AudioSettings(music_dir=str(music_dir), music="calm.mp3")
    assert pick_music(settings) == audio.MusicChoice((music_dir / "calm.mp3").resolve())
    # The storyboard's choice wins over the setting.
    assert pick_music(settings, "bright.ogg").path == (music_dir / "bright.ogg").resolve()


@pytest.mark.parametrize("name", [
    "../private/secret.mp3",  # climbs out
    "PLACEHOLDER_ABSOLUTE",  # an absolute path replaces the folder
    "escape.mp3",  # a symlink in the folder that leads out
    "notes.txt",  # inside, but not music
    "missing.mp3",  # not there at all
])
def test_pick_music_refuses_anything_but_a_music_file_inside_the_folder(music_dir, name):
    if name == "PLACEHOLDER_ABSOLUTE":
        name = str(music_dir.parent / "private" / "secret.mp3")
    choice = pick_music(AudioSettings(music_dir=str(music_dir), music=name))
    assert choice.path is None
    assert "not a track in the school's music folder" in choice.note


def test_random_music_picks_only_music_files_inside_the_folder(music_dir):
    settings = AudioSettings(music_dir=str(music_dir), music="random")
    picked = {pick_music(settings, rng=random.Random(seed)).path.name for seed in range(40)}
    assert picked == {"calm.mp3", "bright.ogg"}
    # The same generator state picks the same track.
    assert pick_music(settings, rng=random.Random(7)) == pick_music(settings, rng=random.Random(7))


def test_a_missing_or_empty_music_folder_is_a_note_not_a_failure(tmp_path):
    missing = pick_music(AudioSettings(music_dir=str(tmp_path / "nowhere")))
    assert missing.path is None and "music folder is missing" in missing.note
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no music here")
    nothing = pick_music(AudioSettings(music_dir=str(empty)))
    assert nothing.path is None and "holds no music files" in nothing.note


def test_no_music_asked_for_is_silent_about_it(music_dir):
    assert pick_music(AudioSettings(music_dir=str(music_dir), music="none")) == \
        audio.MusicChoice(None)
    assert pick_music(AudioSettings(music_dir=str(music_dir)), "none").path is None
    assert pick_music(AudioSettings(music_dir="", music="random")) == audio.MusicChoice(None)
    named = pick_music(AudioSettings(music_dir="", music="calm.mp3"))
    assert named.path is None and "no music folder is set up" in named.note


# Loudness -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("voice", "music", "target"), [
    (True, True, -16.0), (True, False, -16.0), (False, True, -16.0), (True, True, -23.0),
])
def test_the_mix_meets_the_target_loudness_by_an_independent_meter(tmp_path, voice, music,
                                                                   target):
    rng = np.random.default_rng(1)
    track = write_music(tmp_path / "bed.flac", "aevalsrc=0.3*sin(2*PI*330*t)"
                        "+0.2*sin(2*PI*523*t)*(0.5+0.5*sin(2*PI*2*t)):d=8:s=48000")
    clips = spoken(rng) if voice else []
    mixed = mix(clips, track if music else None, 13.0,
                AudioSettings(target_lufs=target))

    measured = loudness(mixed.samples)
    assert abs(measured - target) <= 1.0, f"{measured:.2f} LUFS for a target of {target}"
    assert mixed.loudness_lufs == pytest.approx(target, abs=0.5)  # what the mixer believes
    assert true_peak_db(mixed.samples) <= TRUE_PEAK_DBTP + 0.2
    assert mixed.samples.dtype == np.float32 and mixed.samples.shape == (13 * SAMPLE_RATE, 2)


def test_loud_clicks_are_limited_not_clipped_and_the_loudness_still_holds():
    rng = np.random.default_rng(2)
    quiet = phrase(6.0, rng, level=0.01)  # -40 dBFS: normalising lifts it by about 20 dB
    quiet[::VOICE_RATE] = 0.9  # a click every second that the lift would put far over 0 dBFS
    mixed = mix([VoiceClip(0.5, quiet, VOICE_RATE)], None, 7.0, AudioSettings())

    assert np.abs(mixed.samples).max() <= 10 ** (TRUE_PEAK_DBTP / 20)
    assert true_peak_db(mixed.samples) <= TRUE_PEAK_DBTP + 0.2
    assert abs(loudness(mixed.samples) - -16.0) <= 1.0


def test_silence_in_gives_silence_out_with_a_note(tmp_path):
    quiet_music = write_music(tmp_path / "silence.wav", "anullsrc=r=48000:cl=stereo:d=3")
    for narration, music in [([], None),
                             ([VoiceClip(0.0, np.zeros(VOICE_RATE), VOICE_RATE)], None),
                             ([], quiet_music)]:
        mixed = mix(narration, music, 2.0, AudioSettings())
        assert mixed.samples.shape == (2 * SAMPLE_RATE, 2)
        assert not mixed.samples.any()
        assert mixed.loudness_lufs is None
        assert any("silent" in note for note in mixed.notes)


# Ducking --------------------------------------------------------------------------------------

@pytest.mark.parametrize("as_int16", [False, True])
def test_music_is_ducked_under_speech_and_comes_back_between_phrases(tmp_path, as_int16):
    track = write_music(tmp_path / "tone.flac", tone(20))
    mixed = mix(spoken(np.random.default_rng(3), as_int16=as_int16), track, 13.0,
                AudioSettings(duck_db=14.0)).samples

    under = [tone_level_db(mixed, *span) for span in UNDER_SPEECH]
    between = [tone_level_db(mixed, *span) for span in BETWEEN_PHRASES]
    before = tone_level_db(mixed, 0.8, 1.2)
    assert max(under) <= min(between) - 10, f"under speech {under}, between {between}"
    assert all(abs(level - before) <= 1.0 for level in between), "back to full level"
    # The voice is where the clips said, and silent in the gaps.
    speaking = [rms_db(mixed, *span) for span in UNDER_SPEECH]
    assert min(speaking) >= max(rms_db(mixed, *span) for span in BETWEEN_PHRASES) + 3


def test_duck_db_zero_leaves_the_music_level_alone(tmp_path):
    track = write_music(tmp_path / "tone.flac", tone(20))
    mixed = mix(spoken(np.random.default_rng(3)), track, 13.0,
                AudioSettings(duck_db=0.0)).samples
    levels = [tone_level_db(mixed, *span) for span in UNDER_SPEECH + BETWEEN_PHRASES]
    assert max(levels) - min(levels) <= 0.5


def test_music_stays_down_through_the_short_pauses_between_words(tmp_path):
    """Words of 0.3 s with 0.12 s pauses: the music must not swell in each pause (pumping)."""
    track = write_music(tmp_path / "tone.flac", tone(10))
    rng = np.random.default_rng(4)
    words = [VoiceClip(2.0 + i * 0.42, phrase(0.3, rng), VOICE_RATE) for i in range(8)]
    mixed = mix(words, track, 6.0, AudioSettings(duck_db=14.0)).samples
    in_words = [tone_level_db(mixed, 2.0 + i * 0.42 + 0.05, 2.0 + i * 0.42 + 0.25)
                for i in range(1, 7)]
    in_pauses = [tone_level_db(mixed, 2.0 + i * 0.42 + 0.3, 2.0 + i * 0.42 + 0.42)
                 for i in range(1, 7)]
    assert max(in_pauses) - min(in_words) <= 1.0, f"words {in_words}, pauses {in_pauses}"
    assert tone_level_db(mixed, 0.8, 1.6) - max(in_pauses) >= 10


# Looping and trimming -------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".mp3", ".ogg", ".flac", ".wav", ".m4a"])
def test_music_shorter_than_the_video_loops(tmp_path, suffix):
    # One second: half a second of 440 Hz, then half a second of nothing.
    track = write_music(tmp_path / f"short{suffix}",
                        "aevalsrc=0.5*sin(2*PI*440*t)*lt(t\\,0.5):d=1:s=48000")
    mixed = mix([], track, 5.0, AudioSettings()).samples
    assert len(mixed) == 5 * SAMPLE_RATE
    for second in (1, 2, 3):  # every loop plays the tone, then its pause
        sounding = tone_level_db(mixed, second + 0.1, second + 0.4, hz=440)
        pause = rms_db(mixed, second + 0.6, second + 0.9)
        assert sounding - pause >= 30, f"loop {second}: tone {sounding}, pause {pause}"


def test_music_longer_than_the_video_is_trimmed_and_faded_at_the_ends(tmp_path):
    # Five seconds of 440 Hz, then five of 880 Hz: a 3 s video hears only the first.
    track = write_music(tmp_path / "long.ogg",
                        "aevalsrc=0.5*sin(2*PI*(440+440*gte(t\\,5))*t):d=10:s=48000")
    mixed = mix([], track, 3.0, AudioSettings()).samples
    assert len(mixed) == 3 * SAMPLE_RATE
    assert tone_level_db(mixed, 1.0, 2.0, hz=440) - tone_level_db(mixed, 1.0, 2.0, hz=880) >= 30
    loud = np.abs(mixed[SAMPLE_RATE:2 * SAMPLE_RATE]).max()
    assert np.abs(mixed[:48]).max() < loud * 0.01, "fades in"
    assert np.abs(mixed[-48:]).max() < loud * 0.01, "fades out"


def test_music_that_cannot_be_read_is_a_note_and_the_voice_still_plays(tmp_path):
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"\x00" * 1000)
    mixed = mix(spoken(np.random.default_rng(5)), broken, 13.0, AudioSettings())
    assert any("'broken.mp3' could not be read" in note for note in mixed.notes)
    assert abs(loudness(mixed.samples) - -16.0) <= 1.0


def test_a_silent_music_file_under_a_voice_leaves_the_voice_alone(tmp_path):
    quiet_music = write_music(tmp_path / "silence.flac", "anullsrc=r=48000:cl=stereo:d=20")
    mixed = mix(spoken(np.random.default_rng(5)), quiet_music, 13.0, AudioSettings())
    assert np.isfinite(mixed.samples).all()
    assert abs(loudness(mixed.samples) - -16.0) <= 1.0


# Muxing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("audio_seconds", [3.0, 3.5, 4.2])  # shorter, equal, longer
def test_the_mp4_gets_an_aac_track_as_long_as_the_video(tmp_path, audio_seconds):
    video = write_video(tmp_path / "video.mp4", frames=84)  # 3.5 s at 24 fps
    track = write_music(tmp_path / "bed.m4a", tone(10, hz=440))
    mixed = mix(spoken(np.random.default_rng(6))[:1], track, audio_seconds, AudioSettings())
    out = tmp_path / "with-sound.mp4"
    mux_audio(video, mixed, out)

    streams = stream_descriptions(out)
    assert any(s.startswith("Video: h264") for s in streams), streams
    assert any(s.startswith("Audio: aac") and "48000 Hz" in s for s in streams), streams
    info = probe(out)
    assert info.frames == 84
    sound = decoded_audio(out)
    assert abs(len(sound) / SAMPLE_RATE - info.frames / info.fps) <= 0.1
    assert video_stream_md5(out) == video_stream_md5(video), "the video stream is copied"
    assert abs(loudness(sound) - -16.0) <= 1.0, "AAC keeps the loudness"


def test_mux_in_place_replaces_the_video_and_keeps_its_permissions(tmp_path):
    video = write_video(tmp_path / "video.mp4", frames=48)
    video.chmod(0o644)
    mixed = mix(spoken(np.random.default_rng(7))[:1], None, 2.0, AudioSettings())
    mux_audio(video, mixed, video)
    assert any(s.startswith("Audio: aac") for s in stream_descriptions(video))
    assert video.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.mp4", "video.mp4"]


def test_a_failed_mux_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    video = write_video(tmp_path / "video.mp4", frames=24)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous video")
    monkeypatch.setattr(audio, "AAC_BITRATE", "nonsense")  # ffmpeg refuses the option
    silence = MixedAudio(np.zeros((SAMPLE_RATE, 2), np.float32))
    with pytest.raises(EncodeError, match="encoding the soundtrack"):
        mux_audio(video, silence, out)
    assert out.read_bytes() == b"the previous video"
    assert sorted(os.listdir(tmp_path)) == ["out.mp4", "preview.mp4", "video.mp4"]


def test_the_video_and_its_preview_get_the_same_track_or_neither_does(tmp_path):
    video = write_video(tmp_path / "video.mp4", frames=60)  # and preview.mp4 beside it
    preview = tmp_path / "preview.mp4"
    mixed = mix(spoken(np.random.default_rng(8))[:1], None, 2.5, AudioSettings())
    audio.mux_audio_into([(video, video), (preview, preview)], mixed, video_seconds=2.5)
    for path in (video, preview):
        assert abs(len(decoded_audio(path)) / SAMPLE_RATE - 2.5) <= 0.1
        assert any(s.startswith("Audio: aac") for s in stream_descriptions(path))

    # The second one fails: the first is not replaced either.
    first, second = tmp_path / "first.mp4", tmp_path / "second.mp4"
    first.write_bytes(b"old first")
    not_a_video = tmp_path / "notes.txt"
    not_a_video.write_text("not a video")
    with pytest.raises(EncodeError, match=r"adding the soundtrack to notes\.txt"):
        audio.mux_audio_into([(video, first), (not_a_video, second)], mixed,
                             video_seconds=2.5)
    assert first.read_bytes() == b"old first" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "first.mp4", "notes.txt", "preview.mp4", "video.mp4"]


def test_measure_mixing_reports_seconds_per_output_second():
    per_second = measure_mixing(4.0, repeat=1)
    assert 0 < per_second < 1.0


def test_a_track_named_in_chat_is_found_whatever_its_capitals(tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    track = write_music(folder / "Morning Walk.mp3", tone(2.0))
    choice = pick_music(AudioSettings(music_dir=str(folder)), "morning walk.mp3")
    assert choice.path == track.resolve() and choice.note == ""
