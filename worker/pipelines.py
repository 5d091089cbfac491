"""Diffusers pipelines: loaded once per worker process, kept, and run within memory.

A worker process keeps every pipeline it has loaded (ResidentWorker never forks), so the
second job on the same model starts denoising at once. When CUDA runs out of memory, a
generation is retried one rung lower on a ladder — VAE tiling, then CPU offload, then a
lower resolution — and the clip says what it gave up.

A quality level's speed options (engine/presets.QualityOptions: attention backend, cache
hooks, regional compile, a step-distilled LoRA, VAE tiling) are put on the shared pipeline
before each generation by `apply_quality`, so pipelines at different levels share one copy
of the weights.
"""

from __future__ import annotations

import importlib.util
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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

# Our attention names -> diffusers' backend names, and the module each one needs.
ATTENTION_BACKENDS = {"native": "native", "flash3": "_flash_3", "sage": "sage"}
ATTENTION_MODULES = {"flash3": "flash_attn_interface", "sage": "sageattention"}
AUTO_ORDER = ("flash3", "sage")  # exact FA3 first; Sage quantizes (unmeasured order)

_loaded: dict[tuple[str, str, str], object] = {}
load_counts: Counter[tuple[str, str]] = Counter()  # (model_dir, class) -> loads, for tests
# What apply_quality last put on each transformer (sibling pipelines share one).
_applied: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# step (1-based), the latents after it, and the width and height they are being made at
LatentsCallback = Callable[[int, torch.Tensor, int, int], None]


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
    pipeline.set_progress_bar_config(disable=True)
    _loaded[key] = pipeline
    log.info("loaded %s from %s on %s", class_name, plan.model_dir, device)
    return pipeline


def attention_backend(asked: str, device: str) -> tuple[str, str]:
    """Our name of the attention backend to use for `asked` on `device`, and why it is not
    what was asked ("" when it is). "auto" takes the first of AUTO_ORDER installed."""
    if asked == "native":
        return "native", ""
    if not device.startswith("cuda"):
        return "native", f"attention {asked!r} needs CUDA; this worker runs on {device}"
    if asked == "auto":
        found = next((name for name in AUTO_ORDER
                      if importlib.util.find_spec(ATTENTION_MODULES[name])), None)
        if found is None:
            return "native", ("attention 'auto': neither FlashAttention 3 "
                              "(flash_attn_interface) nor SageAttention is installed")
        return found, ""
    if importlib.util.find_spec(ATTENTION_MODULES[asked]) is None:
        return "native", f"attention {asked!r}: {ATTENTION_MODULES[asked]} is not installed"
    return asked, ""


def apply_quality(pipeline, plan: DiffusionPlan, device: str) -> None:
    """Put the plan's quality options on the pipeline: attention backend, cache hooks, LoRA,
    regional compile and VAE tiling. Cheap when they are already on (sibling pipelines and
    scenes at one level share the transformer and find its state as they want it)."""
    transformer = pipeline.transformer
    state = _applied.setdefault(transformer, {"attention": "native", "cache": None,
                                              "lora": "", "compiled": False})
    # 1. Attention: diffusers' dispatch; "native" (SDPA) is what a fresh model runs.
    attention, reason = attention_backend(plan.attention, device)
    if reason:
        log.info("%s; using native (PyTorch SDPA) attention", reason)
    if attention != state["attention"]:
        try:
            _set_attention(pipeline, ATTENTION_BACKENDS[attention])
        except (RuntimeError, ValueError) as exc:  # installed but unusable (version, GPU)
            log.warning("attention %r failed (%s); using native attention", attention, exc)
            attention = "native"
            _set_attention(pipeline, "native")
        state["attention"] = attention
    # 2. Cache hooks: skip transformer work on steps that change little.
    wanted = _cache_config(plan)
    if state["cache"] != _cache_identity(plan):
        for model in _denoisers(pipeline):
            if model.is_cache_enabled:
                model.disable_cache()
            if wanted is not None:
                model.enable_cache(wanted)
        state["cache"] = _cache_identity(plan)
    if wanted is not None:  # a cancelled generation can leave a half-filled cache behind
        for model in _denoisers(pipeline):
            model._reset_stateful_cache()
    # 3. A step-distilled LoRA (plan_for checked the file is there and peft can load it).
    if plan.lora != state["lora"]:
        _use_lora(pipeline, plan.lora, state["lora"])
        state["lora"] = plan.lora
    # 4. Regional compile: once; compiled blocks stay compiled for every later level.
    if plan.compile and not state["compiled"]:
        if device.startswith("cuda"):
            for model in _denoisers(pipeline):
                model.compile_repeated_blocks(fullgraph=True)
            state["compiled"] = True
            log.info("compiled the repeated transformer blocks (regional torch.compile)")
        else:
            log.info("compile skipped: regional torch.compile runs on CUDA only, not %s",
                     device)
    # 5. VAE tiling when the level asks (generate's _restore switches it off again).
    if plan.vae_tiling:
        _enable_vae_tiling(pipeline)


def applied_attention(pipeline) -> str:
    """The attention backend apply_quality last set on the pipeline's transformer."""
    return _applied.get(pipeline.transformer, {}).get("attention", "native")


def warm_up(plan: DiffusionPlan, sizes: Sequence[tuple[int, int, int]], device: str,
            class_name: str = "") -> int:
    """One tiny generation per shape bucket (width, height, frames), so torch.compile has
    compiled each shape before a teacher waits on it; returns the buckets run. Without
    compile, or off CUDA, there is nothing to warm: it returns 0 at once and says so."""
    if not plan.compile or not device.startswith("cuda"):
        log.info("warm-up skipped: %s", "the quality does not compile" if not plan.compile
                 else f"compile runs on CUDA only, not {device}")
        return 0
    class_name = class_name or plan.text_to_video or plan.image_to_video
    pipeline = load_pipeline(plan, class_name, device)
    apply_quality(pipeline, plan, device)
    for width, height, frames in sizes:
        arguments = dict(prompt="warm-up", width=width, height=height, num_frames=frames,
                         num_inference_steps=2, guidance_scale=plan.guidance, output_type="latent",
                         generator=torch.Generator("cpu").manual_seed(0))
        if class_name in ("WanImageToVideoPipeline", "LTXImageToVideoPipeline"):
            arguments["image"] = Image.new("RGB", (width, height))
        pipeline(**arguments)
        log.info("warmed up %s at %dx%d, %d frames", class_name, width, height, frames)
    return len(sizes)


def _denoisers(pipeline) -> list:
    """The pipeline's transformers (Wan 2.2 A14B has a second one for low noise)."""
    return [model for model in (getattr(pipeline, "transformer", None),
                                getattr(pipeline, "transformer_2", None)) if model is not None]


def _set_attention(pipeline, backend: str) -> None:
    for model in _denoisers(pipeline):
        model.set_attention_backend(backend)


def _cache_identity(plan: DiffusionPlan) -> tuple | None:
    if plan.cache == "none":
        return None
    return (plan.cache, plan.cache_threshold, plan.mag_ratios, plan.steps)


def _cache_config(plan: DiffusionPlan):
    from diffusers import FirstBlockCacheConfig, MagCacheConfig

    if plan.cache == "first_block":
        return FirstBlockCacheConfig(threshold=plan.cache_threshold)
    if plan.cache == "mag":
        return MagCacheConfig(threshold=plan.cache_threshold, mag_ratios=list(plan.mag_ratios),
                              num_inference_steps=plan.steps)
    return None


def _use_lora(pipeline, lora: str, previous: str) -> None:
    """Switch the LoRA adapters: `lora` on (loaded at first use), or all off for ""."""
    if not lora:
        pipeline.disable_lora()
        log.info("LoRA %s off", Path(previous).name)
        return
    path = Path(lora)
    adapter = path.stem.replace(".", "_")
    if adapter not in pipeline.get_list_adapters().get("transformer", []):
        pipeline.load_lora_weights(str(path.parent), weight_name=path.name,
                                   adapter_name=adapter)
    pipeline.enable_lora()
    pipeline.set_adapters([adapter])
    log.info("LoRA %s on", path.name)


def generate(
    pipeline, plan: DiffusionPlan, *, prompt: str, image: Image.Image | None, frames: int,
    seed: int, device: str, on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None, on_latents: LatentsCallback | None = None,
) -> Clip:
    """One clip, walking down the memory ladder on CUDA out-of-memory errors. `on_latents`
    sees the latents after each step, with the size they are being made at (live previews)."""
    size = [plan.width, plan.height]  # this attempt's: the ladder may lower it

    def step_callback(_pipe, step: int, _timestep, tensors: dict) -> dict:
        if should_stop and should_stop():
            raise JobCancelled  # from the step callback: at most one step is wasted
        if on_step:
            on_step(step + 1, plan.steps)
        if on_latents and "latents" in tensors:
            on_latents(step + 1, tensors["latents"], size[0], size[1])
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
        size[:] = [width, height]
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

    apply_quality(pipeline, plan, device)
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
