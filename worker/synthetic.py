"""Random-weight diffusers video pipelines (Wan and LTX), built from configs on the fly.

For tests and benchmarks: tests must never download a model, and speed is a matter of
architecture, not of trained weights. Yet the GPU worker's code path (``DiffusionPipeline.
from_pretrained`` on a folder, then text-to-video or image-to-video generation with a
step callback) deserves a real end-to-end run. `build_tiny_wan` and `build_tiny_ltx` write
complete pipeline folders (``model_index.json`` plus one sub-folder per component) with
``save_pretrained``, the same layout as the real checkpoints, so that

    DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)

loads them back as `WanPipeline` / `WanImageToVideoPipeline` / `LTXPipeline` /
`LTXImageToVideoPipeline`. Each folder holds well under a megabyte and generates a few
64x64 frames on a CPU in a fraction of a second. The frames are noise, but deterministic:
the weights are drawn from a seeded torch generator, and a given generation seed gives the
same frames.

The configs follow diffusers' own pipeline tests (``get_dummy_components``), shrunk, while
keeping the constraints that the real models put on callers:

- Wan: frames ``4k + 1``, height and width multiples of 16 (VAE x8, patch 2), UMT5 text
  encoder, a flow-matching UniPC scheduler as in the Wan 2.1 checkpoints. The image-to-video
  form is Wan 2.1's, with a CLIP vision encoder and image processor; as in the real model its
  attention assumes a text context of exactly 512 tokens, the pipeline's default
  ``max_sequence_length`` (with another value it silently mixes up image and text tokens).
  (The pipeline also accepts the Wan 2.2 form, without image encoder; it is not built here.)
- LTX: frames ``8k + 1``, height and width multiples of 32 (VAE x32 in space, x8 in time),
  T5 text encoder, prompts of 128 tokens, LTX's dynamically shifted flow-match scheduler.
  Note that the VAE's ``decoder_*`` arguments must be shrunk too: they do not follow the
  encoder's, and their defaults make a full-size decoder (900 MB).

The text encoders' tokenizer is a byte-level BPE (any text encodes, no sentencepiece, no
download) learned here from a few sentences, with T5's special tokens (``<pad>`` 0, ``</s>``
1 appended to every prompt, ``<unk>`` 2), saved as a plain ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

__all__ = ["build_tiny_ltx", "build_tiny_wan"]

TEXT_DIM = 32  # the text encoder's width, which the transformers' caption inputs must match
VOCAB_SIZE = 300  # 3 special tokens, 256 byte symbols and 41 merges
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1 and 2
WAN_TEXT_LENGTH = 512  # Wan's max_sequence_length; its I2V attention assumes exactly 512
LTX_TEXT_LENGTH = 128  # LTX's max_sequence_length
PORTABLE_CLASS_NAMES = {  # transformers 5 class name -> the name transformers 4 and 5 load
    "TokenizersBackend": "PreTrainedTokenizerFast",
    "CLIPImageProcessorPil": "CLIPImageProcessor",
}

TRAINING_TEXT = (
    "a leaf in sunlight",
    "The sun heats the water in the ocean, and the water turns into vapour.",
    "Plants make their food from sunlight, water and carbon dioxide.",
    "A slow camera pan across a green forest, soft light, educational animation.",
    "low quality, blurry, distorted, watermark, text",
)


def build_tiny_wan(folder: Path, *, image_to_video: bool = False, seed: int = 0,
                   layers: int = 2, heads: int = 2, head_dim: int = 12, ffn: int = 32) -> Path:
    """Write a tiny `WanPipeline` (or Wan 2.1 `WanImageToVideoPipeline`) to `folder`.

    `layers`, `heads`, `head_dim` and `ffn` size the transformer: larger values make a model
    that is still random but not trivial to run, for benchmarks (head_dim: a multiple of 6).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _tokenizer(WAN_TEXT_LENGTH)
        text_encoder = UMT5EncoderModel(UMT5Config(**_t5_sizes(len(tokenizer))))
        vae = AutoencoderKLWan(
            base_dim=4,
            z_dim=16,  # latents_mean / latents_std default to 16 entries
            dim_mult=[1, 1, 1, 1],  # three spatial halvings: x8, as the pipeline assumes
            num_res_blocks=1,
            temperal_downsample=[False, True, True],  # x4 in time: frames 4k + 1
        )
        # The Wan 2.1 checkpoints' scheduler (flow-matching UniPC, shift 3 at 480p).
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        )
        # The rotary embedding splits head_dim in three (t, h, w).
        transformer_sizes = dict(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            out_channels=16,
            text_dim=TEXT_DIM,
            freq_dim=32,
            ffn_dim=ffn,
            num_layers=layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
        if not image_to_video:
            transformer = WanTransformer3DModel(in_channels=16, **transformer_sizes)
            pipeline = WanPipeline(
                tokenizer=tokenizer,
                text_encoder=text_encoder,
                vae=vae,
                scheduler=scheduler,
                transformer=transformer,
            )
        else:
            vision_config = CLIPVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                projection_dim=16,
                num_hidden_layers=2,  # the pipeline reads the penultimate hidden state
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
            )
            image_encoder = CLIPVisionModel(vision_config)
            image_processor = CLIPImageProcessor(
                size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
            )
            # In channels: 16 noise latents + 4 first-frame mask + 16 image-condition latents.
            transformer = WanTransformer3DModel(
                in_channels=36,
                image_dim=vision_config.hidden_size,
                added_kv_proj_dim=heads * head_dim,
                **transformer_sizes,
            )
            pipeline = WanImageToVideoPipeline(
                tokenizer=tokenizer,
                text_encoder=text_encoder,
                vae=vae,
                scheduler=scheduler,
                image_processor=image_processor,
                image_encoder=image_encoder,
                transformer=transformer,
            )
    return _save(pipeline, folder)


def build_tiny_ltx(folder: Path, *, image_to_video: bool = False, seed: int = 0) -> Path:
    """Write a tiny `LTXPipeline` (or `LTXImageToVideoPipeline`) to `folder`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _tokenizer(LTX_TEXT_LENGTH)
        text_encoder = T5EncoderModel(T5Config(**_t5_sizes(len(tokenizer))))
        # Compression as in LTX-Video: patch 4 times three halvings (x32 in space), three
        # halvings in time (x8: frames 8k + 1). The decoder_* arguments do not follow the
        # encoder's: left out, the decoder would be full size.
        blocks = (8, 8, 8, 8)
        scaling = (True, True, True, False)
        vae = AutoencoderKLLTXVideo(
            latent_channels=8,
            block_out_channels=blocks,
            decoder_block_out_channels=blocks,
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=scaling,
            decoder_spatio_temporal_scaling=scaling,
            decoder_inject_noise=(False, False, False, False, False),
            upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1),
            timestep_conditioning=False,
            patch_size=4,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
        )
        # LTX-Video's scheduler: flow matching, shifted by the latent sequence length.
        scheduler = FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True,
            base_shift=0.95,
            max_shift=2.05,
            base_image_seq_len=1024,
            max_image_seq_len=4096,
            shift_terminal=0.1,
        )
        transformer = LTXVideoTransformer3DModel(
            in_channels=8,
            out_channels=8,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=4,
            attention_head_dim=8,
            cross_attention_dim=32,  # = heads * head_dim
            num_layers=1,
            caption_channels=TEXT_DIM,
        )
        pipeline_class = LTXImageToVideoPipeline if image_to_video else LTXPipeline
        pipeline = pipeline_class(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    return _save(pipeline, folder)


def _t5_sizes(vocab_size: int) -> dict:
    """The config of a 2-layer, 32-wide T5 v1.1 style encoder (UMT5 takes the same keys)."""
    return dict(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with T5's special tokens, learned from `TRAINING_TEXT`."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    # Like T5, append </s> to every sequence.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="right",
    )


def _save(pipeline, folder: Path) -> Path:
    """Save `pipeline` to `folder`, recording class names that every transformers can load.

    transformers 5 names the class of a `PreTrainedTokenizerFast` `TokenizersBackend`, and
    without torchvision a `CLIPImageProcessor` is a `CLIPImageProcessorPil`; `save_pretrained`
    writes those names into model_index.json (and the tokenizer's into its config), where
    transformers 4 cannot find them. The real checkpoints record the portable names.
    """
    folder = Path(folder)
    pipeline.save_pretrained(folder)
    model_index_path = folder / "model_index.json"
    model_index = json.loads(model_index_path.read_text())
    for component, value in model_index.items():
        if isinstance(value, list) and value[-1] in PORTABLE_CLASS_NAMES:
            model_index[component] = [value[0], PORTABLE_CLASS_NAMES[value[-1]]]
    _write_json(model_index_path, model_index)
    tokenizer_config_path = folder / "tokenizer" / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    _write_json(tokenizer_config_path, tokenizer_config)
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
