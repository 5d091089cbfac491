"""Text on frames: one font for Chinese and Latin, line wrapping for both, cheap overlays.

Text is drawn once into an `Overlay` (premultiplied colour and alpha) and then blended onto
as many frames as need it, touching only the overlay's rectangle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.errors import SettingsError

# Noto Sans CJK SC Bold, cut to Latin, Greek, Cyrillic, punctuation and the 6,763 GB2312
# hanzi (worker/assets/fonts/README.md says how), so a fresh clone renders Chinese captions.
BUNDLED_FONT = Path(__file__).parent / "assets" / "fonts" / "NotoSansSC-Bold-GB2312.otf"

# A CJK character (or full-width punctuation) is its own token: lines may break between any two.
_TOKEN = re.compile(
    r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"
    r"|[^\s\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]+"
    r"|\s+"
)
# Punctuation that must not start a line (kinsoku): it stays on the line before.
_NO_LINE_START = set("，。、；：！？）》」』’”,.;:!?)")


def font_file(configured: str) -> Path:
    if not configured:
        return BUNDLED_FONT
    path = Path(configured).expanduser()
    if not path.is_file():
        raise SettingsError(
            f"Setting render.font_path names {path}, which is not a font file; "
            "point it at a .ttf/.otf/.ttc file or leave it empty for the bundled font."
        )
    return path


@cache
def load_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        raise SettingsError(f"The font {path} cannot be read; check render.font_path.") from None


def wrap(text: str, font: ImageFont.FreeTypeFont, max_width: int, max_lines: int) -> list[str]:
    """Break text into lines no wider than max_width (a word or a hanzi at a time)."""
    lines: list[str] = []
    current = ""
    for token in _tokens(text, font, max_width):
        candidate = current + token
        fits = font.getlength(candidate.rstrip()) <= max_width
        if fits or not current.strip() or token[0] in _NO_LINE_START:
            current = candidate
            continue
        lines.append(current.rstrip())
        current = token.lstrip()
    if current.strip():
        lines.append(current.rstrip())
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _ellipsize(lines[-1], font, max_width)
    return lines


def _tokens(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    """Words and hanzi; a word wider than a whole line is cut into letters that can wrap."""
    tokens: list[str] = []
    for token in _TOKEN.findall(text):
        if not token.isspace() and font.getlength(token) > max_width:
            tokens.extend(token)
        else:
            tokens.append(token)
    return tokens


def _ellipsize(line: str, font: ImageFont.FreeTypeFont, max_width: int) -> str:
    while line and font.getlength(line + "…") > max_width:
        line = line[:-1]
    return line.rstrip() + "…"


@dataclass(frozen=True)
class Overlay:
    """An RGBA picture placed at (x, y), stored ready for blending."""

    x: int
    y: int
    colour: np.ndarray  # float32 (h, w, 3), premultiplied by alpha
    keep: np.ndarray  # float32 (h, w, 1): 1 - alpha

    @classmethod
    def from_image(cls, image: Image.Image, x: int, y: int) -> Overlay:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        return cls(x, y, rgba[..., :3] * alpha * 255.0, 1.0 - alpha)

    def blend_onto(self, frame: np.ndarray) -> np.ndarray:
        """A copy of `frame` with this overlay on top."""
        out = frame.copy()
        height, width = self.keep.shape[:2]
        # Clip to the frame: an overlay hanging over an edge is cut, never an error.
        top, left = max(self.y, 0), max(self.x, 0)
        bottom = min(self.y + height, frame.shape[0])
        right = min(self.x + width, frame.shape[1])
        if top >= bottom or left >= right:
            return out
        inside = (slice(top - self.y, bottom - self.y), slice(left - self.x, right - self.x))
        region = out[top:bottom, left:right]
        mixed = region.astype(np.float32) * self.keep[inside] + self.colour[inside]
        region[...] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
        return out


def text_panel(
    lines: list[str], font: ImageFont.FreeTypeFont, *, fill: str | tuple[int, ...],
    box: tuple[int, int, int, int] | None = None, padding: int = 0, line_gap: float = 0.25,
    align: str = "center", stroke: int = 0, stroke_fill: str | tuple[int, ...] | None = None,
) -> Image.Image:
    """Lines of text on a transparent (or boxed) RGBA image just large enough to hold them."""
    ascent, descent = font.getmetrics()
    line_height = ascent + descent
    step = round(line_height * (1 + line_gap))
    width = max((round(font.getlength(line)) for line in lines), default=0) + 2 * (padding + stroke)
    height = step * (len(lines) - 1) + line_height + 2 * (padding + stroke) if lines else 0
    image = Image.new("RGBA", (max(width, 1), max(height, 1)), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    if box is not None:
        draw.rounded_rectangle(
            (0, 0, width - 1, height - 1), radius=max(4, padding // 2), fill=box
        )
    for index, line in enumerate(lines):
        line_width = font.getlength(line)
        x = (width - line_width) / 2 if align == "center" else padding + stroke
        y = padding + stroke + index * step
        draw.text((x, y), line, font=font, fill=fill, stroke_width=stroke, stroke_fill=stroke_fill)
    return image


def hex_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)
