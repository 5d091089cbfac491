"""Still pictures of a video: the poster and the contact sheet (one numbered thumbnail a scene)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.storyboard import Storyboard, format_seconds
from worker.text import hex_rgb, load_font, wrap

THUMB_LONG_SIDE = 320
COLUMNS = 4
SHEET_BACKGROUND = (245, 246, 248)
INK = (30, 34, 40)
SCENES_LABEL = {"en": "{n} scenes", "zh": "{n} 个场景"}


def save_poster(frame: np.ndarray, path: Path) -> None:
    Image.fromarray(frame).save(path, "JPEG", quality=88, optimize=True, progressive=True)


def contact_sheet(storyboard: Storyboard, stills: list[np.ndarray], font: Path) -> Image.Image:
    """A grid of the scenes' middle frames, each numbered and timed, under the title."""
    first = Image.fromarray(stills[0])
    scale = THUMB_LONG_SIDE / max(first.size)
    thumb_w, thumb_h = round(first.width * scale), round(first.height * scale)
    columns = min(COLUMNS, len(stills))
    rows = math.ceil(len(stills) / columns)
    gap = 16
    header = 84
    width = columns * thumb_w + (columns + 1) * gap
    height = header + rows * (thumb_h + gap) + gap
    sheet = Image.new("RGB", (width, height), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    title_font = load_font(font, 26)
    small_font = load_font(font, 16)
    title = wrap(storyboard.title, title_font, width - 2 * gap, 1)[0]
    draw.text((gap, 10), title, font=title_font, fill=INK)
    scenes = SCENES_LABEL[storyboard.language].format(n=len(stills))
    summary = f"{storyboard.audience} · {scenes} · {format_seconds(storyboard.total_seconds)}"
    draw.text((gap, 52), summary, font=small_font, fill=(90, 96, 104))
    accent = hex_rgb(storyboard.style.accent)
    badge_font = load_font(font, 18)
    for index, (still, scene) in enumerate(zip(stills, storyboard.scenes, strict=False)):
        row, column = divmod(index, columns)
        x = gap + column * (thumb_w + gap)
        y = header + row * (thumb_h + gap)
        thumb = Image.fromarray(still).resize((thumb_w, thumb_h), Image.Resampling.LANCZOS)
        sheet.paste(thumb, (x, y))
        draw.rectangle((x - 1, y - 1, x + thumb_w, y + thumb_h), outline=(200, 204, 210))
        radius = 15
        draw.ellipse((x + 6, y + 6, x + 6 + 2 * radius, y + 6 + 2 * radius), fill=accent,
                     outline=(255, 255, 255), width=2)
        draw.text((x + 6 + radius, y + 6 + radius), str(index + 1), font=badge_font,
                  fill=(255, 255, 255), anchor="mm")
        label = f"{scene.duration} s"
        spot = (x + 2 * radius + 20, y + 6 + radius)  # right of the number badge
        left, top, right, bottom = draw.textbbox(spot, label, font=small_font, anchor="lm")
        draw.rounded_rectangle((left - 5, top - 4, right + 5, bottom + 4), radius=6,
                               fill=(0, 0, 0))
        draw.text(spot, label, font=small_font, fill=(255, 255, 255), anchor="lm")
    return sheet
