"""The diffusion renderer with tiny Wan and LTX pipelines, through the production loading path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from engine.errors import SettingsError
from engine.events import EventLog
from engine.jobs import JobCancelled, RenderSpec, enqueue_render, new_job_id, request_cancel
from engine.presets import DiffusionPlan, generation_size, load_presets, plan_for
from engine.settings import load_settings
from tests.conftest import make_storyboard
from worker import pipelines
from worker.encode import probe
from worker.pipelines import LADDER, walk_memory_ladder
from worker.render import render_to_folder
from worker.runner import run_worker
from worker.synthetic import build_tiny_ltx, build_tiny_wan


def _upload(settings, name="leaf.png"):
    settings.uploads_path.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 64), (200, 60, 40)).save(settings.uploads_path / name)
    return name


# -- presets and plans ---------------------------------------------------------------------

def test_presets_cover_wan_t2v_wan_ti2v_and_ltx():
    presets = load_presets()
    assert presets["wan2.1-t2v-1.3b"].text_to_video == "WanPipeline"
    assert presets["wan2.2-ti2v-5b"].image_to_video == "WanImageToVideoPipeline"
    assert presets["ltx-video-distilled"].image_to_video == "LTXImageToVideoPipeline"
    assert (presets["wan2.1-t2v-1.3b"].width, presets["wan2.1-t2v-1.3b"].height) == (832, 480)


def test_without_weights_auto_means_the_animatic_and_diffusion_is_a_clear_error(monkeypatch):
    assert plan_for(load_settings(), "16:9") is None
    monkeypatch.setenv("LESSONREEL_DIFFUSION__RENDERER", "diffusion")
    with pytest.raises(SettingsError, match=r"lessonreel models pull wan2\.1-t2v-1\.3b"):
        plan_for(load_settings(), "16:9")


def test_a_folder_that_is_not_a_supported_pipeline_is_refused(tmp_path, use_model):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(SettingsError, match="holds a StableDiffusionPipeline pipeline"):
        plan_for(use_model(tmp_path), "16:9")


@pytest.mark.parametrize(("aspect", "family", "size"), [
    ("16:9", "Wan", (832, 480)), ("9:16", "Wan", (480, 832)), ("1:1", "Wan", (624, 624)),
    ("16:9", "LTX", (768, 448)),
])
def test_generation_size_follows_aspect_and_model_rules(aspect, family, size):
    width, height = (768, 448) if family == "LTX" else (832, 480)
    assert generation_size(width, height, aspect, family) == size


def test_frames_are_in_the_models_form_and_capped():
    plan = DiffusionPlan(preset="x", model_dir="/m", family="Wan", width=64, height=32,
                         max_frames=81, fps=16, steps=2, guidance=5.0, dtype="bfloat16",
                         cpu_offload=False, vae_tiling=False, text_to_video="WanPipeline",
                         image_to_video="")
    assert plan.frames_for(2) == 33 and (plan.frames_for(2) - 1) % 4 == 0
    assert plan.frames_for(10) == 81


# -- rendering -----------------------------------------------------------------------------

def test_wan_text_to_video_renders_through_the_job_with_step_progress(
    tmp_path, use_model, redis_connection
):
    settings = use_model(build_tiny_wan(tmp_path / "wan"))
    events = EventLog(redis_connection)
    after = events.last_id()
    job_id = new_job_id()
    enqueue_render(redis_connection, settings, RenderSpec(
        job_id=job_id, conversation="t", version=1, storyboard=make_storyboard((2, 3)),
        output=job_id))
    run_worker(settings, redis_connection, burst=True, logging_level="WARNING")

    job = Job.fetch(job_id, connection=redis_connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    info = probe(Path(job.return_value()["video"]))
    assert (info.width, info.height) == (64, 32)
    assert info.frames == 6 * 24
    steps = [(e.scene, e.step, e.steps) for _, e in events.read(after) if e.step]
    assert (1, 2, 2) in steps and (2, 2, 2) in steps  # "scene 2/2, step 2/2"


@pytest.mark.parametrize("builder", [build_tiny_wan, build_tiny_ltx])
def test_image_to_video_renders_image_scenes_and_leaves_text_scenes_to_the_animatic(
    tmp_path, use_model, builder
):
    settings = use_model(builder(tmp_path / "i2v", image_to_video=True))
    name = _upload(settings)
    storyboard = make_storyboard((2, 2), images=(name, None))
    result = render_to_folder(storyboard, tmp_path / "out", settings)
    assert result.generated_scenes == [0]  # scene 2 has no image: the animatic drew it
    assert probe(result.files["video"]).frames == 5 * 24


def test_ltx_text_to_video_renders(tmp_path, use_model):
    settings = use_model(build_tiny_ltx(tmp_path / "ltx"))
    result = render_to_folder(make_storyboard((2,)), tmp_path / "out", settings)
    assert result.generated_scenes == [0]
    assert (probe(result.files["video"]).width, probe(result.files["video"]).height) == (64, 32)


def test_one_worker_runs_three_jobs_and_loads_the_pipeline_once(
    tmp_path, use_model, redis_connection
):
    folder = build_tiny_wan(tmp_path / "resident")
    settings = use_model(folder, LESSONREEL_DIFFUSION__CACHE_CLIPS="false")
    ids = []
    for number in range(3):
        job_id = new_job_id()
        ids.append(job_id)
        board = make_storyboard((2,), narrations=(f"Job {number}.",))
        enqueue_render(redis_connection, settings, RenderSpec(
            job_id=job_id, conversation=f"t{number}", version=1, storyboard=board,
            output=job_id))
    run_worker(settings, redis_connection, burst=True, logging_level="WARNING")

    statuses = [Job.fetch(i, connection=redis_connection, serializer=JSONSerializer)
                .get_status() for i in ids]
    assert statuses == [JobStatus.FINISHED] * 3
    assert pipelines.load_counts[(str(folder.resolve()), "WanPipeline")] == 1


def test_editing_one_scene_re_renders_exactly_that_scene(tmp_path, use_model):
    settings = use_model(build_tiny_wan(tmp_path / "cache"))
    board = make_storyboard((2, 2, 2))
    first = render_to_folder(board, tmp_path / "v1", settings)
    assert first.generated_scenes == [0, 1, 2]

    scenes = [scene.model_dump() for scene in board.scenes]
    scenes[1]["visual"] = "a different picture"
    second = render_to_folder(board.revise(scenes=scenes), tmp_path / "v2", settings)
    assert second.generated_scenes == [1]

    scenes[2]["narration"] = "New words: captions change, pixels do not."
    third = render_to_folder(board.revise(scenes=scenes), tmp_path / "v3", settings)
    assert third.generated_scenes == []


def test_after_an_edit_the_unchanged_scenes_are_read_while_the_changed_one_renders(
        tmp_path, use_model, monkeypatch):
    """The re-render's clips come from the cache beside the model's work on the edited scene,
    two scenes ahead at most, and the video is the same as read one after another."""
    import threading

    from worker.clips import ClipCache

    settings = use_model(build_tiny_wan(tmp_path / "wan"), LESSONREEL_DIFFUSION__STEPS="4")
    board = make_storyboard((2, 2, 2, 2))
    render_to_folder(board, tmp_path / "v1", settings)
    scenes = [scene.model_dump() for scene in board.scenes]
    scenes[0]["visual"] = "a different first picture"
    edited = board.revise(scenes=scenes)

    timeline: list[tuple[str, str]] = []  # (what, thread) in the order it happened
    read = ClipCache.get

    def get(cache, key):
        timeline.append(("read", threading.current_thread().name))
        return read(cache, key)

    monkeypatch.setattr(ClipCache, "get", get)

    def on_step(scene: int, step: int, steps: int) -> None:
        if step == steps:
            timeline.append((f"scene {scene + 1} made", threading.current_thread().name))

    result = render_to_folder(edited, tmp_path / "v2", settings, on_step=on_step)
    assert result.generated_scenes == [0]
    made = timeline.index(("scene 1 made", threading.current_thread().name))
    # Before scene 1 was made: its own lookup (a miss) and scenes 2 and 3, read alongside.
    ahead = [thread for what, thread in timeline[:made] if thread.startswith("clip-read")]
    assert len(ahead) == 2, timeline
    # And what was read ahead is used: the main thread only looked scene 1 up.
    assert [t for what, t in timeline if what == "read"].count(
        threading.current_thread().name) == 1, timeline
    # All from the cache now: the same pixels as a render that reads each clip in its turn.
    assert render_to_folder(edited, tmp_path / "v3", settings).generated_scenes == []
    monkeypatch.setattr("worker.diffusion.READ_AHEAD", 0)
    assert render_to_folder(edited, tmp_path / "v4", settings).generated_scenes == []
    assert _decoded(tmp_path / "v3" / "video.mp4") == _decoded(tmp_path / "v4" / "video.mp4")


def _decoded(video: Path) -> bytes:
    """Every frame's pixels, as the viewer sees them (the file's own bytes hold its time)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video))
    next(reader)  # the metadata
    return b"".join(bytes(frame) for frame in reader)


def test_a_cancel_stops_at_the_next_step_and_leaves_no_output(
    tmp_path, use_model, redis_connection
):
    settings = use_model(build_tiny_wan(tmp_path / "cancel"), LESSONREEL_DIFFUSION__STEPS="4")
    job_id = "r-cancelme"
    seen = []

    def on_step(scene: int, step: int, steps: int) -> None:
        seen.append(step)
        if step == 1:
            request_cancel(redis_connection, settings, job_id)

    with pytest.raises(JobCancelled):
        render_to_folder(make_storyboard((2,)), tmp_path / "out", settings, on_step=on_step,
                         should_stop=lambda: bool(redis_connection.exists(
                             f"lessonreel:cancel:{job_id}")))
    assert seen == [0, 1], "no step ran after the cancel (0 is the start)"
    assert list((tmp_path / "out").iterdir()) == []


def test_a_queued_job_that_is_cancelled_never_runs(tmp_path, use_model, redis_connection):
    settings = use_model(build_tiny_wan(tmp_path / "queued"))
    job_id = new_job_id()
    enqueue_render(redis_connection, settings, RenderSpec(
        job_id=job_id, conversation="t", version=1, storyboard=make_storyboard((2,)),
        output=job_id))
    request_cancel(redis_connection, settings, job_id)
    assert not run_worker(settings, redis_connection, burst=True, logging_level="WARNING")
    assert not (settings.media_path / job_id).exists()
    final = EventLog(redis_connection).read("0-0")[-1][1]
    assert (final.job_id, final.kind) == (job_id, "cancelled")


def test_out_of_memory_walks_the_ladder_and_the_result_says_so(tmp_path, use_model,
                                                               monkeypatch):
    settings = use_model(build_tiny_wan(tmp_path / "oom"), LESSONREEL_DIFFUSION__DEVICE="cpu")
    plan = plan_for(settings, "16:9")
    pipeline = pipelines.load_pipeline(plan, "WanPipeline", "cpu")
    real_forward = pipeline.transformer.forward
    failures = {"left": 1}

    def forward_with_one_oom(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(pipeline.transformer, "forward", forward_with_one_oom)
    result = render_to_folder(make_storyboard((2,)), tmp_path / "out", settings)
    assert result.notes == ["Scene 1 was rendered with less memory: VAE tiling."]
    assert probe(result.files["video"]).frames == 3 * 24
    assert not pipeline.vae.use_tiling, "the next scene starts at full quality again"

    again = render_to_folder(make_storyboard((2,)), tmp_path / "again", settings)
    assert again.generated_scenes == [0], "a degraded clip is not served from the cache"
    assert again.notes == []


@pytest.mark.parametrize("failures", [0, 1, 2, 3])
def test_the_memory_ladder_adds_one_rung_per_failure(failures):
    calls = []

    def attempt(rungs):
        calls.append(rungs)
        if len(calls) <= failures:
            raise torch.OutOfMemoryError("injected")
        return np.zeros((1, 2, 2, 3), np.uint8)

    _frames, given_up = walk_memory_ladder(attempt)
    assert given_up == LADDER[:failures]
    assert calls == [LADDER[:n] for n in range(failures + 1)]


def test_out_of_memory_on_every_rung_is_raised():
    def attempt(_rungs):
        raise torch.OutOfMemoryError("injected")

    with pytest.raises(torch.OutOfMemoryError):
        walk_memory_ladder(attempt)
