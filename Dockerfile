# syntax=docker/dockerfile:1
#
# Two images from one file; docker-compose.yml picks them by target:
#
#   app     python:3.11-slim. The share server (`lessonreel serve`) and the Slack and Telegram
#           bots. No torch, no CUDA: a bot host needs neither.
#   worker  The official PyTorch CUDA runtime image. The GPU renderer (`lessonreel worker`).
#           No chat SDKs: a worker talks back only through events in Redis.
#
# Both run `lessonreel` as the unprivileged user 10001, keep data in /data and model weights
# in /models (the compose file mounts its volumes there).
#
# Nothing else is installed from the distribution, on purpose:
# - ffmpeg: imageio-ffmpeg's wheel carries its own (with libx264 and aac);
# - fonts: captions use the Noto Sans CJK SC subset bundled in worker/assets/fonts (Latin and
#   all GB2312 hanzi). A school that needs more characters mounts a full font and points
#   LESSONREEL_RENDER__FONT_PATH at it (worker/assets/fonts/README.md).
#
# The project is installed editable (`pip install -e`) from /app on purpose: the code finds
# config/ and prompts/ beside its packages (engine/paths.py), which a plain install would lose.

ARG PYTHON_IMAGE=python:3.11-slim
# The worker's base: pytorch/pytorch rather than nvidia/cuda plus `pip install torch`, because
# it already holds a CUDA build of torch matched to its CUDA and cuDNN, on Python 3.11, so one
# tag decides the torch/CUDA pair and no multi-GB torch is resolved at build time. CUDA 12.8
# covers the RTX 4090 (Ada) and RTX 50xx (Blackwell). `nvidia-smi` on the host prints the
# highest CUDA its driver supports; if that is lower, pick a tag with a CUDA it supports, e.g.
#   docker compose build --build-arg WORKER_BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ARG WORKER_BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime


# ---- app-build: a virtualenv with the app's dependencies (compilers stay in this stage) ----
FROM ${PYTHON_IMAGE} AS app-build
# Extras from pyproject.toml: "bot" (chat SDKs, the web server); "bot,llm" adds llama.cpp,
# compiled here from source (4-6 minutes once). Never "worker" or "all": no torch in this image.
ARG APP_EXTRAS=bot
RUN case ",${APP_EXTRAS}," in \
      *,llm,*) apt-get update \
               && apt-get install -y --no-install-recommends build-essential cmake \
               && rm -rf /var/lib/apt/lists/* ;; \
    esac
RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY bot bot
COPY worker worker
COPY config config
COPY prompts prompts
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install -e ".[${APP_EXTRAS}]" \
    && /opt/venv/bin/python -c "import importlib.util, sys; \
sys.exit('torch must not be in the app image' if importlib.util.find_spec('torch') else 0)"


# ---- app: the share server and the chat bots -----------------------------------------------
FROM ${PYTHON_IMAGE} AS app
ARG APP_EXTRAS=bot
# llama.cpp's compiled library needs the OpenMP runtime; nothing else needs a system package.
RUN case ",${APP_EXTRAS}," in \
      *,llm,*) apt-get update \
               && apt-get install -y --no-install-recommends libgomp1 \
               && rm -rf /var/lib/apt/lists/* ;; \
    esac
RUN useradd --uid 10001 --create-home lessonreel \
    && mkdir -p /data /models && chown lessonreel:lessonreel /data /models
COPY --from=app-build /opt/venv /opt/venv
COPY --from=app-build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LESSONREEL_DATA_DIR=/data \
    LESSONREEL_DIFFUSION__MODELS_DIR=/models
WORKDIR /app
RUN lessonreel --help > /dev/null
USER lessonreel
EXPOSE 8080
CMD ["lessonreel", "serve", "--host", "0.0.0.0", "--port", "8080"]


# ---- worker: the GPU renderer --------------------------------------------------------------
FROM ${WORKER_BASE_IMAGE} AS worker
# NVML (the GPU reading before each job) needs the driver's "utility" capability.
ENV PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LESSONREEL_DATA_DIR=/data \
    LESSONREEL_DIFFUSION__MODELS_DIR=/models
# espeak-ng speaks the narration (a neural voice, when installed, needs nothing more).
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --create-home lessonreel \
    && mkdir -p /data /models && chown lessonreel:lessonreel /data /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY bot bot
COPY worker worker
COPY config config
COPY prompts prompts
# The base image's torch is pinned so that pip never swaps it for another CUDA build; the
# check after the install fails the build if torch lost its CUDA.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
'lessonreel needs Python 3.11 or newer: choose a WORKER_BASE_IMAGE tag that has it')" \
    && python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch-pin.txt \
    && pip install -c /tmp/torch-pin.txt -e ".[worker]" \
    && python -c "import torch, diffusers; \
assert torch.version.cuda, 'the worker image needs a CUDA build of torch'" \
    && lessonreel --help > /dev/null
USER lessonreel
CMD ["lessonreel", "worker"]
