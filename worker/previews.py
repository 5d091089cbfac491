"""Live previews: a rough picture of a clip while the model is still making it.

Every few denoising steps the current latents become a small strip of frames (the clip's
start, middle and end), cheap enough that the render does not notice:

- a tiny decoder, when the model folder holds one (`preview_decoder/`: a diffusers
  `AutoencoderTiny` that decodes what the model's VAE decodes), decodes those frames;
- else a linear latent-to-RGB projection: each latent pixel's channels times a 3 x C matrix.
  The matrix is fitted once per loaded pipeline from the model's own VAE (colour images
  encoded, least squares against their pixels), so it fits any VAE (the real one, a
  fine-tune, the tiny random one in the tests) with no table of numbers per model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

PREVIEW_DECODER = "preview_decoder"  # a folder inside the model's
FRAME_HEIGHT = 216  # pixels, each frame of the strip
STRIP_FRAMES = 3
GAP = 4  # pixels between the strip's frames
FIT_IMAGES = 16  # colour images encoded to fit the projection (1,024 latent pixels)
FIT_GRID = 8  # latent pixels per side of each fitting image
RIDGE = 1e-3  # keeps the least squares stable when channels are nearly redundant
_ATTRIBUTE = "_lessonreel_preview"  # a pipeline's previewer, made on first use


class LatentPreview:
    """Turns a pipeline's current latents into a small RGB strip."""

    def __init__(self, pipeline, family: str, to_rgb: Callable[[torch.Tensor], torch.Tensor],
                 how: str) -> None:
        self.pipeline = pipeline
        self.family = family
        self._to_rgb = to_rgb  # (n, C, h, w) latents as the denoiser sees them -> (n, 3, H, W)
        self.how = how  # "tiny decoder" | "projection", for the log

    @classmethod
    def for_pipeline(cls, pipeline, family: str, model_dir: str) -> LatentPreview:
        """The pipeline's previewer, made (and the projection fitted) on first use."""
        made = getattr(pipeline, _ATTRIBUTE, None)
        if made is None:
            made = cls._make(pipeline, family, Path(model_dir) / PREVIEW_DECODER)
            setattr(pipeline, _ATTRIBUTE, made)
            log.info("live previews by %s", made.how)
        return made

    @classmethod
    def _make(cls, pipeline, family: str, folder: Path) -> LatentPreview:
        channels = _latent_channels(pipeline.vae, family)
        to_raw = _to_raw(pipeline.vae, family)
        if (folder / "config.json").is_file():
            decoder = _tiny_decoder(folder, channels, pipeline.vae)
            if decoder is not None:
                return cls(pipeline, family, lambda latents: decoder(to_raw(latents.float())),
                           "tiny decoder")
        weight, bias = fit_projection(pipeline, family)

        def project(latents: torch.Tensor) -> torch.Tensor:
            raw = to_raw(latents.float())
            rgb = torch.einsum("rc,nchw->nrhw", weight.to(raw.device), raw)
            return rgb + bias.to(raw.device)[None, :, None, None]

        return cls(pipeline, family, project, "projection")

    def picture(self, latents: torch.Tensor, *, frames: int, width: int, height: int,
                skip_first: bool = False) -> Image.Image:
        """The strip for `latents` of a clip of `frames` frames at width x height.
        `skip_first`: the first latent frame is still noise (Wan2.2's image-to-video puts the
        teacher's picture there only after the last step)."""
        with torch.no_grad():
            grid = self._grid(latents, frames, width, height)  # (C, T, h, w)
            if skip_first and grid.shape[1] > 1:
                grid = grid[:, 1:]
            count = grid.shape[1]
            picks = sorted({round(i * (count - 1) / max(STRIP_FRAMES - 1, 1))
                            for i in range(STRIP_FRAMES)})
            rgb = self._to_rgb(grid[:, picks].permute(1, 0, 2, 3)).float().clamp(0.0, 1.0)
            frame_width = max(1, round(FRAME_HEIGHT * width / height))
            rgb = F.interpolate(rgb.cpu(), size=(FRAME_HEIGHT, frame_width), mode="bilinear",
                                align_corners=False)
        pixels = (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        strip = np.full((FRAME_HEIGHT, len(pixels) * (frame_width + GAP) - GAP, 3), 24,
                        dtype=np.uint8)
        for i, frame in enumerate(pixels):
            strip[:, i * (frame_width + GAP):i * (frame_width + GAP) + frame_width] = frame
        return Image.fromarray(strip)

    def _grid(self, latents: torch.Tensor, frames: int, width: int,
              height: int) -> torch.Tensor:
        """The first video's latents as (channels, frames, height, width)."""
        if latents.ndim == 5:  # Wan: (batch, C, T, h, w)
            return latents[0]
        # LTX packs its latents into a token sequence (batch, tokens, C * patch volume).
        pipe = self.pipeline
        _, count, rows, columns = latent_shape(pipe, self.family, frames, width, height)
        unpacked = pipe._unpack_latents(latents[:1], count, rows, columns,
                                        pipe.transformer_spatial_patch_size,
                                        pipe.transformer_temporal_patch_size)
        return unpacked[0]


def latent_shape(pipeline, family: str, frames: int, width: int,
                 height: int) -> tuple[int, int, int, int]:
    """(channels, frames, height, width) of the latents of a clip, unpacked."""
    if family == "LTX":
        temporal = pipeline.vae_temporal_compression_ratio
    else:
        temporal = pipeline.vae_scale_factor_temporal
    spatial = _spatial_ratio(pipeline, family)
    return (_latent_channels(pipeline.vae, family), (frames - 1) // temporal + 1,
            height // spatial, width // spatial)


def fit_projection(pipeline, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A (3, C) weight and (3,) bias taking the VAE's raw latents to RGB in [0, 1]: smooth
    colour images are encoded, and each latent pixel is matched with the mean colour of the
    pixels it stands for, by ridge least squares."""
    vae = pipeline.vae
    ratio = _spatial_ratio(pipeline, family)
    images = _colour_images(FIT_IMAGES, FIT_GRID * ratio)  # (N, 3, S, S) in [0, 1]
    device, dtype = _execution(vae)
    latents = []
    with torch.no_grad():
        for batch in images.split(8):
            video = (batch * 2 - 1)[:, :, None].to(device, dtype)
            latents.append(vae.encode(video).latent_dist.mode()[:, :, 0].float().cpu())
    raw = torch.cat(latents)  # (N, C, h, w)
    target = F.avg_pool2d(images, ratio)  # (N, 3, h, w)
    x = raw.permute(0, 2, 3, 1).reshape(-1, raw.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    gram = x.T @ x + RIDGE * len(x) * torch.eye(x.shape[1])
    solution = torch.linalg.solve(gram, x.T @ y)  # (C + 1, 3)
    return solution[:-1].T.contiguous(), solution[-1].contiguous()


def _execution(module) -> tuple[torch.device, torch.dtype]:
    """Where a module's inputs must be, and their dtype. With CPU offload the weights wait on
    the CPU and a hook moves them to the GPU for each call: the inputs must be on the GPU."""
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(module), next(module.parameters()).dtype


def _colour_images(count: int, side: int) -> torch.Tensor:
    """Plain colours and smooth colour fields: what a frame's regions look like, seeded."""
    generator = torch.Generator().manual_seed(0)
    plain = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1],
                          [1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.5]], dtype=torch.float32)
    plain = plain[:, :, None, None].expand(-1, -1, side, side)
    fields = torch.rand(max(count - len(plain), 0), 3, 3, 3, generator=generator)
    fields = F.interpolate(fields, size=(side, side), mode="bilinear", align_corners=True)
    return torch.cat([plain, fields])[:count].contiguous()


def _spatial_ratio(pipeline, family: str) -> int:
    if family == "LTX":
        return int(pipeline.vae_spatial_compression_ratio)
    return int(pipeline.vae_scale_factor_spatial)


def _latent_channels(vae, family: str) -> int:
    return int(vae.config.latent_channels if family == "LTX" else vae.config.z_dim)


def _to_raw(vae, family: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Undo the pipeline's normalisation of the VAE's latents, as it does before decoding."""
    if family == "LTX":
        mean = vae.latents_mean.float().cpu()
        std = vae.latents_std.float().cpu() / vae.config.scaling_factor
    else:
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32)

    def to_raw(latents: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        return latents * std.to(latents.device).view(shape) + mean.to(latents.device).view(shape)

    return to_raw


def _tiny_decoder(folder: Path, channels: int, vae) -> Callable | None:
    """A diffusers AutoencoderTiny from `folder`, when it decodes this model's latents: it
    takes what the pipeline gives the model's VAE to decode (the raw latents), on the device
    the VAE runs on (the GPU, also under CPU offload: it is small)."""
    from diffusers import AutoencoderTiny

    device, dtype = _execution(vae)
    try:
        decoder = AutoencoderTiny.from_pretrained(folder, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        log.warning("the preview decoder in %s cannot be loaded (%s); using the projection",
                    folder, exc)
        return None
    if decoder.config.latent_channels != channels:
        log.warning("the preview decoder in %s takes %d latent channels, the model makes %d; "
                    "using the projection", folder, decoder.config.latent_channels, channels)
        return None
    decoder = decoder.to(device).eval()

    def decode(raw: torch.Tensor) -> torch.Tensor:
        return (decoder.decode(raw.to(device, dtype)).sample.float() + 1) / 2  # from [-1, 1]

    return decode
