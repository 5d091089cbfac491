"""Render one storyboard into a folder: the video, its preview, captions and stills.

Everything is written into a hidden staging folder inside the destination and moved into
place only when all of it succeeded, the video last; a failed render leaves nothing that
looks like a finished video.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import RenderError, UserError
from engine.metrics import StageTimer
from engine.presets import DiffusionPlan, plan_for
from engine.settings import Settings
from engine.storyboard import Storyboard
from engine.timeline import Timeline, build_timeline, to_srt, to_webvtt
from worker.animatic import AnimaticRenderer
from worker.audio import VoiceClip, mix, mux_audio_into, pick_music
from worker.branding import brand_cards
from worker.compose import compose
from worker.encode import EncodeOptions, VideoEncoder
from worker.export import build_bundle
from worker.frames import FrameRun, SceneRenderer
from worker.narration_audio import NarrationAudio, speak_storyboard
from worker.qc import QualityCheckError, cue_spans, scene_kinds, scene_spans, write_report
from worker.sheets import contact_sheet, save_poster
from worker.text import font_file

if TYPE_CHECKING:
    from worker.diffusion import PreviewCallback, StepCallback

# Output name -> file name. Moved into place in this order: the video comes last.
OUTPUT_FILES = {
    "storyboard": "storyboard.json",
    "captions_srt": "captions.srt",
    "captions_vtt": "captions.vtt",
    "poster": "poster.jpg",
    "contact_sheet": "contact_sheet.png",
    "qc": "qc.json",
    "bundle": "bundle.zip",
    "preview": "preview.mp4",
    "video": "video.mp4",
}
# Made only by some renders: a quick preview makes no export bundle.
OPTIONAL_FILES = {"bundle"}
STAGING_PREFIX = ".lessonreel-partial-"

log = logging.getLogger(__name__)


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


@dataclass
class RenderResult:
    files: dict[str, Path]  # output name -> path, the video last
    renderer: str  # "animatic" or the diffusion preset's name
    generated_scenes: list[int] = field(default_factory=list)  # rendered by the model now
    notes: list[str] = field(default_factory=list)  # what the teacher should know
    problems: list[str] = field(default_factory=list)  # what the quality check found
    storyboard: Storyboard | None = None  # as rendered: the durations the voice decided
    plan: DiffusionPlan | None = None  # what the model scenes were made with (engine/eta.py)


def render_to_folder(
    storyboard: Storyboard, out_dir: Path, settings: Settings, *,
    progress: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None, should_stop: Callable[[], bool] | None = None,
    animatic: bool = False, stages: StageTimer | None = None,
    timeline_ready: Callable[[Timeline], None] | None = None,
    on_preview: PreviewCallback | None = None,
) -> RenderResult:
    """Render `storyboard` into `out_dir` with the renderer the settings choose, or with the
    CPU animatic when `animatic` (a quick preview). `stages` times each stage (a job passes
    its own, which logs with its id and keeps the numbers for /metrics)."""
    stages = stages or StageTimer(out_dir.name)  # the video's id, as a job names it
    prepare_started = stages.clock()
    storyboard.check_total(settings.limits.max_total_seconds)
    prepare_output_dir(out_dir)
    font = font_file(settings.render.font_path)
    # None: no video model, or a preview: the animatic.
    plan = None if animatic else plan_for(settings, storyboard.aspect, storyboard.quality)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    notes: list[str] = []
    try:
        files = {name: staging / file_name for name, file_name in OUTPUT_FILES.items()}
        # 1. The voice first: it decides how long each scene lasts, and when captions show.
        narration_started = stages.clock()
        narration = _narrate(storyboard, settings, staging / "narration")
        narration_seconds = stages.clock() - narration_started
        stages.record("narration", narration_seconds)
        asked = storyboard  # the teacher's durations decide a model clip's frames (below)
        storyboard = narration.storyboard
        notes += narration.notes
        timeline = narration.timeline(build_timeline(storyboard, settings.render.fps,
                                                     branding=settings.branding))
        if timeline_ready is not None:  # progress reports follow the timing the voice set
            timeline_ready(timeline)
        timed = _TimedRenderer(stages, on_step)
        # The clips are made at the teacher's durations and stretched to the voice's, so a
        # change to the sound (a voice, its speed, a narration's words) re-renders no clip.
        renderer = _renderer(asked, plan, settings, font, timed.step, should_stop,
                             on_preview)
        timed.renderer = renderer
        options = EncodeOptions(
            fps=settings.render.fps, crf=settings.render.crf,
            preview_crf=settings.render.preview_crf, preset=settings.render.x264_preset,
            preview_max_side=settings.render.preview_max_side,
            codec=settings.output.codec, upscale=settings.output.upscale,
        )
        size = (renderer.width, renderer.height)
        cards = brand_cards(settings.branding, storyboard, size=size, font=font,
                            fps=settings.render.fps)
        if cards is not None:
            notes += cards.notes
        encoder = VideoEncoder(files["video"], files["preview"], size, options)
        stages.record("prepare", stages.clock() - prepare_started - narration_seconds)
        try:
            compose_started = stages.clock()
            stills = compose(timeline, timed, encoder, font=font, cards=cards,
                             progress=progress, should_stop=should_stop)
            # Compose's own time: what it spent outside the renderer (timed per scene).
            stages.record("compose", stages.clock() - compose_started - timed.spent)
            with stages.stage("encode"):
                encoder.finish()
        except BaseException:
            encoder.abort()
            if hasattr(renderer, "close"):  # its clips read ahead are not wanted any more
                renderer.close()
            raise
        with stages.stage("audio"):
            notes += _soundtrack(narration, timeline, files, settings, storyboard.music)
        with stages.stage("stills"):
            files["storyboard"].write_text(storyboard.model_dump_json(indent=2),
                                           encoding="utf-8")
            files["captions_srt"].write_text(to_srt(timeline), encoding="utf-8")
            files["captions_vtt"].write_text(to_webvtt(timeline), encoding="utf-8")
            save_poster(stills.poster, files["poster"])
            contact_sheet(storyboard, stills.scenes, font).save(files["contact_sheet"], "PNG")
        with stages.stage("check"):
            spans = scene_spans(timeline, storyboard, scene_kinds(storyboard, plan))
            problems = _quality_problems(staging, storyboard, timeline, spans, narration,
                                         settings)
            if not animatic:  # a quick preview is not for editing
                notes += _bundle(staging, narration, spans)

        with stages.stage("save"):
            published = {}
            for name, file_name in OUTPUT_FILES.items():
                if name in OPTIONAL_FILES and not files[name].exists():
                    continue
                published[name] = out_dir / file_name
                os.replace(files[name], published[name])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if plan is not None:  # the renderer is a DiffusionRenderer
        notes += renderer.notes  # the RIFE fallback, a failed interpolation
        notes += [f"Scene {index + 1} was rendered with less memory: {', '.join(given_up)}."
                  for index, given_up in sorted(renderer.degraded.items())]
        return RenderResult(published, plan.preset, renderer.generated, notes, problems,
                            storyboard, plan)
    return RenderResult(published, "animatic", notes=notes, problems=problems,
                        storyboard=storyboard)


def _narrate(storyboard: Storyboard, settings: Settings, folder: Path) -> NarrationAudio:
    """The storyboard spoken, or left silent when narration is off."""
    if not settings.narration.enabled or settings.narration.backend == "none":
        return NarrationAudio(storyboard, None, "")
    return speak_storyboard(storyboard, settings, folder, voice_name=storyboard.voice or None)


def _soundtrack(narration: NarrationAudio, timeline: Timeline, files: dict[str, Path],
                settings: Settings, storyboard_music: str = "") -> list[str]:
    """Mix the voice and the school's music, and put the track into the video and its
    preview as AAC; return the notes (a missing track, silence)."""
    choice = pick_music(settings.audio, storyboard_music or None)
    notes = [choice.note] if choice.note else []
    track = narration.track(timeline) if narration.spoken else None
    # A voice that said nothing (only punctuation to say) is no sound track.
    voice = ([VoiceClip(0.0, track, narration.sample_rate)]
             if track is not None and track.any() else [])
    if not voice and choice.path is None:
        return notes  # nothing to hear: the video stays without an audio track
    mixed = mix(voice, choice.path, timeline.seconds, settings.audio)
    mux_audio_into([(files["video"], files["video"]), (files["preview"], files["preview"])],
                   mixed, video_seconds=timeline.frame_count / timeline.fps)
    return notes + mixed.notes


def _bundle(staging: Path, narration: NarrationAudio, spans: list) -> list[str]:
    """The export bundle for editors; one that cannot be made is a note, never a failure."""
    try:
        build_bundle(staging, narration_wavs=narration.files or None, scenes=spans)
    except (UserError, OSError, subprocess.SubprocessError) as exc:
        log.warning("the export bundle could not be made: %s", exc)
        return ["The export bundle for editors could not be made this time; the video is "
                "fine."]
    return []


def _quality_problems(staging: Path, storyboard: Storyboard, timeline: Timeline,
                      spans: list, narration: NarrationAudio, settings: Settings) -> list[str]:
    """Check the video as a viewer would see it and store the report as qc.json; return the
    problems as sentences. A check that cannot run never costs the video."""
    speech = narration.speech_intervals(timeline)
    try:
        report = write_report(staging, storyboard=storyboard, scenes=spans,
                              cues=cue_spans(timeline), narration_expected=bool(speech),
                              speech=speech if narration.spoken else None,
                              target_lufs=settings.audio.target_lufs)
    except (QualityCheckError, subprocess.SubprocessError) as exc:
        log.warning("the quality check could not run: %s", exc)
        (staging / OUTPUT_FILES["qc"]).write_text("{}", encoding="utf-8")
        return []
    return [problem.message for problem in report.problems]


def _renderer(storyboard: Storyboard, plan: DiffusionPlan | None, settings: Settings,
              font: Path, on_step: StepCallback | None,
              should_stop: Callable[[], bool] | None,
              on_preview: PreviewCallback | None = None) -> SceneRenderer:
    if plan is None:
        return AnimaticRenderer(storyboard, fps=settings.render.fps, font=font,
                                uploads=settings.uploads_path)
    # torch and diffusers are imported only when a video model is used.
    from worker.clips import ClipCache
    from worker.diffusion import DiffusionRenderer

    cache = ClipCache(settings.clips_path) if settings.diffusion.cache_clips else None
    return DiffusionRenderer(storyboard, plan, fps=settings.render.fps, font=font,
                             uploads=settings.uploads_path, device=settings.diffusion.device,
                             cache=cache, on_step=on_step, should_stop=should_stop,
                             interpolate_fps=settings.output.interpolate_fps,
                             interpolation=settings.output.interpolation,
                             on_preview=on_preview,
                             preview_every=settings.diffusion.live_preview_every_steps)


class _TimedRenderer:
    """Times the renderer inside compose, which interleaves it with captioning and encoding:
    only the time spent getting each segment's frames counts as that segment's. A model
    scene's time up to its first denoising step (loading the pipeline, the cache lookup) is
    its own stage, model_load."""

    renderer: SceneRenderer  # set once made: it is made with `step` as its step callback

    def __init__(self, stages: StageTimer, on_step: StepCallback | None) -> None:
        self.stages = stages
        self.on_step = on_step
        self.spent = 0.0  # in the renderer, all segments together
        self._ready: dict[int, float] = {}  # scene index -> clock at its first step

    @property
    def width(self) -> int:
        return self.renderer.width

    @property
    def height(self) -> int:
        return self.renderer.height

    def step(self, scene_index: int, step: int, steps: int) -> None:
        if step == 0:  # the model is about to run: loading is over
            self._ready.setdefault(scene_index, self.stages.clock())
        if self.on_step:
            self.on_step(scene_index, step, steps)

    def title_card(self, frame_count: int) -> Iterator[FrameRun]:
        yield from self._timed(self.renderer.title_card(frame_count), None)

    def scene(self, index: int, frame_count: int) -> Iterator[FrameRun]:
        yield from self._timed(self.renderer.scene(index, frame_count), index)

    def _timed(self, runs: Iterator[FrameRun], scene_index: int | None) -> Iterator[FrameRun]:
        clock = self.stages.clock
        spent, first = 0.0, clock()
        runs = iter(runs)
        while True:
            start = clock()
            try:
                run = next(runs)
            except StopIteration:
                spent += clock() - start
                break
            spent += clock() - start
            yield run
        self.spent += spent
        if scene_index is None:
            self.stages.record("title_card", spent)
            return
        if (ready := self._ready.get(scene_index)) is not None:
            loading = ready - first  # the clip is made inside the first run's next()
            self.stages.record("model_load", loading, scene=scene_index + 1)
            spent -= loading
        self.stages.record("scene", spent, scene=scene_index + 1)
