"""Render one storyboard into a folder: the video, its preview, captions and stills.

Everything is written into a hidden staging folder inside the destination and moved into
place only when all of it succeeded, the video last; a failed render leaves nothing that
looks like a finished video.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from engine.errors import RenderError
from engine.settings import Settings
from engine.storyboard import Storyboard
from engine.timeline import build_timeline, to_srt, to_webvtt
from worker.animatic import AnimaticRenderer
from worker.compose import compose
from worker.encode import EncodeOptions, VideoEncoder
from worker.sheets import contact_sheet, save_poster
from worker.text import font_file

# Output name -> file name. Moved into place in this order: the video comes last.
OUTPUT_FILES = {
    "storyboard": "storyboard.json",
    "captions_srt": "captions.srt",
    "captions_vtt": "captions.vtt",
    "poster": "poster.jpg",
    "contact_sheet": "contact_sheet.png",
    "preview": "preview.mp4",
    "video": "video.mp4",
}
STAGING_PREFIX = ".lessonreel-partial-"


def prepare_output_dir(path: Path) -> Path:
    """Create the folder if needed and prove we can write there; RenderError if not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise RenderError(
            f"Cannot write the video to {path} ({reason}); choose a folder you can write to."
        ) from None
    return path


def render_to_folder(
    storyboard: Storyboard, out_dir: Path, settings: Settings, *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Render `storyboard` into `out_dir`; return output name -> path."""
    storyboard.check_total(settings.limits.max_total_seconds)
    prepare_output_dir(out_dir)
    font = font_file(settings.render.font_path)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        files = {name: staging / file_name for name, file_name in OUTPUT_FILES.items()}
        timeline = build_timeline(storyboard, settings.render.fps)
        renderer = AnimaticRenderer(
            storyboard, fps=settings.render.fps, font=font, uploads=settings.uploads_path
        )
        options = EncodeOptions(
            fps=settings.render.fps, crf=settings.render.crf,
            preview_crf=settings.render.preview_crf, preset=settings.render.x264_preset,
            preview_max_side=settings.render.preview_max_side,
        )
        encoder = VideoEncoder(files["video"], files["preview"], storyboard.frame_size, options)
        try:
            stills = compose(timeline, renderer, encoder, font=font, progress=progress)
            encoder.finish()
        except BaseException:
            encoder.abort()
            raise
        files["storyboard"].write_text(storyboard.model_dump_json(indent=2), encoding="utf-8")
        files["captions_srt"].write_text(to_srt(timeline), encoding="utf-8")
        files["captions_vtt"].write_text(to_webvtt(timeline), encoding="utf-8")
        save_poster(stills.poster, files["poster"])
        contact_sheet(storyboard, stills.scenes, font).save(files["contact_sheet"], "PNG")

        published = {}
        for name, file_name in OUTPUT_FILES.items():
            published[name] = out_dir / file_name
            os.replace(files[name], published[name])
        return published
    finally:
        shutil.rmtree(staging, ignore_errors=True)
