"""RQ job functions: the only code the queue calls, by import path (engine.jobs names them).

A job tells the world how it is doing through render events, never through return values
alone: the bot that asked may have restarted since.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import redis
from PIL import Image
from rq import get_current_job
from rq.job import Job

from engine.errors import UserError
from engine.eta import StepTimes, record_render
from engine.events import LIVE_PREVIEW, EventLog, RenderEvent
from engine.jobs import CANCELLED_MESSAGE, JobCancelled, RenderSpec, cancel_requested
from engine.library import Library, VideoRecord
from engine.metrics import StageTimer
from engine.settings import load_settings
from engine.timeline import Timeline, build_timeline
from worker.gpu import is_cuda_fault
from worker.render import render_to_folder

log = logging.getLogger(__name__)

# A progress event at most this often: a chat status edit per event would hit rate limits.
PROGRESS_INTERVAL_SECONDS = 0.5
LIVE_PREVIEW_QUALITY = 80  # JPEG
STOPPED = "The render was stopped before it finished; nothing was saved."
INTERNAL_ERROR = (
    "The render failed because of a problem on our side, not in your storyboard; "
    "try again, and if it keeps failing ask your IT contact to check the worker log (job {job})."
)


def render_storyboard(spec_data: dict) -> dict[str, str]:
    """Render a storyboard to its output folder; return output name -> path.

    Each stage is logged as one line with the job's id and its seconds, and counted for
    /metrics (engine/metrics.py); the last line says how the job ended."""
    job = get_current_job()
    spec = RenderSpec.model_validate(spec_data)
    stages = _JobStages(spec.job_id, job.connection)
    if (waited := _seconds_queued(job)) is not None:
        stages.record("queued", waited)
    events = EventLog(job.connection)
    scenes = len(spec.storyboard.scenes)
    events.publish(RenderEvent(job_id=spec.job_id, kind="started", scenes=scenes))
    try:
        if cancel_requested(job.connection, spec.job_id):  # cancelled while it waited
            raise JobCancelled
        settings = load_settings()
        reporter = _ProgressReporter(events, spec, build_timeline(
            spec.storyboard, settings.render.fps, branding=settings.branding))
        steps = StepTimes(clock=stages.clock)

        def on_step(scene_index: int, step: int, count: int) -> None:
            steps.step(scene_index, step, count)  # first: publishing takes time too
            reporter.step(scene_index, step, count)

        render_started = stages.clock()
        out_dir = settings.media_path / spec.output
        try:
            result = render_to_folder(
                spec.storyboard, out_dir, settings, progress=reporter,
                timeline_ready=reporter.use_timeline, on_preview=reporter.preview_to(out_dir),
                on_step=on_step, should_stop=lambda: cancel_requested(job.connection,
                                                                      spec.job_id),
                animatic=spec.animatic, stages=stages)
        finally:  # the live preview is only for while the render runs
            for name in (LIVE_PREVIEW, LIVE_PREVIEW + ".part"):
                (out_dir / name).unlink(missing_ok=True)
        render_seconds = stages.clock() - render_started
    except JobCancelled:
        events.publish(RenderEvent(job_id=spec.job_id, kind="cancelled",
                                   message=CANCELLED_MESSAGE))
        stages.finish("cancelled")
        raise
    except UserError as exc:
        events.publish(RenderEvent(job_id=spec.job_id, kind="failed", message=str(exc)))
        stages.finish("failed", "user_error")
        raise
    except Exception as exc:
        if is_cuda_fault(exc):  # not the teacher's failure: the job will run again elsewhere
            log.exception("render %s hit a CUDA fault", spec.job_id,
                          extra={"job_id": spec.job_id})
            stages.finish("failed", "gpu_fault")
            raise
        log.exception("render %s failed", spec.job_id, extra={"job_id": spec.job_id})
        message = INTERNAL_ERROR.format(job=spec.job_id)
        events.publish(RenderEvent(job_id=spec.job_id, kind="failed", message=message))
        stages.finish("failed", "internal_error")
        raise
    except BaseException:  # Ctrl-C, SystemExit: stopped, not broken; nothing was kept
        events.publish(RenderEvent(job_id=spec.job_id, kind="cancelled", message=STOPPED))
        stages.finish("cancelled")
        raise
    with stages.stage("publish"):
        files = {name: str(path) for name, path in result.files.items()}
        # Before "finished": the teacher who sees the result finds it in their library.
        Library(job.connection).record(VideoRecord(
            video=spec.output, owner=spec.owner, conversation=spec.conversation,
            version=spec.version, title=spec.storyboard.title,
            language=spec.storyboard.language, preset=result.renderer, preview=spec.animatic,
            seconds=(result.storyboard or spec.storyboard).total_seconds,
            files=sorted(path.name for path in result.files.values())))
        events.publish(RenderEvent(
            job_id=spec.job_id, kind="finished", scenes=scenes, scene=scenes, fraction=1.0,
            outputs=files, notes=[*result.notes, *result.problems],
            seconds=(result.storyboard or spec.storyboard).total_seconds,
        ))
    stages.finish("finished", renderer=result.renderer,
                  model_scenes=len(result.generated_scenes))
    try:  # for the queue's estimates; never at the cost of a finished video
        record_render(job.connection, result.storyboard or spec.storyboard, result.plan,
                      seconds=render_seconds, steps=steps, loading=stages.loading,
                      preview=spec.animatic)
    except redis.RedisError as exc:
        log.warning("job %s: render cost not recorded (Redis: %s)", spec.job_id,
                    exc.__class__.__name__)
    return files


def _seconds_queued(job: Job) -> float | None:
    """From (the last) enqueue to this worker taking the job."""
    if job.enqueued_at is None:
        return None
    taken = job.started_at or datetime.now(UTC)
    return max((taken - job.enqueued_at).total_seconds(), 0.0)


class _JobStages(StageTimer):
    """The job's stage timer, which also adds up the time spent loading pipelines: a worker
    keeps them loaded, so the next job's estimate must not count it (engine/eta.py)."""

    loading = 0.0

    def record(self, stage: str, seconds: float, **fields: object) -> None:
        if stage == "model_load":
            self.loading += seconds
        super().record(stage, seconds, **fields)


class _ProgressReporter:
    """Turns compose's frame counts into throttled "scene 2/5, 40 %" events."""

    def __init__(self, events: EventLog, spec: RenderSpec, timeline: Timeline) -> None:
        self.events = events
        self.spec = spec
        self.timeline = timeline
        self.last_sent = 0.0

    def use_timeline(self, timeline: Timeline) -> None:
        """The render's own timeline: the voice and the school's cards may change it."""
        self.timeline = timeline

    def step(self, scene_index: int, step: int, steps: int) -> None:
        """A denoising step of a model scene: "scene 2/5, step 12/30"."""
        now = time.monotonic()
        if 0 < step < steps and now - self.last_sent < PROGRESS_INTERVAL_SECONDS:
            return
        self.last_sent = now
        self.events.publish(self._step_event(scene_index, step, steps))

    def preview_to(self, out_dir: Path) -> Callable[[int, int, int, Image.Image], None]:
        """What saves each live preview in `out_dir` and says so, whatever the throttle."""

        def preview(scene_index: int, step: int, steps: int, picture: Image.Image) -> None:
            partial = out_dir / (LIVE_PREVIEW + ".part")
            picture.convert("RGB").save(partial, "JPEG", quality=LIVE_PREVIEW_QUALITY)
            os.replace(partial, out_dir / LIVE_PREVIEW)  # a reader never sees half a file
            event = self._step_event(scene_index, step, steps)
            self.events.publish(event.model_copy(update={"preview": LIVE_PREVIEW}))

        return preview

    def _step_event(self, scene_index: int, step: int, steps: int) -> RenderEvent:
        segment = next(s for s in self.timeline.segments if s.scene_index == scene_index)
        within = step / max(steps, 1) * segment.frame_count
        return RenderEvent(
            job_id=self.spec.job_id, kind="progress", scene=scene_index + 1,
            scenes=len(self.spec.storyboard.scenes), step=step, steps=steps,
            fraction=min((segment.start_frame + within) / self.timeline.frame_count, 1.0),
        )

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last_sent < PROGRESS_INTERVAL_SECONDS and done < total:
            return
        self.last_sent = now
        frame = min(done, total - 1)  # the last report is about the last frame, not past it
        scene = next((segment.scene_index for segment in self.timeline.segments
                      if segment.start_frame <= frame < segment.end_frame), None)
        self.events.publish(RenderEvent(
            job_id=self.spec.job_id, kind="progress",
            scene=None if scene is None else scene + 1,
            scenes=len(self.spec.storyboard.scenes), fraction=min(done / max(total, 1), 1.0),
        ))
