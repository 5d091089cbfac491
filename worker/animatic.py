"""The animatic renderer: every scene drawn on the CPU in milliseconds.

A scene is a clean background in the storyboard's colours with a panel describing the shot,
or the scene's uploaded image with a slow pan and zoom; its on-screen text is the title.
Captions are not drawn here: compose.py burns them into every renderer's frames alike.

Frames come out as runs (a frame and how many times it repeats), so a still scene costs
one picture, not 24 a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from engine.errors import RenderError
from engine.storyboard import Scene, Storyboard, format_seconds
from worker.frames import FrameRun
from worker.text import Overlay, hex_rgb, load_font, text_panel, wrap

FADE_SECONDS = 0.33
# Ken Burns: the image starts whole and ends this much closer.
ZOOM = 1.15
# Images larger than this are shrunk on load; a phone photo is plenty.
MAX_SOURCE_SIDE = 2048

SCENE_LABEL = {"en": "Scene {n}", "zh": "场景 {n}"}


class AnimaticRenderer:
    def __init__(self, storyboard: Storyboard, *, fps: int, font: Path, uploads: Path,
                 size: tuple[int, int] | None = None) -> None:
        self.storyboard = storyboard
        self.width, self.height = size or storyboard.frame_size
        self.fps = fps
        self.font = font
        self.uploads = uploads
        self.unit = min(self.width, self.height)  # sizes scale with the short side
        style = storyboard.style
        self.background_rgb = hex_rgb(style.background)
        self.accent_rgb = hex_rgb(style.accent)
        self.text_rgb = hex_rgb(style.text)
        self.background = self._background()

    # -- what compose.py calls ---------------------------------------------------------------

    def title_card(self, frame_count: int) -> Iterator[FrameRun]:
        board = self.storyboard
        title_font = load_font(self.font, round(self.unit * 0.085))
        title_lines = wrap(board.title, title_font, round(self.width * 0.84), 3)
        title = text_panel(title_lines, title_font, fill=self.text_rgb)
        info_font = load_font(self.font, round(self.unit * 0.042))
        info = text_panel(
            [f"{board.audience}  ·  {format_seconds(board.total_seconds)}"],
            info_font, fill=self.accent_rgb,
        )
        gap = round(self.unit * 0.05)
        top = (self.height - (title.height + gap + info.height)) // 2
        frame = self.background.copy()
        frame = Overlay.from_image(title, (self.width - title.width) // 2, top).blend_onto(frame)
        bar_y = top + title.height + gap // 2
        bar_half = round(self.unit * 0.08)
        centre = self.width // 2
        frame[bar_y - 2 : bar_y + 2, centre - bar_half : centre + bar_half] = self.accent_rgb
        info_overlay = Overlay.from_image(info, (self.width - info.width) // 2, bar_y + gap // 2)
        yield from self._fade_in(info_overlay.blend_onto(frame), frame_count)

    def scene(self, index: int, frame_count: int) -> Iterator[FrameRun]:
        scene = self.storyboard.scenes[index]
        overlays = self.scene_overlays(scene, index, on_image=scene.image is not None)
        if scene.image is None:
            frame = self._panel_frame(scene, index)
            for overlay in overlays:
                frame = overlay.blend_onto(frame)
            yield from self._fade_in(frame, frame_count)
            return
        # Cover the frame with room to zoom: fit to ZOOM x the frame, cropping what spills over.
        cover = (round(self.width * ZOOM), round(self.height * ZOOM))
        source = ImageOps.fit(self.open_upload(scene, index), cover,
                              method=Image.Resampling.LANCZOS)
        for number in range(frame_count):
            frame = self._pan_zoom(source, number / max(frame_count - 1, 1), index)
            for overlay in overlays:
                frame = overlay.blend_onto(frame)
            yield FrameRun(frame, 1)

    # -- drawing -----------------------------------------------------------------------------

    def _background(self) -> np.ndarray:
        """A soft vertical gradient with a faint accent circle: calm, and cheap to encode."""
        top = np.array(self.background_rgb, dtype=np.float32)
        bottom = top * 0.88
        ramp = np.linspace(0.0, 1.0, self.height, dtype=np.float32)[:, None, None]
        frame = top * (1 - ramp) + bottom * ramp
        frame = np.broadcast_to(frame, (self.height, self.width, 3))
        image = Image.fromarray(np.clip(frame + 0.5, 0, 255).astype(np.uint8))
        decor = Image.new("RGBA", image.size, (0, 0, 0, 0))
        radius = round(self.unit * 0.45)
        ImageDraw.Draw(decor).ellipse(
            (self.width - radius, -radius, self.width + radius, radius),
            fill=(*self.accent_rgb, 28),
        )
        image.paste(decor, (0, 0), decor)
        return np.asarray(image, dtype=np.uint8).copy()

    def scene_overlays(self, scene: Scene, index: int, *, on_image: bool) -> list[Overlay]:
        """The scene's title and counter; on a picture, white with a dark outline."""
        overlays = []
        margin = round(self.unit * 0.05)
        if scene.on_screen_text:
            title_font = load_font(self.font, round(self.unit * 0.07))
            lines = wrap(scene.on_screen_text, title_font, round(self.width * 0.8), 2)
            title = text_panel(
                lines, title_font, fill=self.accent_rgb if not on_image else (255, 255, 255),
                stroke=2 if on_image else 0, stroke_fill=(0, 0, 0),
            )
            overlays.append(Overlay.from_image(title, (self.width - title.width) // 2, margin))
        counter_font = load_font(self.font, round(self.unit * 0.032))
        counter = text_panel(
            [f"{index + 1}/{len(self.storyboard.scenes)}"], counter_font,
            fill=self.text_rgb if not on_image else (255, 255, 255),
            stroke=1 if on_image else 0, stroke_fill=(0, 0, 0),
        )
        overlays.append(Overlay.from_image(counter, self.width - counter.width - margin // 2,
                                           margin // 2))
        return overlays

    def _panel_frame(self, scene: Scene, index: int) -> np.ndarray:
        """The shot, described: a card with the scene's visual prompt where the picture will be."""
        image = Image.fromarray(self.background)
        draw = ImageDraw.Draw(image)
        left, right = round(self.width * 0.1), round(self.width * 0.9)
        top = round(self.height * (0.24 if self.width >= self.height else 0.2))
        bottom = round(self.height * (0.72 if self.width >= self.height else 0.7))
        fill = tuple(round(b * 0.93 + t * 0.07) for b, t in zip(self.background_rgb,
                                                                 self.text_rgb, strict=True))
        draw.rounded_rectangle((left, top, right, bottom), radius=round(self.unit * 0.03),
                               fill=fill, outline=self.accent_rgb, width=3)
        label_font = load_font(self.font, round(self.unit * 0.034))
        pad = round(self.unit * 0.03)
        label = SCENE_LABEL[self.storyboard.language].format(n=index + 1)
        draw.text((left + pad, top + pad), label, font=label_font, fill=self.accent_rgb)
        body_font = load_font(self.font, round(self.unit * 0.045))
        lines = wrap(scene.visual, body_font, right - left - 2 * pad, 5)
        body = text_panel(lines, body_font, fill=self.text_rgb)
        body_top = top + (bottom - top - body.height) // 2 + pad // 2
        image.paste(body, ((self.width - body.width) // 2, body_top), body)
        return np.asarray(image, dtype=np.uint8).copy()

    def _fade_in(self, frame: np.ndarray, frame_count: int) -> Iterator[FrameRun]:
        fade = min(round(FADE_SECONDS * self.fps), frame_count - 1)
        start = self.background.astype(np.float32)
        end = frame.astype(np.float32)
        for number in range(fade):
            t = (number + 1) / (fade + 1)
            yield FrameRun((start * (1 - t) + end * t + 0.5).astype(np.uint8), 1)
        yield FrameRun(frame, frame_count - fade)

    def open_upload(self, scene: Scene, index: int) -> Image.Image:
        """The scene's uploaded picture, only ever from inside the uploads folder."""
        root = self.uploads.resolve()
        path = (root / str(scene.image)).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise RenderError(
                f"Scene {index + 1}'s image {scene.image!r} is not among the uploaded images; "
                "send the picture again or remove it from the scene."
            )
        try:
            with Image.open(path) as opened:
                opened.draft("RGB", (MAX_SOURCE_SIDE, MAX_SOURCE_SIDE))  # JPEG: decode smaller
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, Image.DecompressionBombError, ValueError):
            raise RenderError(
                f"Scene {index + 1}'s image {scene.image!r} cannot be read as a picture; "
                "send it again as a JPEG or PNG."
            ) from None
        return image

    def _pan_zoom(self, source: Image.Image, t: float, index: int) -> np.ndarray:
        """The frame at time t in [0, 1]: zooming in from the whole image, drifting sideways."""
        eased = t * t * (3 - 2 * t)
        scale = 1 + (ZOOM - 1) * eased  # 1 = whole source, ZOOM = one frame's worth of pixels
        crop_w, crop_h = source.width / scale, source.height / scale
        spare_x, spare_y = source.width - crop_w, source.height - crop_h
        drift = eased if index % 2 == 0 else 1 - eased  # alternate direction scene to scene
        left = spare_x * (0.5 + (drift - 0.5) * 0.8)
        top = spare_y * 0.5
        box = (left, top, left + crop_w, top + crop_h)
        frame = source.resize((self.width, self.height), Image.Resampling.BILINEAR, box=box)
        return np.asarray(frame, dtype=np.uint8).copy()
