"""FLOPs of a Wan denoising step, GPU peaks, MFU, and `lessonreel bench gpu`.

The formula in worker/flops.py is checked against torch's own FLOP counter
(`torch.utils.flop_counter.FlopCounterMode`) on real forward passes of diffusers'
`WanTransformer3DModel`. The counter, like the formula, counts matmul-like operations only
(linear layers, convolutions, batched matmuls, attention): norms, modulation, rotary
embeddings and activations are elementwise and neither counts them, so the two agree exactly
today; the 0.5 % tolerance only leaves room for a future diffusers adding a small matmul the
formula would then miss (the test says so by failing beyond it).

The counter has no formula for the CPU's fused attention kernel (it would count attention as
0 FLOPs), so the forwards run with PyTorch's math attention, which is plain batched matmuls.
"""

import json

import pytest
import torch
from diffusers import DiffusionPipeline, WanTransformer3DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from engine.settings import load_settings
from tests.test_cli import run_cli
from worker.bench import RANDOM_ARCHITECTURES, bench_gpu
from worker.flops import (
    bf16_peak_tflops,
    latent_shape,
    mfu,
    pipeline_step_flops,
    step_flops,
    wan_forward_flops,
)
from worker.synthetic import build_tiny_wan

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=16,
            out_channels=16, text_dim=32, freq_dim=32, ffn_dim=96, num_layers=2,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def counted_flops(model, *inputs, **kwargs) -> int:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as c:
        model(*inputs, **kwargs)
    return c.get_total_flops()


@pytest.mark.parametrize("kind", ["text-to-video", "image-to-video", "per-token timesteps"])
def test_formula_agrees_with_torch_flop_counter_on_a_tiny_wan_forward(kind):
    """Latent 3 x 16 x 24: 288 video tokens, so the L^2 attention term is a large share."""
    config = dict(TINY, in_channels=36, image_dim=16, added_kv_proj_dim=48) \
        if kind == "image-to-video" else TINY
    torch.manual_seed(0)
    model = WanTransformer3DModel(**config).eval()
    latent = (3, 16, 24)
    tokens = 3 * 8 * 12
    video = torch.randn(1, config["in_channels"], *latent)
    text = torch.randn(1, 512, 32)
    timestep = torch.full((1, tokens), 500) if kind == "per-token timesteps" \
        else torch.tensor([500])
    extra = {"encoder_hidden_states_image": torch.randn(1, 17, 16)} \
        if kind == "image-to-video" else {}

    counted = counted_flops(model, video, timestep, text, **extra)
    formula = wan_forward_flops(dict(model.config), latent, image_tokens=17,
                                per_token_timesteps=kind == "per-token timesteps")
    assert formula == pytest.approx(counted, rel=0.005)


def test_formula_agrees_with_the_counter_on_the_full_size_wan21_13b_at_832x480x81():
    """The real architecture, built on the meta device: shapes without memory or compute,
    so torch counts a full-size forward in under a second."""
    config = RANDOM_ARCHITECTURES["wan2.1-t2v-1.3b"]
    latent = latent_shape({"scale_factor_temporal": 4, "scale_factor_spatial": 8}, 81, 480, 832)
    assert latent == (21, 60, 104)  # 32,760 video tokens after the 1x2x2 patches
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
        inputs = (torch.randn(1, 16, *latent), torch.tensor([500]), torch.randn(1, 512, 4096))
    counted = counted_flops(model, *inputs)
    forward = wan_forward_flops(config, latent)
    assert forward == pytest.approx(counted, rel=0.005)
    # 283.0 TFLOP a forward; with guidance (two forwards) 566 TFLOP a step; 50 steps are
    # 28.3 PFLOP, the "arithmetic floor" of FINDINGS.md: 28.6 s at an H100's 989 TFLOPS.
    assert forward == pytest.approx(283.0e12, rel=0.002)
    assert step_flops(forward, guidance=5.0) == 2 * forward
    assert step_flops(forward, guidance=1.0) == forward
    assert 50 * step_flops(forward, 5.0) / 989e12 == pytest.approx(28.6, abs=0.1)


def test_latent_shape_comes_from_the_vae_config_old_and_new():
    assert latent_shape({"scale_factor_temporal": 4, "scale_factor_spatial": 16},
                        121, 704, 1280) == (31, 44, 80)  # Wan 2.2's 16x VAE
    # A config written before diffusers recorded the factors: count the down-samplings.
    assert latent_shape({"temperal_downsample": [False, True, True],
                         "dim_mult": [1, 2, 4, 4]}, 81, 480, 832) == (21, 60, 104)


def test_step_flops_of_a_saved_pipeline_match_what_its_transformer_does_in_a_step(tmp_path):
    """From the folder's configs (VAE factors, transformer sizes, guidance doubling) against
    the counted work of the transformer in a real two-step pipeline call."""
    folder = build_tiny_wan(tmp_path / "model")
    pipeline = DiffusionPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as c:
        pipeline(prompt="a leaf", width=48, height=32, num_frames=9, num_inference_steps=2,
                 guidance_scale=5.0, output_type="latent")
    transformer_per_step = c.get_flop_counts()["WanTransformer3DModel"]
    expected = pipeline_step_flops(folder, width=48, height=32, frames=9, guidance=5.0)
    assert 2 * expected == pytest.approx(sum(transformer_per_step.values()), rel=0.005)


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA GeForce RTX 4090", 165.2),  # bf16 accumulates in FP32: half the FP16-acc rate
    ("NVIDIA GeForce RTX 3090", 71.0),
    ("NVIDIA GeForce RTX 4090 D", None),  # a cut-down 4090: not the 4090's figure
    ("Tesla T4", None),
])
def test_bf16_peak_is_found_by_the_names_nvml_reports(name, peak):
    assert bf16_peak_tflops(name) == peak


def test_mfu_is_flops_per_second_over_the_peak():
    # 566 TFLOP a step in 1.43 s on a 989 TFLOPS GPU: 40 %.
    assert mfu(566e12, 1.43, 989.0) == pytest.approx(0.4002, abs=1e-4)
    assert mfu(1e12, 1.0, 1.0) == 1.0
    with pytest.raises(ValueError, match="seconds_per_step"):
        mfu(1e12, 0.0, 989.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_bench_gpu_without_a_gpu_refuses_in_one_sentence(tmp_path):
    result = run_cli("bench", "gpu", "--random-weights", data_dir=tmp_path / "d")
    assert result.returncode == 2
    assert result.stderr.strip() == ("lessonreel: bench gpu needs an NVIDIA GPU; none was "
                                     "found (on a CPU the real-size models would run for "
                                     "hours).")
    assert not list((tmp_path / "d").rglob("*.safetensors"))  # nothing was built first


def test_bench_gpu_with_allow_cpu_measures_a_tiny_wan_end_to_end(tmp_path):
    model = build_tiny_wan(tmp_path / "model")
    report_path = tmp_path / "gpu.json"
    result = run_cli("bench", "gpu", "--model", str(model), "--allow-cpu", "--steps", "3",
                     "--repeat", "2", "--json", str(report_path), data_dir=tmp_path / "d",
                     env_extra={"LESSONREEL_DIFFUSION__MAX_SIDE": "64",
                                "LESSONREEL_DIFFUSION__MAX_FRAMES": "9"})
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    gpu = report["gpu"]
    assert gpu["device"] == "cpu" and gpu["gpu"] is None and gpu["bf16_peak_tflops"] is None
    assert [row["quality"] for row in gpu["runs"]] == ["diffusers default", "draft",
                                                       "standard", "high"]
    expected = pipeline_step_flops(model, width=64, height=32, frames=9, guidance=5.0)
    for row in gpu["runs"]:
        assert row["preset"] == "wan2.1-t2v-1.3b" and row["steps"] == 3
        assert (row["size"], row["frames"]) == ("64x32", 9)
        assert len(row["scene_seconds"]) == 2 and row["seconds_per_scene"] > 0
        assert 0 < row["seconds_per_step"] < row["seconds_per_scene"]
        assert row["flops_per_step"] == expected and "tflop_per_step" in row
        assert row["mfu"] is None  # no peak for a CPU
        assert row["speedup_vs_diffusers_default"] > 0
    assert gpu["runs"][0]["speedup_vs_diffusers_default"] == 1.0
    assert gpu["runs"][1]["cache"] == "first_block"  # draft ran with its own options
    [preview] = gpu["live_previews"]  # what a live preview costs at this size
    assert (preview["preset"], preview["how"]) == ("wan2.1-t2v-1.3b", "projection")
    assert preview["setup_seconds"] > 0 and 0 < preview["seconds_per_preview"] < 5
    for column in ("s/scene", "s/step", "TFLOP/step", "MFU %", "speed-up"):
        assert column in result.stdout
    assert "Live preview, wan2.1-t2v-1.3b (projection):" in result.stdout


def test_random_weights_build_the_presets_architecture_and_run_it(tmp_path, monkeypatch):
    """--random-weights: the recorded transformer config (here cut to one narrow layer, or a
    CPU would take minutes), Wan 2.1's full VAE, loaded and run through worker/pipelines."""
    small = dict(RANDOM_ARCHITECTURES["wan2.1-t2v-1.3b"], num_layers=1, num_attention_heads=2,
                 ffn_dim=64)
    monkeypatch.setitem(RANDOM_ARCHITECTURES, "wan2.1-t2v-1.3b", small)
    for key, value in {"DATA_DIR": str(tmp_path / "d"), "DIFFUSION__MAX_SIDE": "64",
                       "DIFFUSION__MAX_FRAMES": "5"}.items():
        monkeypatch.setenv(f"LESSONREEL_{key}", value)
    report = bench_gpu(load_settings(), random_weights=True, qualities=("standard",),
                       steps=2, scenes=1, allow_cpu=True)
    assert [row["quality"] for row in report["runs"]] == ["diffusers default", "standard"]
    assert {row["model"] for row in report["runs"]} == {"random weights"}
    latent = latent_shape({}, 5, 32, 64)  # the default VAE's factors: 4 in time, 8 in space
    assert report["runs"][1]["flops_per_step"] == step_flops(
        wan_forward_flops(small, latent), guidance=5.0)
    # The presets with no recorded architecture are named, with the reason.
    assert {s["preset"] for s in report["skipped"]} == {"wan2.2-ti2v-5b", "ltx-video-distilled"}
