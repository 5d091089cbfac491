"""How much arithmetic a denoising step is, and how much of the GPU's peak a run reached.

`wan_forward_flops` counts one forward of a Wan-family transformer (diffusers'
`WanTransformer3DModel`) from its config alone, so a benchmark can say what share of the
GPU's bf16 peak its denoising loop reached (model FLOPs utilisation, MFU) without a profiler.
`bf16_peak_tflops` knows the dense bf16 peak of common NVIDIA GPUs by the names NVML reports.

No torch here: the arithmetic runs anywhere, and the formula is checked against torch's
own FLOP counter on a real forward pass in tests/test_flops.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

WAN_TEXT_TOKENS = 512  # WanPipeline's max_sequence_length: prompts are padded to 512 tokens
# Wan 2.1 image-to-video: CLIP ViT-H/14 at 224 px gives 16 x 16 patches + 1 class token.
WAN_IMAGE_TOKENS = 257

# Dense bf16 tensor-core peaks in TFLOPS (no 2:4 sparsity), from NVIDIA's datasheets and
# architecture whitepapers; first match wins, so a variant comes before its family.
# GeForce cards run bf16 (which always accumulates in FP32) at half their FP16-accumulate
# rate: the RTX 4090's figure is 165 (with FP32 accumulate), not the 330 of its FP16-
# accumulate spec line, because that is the rate PyTorch's bf16 matmuls can reach.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bh100\b.*\bpcie\b", 756.0),
    (r"\bh100\b.*\bnvl\b", 835.0),
    (r"\bh200\b.*\bnvl\b", 835.0),
    (r"\b(h100|h800|h200|gh200)\b", 989.0),  # SXM (NVML: "NVIDIA H100 80GB HBM3")
    (r"\bb200\b", 2250.0),
    (r"\b(a100|a800)\b", 312.0),
    (r"\bl40s\b", 362.0),
    (r"\bl40\b", 181.0),
    (r"\bl4\b", 121.0),
    (r"\ba10\b", 125.0),
    (r"\brtx 6000 ada\b", 364.0),
    (r"\brtx 5090\b", 209.5),
    (r"\brtx 4090\b(?! d\b)", 165.2),
    (r"\brtx 3090 ti\b", 80.0),
    (r"\brtx 3090\b", 71.0),
)


def bf16_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of the GPU called `name` (as NVML or torch reports it, e.g.
    "NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"), or None for a GPU not in the table."""
    normal = " ".join(name.lower().replace("-", " ").replace("_", " ").split())
    return next((peak for pattern, peak in BF16_PEAK_TFLOPS if re.search(pattern, normal)),
                None)


def mfu(flops_per_step: float, seconds_per_step: float, peak_tflops: float) -> float:
    """The share (0..1) of `peak_tflops` that `flops_per_step` in `seconds_per_step` is."""
    if seconds_per_step <= 0 or peak_tflops <= 0:
        raise ValueError(f"seconds_per_step ({seconds_per_step}) and peak_tflops "
                         f"({peak_tflops}) must be above 0")
    return flops_per_step / seconds_per_step / (peak_tflops * 1e12)


def latent_shape(vae_config: Mapping, frames: int, height: int, width: int
                 ) -> tuple[int, int, int]:
    """Latent (frames, height, width) of a Wan VAE for a video of that size: 4x in time
    (frames 4k + 1 -> k + 1), 8x in space for Wan 2.1 (16x for Wan 2.2's VAE)."""
    temporal = vae_config.get("scale_factor_temporal") or 2 ** sum(
        vae_config.get("temperal_downsample", (False, True, True)))
    spatial = vae_config.get("scale_factor_spatial") or 2 ** (
        len(vae_config.get("dim_mult", (1, 2, 4, 4))) - 1)
    return (frames - 1) // temporal + 1, height // spatial, width // spatial


def wan_forward_flops(config: Mapping, latent: tuple[int, int, int], *,
                      text_tokens: int = WAN_TEXT_TOKENS, image_tokens: int = WAN_IMAGE_TOKENS,
                      per_token_timesteps: bool = False) -> int:
    """Matmul FLOPs of one forward of a `WanTransformer3DModel` with this `config` on one
    latent video of shape `latent` (frames, height, width), batch 1.

    A multiply-add is 2 FLOPs, so a (m x k) @ (k x n) product is 2mkn. With D = heads x
    head_dim, L = video tokens = (F/pt)(H/ph)(W/pw), T = text tokens, N = num_layers:

    - patch embedding (a strided Conv3d, i.e. a matmul): 2 L (C_in pt ph pw) D
    - condition embedder: timestep MLP 2 (freq_dim D + D D), its 6-way projection 2 D 6D
      (per token, i.e. times L, for Wan 2.2 TI2V's per-token timesteps), and the text
      projection 2 T (text_dim D + D D)
    - per block, N times:
      - self-attention: q, k, v, out projections 4 x 2 L D^2; scores QK^T and the weighted
        values AV, 2 L^2 d each per head, so 4 L^2 D over all heads
      - cross-attention to the text: q and out on the video 2 x 2 L D^2, k and v on the text
        2 x 2 T D^2, scores and values 4 L T D
      - (image-to-video only) k and v on I image tokens 2 x 2 I D^2, scores and values 4 L I D
      - feed-forward D -> ffn_dim -> D: 2 x 2 L D ffn_dim
    - (image-to-video only) the image embedder's two linears 2 I (image_dim^2 + image_dim D)
    - output head: 2 L D (C_out pt ph pw)

    Norms, modulation, rotary embeddings, activations and softmax are elementwise, a few
    FLOPs per element against the thousands per token of each matmul, and are not counted,
    as is customary for MFU. Classifier-free guidance runs this forward twice per step
    (`step_flops`).
    """
    pt, ph, pw = config.get("patch_size", (1, 2, 2))
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    dim, ffn, layers = heads * head_dim, config["ffn_dim"], config["num_layers"]
    c_in = config.get("in_channels", 16)
    c_out = config.get("out_channels") or c_in
    frames, height, width = latent
    L = (frames // pt) * (height // ph) * (width // pw)  # the docstring's names
    T = text_tokens
    patch = pt * ph * pw

    total = 2 * L * c_in * patch * dim  # patch embedding
    timesteps = L if per_token_timesteps else 1
    total += timesteps * (2 * (config.get("freq_dim", 256) * dim + dim * dim) + 2 * dim * 6 * dim)
    total += 2 * T * (config.get("text_dim", 4096) * dim + dim * dim)

    block = 8 * L * dim * dim + 4 * L * L * dim  # self-attention
    block += 4 * L * dim * dim + 4 * T * dim * dim + 4 * L * T * dim  # cross-attention (text)
    block += 4 * L * dim * ffn  # feed-forward
    image_dim = config.get("image_dim")
    if config.get("added_kv_proj_dim") is not None and image_dim:
        image = image_tokens
        block += 4 * image * config["added_kv_proj_dim"] * dim + 4 * L * image * dim
        total += 2 * image * (image_dim * image_dim + image_dim * dim)
    total += layers * block
    total += 2 * L * dim * c_out * patch  # output head
    return total


def step_flops(forward_flops: int, guidance: float) -> int:
    """FLOPs of one denoising step: classifier-free guidance (guidance > 1) runs the
    transformer twice, once with the prompt and once with the negative prompt."""
    return forward_flops * (2 if guidance > 1.0 else 1)


def pipeline_step_flops(model_dir: str | Path, *, width: int, height: int, frames: int,
                        guidance: float) -> int | None:
    """FLOPs of one denoising step of the diffusers pipeline saved in `model_dir` at this
    size, from its transformer's and VAE's config.json; None for a non-Wan pipeline."""
    folder = Path(model_dir)
    index = _read_json(folder / "model_index.json")
    if not str(index.get("_class_name", "")).startswith("Wan"):
        return None
    transformer = _read_json(folder / "transformer" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    image_tokens = WAN_IMAGE_TOKENS
    encoder = folder / "image_encoder" / "config.json"
    if encoder.is_file():  # CLIP vision: (image_size / patch_size)^2 patches + a class token
        vision = _read_json(encoder)
        image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    forward = wan_forward_flops(transformer, latent_shape(vae, frames, height, width),
                                image_tokens=image_tokens,
                                per_token_timesteps=bool(index.get("expand_timesteps")))
    return step_flops(forward, guidance)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))

