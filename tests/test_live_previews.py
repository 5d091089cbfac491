"""Live previews: a rough picture of each model scene while it renders, in the thread.

The worker side runs tiny Wan and LTX pipelines through the production loading code; the
chat side runs the real Slack and Telegram SDKs against the local stand-ins."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot.console import ConsoleNotifier
from bot.core import Place, Route
from bot.relay import Delivery, EventRelay
from engine.events import EventLog, RenderEvent
from engine.jobs import RenderSpec, enqueue_render, new_job_id
from engine.presets import FRAME_STEP, plan_for
from tests.conftest import jpeg, make_storyboard, with_settings
from worker.pipelines import load_pipeline
from worker.previews import FRAME_HEIGHT, GAP, PREVIEW_DECODER, LatentPreview
from worker.render import render_to_folder
from worker.runner import run_worker
from worker.synthetic import build_tiny_ltx, build_tiny_wan

# Six steps, a preview every second one (never at the last).
PREVIEWS = {"LESSONREEL_DIFFUSION__STEPS": "6",
            "LESSONREEL_DIFFUSION__LIVE_PREVIEW_EVERY_STEPS": "2"}


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "wan")


@pytest.fixture
def use_model(use_model):
    """The shared fixture, with previews every 2 of 6 steps."""
    return lambda folder, **extra: use_model(folder, **{**PREVIEWS, **extra})


class LinearVAE(torch.nn.Module):
    """A VAE whose encoder is known: each latent pixel mixes its 8 x 8 patch's mean colour
    into 16 channels. (A random tiny Wan VAE keeps colour only nonlinearly; a real one keeps
    it nearly linearly, which is why a projection works.) The projection fitted from it must
    give the colours back."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.mix = torch.nn.Parameter(torch.randn(16, 3, generator=generator))
        self.offset = torch.nn.Parameter(torch.randn(16, generator=generator))
        self.config = SimpleNamespace(z_dim=16, latents_mean=[0.5] * 16, latents_std=[2.0] * 16)

    def encode(self, video: torch.Tensor):
        pooled = F.avg_pool3d((video + 1) / 2, (1, 8, 8))  # (N, 3, T, h, w) in [0, 1]
        latents = torch.einsum("cr,nrthw->ncthw", self.mix, pooled)
        latents = latents + self.offset.view(1, -1, 1, 1, 1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: latents))


def _split_image(side: int) -> torch.Tensor:
    """Blue on the left, yellow on the right."""
    image = torch.zeros(1, 3, side, side)
    image[:, 2, :, : side // 2] = 1.0
    image[:, :2, :, side // 2:] = 1.0
    return image


def test_the_projection_fitted_from_the_vae_gives_an_images_colours_back():
    vae = LinearVAE()
    pipeline = SimpleNamespace(vae=vae, vae_scale_factor_spatial=8)
    preview = LatentPreview.for_pipeline(pipeline, "Wan", "/nowhere")
    assert preview.how == "projection"
    # A held-out picture, encoded and normalised as the denoiser sees its latents.
    with torch.no_grad():
        raw = vae.encode(_split_image(64)[:, :, None] * 2 - 1).latent_dist.mode()
    picture = preview.picture((raw - 0.5) / 2.0, frames=1, width=64, height=64)
    pixels = np.asarray(picture, dtype=float)
    assert pixels.shape == (FRAME_HEIGHT, FRAME_HEIGHT, 3)  # one frame, square
    left, right = pixels[:, : FRAME_HEIGHT // 3], pixels[:, -FRAME_HEIGHT // 3:]
    assert np.abs(left.mean(axis=(0, 1)) - (0, 0, 255)).max() < 8, "blue on the left"
    assert np.abs(right.mean(axis=(0, 1)) - (255, 255, 0)).max() < 8, "yellow on the right"
    # Made once per loaded pipeline: the next scene reuses it.
    assert LatentPreview.for_pipeline(pipeline, "Wan", "/nowhere") is preview


@pytest.mark.parametrize("builder", [build_tiny_wan, build_tiny_ltx])
def test_a_model_render_hands_out_a_strip_every_few_steps(tmp_path, use_model, builder):
    settings = use_model(builder(tmp_path / "model"))
    seen: list[tuple[int, int, int, Image.Image]] = []
    result = render_to_folder(make_storyboard((2, 2)), tmp_path / "out", settings,
                              on_preview=lambda *shown: seen.append(shown))
    assert result.generated_scenes == [0, 1]
    # Every 2nd of 6 steps, never the last (the real frames follow at once), each scene.
    assert [(scene, step, steps) for scene, step, steps, _ in seen] == [
        (0, 2, 6), (0, 4, 6), (1, 2, 6), (1, 4, 6)]
    plan = plan_for(settings, "16:9")
    frame_width = round(FRAME_HEIGHT * plan.width / plan.height)
    # The clip's start, middle and end (LTX makes 2 latent frames of 9), at the video's aspect.
    shown = min(3, (plan.frames_for(2) - 1) // FRAME_STEP[plan.family] + 1)
    for *_, picture in seen:
        assert picture.size == (shown * frame_width + (shown - 1) * GAP, FRAME_HEIGHT)
    first, later = (np.asarray(p, dtype=float) for p in (seen[0][3], seen[1][3]))
    assert np.abs(first - later).mean() > 1.0, "the picture follows the denoising"


def test_previews_off_cost_nothing_and_a_failing_preview_never_fails_the_render(
        tmp_path, use_model, tiny_wan, caplog):
    no_cache = {"LESSONREEL_DIFFUSION__CACHE_CLIPS": "false"}  # each render runs the model
    settings = use_model(tiny_wan, LESSONREEL_DIFFUSION__LIVE_PREVIEW_EVERY_STEPS="0",
                         **no_cache)
    seen = []
    render_to_folder(make_storyboard((2,)), tmp_path / "off", settings,
                     on_preview=lambda *shown: seen.append(shown))
    assert seen == []

    settings = use_model(tiny_wan, **no_cache)
    calls = []

    def broken(*shown) -> None:
        calls.append(shown)
        raise OSError("disk full")

    result = render_to_folder(make_storyboard((2, 2)), tmp_path / "broken", settings,
                              on_preview=broken)
    assert result.files["video"].is_file() and result.generated_scenes == [0, 1]
    assert len(calls) == 1, "after one failure, no more previews are tried"
    assert "live previews stopped" in caplog.text


def test_a_tiny_decoder_in_the_model_folder_is_used_when_it_fits(tmp_path, use_model):
    from diffusers import AutoencoderTiny

    folder = build_tiny_wan(tmp_path / "wan")
    AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8, 8, 8, 8),
                    decoder_block_out_channels=(8, 8, 8, 8), num_encoder_blocks=(1, 1, 1, 1),
                    num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(folder / PREVIEW_DECODER)
    settings = use_model(folder)
    plan = plan_for(settings, "16:9")
    preview = LatentPreview.for_pipeline(load_pipeline(plan, plan.text_to_video, "cpu"),
                                         plan.family, plan.model_dir)
    assert preview.how == "tiny decoder"
    latents = torch.randn(1, 16, 3, plan.height // 8, plan.width // 8)
    picture = preview.picture(latents, frames=9, width=plan.width, height=plan.height)
    assert picture.size[1] == FRAME_HEIGHT


def test_a_tiny_decoder_for_other_latents_is_passed_over_with_a_warning(tmp_path, use_model,
                                                                       caplog):
    from diffusers import AutoencoderTiny

    folder = build_tiny_wan(tmp_path / "wan")
    AutoencoderTiny(latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8),
                    decoder_block_out_channels=(8, 8, 8, 8), num_encoder_blocks=(1, 1, 1, 1),
                    num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(folder / PREVIEW_DECODER)
    plan = plan_for(use_model(folder), "16:9")
    preview = LatentPreview.for_pipeline(load_pipeline(plan, plan.text_to_video, "cpu"),
                                         plan.family, plan.model_dir)
    assert preview.how == "projection"
    assert "takes 4 latent channels, the model makes 16" in caplog.text


def test_the_job_says_where_each_preview_is_and_removes_it_when_done(
        tmp_path, use_model, tiny_wan, redis_connection):
    settings = use_model(tiny_wan)
    events = EventLog(redis_connection)
    after = events.last_id()
    job_id = new_job_id()
    enqueue_render(redis_connection, settings, RenderSpec(
        job_id=job_id, conversation="t", version=1, storyboard=make_storyboard((2,)),
        output=job_id))
    run_worker(settings, redis_connection, burst=True, logging_level="WARNING")
    assert Job.fetch(job_id, connection=redis_connection,
                     serializer=JSONSerializer).get_status() == JobStatus.FINISHED
    shown = [(e.scene, e.step, e.preview) for _, e in events.read(after) if e.preview]
    assert shown == [(1, 2, "live.jpg"), (1, 4, "live.jpg")]
    folder = settings.media_path / job_id
    assert not (folder / "live.jpg").exists(), "only while the render runs"
    assert not list(folder.glob("live.jpg*"))



# -- the relay: which previews reach the thread ----------------------------------------------


class PicturingNotifier:
    """A platform that shows pictures, recording what the relay asks of it."""

    def __init__(self, *, failing: bool = False) -> None:
        self.failing = failing
        self.shown: list[tuple[str | None, bytes, str]] = []  # (ref given, picture, caption)
        self.removed: list[str] = []
        self.statuses: list[str] = []
        self.delivered: list[Delivery] = []

    async def post_status(self, route: Route, text: str) -> str:
        self.statuses.append(text)
        return "status"

    async def edit_status(self, route: Route, ref: str, text: str) -> None:
        self.statuses.append(text)

    async def deliver(self, route: Route, delivery: Delivery) -> None:
        self.delivered.append(delivery)

    async def show_preview(self, route: Route, ref: str | None, picture: Path,
                           caption: str) -> str:
        if self.failing:
            raise ConnectionError("the platform is down")
        self.shown.append((ref, picture.read_bytes(), caption))
        return f"photo{len(self.shown)}"

    async def remove_preview(self, route: Route, ref: str) -> None:
        self.removed.append(ref)


def _job(runtime, *, batch: str = "", language: str = "en") -> str:
    job = new_job_id()
    runtime.service.routes.save(Route(
        job_id=job, place=Place("test", "C1", "t1"), conversation="c1", version=1,
        language=language, author="U1", title="Leaves", total="0:10", preview=False,
        created_at=time.time(), batch=batch))
    runtime.service.routes.claim_status(job, "status")
    (runtime.settings.media_path / job).mkdir(parents=True)
    return job


def _relay(runtime, notifier, seconds: float) -> EventRelay:
    relay = EventRelay(runtime.connection, runtime.settings, share_secret=runtime.secret,
                       platform="test", notifier=notifier)
    relay.ensure_group()
    return with_settings(relay, bot={"live_preview_seconds": seconds})


def _publish(runtime, job: str, step: int, colour=(200, 30, 30)) -> bytes:
    (runtime.settings.media_path / job / "live.jpg").write_bytes(data := jpeg(colour))
    EventLog(runtime.connection).publish(RenderEvent(
        job_id=job, kind="progress", scene=1, scenes=2, step=step, steps=6, fraction=0.2,
        preview="live.jpg"))
    return data


def _drain(relay: EventRelay) -> None:
    async def run() -> None:
        while await relay.pump():
            pass

    asyncio.run(run())


def _finish(runtime, job: str) -> None:
    EventLog(runtime.connection).publish(RenderEvent(job_id=job, kind="failed",
                                                     message="The model ran out of memory."))


def test_previews_closer_than_the_interval_are_skipped_and_the_last_ref_is_kept(runtime):
    notifier = PicturingNotifier()
    relay = _relay(runtime, notifier, seconds=3600)
    job = _job(runtime)
    first = _publish(runtime, job, 2)
    _drain(relay)
    _publish(runtime, job, 4, colour=(0, 200, 0))  # within the hour: not shown
    _drain(relay)
    assert [(ref, data) for ref, data, _ in notifier.shown] == [(None, first)]

    fast = _relay(runtime, notifier, seconds=0.01)  # a restarted bot: the same message
    _publish(runtime, job, 4)
    _drain(fast)
    assert notifier.shown[-1][0] == "photo1"
    _finish(runtime, job)
    _drain(fast)
    assert notifier.removed == ["photo2"] and len(notifier.delivered) == 1


def test_a_platform_that_cannot_show_the_picture_still_gets_the_status_and_the_result(
        runtime, caplog):
    notifier = PicturingNotifier(failing=True)
    relay = _relay(runtime, notifier, seconds=0.01)
    job = _job(runtime)
    _publish(runtime, job, 2)
    _finish(runtime, job)
    _drain(relay)
    assert "step 2/6" in notifier.statuses[0]
    assert [d.kind for d in notifier.delivered] == ["failed"] and notifier.removed == []
    assert "live preview of job" in caplog.text


@pytest.mark.parametrize("limit", ["telegram", "slack"])
def test_a_rate_limited_preview_waits_as_long_as_the_platform_asked(runtime, limit):
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web import SlackResponse
    from telegram.error import RetryAfter

    if limit == "telegram":
        error = RetryAfter(30)
    else:
        error = SlackApiError("ratelimited", SlackResponse(
            client=None, http_verb="POST", api_url="", req_args={},
            data={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "30"},
            status_code=429))

    class Limited(PicturingNotifier):
        limited = False

        async def show_preview(self, *args) -> str:
            if not self.limited:  # the first picture meets the rate limit
                self.limited = True
                raise error
            return await super().show_preview(*args)

    notifier = Limited()
    relay = _relay(runtime, notifier, seconds=0.01)
    job = _job(runtime)
    _publish(runtime, job, 2)
    _drain(relay)
    time.sleep(0.05)
    _publish(runtime, job, 4)  # well past the interval, but within the platform's 30 s
    _drain(relay)
    assert notifier.limited and notifier.shown == []


def test_batch_rows_and_a_zero_interval_show_no_previews(runtime):
    notifier = PicturingNotifier()
    batch_job = _job(runtime, batch="b1")
    _publish(runtime, batch_job, 2)
    _drain(_relay(runtime, notifier, seconds=0.01))
    plain_job = _job(runtime)
    _publish(runtime, plain_job, 2)
    _drain(_relay(runtime, notifier, seconds=0))
    assert notifier.shown == []


def test_a_chinese_thread_gets_a_chinese_caption_and_the_console_prints_the_file(runtime):
    lines: list[str] = []
    relay = _relay(runtime, ConsoleNotifier(lines.append), seconds=0.01)
    job = _job(runtime, language="zh")
    _publish(runtime, job, 2)
    _drain(relay)
    [line] = [line for line in lines if "live.jpg" in line]
    assert line.startswith("场景 1/2 的实时预览（步骤 2/6）")
    assert line.endswith(str(runtime.settings.media_path / job / "live.jpg"))


def test_under_cpu_offload_the_vae_is_fed_where_its_hook_runs_it(use_model, tiny_wan):
    """With enable_model_cpu_offload the VAE's weights wait on the CPU and a hook moves them
    to the GPU for each call: the fitting images must go to the GPU, not to where the weights
    sit. (No GPU here: the hook's device is the meta device, which shows the choice.)"""
    from accelerate import cpu_offload_with_hook

    from worker.previews import _execution

    plan = plan_for(use_model(tiny_wan), "16:9")
    vae = load_pipeline(plan, plan.text_to_video, "cpu").vae
    assert _execution(vae)[0] == torch.device("cpu")
    offloaded = type(vae).from_config(vae.config)
    cpu_offload_with_hook(offloaded, execution_device="meta")
    assert next(offloaded.parameters()).device == torch.device("cpu")
    assert _execution(offloaded) == (torch.device("meta"), torch.float32)


def test_a_first_frame_that_is_still_noise_is_left_out_of_the_strip():
    """Wan2.2's image-to-video keeps noise in the first latent frame until the last step."""
    pipeline = SimpleNamespace(vae=LinearVAE(), vae_scale_factor_spatial=8)
    preview = LatentPreview.for_pipeline(pipeline, "Wan", "/nowhere")
    with torch.no_grad():
        raw = pipeline.vae.encode(torch.ones(1, 3, 5, 64, 64)).latent_dist.mode()  # white
    latents = (raw.repeat(1, 1, 4, 1, 1) - 0.5) / 2.0  # four latent frames: a 13-frame clip
    latents[:, :, 0] = -50.0  # the noise: far from any colour
    kept = np.asarray(preview.picture(latents, frames=13, width=64, height=64,
                                      skip_first=True), dtype=float)
    shown = np.asarray(preview.picture(latents, frames=13, width=64, height=64), dtype=float)
    frames = [kept[:, i * (FRAME_HEIGHT + GAP):i * (FRAME_HEIGHT + GAP) + FRAME_HEIGHT]
              for i in range(3)]
    assert all(frame.min() > 230 for frame in frames), "start, middle, end: all white"
    assert shown[:, :FRAME_HEIGHT].max() < 230, "without it, the strip opens with the noise"
