"""The soundtrack: narration and the school's music, mixed, levelled and muxed as AAC.

`pick_music` chooses a track from the school's music folder (never a file outside it).
`mix` lays the narration clips on the video's timeline, loops or trims the music to the
video's length, ducks it under the voice, and normalises the sum to the target loudness
(EBU R128 integrated, measured by ffmpeg's ebur128 filter, not assumed) under a true-peak
ceiling. `mux_audio` (`mux_audio_into` for the video and its preview at once) writes the
MP4 again with the video stream copied and the track as AAC.

Music is a nicety: a missing folder, an unknown track or a file ffmpeg cannot read is a
note for the teacher, never a failed render.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import imageio_ffmpeg
import numpy as np

from engine.settings import AudioSettings
from worker.encode import EncodeError, EncodeOptions, VideoEncoder, probe

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
CHANNELS = 2  # the voice sits in the middle; the music keeps its stereo
AAC_BITRATE = "160k"
MUSIC_EXTENSIONS = frozenset({".mp3", ".ogg", ".oga", ".opus", ".wav", ".flac", ".m4a", ".aac"})

# Levels, in dB. Between phrases the music sits this far below the voice's speaking level;
# under the voice it drops a further audio.duck_db.
MUSIC_BED_DB = -10.0
# A 10 ms frame is speech when it is within this much of the voice's loud frames.
VOICE_GATE_DB = -30.0
FLOOR_DB = -70.0  # quieter than this is silence, whatever the gate says
FRAME_SECONDS = 0.01

# The ducking envelope. The music is down before the first syllable (a look-ahead), stays
# down through the short gaps between words (the hold: without it the music pumps), and
# comes back up over the release.
DUCK_ATTACK_SECONDS = 0.08
DUCK_HOLD_SECONDS = 0.25
DUCK_RELEASE_SECONDS = 0.5

# The music bed fades in and out at the video's ends, and each loop's seam gets a few
# milliseconds of fade so it cannot click.
MUSIC_FADE_IN_SECONDS = 0.5
MUSIC_FADE_OUT_SECONDS = 1.5
LOOP_SEAM_SECONDS = 0.02

# Loudness. AAC encoding can lift peaks a little: -1 dBTP leaves room for it (EBU R128 s1).
TRUE_PEAK_DBTP = -1.0
# The limiter works on samples; true (inter-sample) peaks sit a little above them.
SAMPLE_PEAK_MARGIN_DB = 0.5
LOUDNESS_TOLERANCE_LU = 0.3  # how close normalising tries to get before it stops
SILENCE_LUFS = -70.0  # ebur128's absolute gate: all of the track is below it
NORMALISE_ROUNDS = 4
# The limiter works on blocks of samples: it looks ahead at the attack slope and lets go at
# the release slope (dB per second, linear in dB, so it never overshoots its ceiling).
LIMITER_BLOCK = 32
LIMITER_ATTACK_DB_PER_SECOND = 1500.0
LIMITER_RELEASE_DB_PER_SECOND = 40.0


class VoiceClip(NamedTuple):
    """One stretch of narration: where it starts in the video, its samples (mono, or
    (samples, channels), float in [-1, 1] or integer PCM) and their sample rate."""

    start_seconds: float
    samples: np.ndarray
    sample_rate: int


@dataclass(frozen=True)
class MusicChoice:
    path: Path | None  # None: no music
    note: str = ""  # for the teacher, when the choice could not be honoured


@dataclass
class MixedAudio:
    samples: np.ndarray  # float32, (frames, CHANNELS), at SAMPLE_RATE
    notes: list[str] = field(default_factory=list)
    loudness_lufs: float | None = None  # as measured after normalising; None: silence
    true_peak_dbtp: float | None = None
    sample_rate: int = SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


class Loudness(NamedTuple):
    integrated_lufs: float  # SILENCE_LUFS when nothing passes the absolute gate
    true_peak_dbtp: float  # -inf for digital silence


# 1. Choosing the music ------------------------------------------------------------------

def pick_music(settings: AudioSettings, storyboard_choice: str | None = None,
               rng: random.Random | None = None) -> MusicChoice:
    """The track to play under this video: the storyboard's choice, else audio.music.

    A choice is "random", "none" or a file name inside audio.music_dir. Only regular files
    with a music extension that resolve inside the folder are played (no "../", no absolute
    paths, no symlinks that lead out). Whatever cannot be honoured comes back as a note.
    """
    choice = (storyboard_choice or settings.music).strip()
    if not choice or choice.lower() == "none":
        return MusicChoice(None)
    is_random = choice.lower() == "random"
    if not settings.music_dir:
        if is_random:  # music is simply not set up: nothing to say
            return MusicChoice(None)
        return MusicChoice(None, f"The music track '{choice}' was asked for, but no music "
                                 "folder is set up (audio.music_dir); the video has no music.")
    folder = Path(settings.music_dir).expanduser()
    if not folder.is_dir():
        log.warning("audio.music_dir %s is not a folder; rendering without music", folder)
        return MusicChoice(None, "The school's music folder is missing; "
                                 "the video has no music.")
    root = folder.resolve()
    if is_random:
        tracks = _tracks(root)
        if not tracks:
            log.warning("audio.music_dir %s holds no music files", root)
            return MusicChoice(None, "The school's music folder holds no music files ("
                                     f"{', '.join(sorted(MUSIC_EXTENSIONS))}); "
                                     "the video has no music.")
        return MusicChoice((rng or random.Random()).choice(tracks))
    track = _track_inside(root, choice)
    if track is None:
        log.warning("music %r is not a music file inside %s", choice, root)
        return MusicChoice(None, f"'{choice}' is not a track in the school's music folder; "
                                 "the video has no music.")
    return MusicChoice(track)


def _tracks(root: Path) -> list[Path]:
    """The folder's own music files, resolved, in a stable order (hidden files skipped:
    a Mac leaves '._song.mp3' companions that are not music)."""
    found = (_track_inside(root, entry.name) for entry in sorted(root.iterdir())
             if not entry.name.startswith("."))
    return [track for track in found if track is not None]


def _track_inside(root: Path, name: str) -> Path | None:
    resolved = (root / name).resolve()  # an absolute `name` replaces root: caught below
    if not resolved.is_relative_to(root) or resolved.suffix.lower() not in MUSIC_EXTENSIONS:
        return None
    if resolved.is_file():
        return resolved
    # A name said in chat may have lost its capitals ("music Morning Walk.mp3" is read in
    # lower case): the folder's own track of that name, whatever its case.
    wanted = resolved.name.lower()
    same = [entry.resolve() for entry in resolved.parent.iterdir()
            if entry.name.lower() == wanted and entry.is_file()
            and entry.resolve().is_relative_to(root)] if resolved.parent.is_dir() else []
    return same[0] if len(same) == 1 else None


# 2. Mixing ------------------------------------------------------------------------------

def mix(narration: Sequence[VoiceClip | tuple[float, np.ndarray, int]], music: Path | None,
        total_seconds: float, settings: AudioSettings) -> MixedAudio:
    """The finished soundtrack of a `total_seconds` video: float32 stereo at 48 kHz."""
    # 1. Check inputs.
    if not total_seconds > 0:
        raise ValueError(f"total_seconds must be positive, not {total_seconds!r}")
    length = round(total_seconds * SAMPLE_RATE)
    notes: list[str] = []

    # 2. The voice on the video's timeline (mono), and the music bed (stereo).
    voice = _voice_track([VoiceClip(*clip) for clip in narration], length)
    bed = None
    if music is not None:
        bed, note = _music_bed(music, length)
        if note:
            notes.append(note)
    voice_levels = _frame_levels_db(voice) if voice is not None else None
    has_voice = voice_levels is not None and voice_levels.max() > FLOOR_DB
    bed_levels = _frame_levels_db(bed) if bed is not None else None
    if bed_levels is not None and bed_levels.max() <= FLOOR_DB:
        bed = None

    # 3. Level the music under the voice, and duck it while the voice speaks.
    mixed = np.zeros((length, CHANNELS), np.float32)
    if bed is not None:
        if has_voice:
            speaking = _active_frames(voice_levels)
            level = _rms(voice_levels, speaking) / _rms(bed_levels, _active_frames(bed_levels))
            bed *= np.float32(level * _gain(MUSIC_BED_DB))
            bed *= _duck_gain(speaking, length, settings.duck_db)[:, None]
        mixed += bed
    if has_voice:
        mixed += voice[:, None]
    if bed is None and not has_voice:
        notes.append("The video is silent: there was no narration or music to mix.")
        return MixedAudio(mixed, notes)

    # 4. Normalise the whole track to the target loudness under the true-peak ceiling.
    return _normalise(mixed, settings.target_lufs, notes)


def _voice_track(clips: list[VoiceClip], length: int) -> np.ndarray | None:
    """All clips summed on one mono track at SAMPLE_RATE; None when there are none.

    Clips are laid out at their own rate and each rate is resampled once, by ffmpeg (a TTS
    engine speaks at 22.05 or 24 kHz; resampling per clip would start ffmpeg per scene)."""
    if not clips:
        return None
    seconds = length / SAMPLE_RATE
    by_rate: dict[int, np.ndarray] = {}
    for clip in clips:
        if clip.sample_rate <= 0:
            raise ValueError(f"a narration clip's sample rate must be positive, "
                             f"not {clip.sample_rate!r}")
        samples = _as_mono_float(clip.samples)
        track = by_rate.setdefault(
            clip.sample_rate, np.zeros(int(np.ceil(seconds * clip.sample_rate)), np.float32))
        start = round(clip.start_seconds * clip.sample_rate)
        if start < 0:  # starts before the video: its beginning is cut
            samples, start = samples[-start:], 0
        samples = samples[:max(0, len(track) - start)]  # runs past the end: cut
        track[start:start + len(samples)] += samples
    voice = np.zeros(length, np.float32)
    for rate, track in by_rate.items():
        at_48k = track if rate == SAMPLE_RATE else _resample(track, rate)
        at_48k = at_48k[:length]
        voice[:len(at_48k)] += at_48k
    return voice


def _as_mono_float(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim not in (1, 2):
        raise ValueError(f"narration samples must be 1-D or (samples, channels), "
                         f"not shape {samples.shape}")
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples / float(np.iinfo(samples.dtype).max)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return samples.astype(np.float32, copy=False)


def _resample(track: np.ndarray, rate: int) -> np.ndarray:
    result = _run_ffmpeg(
        ["-f", "f32le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0",
         "-f", "f32le", "-ar", str(SAMPLE_RATE), "pipe:1"],
        stdin=_pcm(track), what="resampling the narration")
    return np.frombuffer(result.stdout, "<f4")


def _music_bed(path: Path, length: int) -> tuple[np.ndarray | None, str]:
    """The music decoded (any format ffmpeg reads), looped or trimmed to `length` samples,
    faded in and out. A file that cannot be read is a note, not a failure."""
    try:  # -t: a one-hour mix is decoded only as far as the video needs
        result = _run_ffmpeg(
            ["-i", str(path), "-vn", "-t", f"{length / SAMPLE_RATE + 0.1:.3f}",
             "-f", "f32le", "-ac", str(CHANNELS), "-ar", str(SAMPLE_RATE), "pipe:1"],
            what=f"decoding {path}")
    except EncodeError as exc:
        log.warning("cannot decode music %s: %s", path, exc)
        return None, f"The music track '{path.name}' could not be read; the video has no music."
    track = np.frombuffer(result.stdout, "<f4").reshape(-1, CHANNELS)
    if len(track) < SAMPLE_RATE // 10:  # shorter than 0.1 s: nothing to loop
        return None, f"The music track '{path.name}' is empty; the video has no music."
    if len(track) < length:  # loop it, each copy faded at its seams so they cannot click
        seam = np.ones(len(track), np.float32)
        _fade(seam, round(LOOP_SEAM_SECONDS * SAMPLE_RATE), round(LOOP_SEAM_SECONDS * SAMPLE_RATE))
        copies = -(-length // len(track))
        track = np.tile(track * seam[:, None], (copies, 1))
    bed = np.array(track[:length], np.float32)
    envelope = np.ones(length, np.float32)
    fade_in = min(round(MUSIC_FADE_IN_SECONDS * SAMPLE_RATE), length // 4)
    fade_out = min(round(MUSIC_FADE_OUT_SECONDS * SAMPLE_RATE), length // 4)
    _fade(envelope, fade_in, fade_out)
    bed *= envelope[:, None]
    return bed, ""


def _fade(envelope: np.ndarray, fade_in: int, fade_out: int) -> None:
    """Raised-cosine ramps over the first `fade_in` and last `fade_out` samples, in place."""
    if fade_in:
        envelope[:fade_in] *= 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade_in))
    if fade_out:
        envelope[-fade_out:] *= 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, fade_out))


def _frame_levels_db(samples: np.ndarray) -> np.ndarray:
    """RMS level of each FRAME_SECONDS frame, in dBFS (all channels together); a last,
    partial frame counts as a whole one padded with silence."""
    hop = round(FRAME_SECONDS * SAMPLE_RATE)
    width = hop * (1 if samples.ndim == 1 else samples.shape[1])
    whole = len(samples) // hop
    frames = samples[:whole * hop].reshape(whole, width)
    power = np.einsum("ij,ij->i", frames, frames) / width
    if len(samples) > whole * hop:
        tail = samples[whole * hop:].ravel()
        power = np.append(power, np.dot(tail, tail) / width)
    return 10 * np.log10(np.maximum(power, 1e-20))


def _active_frames(levels_db: np.ndarray) -> np.ndarray:
    audible = levels_db > FLOOR_DB
    if not audible.any():
        return audible
    loud = np.percentile(levels_db[audible], 95)  # not the maximum: one click would set it
    return audible & (levels_db > loud + VOICE_GATE_DB)


def _rms(levels_db: np.ndarray, active: np.ndarray) -> float:
    """The RMS of the frames that carry sound: a voice's speaking level, pauses left out."""
    return float(np.sqrt(np.mean(10 ** (levels_db[active] / 10))))


def _duck_gain(speaking: np.ndarray, length: int, duck_db: float) -> np.ndarray:
    """Per-sample gain for the music, from the frames where the voice speaks: 1 between
    phrases, -duck_db under the voice, with a look-ahead attack, a hold through short
    pauses and a smooth release."""
    hop = round(FRAME_SECONDS * SAMPLE_RATE)
    hold = round(DUCK_HOLD_SECONDS / FRAME_SECONDS)
    held = np.convolve(speaking, np.ones(hold + 1), mode="full")[:len(speaking)] > 0
    target_db = np.where(held, -duck_db, 0.0)
    gain_db = _ramped_minimum(target_db, attack=duck_db * FRAME_SECONDS / DUCK_ATTACK_SECONDS,
                              release=duck_db * FRAME_SECONDS / DUCK_RELEASE_SECONDS)
    centres = (np.arange(len(gain_db)) + 0.5) * hop
    return np.interp(np.arange(length), centres, _gain(gain_db)).astype(np.float32)


def _ramped_minimum(target_db: np.ndarray, attack: float, release: float) -> np.ndarray:
    """The highest curve that stays at or under `target_db` everywhere, falls at most
    `attack` dB per step and rises at most `release` dB per step.

    Going down early (ahead of the target) is the look-ahead; coming back up slowly is the
    release. Both sides are a running minimum, so there is no per-sample Python loop:
    min over k <= j of (t[k] + release*(j-k)) = release*j + cummin(t[k] - release*k)."""
    steps = np.arange(len(target_db), dtype=np.float64)
    after = release * steps + np.minimum.accumulate(target_db - release * steps)
    ahead = (np.minimum.accumulate((target_db + attack * steps)[::-1])[::-1]
             - attack * steps)
    return np.minimum(np.minimum(after, ahead), 0.0)


def _gain(db: np.ndarray | float) -> np.ndarray | float:
    return 10 ** (np.asarray(db) / 20)


# 3. Loudness ----------------------------------------------------------------------------

def measure_loudness(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Loudness:
    """Integrated loudness (EBU R128) and true peak, measured by ffmpeg's ebur128 filter."""
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    result = _run_ffmpeg(
        ["-nostats", "-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels),
         "-i", "pipe:0", "-af", "ebur128=peak=true:framelog=quiet", "-f", "null", "-"],
        stdin=_pcm(samples), what="measuring loudness",
        loglevel="info")
    summary = result.stderr.decode(errors="replace").rpartition("Summary:")[2]
    integrated = re.search(r"\bI:\s+(-?inf|-?[\d.]+) LUFS", summary)
    peak = re.search(r"\bPeak:\s+(-?inf|-?[\d.]+) dBFS", summary)
    if integrated is None or peak is None:
        raise EncodeError(f"ffmpeg's ebur128 printed no summary: {summary.strip()[-300:]!r}")
    return Loudness(max(float(integrated[1]), SILENCE_LUFS), float(peak[1]))


def _normalise(mixed: np.ndarray, target_lufs: float, notes: list[str]) -> MixedAudio:
    """Gain to the target loudness, then a limiter under the true-peak ceiling; measured
    again after each round, because limiting lowers the loudness a little."""
    measured = measure_loudness(mixed)
    if measured.integrated_lufs <= SILENCE_LUFS:
        notes.append("The soundtrack is too quiet to measure; the video is silent.")
        return MixedAudio(np.zeros_like(mixed), notes)
    gain_db = target_lufs - measured.integrated_lufs
    ceiling_db = TRUE_PEAK_DBTP - SAMPLE_PEAK_MARGIN_DB
    for _ in range(NORMALISE_ROUNDS):
        result = _limit(mixed * np.float32(_gain(gain_db)), ceiling_db)
        measured = measure_loudness(result)
        loudness_off = target_lufs - measured.integrated_lufs
        peak_over = measured.true_peak_dbtp - TRUE_PEAK_DBTP
        if abs(loudness_off) <= LOUDNESS_TOLERANCE_LU and peak_over <= 0:
            break
        gain_db += loudness_off
        if peak_over > 0:
            ceiling_db -= peak_over + 0.1
    else:
        log.warning("loudness %.1f LUFS / true peak %.1f dBTP after %d rounds (target %.1f)",
                    measured.integrated_lufs, measured.true_peak_dbtp, NORMALISE_ROUNDS,
                    target_lufs)
    return MixedAudio(result, notes, measured.integrated_lufs, measured.true_peak_dbtp)


def _limit(samples: np.ndarray, ceiling_db: float) -> np.ndarray:
    """Keep every sample under `ceiling_db` dBFS with a smooth gain, not by clipping."""
    frames = len(samples)
    blocks = -(-frames // LIMITER_BLOCK)
    padded = np.zeros((blocks * LIMITER_BLOCK, CHANNELS), np.float32)
    padded[:frames] = samples
    peaks = np.abs(padded.reshape(blocks, -1)).max(axis=1)
    needed_db = np.minimum(0.0, ceiling_db - 20 * np.log10(np.maximum(peaks, 1e-12)))
    if needed_db.min() >= 0:
        return samples.astype(np.float32, copy=False)
    # A block's gain must also hold for its neighbours' samples: the per-sample gain is
    # interpolated between block centres.
    padded_db = np.pad(needed_db, 1, constant_values=0.0)
    needed_db = np.minimum(needed_db, np.minimum(padded_db[:-2], padded_db[2:]))
    seconds_per_block = LIMITER_BLOCK / SAMPLE_RATE
    gain_db = _ramped_minimum(needed_db, LIMITER_ATTACK_DB_PER_SECOND * seconds_per_block,
                              LIMITER_RELEASE_DB_PER_SECOND * seconds_per_block)
    centres = (np.arange(blocks) + 0.5) * LIMITER_BLOCK
    gain = np.interp(np.arange(frames), centres, _gain(gain_db)).astype(np.float32)
    ceiling = np.float32(_gain(ceiling_db))
    return np.clip(samples * gain[:, None], -ceiling, ceiling)  # rounding only; never bites


# 4. Muxing ------------------------------------------------------------------------------

def mux_audio(video: Path, audio: MixedAudio, out: Path, *,
              video_seconds: float | None = None) -> None:
    """Write `out`: `video`'s stream copied untouched, `audio` as AAC, trimmed or padded to
    the video's duration (`video_seconds` when the caller knows it, else read from the
    file). Atomic: written beside `out`, then moved over it (`out` may be `video`)."""
    mux_audio_into([(video, out)], audio, video_seconds=video_seconds)


def mux_audio_into(pairs: Sequence[tuple[Path, Path]], audio: MixedAudio, *,
                   video_seconds: float | None = None) -> None:
    """`mux_audio` for several videos of one length (the video and its preview): the AAC is
    encoded once and copied into each. Every output is written first and only then moved
    into place, so a failure leaves all of them as they were."""
    if not pairs:
        return
    if video_seconds is None:
        info = probe(pairs[0][0])
        video_seconds = info.frames / info.fps
    frames = round(video_seconds * audio.sample_rate)
    samples = np.zeros((frames, CHANNELS), "<f4")
    kept = audio.samples[:frames]
    samples[:len(kept)] = kept
    temporaries: list[Path] = []

    def temporary_beside(path: Path, suffix: str) -> Path:
        handle, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=suffix, dir=path.parent)
        os.close(handle)
        temporaries.append(Path(name))
        return temporaries[-1]

    try:
        aac = temporary_beside(pairs[0][1], ".m4a")
        _run_ffmpeg(["-f", "f32le", "-ar", str(audio.sample_rate), "-ac", str(CHANNELS),
                     "-i", "pipe:0", "-c:a", "aac", "-b:a", AAC_BITRATE,
                     "-ar", str(SAMPLE_RATE), "-f", "mp4", str(aac)],
                    stdin=_pcm(samples), what="encoding the soundtrack as AAC")
        written = []
        for video, out in pairs:
            muxed = temporary_beside(out, ".mp4")
            _run_ffmpeg(["-i", str(video), "-i", str(aac), "-map", "0:v:0", "-map", "1:a:0",
                         "-c", "copy", "-movflags", "+faststart", "-f", "mp4", str(muxed)],
                        what=f"adding the soundtrack to {video.name}")
            shutil.copymode(video, muxed)  # mkstemp makes it private (0600)
            written.append((muxed, out))
        for muxed, out in written:
            os.replace(muxed, out)
    finally:
        for path in temporaries:
            path.unlink(missing_ok=True)


def _pcm(samples: np.ndarray) -> memoryview:
    """Samples as the bytes of f32le PCM, without a copy when they are that already."""
    return memoryview(np.ascontiguousarray(samples, "<f4")).cast("B")


def _run_ffmpeg(arguments: list[str], *, what: str, stdin: bytes | memoryview | None = None,
                loglevel: str = "error") -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg, feeding `stdin` from a thread in one write (communicate() would feed it
    512 bytes at a time: a quarter of the mixing time went there)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", loglevel, "-y",
               *arguments]
    with tempfile.TemporaryFile() as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log_file)
        feeder = None
        if stdin is not None:
            feeder = threading.Thread(target=_feed, args=(process.stdin, stdin), daemon=True)
            feeder.start()
        output = process.stdout.read()
        process.stdout.close()
        if feeder is not None:
            feeder.join()
        code = process.wait()
        log_file.seek(0)
        errors = log_file.read()
    if code != 0:
        lines = errors.decode(errors="replace").strip().splitlines()
        raise EncodeError(f"ffmpeg failed {what} (status {code}): "
                          f"{' | '.join(lines[-3:]) or 'no message'}")
    return subprocess.CompletedProcess(command, code, output, errors)


def _feed(pipe, data: bytes | memoryview) -> None:
    with contextlib.suppress(BrokenPipeError):  # ffmpeg stopped early: its status says why
        pipe.write(data)
    with contextlib.suppress(BrokenPipeError):
        pipe.close()


# 5. The benchmark -----------------------------------------------------------------------

def measure_mixing(seconds: float = 30.0, *, repeat: int = 3,
                   settings: AudioSettings | None = None) -> float:
    """Wall seconds that the soundtrack adds per second of output video (best of `repeat`),
    as a render spends them: mixing a synthetic voice at 22.05 kHz (phrases of noise with
    pauses, as espeak-ng speaks them) over a 20 s AAC music file that loops, then muxing the
    track into a tiny H.264 video and its preview."""
    settings = settings or AudioSettings()
    rng = np.random.default_rng(0)
    clips = []
    for start in np.arange(0.5, seconds - 2.0, 3.0):  # 2.2 s of speech, then a pause
        noise = rng.standard_normal(round(2.2 * 22_050)).astype(np.float32) * 0.1
        clips.append(VoiceClip(float(start), noise, 22_050))
    with tempfile.TemporaryDirectory(prefix="lessonreel-bench-audio-") as name:
        folder = Path(name)
        music = folder / "music.m4a"
        _run_ffmpeg(["-f", "lavfi", "-i", "sine=f=220:d=20,aformat=channel_layouts=stereo",
                     "-c:a", "aac", str(music)], what="writing the benchmark's music")
        fps = 24
        video, preview = folder / "video.mp4", folder / "preview.mp4"
        encoder = VideoEncoder(video, preview, (64, 64),
                               EncodeOptions(fps=fps, preview_max_side=64))
        encoder.write(np.zeros((64, 64, 3), np.uint8), round(seconds * fps))
        encoder.finish()
        timings = []
        for attempt in range(repeat):
            started = time.perf_counter()
            mixed = mix(clips, music, seconds, settings)
            mux_audio_into([(video, folder / f"video-{attempt}.mp4"),
                            (preview, folder / f"preview-{attempt}.mp4")],
                           mixed, video_seconds=round(seconds * fps) / fps)
            timings.append(time.perf_counter() - started)
    return min(timings) / seconds
