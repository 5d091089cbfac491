"""The diffusion renderer: each scene a clip from a video model, cached by content.

The title card, the scene titles and the captions are the animatic's, drawn at the model's
size, so a model video and an animatic look like one family. A clip lasts as long as its
model could make it; it is spread over its scene's duration (slowed, never cut). A scene
the model cannot render (an image scene with no image-to-video pipeline) is an animatic
scene.

A model makes clips at its own rate (16 fps for Wan2.1). Spread over a 24 fps video, some
of its frames show twice; with `interpolate_fps` above the model's rate the clip is first
redrawn at that rate with motion-compensated frames in between (worker/interpolate.py), so
the motion is smooth. Set it to the video's fps for the evenest result.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from engine.presets import DiffusionPlan
from engine.storyboard import Scene, Storyboard
from worker.animatic import AnimaticRenderer
from worker.clips import ClipCache, clip_key
from worker.frames import FrameRun
from worker.interpolate import InterpolationError, Method, interpolate, method_for
from worker.pipelines import (
    Clip,
    LatentsCallback,
    attention_backend,
    compute_dtype,
    device_for,
    generate,
    load_pipeline,
)

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, int], None]  # scene index, step, steps
READ_AHEAD = 2  # cached clips read ahead of the scene being composed
# Reads cached clips (an ffmpeg decode each, outside the GIL) beside the model's work.
_READER = ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="clip-read")
# scene index, step, steps, a rough picture of the clip so far (worker/previews.py)
PreviewCallback = Callable[[int, int, int, Image.Image], None]


class DiffusionRenderer:
    def __init__(
        self, storyboard: Storyboard, plan: DiffusionPlan, *, fps: int, font: Path,
        uploads: Path, device: str = "auto", cache: ClipCache | None = None,
        on_step: StepCallback | None = None, should_stop: Callable[[], bool] | None = None,
        interpolate_fps: int = 0, interpolation: Method = "ffmpeg",
        on_preview: PreviewCallback | None = None, preview_every: int = 0,
    ) -> None:
        self.storyboard = storyboard
        self.plan = plan
        self.fps = fps
        self.width, self.height = plan.width, plan.height
        self.device = device_for(device)
        self.cache = cache
        self.on_step = on_step
        self.should_stop = should_stop
        self.animatic = AnimaticRenderer(storyboard, fps=fps, font=font, uploads=uploads,
                                         size=(plan.width, plan.height))
        self.generated: list[int] = []  # scene indices rendered by the model in this job
        self._reads: dict[int, Future] = {}  # scene index -> its cached clip being read
        self._requests: dict[int, tuple] = {}  # scene index -> what _request worked out
        self.degraded: dict[int, tuple[str, ...]] = {}  # scene index -> what was given up
        self.notes: list[str] = []  # what the teacher should know, besides `degraded`
        # 0, or a rate no higher than the model's: clips keep the model's own frames.
        self.interpolate_fps = interpolate_fps if interpolate_fps > plan.fps else 0
        # A live preview every `preview_every` steps (0: none); one that fails stops them.
        self.on_preview = on_preview if preview_every > 0 else None
        self.preview_every = preview_every
        self.interpolation, note = method_for(interpolation)
        if note and self.interpolate_fps:
            self.notes.append(note)

    def title_card(self, frame_count: int) -> Iterator[FrameRun]:
        return self.animatic.title_card(frame_count)

    def scene(self, index: int, frame_count: int) -> Iterator[FrameRun]:
        scene = self.storyboard.scenes[index]
        class_name = self.plan.image_to_video if scene.image else self.plan.text_to_video
        if not class_name:
            yield from self.animatic.scene(index, frame_count)
            return
        clip = self._clip(scene, index, class_name)
        if clip.degraded:
            self.degraded[index] = clip.degraded
        overlays = self.animatic.scene_overlays(scene, index, on_image=True)
        yield from _spread(self._motion(clip, index), frame_count, overlays)

    def _motion(self, clip: Clip, index: int) -> Sequence[np.ndarray]:
        """The clip's frames, at interpolate_fps when that is on. Smoothing is a finish, not
        the picture: if ffmpeg fails, the model's own frames serve, with a note."""
        if not self.interpolate_fps:
            return clip.frames
        try:
            return interpolate(clip.frames, self.plan.fps, self.interpolate_fps,
                               self.interpolation)
        except InterpolationError as exc:
            log.warning("scene %d: %s", index + 1, exc)
            self.notes.append(f"Scene {index + 1}'s motion was not smoothed (frame "
                              "interpolation failed); it plays at the model's frame rate.")
            return clip.frames

    def close(self) -> None:
        """Stop reading ahead (a cancel, a failure): reads not started are dropped."""
        for read in self._reads.values():
            read.cancel()
        self._reads.clear()

    def _clip(self, scene: Scene, index: int, class_name: str) -> Clip:
        image, frames, prompt, key = self._request(scene, index, class_name)
        self._requests.pop(index, None)  # used: its picture need not stay in memory
        if self.cache is not None:
            # The next scenes' cached clips are read while this one is read or made: after
            # an edit, the unchanged scenes cost (almost) nothing on top of the changed one.
            self._read_ahead(index + 1)
            read = self._reads.pop(index, None)
            cached = read.result() if read is not None else self.cache.get(key)
            if cached is not None:
                return cached
        pipeline = load_pipeline(self.plan, class_name, self.device)

        def step(done: int, steps: int) -> None:
            if self.on_step:
                self.on_step(index, done, steps)

        clip = generate(pipeline, self.plan, prompt=prompt, image=image, frames=frames,
                        seed=scene.seed, device=self.device, on_step=step,
                        should_stop=self.should_stop,
                        on_latents=self._previewer(pipeline, index, frames,
                                                   conditioned=image is not None))
        self.generated.append(index)
        for note in self.plan.notes:  # a level that ran without its LoRA: said once
            if note not in self.notes:
                log.warning("%s", note)
                self.notes.append(note)
        if self.cache is not None and not clip.degraded:  # a lesser clip is not kept as the key's
            self.cache.put(key, clip)
        return clip

    def _request(self, scene: Scene, index: int, class_name: str):
        """The scene's picture (None for text), frames, prompt and clip cache key; worked out
        once per scene (read-ahead needs the key first)."""
        if index not in self._requests:
            self._requests[index] = self._work_out(scene, index, class_name)
        return self._requests[index]

    def _work_out(self, scene: Scene, index: int, class_name: str):
        image = self.animatic.open_upload(scene, index) if scene.image else None
        image_bytes = _png_bytes(image) if image is not None else None
        frames = self.plan.frames_for(scene.duration)
        prompt = f"{scene.visual}. Style: {self.storyboard.style.name}."
        key = clip_key(self.plan, class_name, prompt=prompt, image=image_bytes, frames=frames,
                       seed=scene.seed, dtype=compute_dtype(self.plan, self.device),
                       attention=attention_backend(self.plan.attention, self.device)[0])
        return image, frames, prompt, key

    def _read_ahead(self, start: int) -> None:
        """Start reading the cached clips of scenes `start` to `start` + READ_AHEAD - 1 (at
        most that many held at once: a full-size clip is about 100 MB)."""
        scenes = self.storyboard.scenes
        for index in range(start, min(start + READ_AHEAD, len(scenes))):
            scene = scenes[index]
            class_name = self.plan.image_to_video if scene.image else self.plan.text_to_video
            if index in self._reads or not class_name:
                continue
            key = self._request(scene, index, class_name)[3]
            if self.cache.has(key):
                self._reads[index] = _READER.submit(self.cache.get, key)

    def _previewer(self, pipeline, index: int, frames: int, *,
                   conditioned: bool) -> LatentsCallback | None:
        """What turns scene `index`'s latents into live previews, every few steps. The last
        step is left out: the real frames follow at once."""
        if self.on_preview is None:
            return None
        steps = self.plan.steps
        # Wan2.2's image-to-video blends the picture into the first frame only at the end.
        skip_first = conditioned and bool(getattr(pipeline.config, "expand_timesteps", False))

        def seen(step: int, latents, width: int, height: int) -> None:
            if self.on_preview is None or step % self.preview_every or step >= steps:
                return
            try:
                from worker.previews import LatentPreview

                previewer = LatentPreview.for_pipeline(pipeline, self.plan.family,
                                                       self.plan.model_dir)
                picture = previewer.picture(latents, frames=frames, width=width,
                                            height=height, skip_first=skip_first)
                self.on_preview(index, step, steps, picture)
            except Exception:  # a preview is a courtesy: never at the cost of the clip
                log.warning("live previews stopped: one could not be made or sent",
                            exc_info=True)
                self.on_preview = None

        return seen


def _spread(frames: Sequence[np.ndarray], frame_count: int, overlays) -> Iterator[FrameRun]:
    """The clip's frames stretched over `frame_count` output frames, titles on top, as runs:
    output frame i shows clip frame i * len(frames) // frame_count."""
    available = len(frames)
    start = 0
    while start < frame_count:
        source = start * available // frame_count
        end = start + 1
        while end < frame_count and end * available // frame_count == source:
            end += 1
        frame = frames[source]
        for overlay in overlays:
            frame = overlay.blend_onto(frame)
        yield FrameRun(frame, end - start)
        start = end


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
