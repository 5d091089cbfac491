"""Video model presets (config/models.toml) and the generation plan they give each scene.

A preset names a diffusers pipeline, where its weights live and how to run it at each
quality level a teacher can pick (draft, standard, high). The plan for one render
(`DiffusionPlan`) is the preset at one quality with the operator's overrides applied; each
worker makes it from its own settings, so it renders with the weights on its own disk.
"""

from __future__ import annotations

import importlib.util
import json
import math
from functools import cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.errors import SettingsError
from engine.paths import CONFIG_DIR
from engine.preset_files import read_presets
from engine.settings import Settings

PipelineClass = Literal[
    "WanPipeline", "WanImageToVideoPipeline", "LTXPipeline", "LTXImageToVideoPipeline",
]
# Per pipeline family: frames must be k * step + 1, and sizes a multiple of this many pixels.
FRAME_STEP = {"Wan": 4, "LTX": 8}
SIZE_STEP = {"Wan": 16, "LTX": 32}
MIN_SIDE = 32

Quality = Literal["draft", "standard", "high"]
QUALITIES: tuple[str, ...] = get_args(Quality)
# "auto": the fastest backend installed on a CUDA worker (worker/pipelines.attention_backend).
Attention = Literal["auto", "native", "flash3", "sage"]
CacheKind = Literal["none", "first_block", "mag"]


class QualityOptions(BaseModel):
    """How one quality level of a preset runs: a [<preset>.quality.<level>] table."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(ge=1, le=200)
    guidance: float = Field(ge=0.0, le=30.0)
    attention: Attention = "auto"
    compile: bool = False  # regional torch.compile of the repeated blocks, CUDA only
    cache: CacheKind = "none"  # diffusers' cache hooks on the transformer
    cache_threshold: float = Field(0.0, ge=0.0, le=1.0)
    mag_ratios: tuple[float, ...] = ()  # MagCache's per-checkpoint ratios (calibrated)
    # A step-distilled LoRA in the preset's folder, and how to run with it; without the file
    # the level runs with `steps` and `guidance`, and the render says so.
    lora: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]*\.safetensors)?$")
    lora_steps: int = Field(0, ge=0, le=200)  # 0: `steps`
    lora_guidance: float = Field(-1.0, ge=-1.0, le=30.0)  # -1: `guidance`
    vae_tiling: bool = False

    @model_validator(mode="after")
    def _options_agree(self) -> QualityOptions:
        if self.cache != "none" and self.cache_threshold <= 0:
            raise ValueError(f'cache = "{self.cache}" needs a cache_threshold above 0')
        if self.cache == "mag" and not self.mag_ratios:
            raise ValueError('cache = "mag" needs mag_ratios, calibrated for this checkpoint')
        if not self.lora and (self.lora_steps or self.lora_guidance >= 0):
            raise ValueError("lora_steps and lora_guidance need a lora")
        return self


class ModelPreset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = ""
    title: str
    repo: str
    revision: str = "main"
    folder: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    text_to_video: PipelineClass
    image_to_video: PipelineClass | Literal[""] = ""
    width: int = Field(ge=MIN_SIDE, le=4096)
    height: int = Field(ge=MIN_SIDE, le=4096)
    frames: int = Field(ge=5, le=1024)
    fps: int = Field(ge=4, le=60)
    dtype: Literal["bfloat16", "float16", "float32"]
    cpu_offload: bool = False
    quality: dict[Quality, QualityOptions]

    @field_validator("quality")
    @classmethod
    def _every_level(cls, levels: dict[str, QualityOptions]) -> dict[str, QualityOptions]:
        missing = [level for level in QUALITIES if level not in levels]
        if missing:
            raise ValueError(f"every preset needs the quality levels {', '.join(QUALITIES)}; "
                             f"missing: {', '.join(missing)}")
        return levels

    @property
    def family(self) -> str:
        return "LTX" if self.text_to_video.startswith("LTX") else "Wan"


class DiffusionPlan(BaseModel):
    """Everything a worker needs to render scenes with a diffusion model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    preset: str = Field(max_length=80)
    model_dir: str = Field(max_length=4096)  # on the worker: a folder with model_index.json
    family: Literal["Wan", "LTX"]
    width: int
    height: int
    max_frames: int
    fps: int
    steps: int
    guidance: float
    dtype: Literal["bfloat16", "float16", "float32"]
    cpu_offload: bool
    vae_tiling: bool
    text_to_video: PipelineClass | Literal[""]  # "" : text-only scenes use the animatic
    image_to_video: PipelineClass | Literal[""]  # "" : image scenes use the animatic
    # The quality level and its speed options (steps and guidance above are its, resolved).
    quality: Quality = "standard"
    attention: Attention = "native"
    compile: bool = False
    cache: CacheKind = "none"
    cache_threshold: float = 0.0
    mag_ratios: tuple[float, ...] = ()
    lora: str = Field("", max_length=4096)  # the LoRA file on this worker, "" none
    notes: tuple[str, ...] = ()  # what the render should say (a named LoRA that is missing)

    def frames_for(self, seconds: float) -> int:
        """Frames to generate for a scene: enough for `seconds` at the model's fps, in the
        family's k * step + 1 form, no more than one call can make."""
        step = FRAME_STEP[self.family]
        wanted = max(1, math.ceil(seconds * self.fps / step)) * step + 1
        return min(wanted, self.max_frames)


IMAGE_TO_VIDEO = ("WanImageToVideoPipeline", "LTXImageToVideoPipeline")


def plan_for(settings: Settings, aspect: str, quality: str = "") -> DiffusionPlan | None:
    """How to render this storyboard with a diffusion model at `quality` ("": the setting
    diffusion.quality), or None for the animatic."""
    options = settings.diffusion
    if options.renderer == "animatic":
        return None
    presets = load_presets()
    if options.preset not in presets:
        raise SettingsError(
            f"Setting diffusion.preset names {options.preset!r}, which is not a preset; "
            f"the presets are: {', '.join(presets)}."
        )
    preset = presets[options.preset]
    if options.model_path:
        folder = Path(options.model_path).expanduser()
        pipeline = pipeline_class(folder)
        family = "LTX" if pipeline.startswith("LTX") else "Wan"
        if preset.family != family:  # sizes and frame rules come from a preset of its family
            preset = next(p for p in presets.values() if p.family == family)
        text_to_video = "" if pipeline in IMAGE_TO_VIDEO else pipeline
        image_to_video = pipeline if pipeline in IMAGE_TO_VIDEO else ""
    else:
        folder = settings.models_path / preset.folder
        if not (folder / "model_index.json").is_file():
            if options.renderer == "diffusion":
                raise SettingsError(
                    f"The weights of preset {preset.name!r} are not in {folder}; run "
                    f"'lessonreel models pull {preset.name}' on a machine with internet access."
                )
            return None
        text_to_video, image_to_video = preset.text_to_video, preset.image_to_video
    family = preset.family
    width, height = generation_size(preset.width, preset.height, aspect, family,
                                    options.max_side)
    step = FRAME_STEP[family]
    max_frames = max(((options.max_frames or preset.frames) - 1) // step, 1) * step + 1
    level = quality or options.quality
    if level not in QUALITIES:
        raise SettingsError(f"Quality {level!r} is not one of: {', '.join(QUALITIES)}.")
    chosen = preset.quality[level]
    steps, guidance, lora, notes = chosen.steps, chosen.guidance, "", []
    if chosen.lora:
        steps, guidance, lora, notes = _with_lora(chosen, folder, level)
    return DiffusionPlan(
        preset=preset.name, model_dir=str(folder.resolve()), family=family, width=width,
        height=height, max_frames=max_frames, fps=preset.fps,
        steps=options.steps or steps,  # the operator's override wins at every level
        guidance=guidance if options.guidance < 0 else options.guidance,
        dtype=preset.dtype, cpu_offload=preset.cpu_offload, vae_tiling=chosen.vae_tiling,
        text_to_video=text_to_video, image_to_video=image_to_video,
        quality=level, attention=chosen.attention, compile=chosen.compile,
        cache=chosen.cache, cache_threshold=chosen.cache_threshold,
        mag_ratios=chosen.mag_ratios, lora=lora, notes=tuple(notes),
    )


def _with_lora(chosen: QualityOptions, folder: Path, level: str
               ) -> tuple[int, float, str, list[str]]:
    """Steps, guidance, LoRA file and notes of a level that names a LoRA: its own recipe
    when the file is here and peft can load it, else the level's steps without it."""
    path = folder / chosen.lora
    if not path.is_file():
        why = f"its LoRA {chosen.lora} is not in {folder}"
    elif importlib.util.find_spec("peft") is None:
        why = f"loading its LoRA {chosen.lora} needs the peft package, which is not installed"
    else:
        guidance = chosen.guidance if chosen.lora_guidance < 0 else chosen.lora_guidance
        return chosen.lora_steps or chosen.steps, guidance, str(path.resolve()), []
    return chosen.steps, chosen.guidance, "", [
        f"The {level} quality ran without its speed-up ({why}), at {chosen.steps} steps."]


def pipeline_class(folder: Path) -> str:
    """The pipeline class a saved diffusers folder declares; SettingsError if unsupported."""
    index = folder / "model_index.json"
    try:
        declared = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError):
        raise SettingsError(
            f"{folder} is not a diffusers pipeline folder (no readable model_index.json)."
        ) from None
    if declared not in get_args(PipelineClass):
        raise SettingsError(
            f"{folder} holds a {declared or 'unnamed'} pipeline; supported are: "
            f"{', '.join(get_args(PipelineClass))}."
        )
    return declared


@cache
def load_presets(path: Path = CONFIG_DIR / "models.toml") -> dict[str, ModelPreset]:
    return read_presets(path, ModelPreset, "Model preset")


def generation_size(width: int, height: int, aspect: str, family: str,
                    max_side: int = 0) -> tuple[int, int]:
    """The preset's 16:9 size turned to `aspect`, optionally shrunk so its long side is at most
    `max_side`, rounded to what the model accepts."""
    if aspect == "9:16":
        width, height = height, width
    elif aspect == "1:1":
        width = height = int(math.sqrt(width * height))
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = width * scale, height * scale
    step = SIZE_STEP[family]
    return (max(MIN_SIDE, int(width // step) * step), max(MIN_SIDE, int(height // step) * step))
