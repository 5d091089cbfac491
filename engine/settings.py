"""Settings: config/default.toml, then the file named by LESSONREEL_CONFIG, then the environment.

Every layer has the shape of config/default.toml. An environment variable
`LESSONREEL_<SECTION>__<KEY>` overrides one key of a section; `LESSONREEL_DATA_DIR`,
`LESSONREEL_REDIS_URL` and `LESSONREEL_PUBLIC_URL` override the top-level keys. The result is
validated once, at start-up; a bad value stops start-up with one sentence that names the key,
where the value came from, and what is allowed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from engine.errors import SettingsError
from engine.paths import CONFIG_DIR
from engine.storyboard import MIN_SCENE_SECONDS, Aspect, Language

ENV_PREFIX = "LESSONREEL_"
DEFAULT_FILE = CONFIG_DIR / "default.toml"
TOP_LEVEL_KEYS = ("data_dir", "redis_url", "public_url")


class _Section(BaseModel):
    # A typo in a key must stop start-up, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsSettings(_Section):
    max_request_chars: int = Field(4000, ge=200, le=100_000)
    max_total_seconds: int = Field(180, ge=10, le=3600)
    min_total_seconds: int = Field(6, ge=4, le=60)


class StoryboardSettings(_Section):
    language: Language = "en"
    aspect: Aspect = "16:9"
    total_seconds: int = Field(45, ge=6, le=3600)
    title_card_seconds: int = Field(2, ge=0, le=5)


class RenderSettings(_Section):
    fps: int = Field(24, ge=8, le=60)
    crf: int = Field(20, ge=0, le=51)
    preview_crf: int = Field(30, ge=0, le=51)
    x264_preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast",
        "medium", "slow", "slower", "veryslow",
    ] = "veryfast"
    preview_max_side: int = Field(480, ge=120, le=1080)
    font_path: str = ""


class LLMSettings(_Section):
    model_path: str = ""
    gpu_layers: int = Field(-1, ge=-1, le=1000)
    context: int = Field(8192, ge=512, le=131_072)
    threads: int = Field(0, ge=0, le=256)
    max_tokens: int = Field(3072, ge=256, le=32_768)
    temperature: float = Field(0.4, ge=0.0, le=2.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class DiffusionSettings(_Section):
    renderer: Literal["auto", "animatic", "diffusion"] = "auto"
    preset: str = Field("wan2.1-t2v-1.3b", min_length=1, max_length=80)
    models_dir: str = ""
    model_path: str = ""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")
    steps: int = Field(0, ge=0, le=200)
    max_side: int = Field(0, ge=0, le=4096)
    max_frames: int = Field(0, ge=0, le=1024)
    guidance: float = Field(-1.0, ge=-1.0, le=30.0)
    cache_clips: bool = True
    # The quality level a storyboard renders at unless the teacher picked one.
    quality: Literal["draft", "standard", "high"] = "standard"
    # A rough picture of each model scene every this many denoising steps (0: none).
    live_preview_every_steps: int = Field(5, ge=0, le=200)


class GpuSettings(_Section):
    # A worker takes a job only when its GPU has this much free memory and is this cool.
    min_free_mb: int = Field(2048, ge=0, le=1_000_000)
    max_temperature_c: int = Field(85, ge=40, le=110)


class QueueSettings(_Section):
    name: str = Field("render", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")
    job_timeout_seconds: int = Field(1800, ge=30, le=86_400)
    result_ttl_seconds: int = Field(86_400, ge=60, le=30 * 86_400)
    # Workers beat this often; one silent for three beats is dead and its job runs again.
    heartbeat_seconds: float = Field(10.0, ge=0.2, le=300.0)


class BotSettings(_Section):
    # A render's status message is edited at most this often (platform rate limits).
    status_interval_seconds: float = Field(2.0, ge=0.2, le=60.0)
    # Show the worker's live previews in the thread, replacing the picture at most this
    # often (an upload each time: Slack allows about 20 a minute). 0: never show them.
    live_preview_seconds: float = Field(10.0, ge=0.0, le=3600.0)
    # Jobs waiting on the queue beyond which a new render is refused politely.
    max_queued_jobs: int = Field(20, ge=1, le=10_000)
    # Largest image a teacher may send for a scene.
    max_image_mb: int = Field(10, ge=1, le=100)
    # Largest video sent into the chat; a link is sent always. 50 MB is Telegram's cloud Bot
    # API limit (a local Bot API server allows 2000).
    telegram_upload_mb: int = Field(50, ge=1, le=2000)
    slack_upload_mb: int = Field(100, ge=1, le=1000)
    # Conversations allowed to wait for the language model before "busy" is answered.
    llm_max_waiting: int = Field(4, ge=0, le=1000)
    # Renders one teacher may have waiting or running at once.
    max_active_jobs_per_teacher: int = Field(3, ge=1, le=1000)
    # Minutes of successful rendering each teacher may use per day (0: no limit).
    render_minutes_per_day: int = Field(120, ge=0, le=1440)


IDENTITY_PATTERN = r"^(slack|slack-team|telegram|telegram-chat|console):[A-Za-z0-9_.\-*]{1,64}$"
Identity = Annotated[str, Field(pattern=IDENTITY_PATTERN)]


class RolesSettings(_Section):
    # Who may do what, by platform identity (see config/default.toml). With no teachers
    # listed, everyone who is not a student is a teacher.
    admins: list[Identity] = Field(default_factory=list, max_length=10_000)
    teachers: list[Identity] = Field(default_factory=list, max_length=10_000)
    students: list[Identity] = Field(default_factory=list, max_length=10_000)

    @field_validator("admins", "teachers", "students", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """From the environment a list is a comma-separated string."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


class ShareSettings(_Section):
    # How long a share link opens, in days (`lessonreel share --expires` overrides per link).
    link_days: int = Field(7, ge=1, le=3650)


class ModerationSettings(_Section):
    # A second opinion after the word lists: a preset of config/classifiers.toml ("": off);
    # the name is checked against the presets when the policy loads (engine/classifier.py).
    classifier: str = Field("", max_length=80)
    # A GGUF file to use instead of the preset's file in the models folder.
    model_path: str = ""
    # When the classifier cannot answer: "closed" refuses, saying moderation is unavailable;
    # "open" lets through what the word lists passed.
    classifier_fails: Literal["closed", "open"] = "closed"
    timeout_seconds: float = Field(10.0, ge=0.5, le=300.0)
    max_tokens: int = Field(24, ge=4, le=256)
    context: int = Field(8192, ge=1024, le=131_072)


class MetricsSettings(_Section):
    # GET /metrics wants "Authorization: Bearer <token>" when set; empty: open. A secret: set
    # it in the environment (LESSONREEL_METRICS__TOKEN), not in a file.
    token: str = ""


class BatchSettings(_Section):
    # A batch is a CSV of requests, one video a row ('lessonreel batch', or a file in a thread).
    # Most rows one file may hold; a longer file is refused whole.
    max_rows: int = Field(200, ge=1, le=10_000)
    # Largest file read, in bytes; a larger one is refused whole.
    max_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)


class NarrationSettings(_Section):
    # Speak each scene's narration; a scene lasts as long as its narration needs.
    enabled: bool = True
    # "auto": a neural voice preset for the language when installed, else espeak-ng.
    backend: Literal["auto", "espeak", "neural", "none"] = "auto"
    # Voice per language: an espeak-ng voice ("en-us", "cmn-latn-pinyin") or a preset of
    # config/voices.toml.
    voice_en: str = Field("", max_length=80)
    voice_zh: str = Field("", max_length=80)
    speed: float = Field(1.0, ge=0.5, le=2.0)
    # Silence after each scene's narration before the next scene.
    pause_seconds: float = Field(0.4, ge=0.0, le=3.0)


class AudioSettings(_Section):
    # A folder of the school's own music (mp3, ogg, wav, flac, m4a). Empty: no music.
    music_dir: str = Field("", max_length=500)
    # "random": a track from music_dir per video; "none"; or one file name in music_dir.
    music: str = Field("random", max_length=200)
    # How much quieter the music is while the voice speaks than between phrases.
    duck_db: float = Field(14.0, ge=0.0, le=40.0)
    # The whole track's integrated loudness (EBU R128), in LUFS.
    target_lufs: float = Field(-16.0, ge=-40.0, le=-5.0)


class BrandingSettings(_Section):
    school_name: str = Field("", max_length=120)
    logo_path: str = Field("", max_length=500)
    # Colours of the intro and outro cards, as #rrggbb.
    background: str = Field("#1f3b5c", pattern=r"^#[0-9a-fA-F]{6}$")
    foreground: str = Field("#ffffff", pattern=r"^#[0-9a-fA-F]{6}$")
    # "auto": the cards when a logo is set; "on"; "off".
    cards: Literal["auto", "on", "off"] = "auto"
    intro_seconds: float = Field(2.5, ge=1.0, le=10.0)
    outro_seconds: float = Field(2.5, ge=1.0, le=10.0)


class OutputSettings(_Section):
    # H.264 plays everywhere; H.265 is about half the size, for archives.
    codec: Literal["h264", "h265"] = "h264"
    # Upscale the final video: "none" keeps the model's size.
    upscale: Literal["none", "720p", "1080p"] = "none"
    # Model clips run at the model's fps; 0 keeps it, 24 or 32 interpolates frames.
    interpolate_fps: int = Field(0, ge=0, le=60)
    # "ffmpeg": motion-compensated interpolation; "rife": the RIFE preset, when installed.
    interpolation: Literal["ffmpeg", "rife"] = "ffmpeg"


class Settings(_Section):
    data_dir: str = ""
    redis_url: str = ""
    public_url: str = ""
    limits: LimitsSettings = LimitsSettings()
    storyboard: StoryboardSettings = StoryboardSettings()
    render: RenderSettings = RenderSettings()
    llm: LLMSettings = LLMSettings()
    diffusion: DiffusionSettings = DiffusionSettings()
    gpu: GpuSettings = GpuSettings()
    queue: QueueSettings = QueueSettings()
    bot: BotSettings = BotSettings()
    share: ShareSettings = ShareSettings()
    roles: RolesSettings = RolesSettings()
    moderation: ModerationSettings = ModerationSettings()
    batch: BatchSettings = BatchSettings()
    metrics: MetricsSettings = MetricsSettings()
    narration: NarrationSettings = NarrationSettings()
    audio: AudioSettings = AudioSettings()
    branding: BrandingSettings = BrandingSettings()
    output: OutputSettings = OutputSettings()

    @model_validator(mode="after")
    def _limits_fit_together(self) -> Settings:
        limits, board = self.limits, self.storyboard
        shortest = board.title_card_seconds + MIN_SCENE_SECONDS
        if limits.min_total_seconds < shortest:
            raise ValueError(
                f"limits.min_total_seconds ({limits.min_total_seconds}) must be at least "
                f"storyboard.title_card_seconds + {MIN_SCENE_SECONDS} ({shortest})")
        if limits.min_total_seconds > limits.max_total_seconds:
            raise ValueError(
                f"limits.min_total_seconds ({limits.min_total_seconds}) must not exceed "
                f"limits.max_total_seconds ({limits.max_total_seconds})")
        if not limits.min_total_seconds <= board.total_seconds <= limits.max_total_seconds:
            raise ValueError(
                f"storyboard.total_seconds ({board.total_seconds}) must lie between "
                f"limits.min_total_seconds ({limits.min_total_seconds}) and "
                f"limits.max_total_seconds ({limits.max_total_seconds})")
        if self.llm.max_tokens + 1024 > self.llm.context:
            raise ValueError(
                f"llm.context ({self.llm.context}) must leave at least 1024 tokens for the "
                f"prompt beyond llm.max_tokens ({self.llm.max_tokens})")
        return self

    @property
    def data_path(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(xdg) / "lessonreel"

    @property
    def media_path(self) -> Path:
        """The media root: rendered videos live here, and share links serve only from here."""
        return self.data_path / "media"

    @property
    def models_path(self) -> Path:
        """Where presets' weights live, one folder each."""
        if self.diffusion.models_dir:
            return Path(self.diffusion.models_dir).expanduser()
        return self.data_path / "models"

    @property
    def clips_path(self) -> Path:
        """Rendered scene clips, by content key: an unchanged scene is never rendered twice."""
        return self.data_path / "clips"

    @property
    def uploads_path(self) -> Path:
        """Images teachers send for image-to-video scenes."""
        return self.data_path / "uploads"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the three layers; SettingsError with one sentence if anything is off."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}

    _overlay(merged, _read_toml(DEFAULT_FILE, "the defaults file"), origins, str(DEFAULT_FILE))
    if config_file := env.get(ENV_PREFIX + "CONFIG"):
        layer = _read_toml(Path(config_file), "LESSONREEL_CONFIG")
        _overlay(merged, layer, origins, config_file)
    for name, value in sorted(env.items()):
        key = _env_key(name)
        if key is None:
            continue
        section = merged
        for part in key[:-1]:
            section = section.setdefault(part, {})
            if not isinstance(section, dict):
                raise SettingsError(f"{name} sets a key inside [{part}], which is not a section.")
        section[key[-1]] = value
        origins[key] = name

    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(_explain(exc.errors()[0], origins)) from None


def _env_key(name: str) -> tuple[str, ...] | None:
    """`LESSONREEL_RENDER__FPS` -> ("render", "fps"); None for variables that are not settings."""
    if not name.startswith(ENV_PREFIX):
        return None
    parts = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
    if len(parts) == 1:
        # LESSONREEL_CONFIG, LESSONREEL_SHARE_SECRET and the like are read where they are used.
        return parts if parts[0] in TOP_LEVEL_KEYS else None
    return parts


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"{what} names {path}, which does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.__class__.__name__
        raise SettingsError(f"{what} file {path} cannot be read ({reason}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{what} file {path} is not valid TOML: {exc}.") from None


def _overlay(
    base: dict[str, Any], layer: dict[str, Any], origins: dict[tuple[str, ...], str],
    origin: str, prefix: tuple[str, ...] = (),
) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _overlay(base[key], value, origins, origin, (*prefix, key))
        else:
            base[key] = value
            origins[(*prefix, key)] = origin


def _explain(error: Mapping[str, Any], origins: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(str(part) for part in error["loc"])
    if not loc:  # a rule about several keys: its message names them
        return f"The settings do not fit together: {error['msg'].removeprefix('Value error, ')}."
    key = ".".join(loc)
    origin = origins.get(loc) or next(
        (source for key, source in origins.items() if key[: len(loc)] == loc), "the settings"
    )
    if error["type"] == "extra_forbidden":
        known = ", ".join(_known_keys(loc[:-1])) or "none"
        where = f"[{'.'.join(loc[:-1])}]" if len(loc) > 1 else "the top level"
        return f"{origin} sets {key}, which is not a setting; the keys of {where} are: {known}."
    value = error.get("input")
    return f"Setting {key} (from {origin}) must be {_allowed(loc)}; got {value!r}."


def _field(loc: tuple[str, ...]) -> FieldInfo | None:
    model: Any = Settings
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = info.annotation
    return info


def _known_keys(loc: tuple[str, ...]) -> list[str]:
    if not loc:
        return list(Settings.model_fields)
    info = _field(loc)
    annotation = info.annotation if info else None
    return list(getattr(annotation, "model_fields", {}))


def _allowed(loc: tuple[str, ...]) -> str:
    info = _field(loc)
    if info is None:
        return "a valid value"
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a table of settings"
    bounds = {type(meta): meta for meta in info.metadata}
    low, high = bounds.get(annotated_types.Ge), bounds.get(annotated_types.Le)
    if annotation is float and low and high:
        return f"a number from {low.ge} to {high.le}"
    if annotation is int:
        if low and high:
            return f"a whole number from {low.ge} to {high.le}"
        return "a whole number"
    if annotation is str:
        pattern = next((m.pattern for m in info.metadata if getattr(m, "pattern", None)), None)
        return f"text matching {pattern}" if pattern else "text"
    return "a valid value"
