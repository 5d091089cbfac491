"""GPU health: a reading before each job, and telling a broken GPU from a busy one.

A worker takes a job only when its GPU has the free memory and the temperature the settings
ask for. A CUDA error other than out-of-memory leaves the CUDA context unusable, so the worker
gives the job back and exits non-zero; its supervisor starts a fresh process.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# RuntimeError texts of CUDA faults that poison the process (out-of-memory is not one).
CUDA_FAULT_MARKERS = ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "device-side assert",
                      "illegal memory access", "unspecified launch failure")


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    total_mb: int
    free_mb: int
    temperature_c: int


def read_gpu(index: int) -> GpuReading | None:
    """This machine's GPU `index` through NVML, or None where there is no NVIDIA GPU."""

    def read(nvml) -> GpuReading:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        temperature = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        return GpuReading(index, _text(nvml.nvmlDeviceGetName(handle)), memory.total // 2**20,
                          memory.free // 2**20, int(temperature))

    return _ask_nvml(read)


def nvml_driver_version() -> str | None:
    """The NVIDIA driver's version through NVML, or None where there is none."""
    return _ask_nvml(lambda nvml: _text(nvml.nvmlSystemGetDriverVersion()))


def _ask_nvml(question: Callable) -> Any:
    """`question(pynvml)` with NVML started for it, or None where there is no NVIDIA driver
    (or no pynvml)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return question(pynvml)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def reclaimable_mb(index: int) -> int:
    """GPU memory this process's torch holds cached but unused: NVML counts it as taken."""
    torch = sys.modules.get("torch")  # a process that never imported torch holds none
    if torch is None or not torch.cuda.is_initialized():
        return 0
    return (torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)) // 2**20


def preflight_problem(reading: GpuReading | None, *, min_free_mb: int,
                      max_temperature_c: int) -> str | None:
    """Why the GPU should not take a job now, or None when it may (or there is no GPU)."""
    if reading is None:
        return None
    if reading.free_mb < min_free_mb:
        return (f"GPU {reading.index} ({reading.name}) has {reading.free_mb} MB free, "
                f"{min_free_mb} MB are needed")
    if reading.temperature_c > max_temperature_c:
        return (f"GPU {reading.index} ({reading.name}) is at {reading.temperature_c} °C, "
                f"above {max_temperature_c} °C")
    return None


def is_cuda_fault(exc: BaseException) -> bool:
    """A CUDA failure that leaves this process's GPU context unusable."""
    try:
        import torch
    except ImportError:
        return False
    if isinstance(exc, torch.OutOfMemoryError):
        return False  # the memory ladder's business, and harmless to the context
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in CUDA_FAULT_MARKERS)
