"""Queue estimates from measured render cost (engine/eta.py): the figures workers record, the
estimate a job's storyboard gets, and the ETA a teacher reads in chat. Real Redis, the real
RQ worker and the CPU animatic; a fake clock where time matters."""

from __future__ import annotations

import re

import pytest

from bot.core import DEFAULT_JOB_SECONDS, PREFIX, Author, Place, waiting_etas
from engine import eta
from engine.eta import (
    ANIMATIC,
    FIGURES_KEY,
    CostModel,
    StepTimes,
    cost_field,
    plan_field,
    record_render,
)
from engine.jobs import RenderSpec, enqueue_render, new_job_id, render_queue
from engine.presets import DiffusionPlan
from tests.conftest import make_storyboard
from worker.runner import run_worker

PLAN = DiffusionPlan(
    preset="wan-test", model_dir="/models/wan-test", family="Wan", width=832, height=480,
    max_frames=81, fps=16, steps=30, guidance=5.0, dtype="bfloat16", cpu_offload=False,
    vae_tiling=False, text_to_video="WanPipeline", image_to_video="")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _timed_steps(clock: FakeClock, scenes: int, seconds_per_step: float, *,
                 loading: float) -> StepTimes:
    """Step callbacks as DiffusionRenderer makes them: 0 once loaded, then k after step k."""
    steps = StepTimes(clock=clock)
    for scene in range(scenes):
        clock.now += loading  # before step 0: no step's
        for step in range(PLAN.steps + 1):
            steps.step(scene, step, PLAN.steps)
            clock.now += seconds_per_step
        clock.now -= seconds_per_step
    return steps


def _spec(storyboard, *, owner: str = "other:1", preview: bool = False) -> RenderSpec:
    job_id = new_job_id()
    return RenderSpec(job_id=job_id, conversation=f"test:{job_id}", version=1, owner=owner,
                      storyboard=storyboard, output=job_id, animatic=preview)


def test_the_model_learns_seconds_per_step_per_key_from_recorded_steps(redis_connection):
    clock = FakeClock()
    board = make_storyboard((9,), title_card_seconds=1)  # 10 s; its clip: 81 frames
    steps = _timed_steps(clock, 1, 2.0, loading=50.0)
    # 50 s loading + 30 steps of 2 s + 20 s for the rest (2 s per output second)
    record_render(redis_connection, board, PLAN, seconds=130.0, steps=steps, loading=50.0,
                  clock=clock)

    figures = CostModel.read(redis_connection).figures
    size = (PLAN.width, PLAN.height)
    assert float(figures[cost_field("step", "wan-test", size, 81)]) == pytest.approx(2.0)
    assert float(figures[cost_field("rest", "wan-test", size)]) == pytest.approx(2.0)
    assert CostModel.read(redis_connection).estimate(board) == pytest.approx(10 * 2 + 30 * 2)

    slower = _timed_steps(clock, 1, 4.0, loading=0.0)
    record_render(redis_connection, board, PLAN, seconds=140.0, steps=slower, clock=clock)
    figures = CostModel.read(redis_connection).figures
    assert float(figures[cost_field("step", "wan-test", size, 81)]) == pytest.approx(
        eta.WEIGHT * 4.0 + (1 - eta.WEIGHT) * 2.0)
    # A 3-second scene makes a 49-frame clip: another key, not measured yet.
    assert CostModel.read(redis_connection).estimate(make_storyboard((3,))) is None


def test_a_scene_retried_from_step_zero_counts_only_its_steps():
    clock = FakeClock()
    steps = StepTimes(clock=clock)
    for step in (0, 1, 2):  # two steps of 1 s, then out of memory
        steps.step(0, step, 30)
        clock.now += 1.0
    clock.now += 100.0  # freeing memory and loading again
    for step in (0, 1):
        steps.step(0, step, 30)
        clock.now += 3.0
    assert (steps.seconds[0], steps.steps[0]) == (pytest.approx(5.0), 3)


def test_a_sixty_second_storyboard_is_estimated_longer_than_a_twenty_second_one(
    redis_connection
):
    clock = FakeClock()
    record_render(redis_connection, make_storyboard((10,), title_card_seconds=0), PLAN,
                  seconds=80.0, steps=_timed_steps(clock, 1, 2.0, loading=0.0), clock=clock)
    model = CostModel.read(redis_connection)
    short = model.estimate(make_storyboard((10, 10), title_card_seconds=0))
    long = model.estimate(make_storyboard((10,) * 6, title_card_seconds=0))
    assert short is not None and long is not None
    assert long == pytest.approx(3 * short)
    # The animatic's own figure, per output second, scales the same way.
    record_render(redis_connection, make_storyboard((10,)), None, seconds=22.0,
                  steps=StepTimes(), clock=clock)
    model = CostModel.read(redis_connection)
    assert model.estimate(make_storyboard((10,) * 6, title_card_seconds=0)) == \
        pytest.approx(3 * model.estimate(make_storyboard((10, 10), title_card_seconds=0)))


def test_the_figures_stay_bounded_dropping_the_least_recently_updated(redis_connection,
                                                                       monkeypatch):
    monkeypatch.setattr(eta, "MAX_FIELDS", 3)
    clock = FakeClock()
    board = make_storyboard((4,))
    for width in (320, 480, 640, 800, 960):  # five sizes of the same preset
        clock.now += 1
        record_render(redis_connection, board, PLAN.model_copy(update={"width": width}),
                      seconds=10.0, steps=StepTimes(), preview=True, clock=clock)
    kept = {name.decode() for name in redis_connection.hkeys(FIGURES_KEY)}
    assert kept == {cost_field("rest", "wan-test", (width, PLAN.height))
                    for width in (640, 800, 960)}


def test_a_job_with_no_figures_is_priced_as_the_average_then_the_default(
    settings, redis_connection
):
    queue = render_queue(redis_connection, settings)
    spec = _spec(make_storyboard((5, 5)))
    enqueue_render(redis_connection, settings, spec, queue=queue)
    assert waiting_etas(redis_connection, queue) == {spec.job_id: DEFAULT_JOB_SECONDS}

    redis_connection.set(f"{PREFIX}stats:job_seconds", "200.00")  # the relay's average
    assert waiting_etas(redis_connection, queue) == {spec.job_id: 200.0}

    # Measured for another aspect only: still the average.
    record_render(redis_connection, make_storyboard((4,), aspect="9:16"), None, seconds=30.0,
                  steps=StepTimes())
    assert waiting_etas(redis_connection, queue) == {spec.job_id: 200.0}
    record_render(redis_connection, make_storyboard((4,)), None, seconds=15.0,
                  steps=StepTimes())  # 5 s of video: 3 s a second
    assert waiting_etas(redis_connection, queue) == {spec.job_id: pytest.approx(11 * 3.0)}


def test_a_real_animatic_render_records_its_figures_and_a_failed_one_none(
    settings, redis_connection
):
    broken = _spec(make_storyboard((2,), images=("never-uploaded.png",)))
    enqueue_render(redis_connection, settings, broken)
    run_worker(settings, redis_connection, burst=True, logging_level="CRITICAL")
    assert CostModel.read(redis_connection).figures == {}  # only successful renders count

    board = make_storyboard((2, 2))
    enqueue_render(redis_connection, settings, _spec(board))
    assert run_worker(settings, redis_connection, burst=True, logging_level="CRITICAL")

    model = CostModel.read(redis_connection)
    assert model.figures[plan_field("16:9")] == ANIMATIC  # what full 16:9 renders use here
    per_second = float(model.figures[cost_field("rest", ANIMATIC, board.frame_size)])
    assert 0 < per_second < 60
    assert model.estimate(board) == pytest.approx(per_second * board.total_seconds)
    assert model.estimate(make_storyboard((10,) * 4)) > model.estimate(board)


# -- in chat -------------------------------------------------------------------------------

REQUEST = "Explain photosynthesis to grade 7 in 30 seconds"


def _eta_seconds(text: str) -> int:
    """"…, about 3 min." -> 180; "…, about 45 s." -> 45"""
    number, unit = re.search(r"about (\d+) (min|s)\b", text).groups()
    return int(number) * (60 if unit == "min" else 1)


def _queued_behind(runtime, ahead_durations: tuple[int, ...], thread: str) -> tuple[str, str]:
    """Two other teachers' renders of these scene lengths wait; a teacher asks for one."""
    connection, settings = runtime.connection, runtime.settings
    queue = render_queue(connection, settings)
    queue.empty()
    for owner in ("other:1", "other:2"):
        enqueue_render(connection, settings, _spec(make_storyboard(ahead_durations),
                                                   owner=owner), queue=queue)
    teacher = Author(f"U-{thread}")
    where = Place("test", "C1", thread)
    runtime.service.message(where, teacher, REQUEST)
    [queued] = runtime.service.message(where, teacher, "render")
    [status] = runtime.service.message(where, teacher, "queue")
    return queued.text, status.text


def test_the_queue_eta_reflects_how_long_the_jobs_ahead_are(runtime):
    clock = FakeClock()
    for aspect in ("16:9", "9:16", "1:1"):  # what a full render of each aspect costs here
        record_render(runtime.connection, make_storyboard((9,), aspect=aspect), None,
                      seconds=20.0, steps=StepTimes(), clock=clock)  # 2 s a second
    behind_short, status_short = _queued_behind(runtime, (2, 2), "a")
    behind_long, status_long = _queued_behind(runtime, (10,) * 10, "b")

    assert "2 videos ahead of it" in behind_short and "2 videos ahead of it" in behind_long
    # Two 5-s videos ahead: 10 s each; two 101-s videos: 202 s each; then the teacher's own
    # (its 30 s: 60 s).
    assert _eta_seconds(behind_long) - _eta_seconds(behind_short) >= 5 * 60
    assert _eta_seconds(status_short) == _eta_seconds(behind_short)
    assert _eta_seconds(status_long) == _eta_seconds(behind_long)
