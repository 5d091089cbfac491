"""Diffusers pipelines: loaded once per worker process, kept, and run within memory.

A worker process keeps every pipeline it has loaded (ResidentWorker never forks), so the
second job on the same model starts denoising at once. When CUDA runs out of memory, a
generation is retried one rung lower on a ladder — VAE tiling, then CPU offload, then a
lower resolution — and the clip says what it gave up.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from engine.jobs import JobCancelled
from engine.presets import SIZE_STEP, DiffusionPlan

log = logging.getLogger(__name__)

# The ladder, in order. Each rung keeps the ones before it.
VAE_TILING, CPU_OFFLOAD, LOWER_RESOLUTION = "VAE tiling", "CPU offload", "lower resolution"
LADDER = (VAE_TILING, CPU_OFFLOAD, LOWER_RESOLUTION)
LOWER_RESOLUTION_SCALE = 0.75
NEGATIVE_PROMPT = "blurry, distorted, low quality, watermark, text, subtitles, gore"

_loaded: dict[tuple[str, str, str], object] = {}
load_counts: Counter[tuple[str, str]] = Counter()  # (model_dir, class) -> loads, for tests


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # (frames, height, width, 3) uint8
    degraded: tuple[str, ...] = ()


def quiet_libraries() -> None:
    """No download or loading progress bars in a worker's log: our events report progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def device_for(setting: str) -> str:
    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(plan: DiffusionPlan, device: str) -> str:
    """bf16 matmuls on a CPU are slow or missing: a CPU worker computes in float32."""
    return "float32" if device == "cpu" else plan.dtype


def load_pipeline(plan: DiffusionPlan, class_name: str, device: str):
    """The pipeline `class_name` from the plan's folder, loaded at most once per process."""
    key = (plan.model_dir, class_name, device)
    if key in _loaded:
        return _loaded[key]
    import diffusers

    quiet_libraries()
    pipeline_type = getattr(diffusers, class_name)
    dtype = getattr(torch, compute_dtype(plan, device))
    sibling = next((p for (folder, _cls, dev), p in _loaded.items()
                    if folder == plan.model_dir and dev == device), None)
    if sibling is not None:  # same weights, other task: share the components, not memory
        pipeline = pipeline_type.from_pipe(sibling)
    else:
        pipeline = pipeline_type.from_pretrained(plan.model_dir, dtype=dtype)
        load_counts[(plan.model_dir, class_name)] += 1
        if plan.cpu_offload and device.startswith("cuda"):
            pipeline.enable_model_cpu_offload(device=device)
        else:
            pipeline.to(device)
        if plan.vae_tiling:
            _enable_vae_tiling(pipeline)
    pipeline.set_progress_bar_config(disable=True)
    _loaded[key] = pipeline
    log.info("loaded %s from %s on %s", class_name, plan.model_dir, device)
    return pipeline


def generate(
    pipeline, plan: DiffusionPlan, *, prompt: str, image: Image.Image | None, frames: int,
    seed: int, device: str, on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Clip:
    """One clip, walking down the memory ladder on CUDA out-of-memory errors."""

    def step_callback(_pipe, step: int, _timestep, tensors: dict) -> dict:
        if should_stop and should_stop():
            raise JobCancelled  # from the step callback: at most one step is wasted
        if on_step:
            on_step(step + 1, plan.steps)
        return tensors

    def attempt(rungs: tuple[str, ...]) -> np.ndarray:
        width, height = plan.width, plan.height
        if VAE_TILING in rungs:
            _enable_vae_tiling(pipeline)
        if CPU_OFFLOAD in rungs:
            pipeline.enable_model_cpu_offload(device=device)
        if LOWER_RESOLUTION in rungs:
            step = SIZE_STEP[plan.family]
            width = max(step, int(width * LOWER_RESOLUTION_SCALE) // step * step)
            height = max(step, int(height * LOWER_RESOLUTION_SCALE) // step * step)
        arguments = dict(
            prompt=prompt, negative_prompt=NEGATIVE_PROMPT, width=width, height=height,
            num_frames=frames, num_inference_steps=plan.steps, guidance_scale=plan.guidance,
            generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
            callback_on_step_end=step_callback, callback_on_step_end_tensor_inputs=["latents"],
        )
        if image is not None:
            arguments["image"] = image.resize((width, height), Image.Resampling.LANCZOS)
        output = pipeline(**arguments).frames[0]
        return _to_uint8(output, (plan.width, plan.height))

    if on_step:
        on_step(0, plan.steps)  # "starting": the model is about to run
    # CPU offload means nothing on a CPU: that rung is skipped there.
    ladder = LADDER if device.startswith("cuda") else (VAE_TILING, LOWER_RESOLUTION)
    try:
        frames_out, degraded = walk_memory_ladder(attempt, ladder)
    finally:
        _restore(pipeline, plan, device)  # the next scene starts at full quality again
    return Clip(frames_out, degraded)


def _restore(pipeline, plan: DiffusionPlan, device: str) -> None:
    """Undo what the ladder switched on, back to the plan's own memory options."""
    vae = getattr(pipeline, "vae", None)
    if not plan.vae_tiling and vae is not None and getattr(vae, "use_tiling", False):
        vae.disable_tiling()
    if (device.startswith("cuda") and not plan.cpu_offload
            and getattr(pipeline, "_offload_gpu_id", None) is not None):
        pipeline.remove_all_hooks()
        pipeline.to(device)


def walk_memory_ladder(attempt: Callable[[tuple[str, ...]], np.ndarray],
                       ladder: tuple[str, ...] = LADDER) -> tuple[np.ndarray, tuple[str, ...]]:
    """Call `attempt` with no rung, then with each rung added after an out-of-memory error."""
    rungs: tuple[str, ...] = ()
    while True:
        try:
            return attempt(rungs), rungs
        except torch.OutOfMemoryError:
            if len(rungs) == len(ladder):
                raise
            rungs = ladder[: len(rungs) + 1]
            log.warning("out of GPU memory; retrying with %s", ", ".join(rungs))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _enable_vae_tiling(pipeline) -> None:
    vae = getattr(pipeline, "vae", None)
    if vae is not None and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()


def _to_uint8(output, size: tuple[int, int]) -> np.ndarray:
    """Pipeline frames (floats in [0, 1]) as uint8, resized to `size` if a rung shrank them."""
    array = np.asarray(output)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if (array.shape[2], array.shape[1]) != size:
        array = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC))
                          for f in array])
    return array
