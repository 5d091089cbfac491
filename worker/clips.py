"""Rendered scene clips, kept by content: an unchanged scene is never rendered twice.

A clip's key hashes everything that decides its pixels: the weights (the pipeline folder's
model_index.json and the size and time of every file in it), the pipeline class, size,
frames, steps, guidance, dtype, the quality level and the options of it that change pixels
(cache hooks, LoRA, attention backend, VAE tiling), the prompt and style, the image's bytes
and the seed. Edit one scene and only that scene's key changes; a draft clip is never served
for a high render. (Regional compile is left out: it changes speed, not the picture.)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import cache
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from engine.presets import DiffusionPlan
from worker.pipelines import Clip

CACHE_FORMAT = 2  # bump when what a key means changes (2: quality levels)


def clip_key(plan: DiffusionPlan, class_name: str, *, prompt: str, image: bytes | None,
             frames: int, seed: int, dtype: str, attention: str = "native") -> str:
    facts = {
        "format": CACHE_FORMAT,
        "weights": _weights_fingerprint(plan.model_dir),
        "class": class_name,
        "size": [plan.width, plan.height],
        "frames": frames,
        "steps": plan.steps,
        "guidance": plan.guidance,
        "dtype": dtype,  # what the worker computes in, not what the preset asks for
        "quality": plan.quality,
        "cache": [plan.cache, plan.cache_threshold, list(plan.mag_ratios)],
        "lora": Path(plan.lora).name if plan.lora else "",  # its bytes: in "weights"
        "attention": attention,  # the backend this worker resolved (Sage quantizes)
        "vae_tiling": plan.vae_tiling,
        "prompt": prompt,
        "image": hashlib.sha256(image).hexdigest() if image is not None else None,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


class ClipCache:
    """Clips as near-lossless H.264 (yuv444p, crf 10) with a JSON note beside each."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, key: str) -> bool:
        return all(path.is_file() for path in self._paths(key))

    def get(self, key: str) -> Clip | None:
        video, note = self._paths(key)
        if not (video.is_file() and note.is_file()):
            return None
        try:
            meta = json.loads(note.read_text(encoding="utf-8"))
            reader = imageio_ffmpeg.read_frames(str(video), pix_fmt="rgb24")
            info = next(reader)
            width, height = info["size"]
            frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
        except (OSError, ValueError, RuntimeError, StopIteration):
            return None  # a damaged entry is a miss; rendering again replaces it
        if len(frames) != meta["frames"]:
            return None
        return Clip(np.stack(frames), tuple(meta.get("degraded", ())))

    def put(self, key: str, clip: Clip) -> None:
        video, note = self._paths(key)
        video.parent.mkdir(parents=True, exist_ok=True)
        count, height, width, _ = clip.frames.shape
        # Write beside, then rename: a reader never sees half a clip.
        handle, partial = tempfile.mkstemp(suffix=".mp4", dir=video.parent)
        os.close(handle)
        try:
            writer = imageio_ffmpeg.write_frames(
                partial, (width, height), fps=16, codec="libx264", pix_fmt_in="rgb24",
                pix_fmt_out="yuv444p", output_params=["-crf", "10", "-preset", "veryfast"],
                macro_block_size=1, ffmpeg_log_level="error",
            )
            writer.send(None)
            for frame in clip.frames:
                writer.send(np.ascontiguousarray(frame))
            writer.close()
            os.replace(partial, video)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        note.write_text(json.dumps({"frames": count, "degraded": list(clip.degraded)}),
                        encoding="utf-8")

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.mp4", folder / f"{key}.json"


WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".gguf"}
CONFIG_SUFFIXES = {".json", ".txt", ".model"}
EDGE_BYTES = 1 << 16


@cache
def _weights_fingerprint(model_dir: str) -> str:
    """Identity of a pipeline folder's contents, not of its copy: configs whole, and each
    weight file's size and first and last 64 KB. READMEs and download caches do not count."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix in CONFIG_SUFFIXES:
            digest.update(f"{relative}:".encode() + path.read_bytes())
        elif path.suffix in WEIGHT_SUFFIXES:
            size = path.stat().st_size
            with path.open("rb") as handle:
                head = handle.read(EDGE_BYTES)
                handle.seek(max(size - EDGE_BYTES, 0))
                tail = handle.read(EDGE_BYTES)
            digest.update(f"{relative}:{size}:".encode() + head + tail)
    return digest.hexdigest()
