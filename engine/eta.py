"""How long a render will take, learned from the renders that succeeded.

A worker records two kinds of figure when a render finishes, each an exponentially weighted
mean kept per key (renderer, size, frames, quality):

- "step": seconds per denoising step of a model clip, per preset, generation size, frames per
  clip and quality (a 121-frame clip costs more a step than a 49-frame one);
- "rest": seconds per output second for everything else (the voice, title cards, the
  animatic's scenes, compose, encode, audio, a clip's decoding), per renderer and size.

It also records, per aspect and the quality the storyboard asked for ("" leaves it to the
worker's settings), what a full render was made with: a preset's plan at a resolved quality
(its steps), or the animatic; the bot host has neither the weights nor the worker's settings.
The bot turns a waiting job's storyboard into denoising steps and output seconds and prices
them; a key with no figure yet gives no estimate, and the bot falls back to its whole-job
average.

All of it is one Redis hash, read whole in one round trip. It holds at most MAX_FIELDS figures,
the least recently updated dropped first, so a parade of odd sizes cannot grow it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from pydantic import ValidationError

from engine.presets import DiffusionPlan
from engine.storyboard import Storyboard

FIGURES_KEY = "lessonreel:eta"  # field -> a mean, or a plan (see cost_field, plan_field)
UPDATED_KEY = "lessonreel:eta:updated"  # field -> when it was last recorded (a sorted set)
MAX_FIELDS = 256
WEIGHT = 0.3  # of the newest measure in each mean
DEFAULT_QUALITY = "standard"  # the animatic's: it looks the same at every quality
ANIMATIC = "animatic"


def cost_field(kind: str, renderer: str, size: tuple[int, int], frames: int = 0,
               quality: str = DEFAULT_QUALITY) -> str:
    """"step|wan-1.3b|832x480|81|standard": where one figure is kept. `frames` is 0 for
    "rest", which is per output second whatever the clips' length."""
    return f"{kind}|{renderer}|{size[0]}x{size[1]}|{frames}|{quality}"


def plan_field(aspect: str, asked_quality: str = "") -> str:
    return f"plan|{aspect}|{asked_quality}"


def renderer_of(plan: DiffusionPlan | None,
                storyboard: Storyboard) -> tuple[str, tuple[int, int], str]:
    """The renderer's name, the size it composes at (as worker/render.py makes it) and the
    quality it renders at."""
    if plan is None:
        return ANIMATIC, storyboard.frame_size, DEFAULT_QUALITY
    return plan.preset, (plan.width, plan.height), plan.quality


def model_frames(storyboard: Storyboard, plan: DiffusionPlan | None) -> dict[int, int]:
    """Scene index -> frames of its clip, for the scenes the plan's model renders (a scene
    without a pipeline for it is the animatic's, as in DiffusionRenderer.scene)."""
    if plan is None:
        return {}
    return {index: plan.frames_for(scene.duration)
            for index, scene in enumerate(storyboard.scenes)
            if (plan.image_to_video if scene.image else plan.text_to_video)}


@dataclass
class StepTimes:
    """Times one render's denoising steps from its step callback (scene, step, steps).

    The callback comes with step 0 when the model is about to run and with k after step k, so
    the time between two callbacks is denoising; whatever came before step 0 (loading the
    pipeline) is no step's. A scene that starts again from 0 (a retry with less memory)
    starts a new interval rather than counting the failed try."""

    clock: Callable[[], float] = time.monotonic
    seconds: dict[int, float] = field(default_factory=dict)  # scene index -> denoising
    steps: dict[int, int] = field(default_factory=dict)  # scene index -> steps timed
    _last: dict[int, tuple[int, float]] = field(default_factory=dict)

    def step(self, scene_index: int, step: int, steps: int) -> None:
        now = self.clock()
        last = self._last.get(scene_index)
        if last is not None and step > last[0]:
            self.seconds[scene_index] = self.seconds.get(scene_index, 0.0) + now - last[1]
            self.steps[scene_index] = self.steps.get(scene_index, 0) + step - last[0]
        self._last[scene_index] = (step, now)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def record_render(connection: redis.Redis, storyboard: Storyboard, plan: DiffusionPlan | None,
                  *, seconds: float, steps: StepTimes, loading: float = 0.0,
                  preview: bool = False, clock: Callable[[], float] = time.time) -> None:
    """Add a successful render's figures: `storyboard` as rendered (the voice may have
    retimed it), `plan` the one it rendered with (None: the animatic), `seconds` the render's
    own, `loading` the part of it spent loading pipelines (a worker loads one once, so the
    next job will not pay it)."""
    renderer, size, quality = renderer_of(plan, storyboard)
    measures: dict[str, list[float]] = {}
    for index, frames in model_frames(storyboard, plan).items():
        if steps.steps.get(index):  # not a cached clip
            measures.setdefault(cost_field("step", renderer, size, frames, quality), []).append(
                steps.seconds[index] / steps.steps[index])
    rest = max(seconds - steps.total - loading, 0.0) / max(storyboard.total_seconds, 1)
    measures[cost_field("rest", renderer, size, 0, quality)] = [rest]
    # A preview is the animatic by request: it says nothing of what full renders use.
    plan_value = None if preview else (ANIMATIC if plan is None else plan.model_dump_json())
    now = clock()

    def update(pipe: redis.client.Pipeline) -> None:
        names = list(measures)
        old = dict(zip(names, pipe.hmget(FIGURES_KEY, names), strict=True))
        means = {}
        for name, values in measures.items():
            mean = None if old[name] is None else float(old[name])
            for value in values:
                mean = value if mean is None else WEIGHT * value + (1 - WEIGHT) * mean
            means[name] = f"{mean:.4f}"
        if plan_value is not None:
            means[plan_field(storyboard.aspect, storyboard.quality)] = plan_value
        pipe.multi()
        pipe.hset(FIGURES_KEY, mapping=means)
        pipe.zadd(UPDATED_KEY, dict.fromkeys(means, now))

    # Two workers finishing at once must not lose each other's measure: WATCH and retry.
    connection.transaction(update, FIGURES_KEY)
    _trim(connection)


def _trim(connection: redis.Redis) -> None:
    excess = connection.zcard(UPDATED_KEY) - MAX_FIELDS
    if excess <= 0:
        return
    oldest = connection.zrange(UPDATED_KEY, 0, excess - 1)
    with connection.pipeline() as pipe:
        pipe.hdel(FIGURES_KEY, *oldest)
        pipe.zrem(UPDATED_KEY, *oldest)
        pipe.execute()


@dataclass(frozen=True)
class CostModel:
    """The recorded figures, as read at one moment: price as many jobs as you like."""

    figures: dict[str, str]

    @classmethod
    def read(cls, connection: redis.Redis) -> CostModel:
        return cls({_text(name): _text(value)
                    for name, value in connection.hgetall(FIGURES_KEY).items()})

    def estimate(self, storyboard: Storyboard, *, preview: bool = False) -> float | None:
        """Seconds a worker will take to render `storyboard`; None when a figure it needs has
        not been measured yet."""
        plan = None
        if not preview:
            recorded = self.figures.get(plan_field(storyboard.aspect, storyboard.quality))
            if recorded is None:
                return None
            if recorded != ANIMATIC:
                try:
                    plan = DiffusionPlan.model_validate_json(recorded)
                except ValidationError:  # recorded by an older worker: unknown until renewed
                    return None
        renderer, size, quality = renderer_of(plan, storyboard)
        rest = self.figures.get(cost_field("rest", renderer, size, 0, quality))
        if rest is None:
            return None
        seconds = float(rest) * storyboard.total_seconds
        for frames in model_frames(storyboard, plan).values():
            per_step = self.figures.get(cost_field("step", renderer, size, frames, quality))
            if per_step is None:
                return None
            seconds += float(per_step) * plan.steps
        return seconds


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
