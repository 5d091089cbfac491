"""What renderers hand to composition: runs of frames, title card first, then each scene."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class FrameRun:
    """One frame shown `count` times in a row (a still scene costs one picture)."""

    frame: np.ndarray  # (height, width, 3) uint8
    count: int


class SceneRenderer(Protocol):
    width: int
    height: int

    def title_card(self, frame_count: int) -> Iterator[FrameRun]: ...

    def scene(self, index: int, frame_count: int) -> Iterator[FrameRun]: ...
