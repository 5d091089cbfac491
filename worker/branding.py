"""The school's intro and outro cards: its logo, its name and the lesson's title, in its colours.

The settings come from IT ([branding] in the config), so the logo is a plain file path. A
logo that is missing, unreadable or not a picture never fails a render: the cards are drawn
without it and the result carries a note saying what to fix. A logo is scaled to fit its box
and never distorted; transparent PNGs (RGBA, palette, grey + alpha) keep their transparency.

    intro:  [ logo / school name / ─── / lesson title ]     (the lesson's title card follows)
    outro:  [ larger logo / school name / lesson title, quieter ]

Each card fades in from its background colour, then holds: one picture, repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from engine.settings import BrandingSettings
from engine.storyboard import Storyboard
from engine.timeline import SegmentKind, cards_shown
from worker.frames import FrameRun
from worker.text import hex_rgb, load_font, text_panel, wrap

log = logging.getLogger(__name__)

FADE_SECONDS = 0.33
# Pillow identifies a file by its content, not its name: these are the pictures we take.
LOGO_FORMATS = ("PNG", "JPEG", "WEBP")
# A logo is decoded no larger than this (a 6000 px scan is shrunk first); cards need less.
MAX_LOGO_SIDE = 2048
# Share of the frame the logo may fill, as (width, height), on each card.
INTRO_LOGO_BOX = (0.56, 0.30)
OUTRO_LOGO_BOX = (0.60, 0.40)
# Text heights as shares of the frame's short side.
INTRO_SCHOOL_SIZE, INTRO_TITLE_SIZE = 0.055, 0.08
OUTRO_SCHOOL_SIZE, OUTRO_TITLE_SIZE = 0.065, 0.045
# The stack of logo and text fills at most this share of the frame's height; the logo
# shrinks to make room for a long title.
MAX_STACK_HEIGHT = 0.88
# The outro's title is the foreground mixed this much toward the background: quieter.
QUIET = 0.35


class BrandCards:
    """Draws the intro and outro cards at one frame size; `notes` says what was left out."""

    def __init__(self, branding: BrandingSettings, storyboard: Storyboard, *,
                 size: tuple[int, int], font: Path, fps: int) -> None:
        self.width, self.height = size
        self.unit = min(size)
        self.fps = fps
        self.font = font
        self.school = branding.school_name.strip()
        self.title = storyboard.title
        self.background_rgb = hex_rgb(branding.background)
        self.foreground_rgb = hex_rgb(branding.foreground)
        self.notes: list[str] = []
        self.logo = self._load_logo(branding.logo_path) if branding.logo_path.strip() else None

    # -- what compose.py calls ---------------------------------------------------------------

    def card(self, kind: SegmentKind, frame_count: int) -> Iterator[FrameRun]:
        if kind == "intro":
            frame = self._intro()
        elif kind == "outro":
            frame = self._outro()
        else:
            raise ValueError(f"BrandCards draws the intro and outro, not a {kind} segment")
        yield from self._fade_in(frame, frame_count)

    # -- drawing -----------------------------------------------------------------------------

    def _intro(self) -> np.ndarray:
        school_font = load_font(self.font, round(self.unit * INTRO_SCHOOL_SIZE))
        title_font = load_font(self.font, round(self.unit * INTRO_TITLE_SIZE))
        parts = []
        if self.school:
            lines = wrap(self.school, school_font, round(self.width * 0.8), 2)
            parts.append(text_panel(lines, school_font, fill=self.foreground_rgb))
        rule = (round(self.unit * 0.16), max(2, round(self.unit * 0.006)))
        parts.append(Image.new("RGBA", rule, (*self.foreground_rgb, 255)))
        lines = wrap(self.title, title_font, round(self.width * 0.84), 3)
        parts.append(text_panel(lines, title_font, fill=self.foreground_rgb))
        return self._stack(parts, INTRO_LOGO_BOX)

    def _outro(self) -> np.ndarray:
        school_font = load_font(self.font, round(self.unit * OUTRO_SCHOOL_SIZE))
        title_font = load_font(self.font, round(self.unit * OUTRO_TITLE_SIZE))
        parts = []
        if self.school:
            lines = wrap(self.school, school_font, round(self.width * 0.8), 2)
            parts.append(text_panel(lines, school_font, fill=self.foreground_rgb))
        quiet = tuple(round(f * (1 - QUIET) + b * QUIET)
                      for f, b in zip(self.foreground_rgb, self.background_rgb, strict=True))
        lines = wrap(self.title, title_font, round(self.width * 0.8), 2)
        parts.append(text_panel(lines, title_font, fill=quiet))
        return self._stack(parts, OUTRO_LOGO_BOX)

    def _stack(self, parts: list[Image.Image], logo_box: tuple[float, float]) -> np.ndarray:
        """The logo (if any) above `parts`, all centred one under the other on the card's
        background. The logo fits its box, shrunk further if the parts need the room."""
        gap = round(self.unit * 0.04)
        parts_height = sum(part.height for part in parts) + gap * (len(parts) - 1)
        if self.logo is not None:
            room = round(self.height * MAX_STACK_HEIGHT) - parts_height - gap
            box = (round(self.width * logo_box[0]),
                   max(1, min(round(self.height * logo_box[1]), room)))
            parts = [ImageOps.contain(self.logo, box, Image.Resampling.LANCZOS), *parts]
        total = sum(part.height for part in parts) + gap * (len(parts) - 1)
        canvas = Image.new("RGBA", (self.width, self.height), (*self.background_rgb, 255))
        top = (self.height - total) // 2
        for part in parts:
            canvas.alpha_composite(part, ((self.width - part.width) // 2, max(top, 0)))
            top += part.height + gap
        return np.asarray(canvas.convert("RGB"), dtype=np.uint8).copy()

    def _fade_in(self, frame: np.ndarray, frame_count: int) -> Iterator[FrameRun]:
        fade = max(0, min(round(FADE_SECONDS * self.fps), frame_count - 1))
        start = np.empty_like(frame, dtype=np.float32)
        start[...] = self.background_rgb
        end = frame.astype(np.float32)
        for number in range(fade):
            t = (number + 1) / (fade + 1)
            yield FrameRun((start * (1 - t) + end * t + 0.5).astype(np.uint8), 1)
        if frame_count - fade > 0:
            yield FrameRun(frame, frame_count - fade)

    # -- the logo ----------------------------------------------------------------------------

    def _load_logo(self, setting: str) -> Image.Image | None:
        """The logo as RGBA, or None with a note (never an error: the cards go on without)."""
        path = Path(setting.strip()).expanduser()
        if not path.is_file():
            return self._without_logo(path, "there is no such file")
        try:
            with Image.open(path) as opened:
                if opened.format not in LOGO_FORMATS:
                    return self._without_logo(path, f"it is a {opened.format} file, not a PNG "
                                                    "or JPEG picture")
                opened.draft("RGB", (MAX_LOGO_SIDE, MAX_LOGO_SIDE))  # JPEG: decode smaller
                image = ImageOps.exif_transpose(opened)
                image.load()
        except Image.DecompressionBombError:
            return self._without_logo(path, "the picture is far too large")
        except (OSError, ValueError, SyntaxError):  # not a picture, truncated, corrupt
            return self._without_logo(path, "it cannot be read as a PNG or JPEG picture")
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top byte
            image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
        image = image.convert("RGBA")  # palette and RGB transparency become alpha here
        image.thumbnail((MAX_LOGO_SIDE, MAX_LOGO_SIDE), Image.Resampling.LANCZOS)
        if image.getchannel("A").getbbox() is None:
            return self._without_logo(path, "the picture is entirely transparent")
        return image

    def _without_logo(self, path: Path, reason: str) -> None:
        log.warning("branding logo %s not used: %s", path, reason)
        self.notes.append(
            f"The school logo ({path.name}) was left off the intro and outro cards: {reason}. "
            "Ask your IT contact to check the setting branding.logo_path.")
        return None


def brand_cards(branding: BrandingSettings, storyboard: Storyboard, *,
                size: tuple[int, int], font: Path, fps: int) -> BrandCards | None:
    """The cards to draw, or None when the settings show none (see cards_shown)."""
    if not cards_shown(branding):
        return None
    return BrandCards(branding, storyboard, size=size, font=font, fps=fps)
