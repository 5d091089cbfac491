"""The export bundle: one zip with everything a teacher needs to finish a video in an editor.

    bundle.zip
      README.txt              what each file is, and each scene's place in the video
      storyboard.json         the storyboard, as lessonreel loads it
      video.mp4               the finished video
      captions.srt, .vtt      its captions
      scenes/00b-title-card.mp4, scenes/01-<slug>.mp4 …   each part of the video on its own
      narration/01.wav …      each scene's narration, where it has one

Scene clips are the renderer's own when it kept them; otherwise they are cut from video.mp4
at the scene boundaries. Cut by re-encoding, not by stream copy: a copy can only start at a
keyframe (x264 places one every ~10 s), so a copied scene would open with the end of the
scene before it. Re-encoding is frame-exact and costs about a second for a minute of video.

Only the folder's own files (by fixed names) and the inputs given are read, never through a
symbolic link; archive names are made here, from numbers and an ASCII slug, never from paths.
The zip is written beside and renamed into place: a failed export leaves no bundle.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import unicodedata
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

from engine.errors import UserError
from engine.storyboard import Scene, Storyboard
from worker.qc import SceneSpan, read_header, stored_spans, storyboard_spans

BUNDLE_FILE = "bundle.zip"
# The folder's files in the bundle, in order: (name, required, what it is).
FOLDER_FILES = (
    ("storyboard.json", True, "The storyboard: each scene's picture, narration and length "
                              "(lessonreel loads it back)."),
    ("video.mp4", True, "The finished video (H.264)."),
    ("captions.srt", False, "The captions, for most video editors and players."),
    ("captions.vtt", False, "The same captions as WebVTT, for web players."),
)
# Already compressed: stored as they are; deflating them again only costs time.
STORED_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".m4a", ".jpg", ".png"})
SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?$")
SLUG_CHARS = 32
# Cut clips: close to the final video's own quality (crf 20), so cutting loses little more.
CLIP_CRF = 18
CLIP_PRESET = "veryfast"
CUT_WORKERS = 4  # scene clips cut at once


class ExportError(UserError):
    """The bundle cannot be made as asked; the message says what to do."""


@dataclass(frozen=True)
class _Entry:
    name: str  # in the archive
    source: Path | None  # a file to copy, or None for `text`
    text: str = ""  # README.txt's text; for a clip, where it lies in the video


def build_bundle(
    folder: Path, *, scene_clips: Sequence[Path] | None = None,
    narration_wavs: Sequence[Path | None] | None = None,
    scenes: Sequence[SceneSpan] | None = None,
) -> Path:
    """Write `folder`/bundle.zip and return its path.

    `scene_clips`: one clip per storyboard scene as the renderer made it; None: cut them
    from video.mp4. `narration_wavs`: one WAV per scene (None for a scene without
    narration); None: no narration folder. `scenes`: the spans as rendered (qc.scene_spans);
    None: those of the qc.json beside the video, else the storyboard's durations."""
    storyboard = _storyboard(folder)
    count = len(storyboard.scenes)
    _check_count("scene_clips", scene_clips, count)
    _check_count("narration_wavs", narration_wavs, count)
    spans = list(scenes) if scenes is not None else (
        stored_spans(folder) or storyboard_spans(storyboard))
    if not any(span.scene_index is not None for span in spans):
        raise ExportError("The scene times given hold no scene; pass the rendered timeline's.")

    entries = [_Entry(name, _own_file(folder, name, required))
               for name, required, _what in FOLDER_FILES]
    entries = [entry for entry in entries if entry.source is not None]
    wavs = [_Entry(f"narration/{index + 1:02d}.wav",
                   _given_file(wav, f"scene {index + 1}'s narration"))
            for index, wav in enumerate(narration_wavs or ()) if wav is not None]
    for entry in wavs:
        _check_wav(entry.source, entry.name)
    with tempfile.TemporaryDirectory(prefix=".lessonreel-export-", dir=folder) as work:
        clips = _clip_entries(folder, storyboard, spans, scene_clips, Path(work))
        readme = _readme(storyboard, entries, clips, wavs, cut=scene_clips is None)
        return _write_zip(folder / BUNDLE_FILE,
                          [_Entry("README.txt", None, readme), *entries, *clips, *wavs])


def cut_scene_clips(video: Path, spans: Sequence[SceneSpan], out_dir: Path,
                    names: Sequence[str]) -> list[Path]:
    """Cut each span out of `video` into `out_dir`/name, frame-exact (re-encoded, no sound)."""
    fps = read_header(video).fps
    if not fps:
        raise ExportError(f"Cannot tell the frame rate of {video.name}; render it again.")
    if len(spans) != len(names):
        raise ValueError(f"{len(spans)} scene spans but {len(names)} clip names")

    def cut(span: SceneSpan, name: str) -> Path:
        frames = max(1, round((span.end - span.start) * fps))
        clip = out_dir / name
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            # Before -i: seek to the keyframe before, decode, and drop up to the start.
            "-ss", f"{span.start:.6f}", "-i", str(video),
            "-map", "0:v:0", "-frames:v", str(frames), "-an", "-sn", "-dn",
            "-c:v", "libx264", "-preset", CLIP_PRESET, "-crf", str(CLIP_CRF),
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(clip),
        ]
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace")
        if done.returncode != 0 or not clip.is_file():
            tail = " | ".join(done.stderr.strip().splitlines()[-2:]) or "no message"
            raise ExportError(f"Cutting {span.name} out of {video.name} failed ({tail}); "
                              "render the video again.")
        return clip

    # One ffmpeg per scene, a few at once: each spends much of its time starting and seeking.
    with ThreadPoolExecutor(max_workers=min(CUT_WORKERS, len(spans) or 1)) as pool:
        return list(pool.map(cut, spans, names))  # in order; the first failure is raised


def scene_slug(scene: Scene) -> str:
    """An ASCII file name part for a scene: its title or its picture, else its id."""
    text = scene.on_screen_text or scene.visual
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:SLUG_CHARS].strip("-")
    return slug or scene.id  # a Chinese title has no ASCII letters: the id is [a-z0-9]


# -- inputs ---------------------------------------------------------------------------------


def _storyboard(folder: Path) -> Storyboard:
    path = _own_file(folder, "storyboard.json", True)
    try:
        return Storyboard.model_validate_json(_read_bytes(path))
    except ValueError:  # pydantic's ValidationError is one
        raise ExportError(f"The storyboard in {folder.name} cannot be read back; "
                          "render the video again.") from None


def _check_count(what: str, given: Sequence | None, scenes: int) -> None:
    if given is not None and len(given) != scenes:
        raise ExportError(f"{what} has {len(given)} files for {scenes} scenes; "
                          "give one per scene.")


def _own_file(folder: Path, name: str, required: bool) -> Path | None:
    """`folder`/name when it is a regular file there (not a link); None when absent and
    not required."""
    path = folder / name
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        if required:
            raise ExportError(f"{folder.name} has no {name}; render the video again.") from None
        return None
    if not stat.S_ISREG(mode):
        raise ExportError(f"{name} in {folder.name} is not a plain file (a link?); "
                          "it is left out of exports: render the video again.")
    return path


def _given_file(path: Path, what: str) -> Path:
    try:
        mode = Path(path).lstat().st_mode
    except OSError:
        raise ExportError(f"The file for {what} is missing; render the video again.") from None
    if not stat.S_ISREG(mode):
        raise ExportError(f"The file for {what} is not a plain file (a link?); "
                          "it is left out of exports.")
    return Path(path)


def _check_wav(path: Path, name: str) -> None:
    head = _read_bytes(path, 12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ExportError(f"{name} is not a WAV file; render the narration again.")


def _open(path: Path) -> int:
    """A descriptor for `path` that refuses to follow a link swapped in since it was checked."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))


def _read_bytes(path: Path, limit: int = -1) -> bytes:
    with os.fdopen(_open(path), "rb") as file:
        return file.read(limit)


def _clip_entries(folder: Path, storyboard: Storyboard, spans: Sequence[SceneSpan],
                  scene_clips: Sequence[Path] | None, work: Path) -> list[_Entry]:
    names = clip_names(storyboard, spans)
    if scene_clips is not None:  # the renderer's own clips; the cards are cut all the same
        given = {span.scene_index: span for span in names if span.scene_index is not None}
        entries = [_Entry(names[given[index]], _given_file(clip, f"scene {index + 1}'s clip"),
                          _times(given[index]))
                   for index, clip in enumerate(scene_clips) if index in given]
        to_cut = [span for span in names if span.scene_index is None]
    else:
        entries, to_cut = [], list(names)
    if to_cut:
        video = _own_file(folder, "video.mp4", True)
        cut = cut_scene_clips(video, to_cut, work, [f"{n:02d}.mp4" for n in range(len(to_cut))])
        entries += [_Entry(names[span], clip, _times(span))
                    for span, clip in zip(to_cut, cut, strict=True)]
    return sorted(entries, key=lambda entry: entry.name)


def clip_names(storyboard: Storyboard, spans: Sequence[SceneSpan]) -> dict[SceneSpan, str]:
    """Archive names for the spans' clips, sorting in the video's order: the school's intro
    00a-intro, the title card 00b-title-card, scene N NN-<slug> (like its narration/NN.wav),
    the school's outro NN-z-outro after the last scene."""
    names: dict[SceneSpan, str] = {}
    seen = 0
    for span in spans:
        if span.scene_index is not None:
            seen = span.scene_index + 1
            stem = f"{seen:02d}-{scene_slug(storyboard.scenes[span.scene_index])}"
        elif span.kind == "intro":
            stem = "00a-intro"
        elif span.kind == "outro" or seen:
            stem = f"{seen:02d}-z-outro"
        else:
            stem = "00b-title-card"
        name, copy = f"scenes/{stem}.mp4", 1
        while name in names.values():
            copy += 1
            name = f"scenes/{stem}-{copy}.mp4"
        names[span] = name
    return names


def _times(span: SceneSpan) -> str:
    return f"{span.start:.2f}-{span.end:.2f} s of video.mp4"


# -- the archive --------------------------------------------------------------------------------


def _readme(storyboard: Storyboard, files: list[_Entry], clips: list[_Entry],
            wavs: list[_Entry], *, cut: bool) -> str:
    whats = {name: what for name, _required, what in FOLDER_FILES}
    lines = [f"{storyboard.title}: the parts of the video, for a video editor", "",
             "Made by lessonreel. What each file is:", ""]
    lines += [f"{entry.name:<18} {whats[entry.name]}" for entry in files]
    source = ("cut from video.mp4, with its titles and captions burned in" if cut
              else "as they were rendered")
    lines += ["", f"scenes/            Each part of the video on its own, without sound, "
                  f"{source}:"]
    lines += [f"  {entry.name.removeprefix('scenes/'):<40} {entry.text}" for entry in clips]
    if wavs:
        lines += ["", "narration/         Each scene's narration (WAV), to lay under its "
                      "clip; the number is the scene's:"]
        lines += [f"  {entry.name.removeprefix('narration/')}" for entry in wavs]
    under = ", the narration under them" if wavs else ""
    lines += ["", f"In an editor: put the clips on the timeline in order{under}, and import "
                  "captions.srt as subtitles.", ""]
    return "\n".join(lines)


def _write_zip(target: Path, entries: list[_Entry]) -> Path:
    for entry in entries:  # made here, but checked all the same: nothing may climb out
        if not SAFE_NAME.match(entry.name) and entry.name != "README.txt":
            raise ExportError(f"Refusing the archive name {entry.name!r}.")
    handle, partial = tempfile.mkstemp(prefix=".bundle-", suffix=".zip", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
            for entry in entries:
                _add(archive, entry)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return target


def _add(archive: zipfile.ZipFile, entry: _Entry) -> None:
    suffix = Path(entry.name).suffix
    method = zipfile.ZIP_STORED if suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
    if entry.source is None:
        info = zipfile.ZipInfo(entry.name, time.localtime()[:6])
        info.compress_type, info.external_attr = method, 0o644 << 16
        archive.writestr(info, entry.text)
        return
    with os.fdopen(_open(entry.source), "rb") as source:
        facts = os.fstat(source.fileno())
        if not stat.S_ISREG(facts.st_mode):
            raise ExportError(f"{entry.name} is not a plain file; it is left out of exports.")
        stamp = time.localtime(max(facts.st_mtime, 315_532_800))[:6]  # zip: 1980 or later
        info = zipfile.ZipInfo(entry.name, stamp)
        info.compress_type, info.external_attr = method, 0o644 << 16
        info.file_size = facts.st_size
        with archive.open(info, "w", force_zip64=facts.st_size >= zipfile.ZIP64_LIMIT) as out:
            shutil.copyfileobj(source, out, 1 << 20)
