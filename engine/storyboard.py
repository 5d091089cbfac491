"""The Storyboard: what a video will show, scene by scene.

Every string and list is bounded, so a storyboard from any source (the rule-based drafter,
an LLM, a hostile message) is small and printable. Storyboards are immutable: an edit
makes a new one (`revise`), and `engine.history` keeps every version readable.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.errors import StoryboardError

Language = Literal["en", "zh"]
Aspect = Literal["16:9", "9:16", "1:1"]
LANGUAGES: tuple[str, ...] = ("en", "zh")
ASPECTS: tuple[str, ...] = ("16:9", "9:16", "1:1")

# Frame sizes of the animatic and of the final video, per aspect ratio (multiples of 16).
FRAME_SIZES: dict[str, tuple[int, int]] = {
    "16:9": (832, 480), "9:16": (480, 832), "1:1": (640, 640),
}

MAX_SCENES = 12
MIN_SCENE_SECONDS = 2
MAX_SCENE_SECONDS = 10
MAX_SEED = 2**31 - 1


# Control and format characters: they break captions, JSON and chats (surrogates: invalid).
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def _clean(text: Any) -> Any:
    """Collapse whitespace and refuse control characters: they break captions, JSON and chats."""
    if not isinstance(text, str):
        return text  # the str validator that follows names the type error
    text = " ".join(text.split())
    if any(unicodedata.category(ch) in REFUSED_CATEGORIES for ch in text):
        raise ValueError("contains control characters")
    return text


def _text(min_length: int, max_length: int) -> Any:
    return Annotated[
        str, BeforeValidator(_clean), Field(min_length=min_length, max_length=max_length)
    ]


StyleName = _text(1, 40)
Title = _text(1, 80)
Audience = _text(1, 40)
Visual = _text(1, 400)
Narration = _text(0, 400)
OnScreenText = _text(0, 80)
HexColor = Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$", max_length=7)]
SceneId = Annotated[str, Field(pattern=r"^[a-z0-9]{1,12}$", max_length=12)]
# An uploaded image's file name inside the uploads folder: never a path.
ImageRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", max_length=100)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Style(_Frozen):
    """One look shared by every scene: a name a diffusion prompt can use, and its colours."""

    name: StyleName
    background: HexColor
    accent: HexColor
    text: HexColor


class Scene(_Frozen):
    id: SceneId = Field(description="Stable across edits, so an edited scene is re-rendered alone.")
    visual: Visual = Field(description="What the picture shows: the prompt for the renderer.")
    narration: Narration = Field(description="What is said, shown as captions.")
    on_screen_text: OnScreenText | None = Field(None, description="A short title on the picture.")
    duration: int = Field(ge=MIN_SCENE_SECONDS, le=MAX_SCENE_SECONDS, description="Seconds.")
    image: ImageRef | None = Field(None, description="An uploaded image to animate.")
    seed: int = Field(ge=0, le=MAX_SEED)


class Storyboard(_Frozen):
    title: Title
    audience: Audience = Field(description="Who it is for, e.g. 'Grade 7'.")
    grade: int | None = Field(None, ge=0, le=13, description="0 kindergarten … 12, 13 adults.")
    language: Language
    aspect: Aspect
    style: Style
    title_card_seconds: int = Field(2, ge=0, le=5)
    scenes: list[Scene] = Field(min_length=1, max_length=MAX_SCENES)
    # The teacher's choices for the sound, over the settings': a voice (an espeak-ng voice
    # or a voice preset) and a music track ("none", or a file in the school's music folder).
    # "" leaves it to the settings. Set by plain edits ("voice en-gb", "no music").
    voice: str = Field("", max_length=80, pattern=r"^[A-Za-z0-9._+-]*$")
    music: str = Field("", max_length=120, pattern=r"^[^/\\\x00-\x1f]*$")
    # The teacher's render quality (config/models.toml levels), over the setting
    # diffusion.quality; "" leaves it to the settings. Set by plain edits ("draft quality").
    quality: Literal["", "draft", "standard", "high"] = ""

    @model_validator(mode="after")
    def _scene_ids_are_unique(self) -> Storyboard:
        ids = [scene.id for scene in self.scenes]
        if len(set(ids)) != len(ids):
            raise ValueError("scene ids must be unique")
        return self

    @property
    def total_seconds(self) -> int:
        """The length of the video: the title card and every scene."""
        return self.title_card_seconds + sum(scene.duration for scene in self.scenes)

    @property
    def frame_size(self) -> tuple[int, int]:
        return FRAME_SIZES[self.aspect]

    def revise(self, **changes: Any) -> Storyboard:
        """A new, validated storyboard with `changes` applied; this one is left as it was."""
        return Storyboard.model_validate({**self.model_dump(), **changes})

    def check_total(self, max_total_seconds: int) -> None:
        """The settings' length limit, which the schema alone cannot know."""
        if self.total_seconds > max_total_seconds:
            raise StoryboardError(
                f"This storyboard runs {format_seconds(self.total_seconds)}, longer than the "
                f"{format_seconds(max_total_seconds)} limit; shorten or remove a scene."
            )


def derived_id(salt: str, taken: Collection[str] = ()) -> str:
    """A scene id made from `salt` (so drafts and edits are repeatable) that is not `taken`."""
    counter = 0
    while True:
        candidate = hashlib.sha256(f"{counter}:{salt}".encode()).hexdigest()[:8]
        if candidate not in taken:
            return candidate
        counter += 1


def derived_seed(salt: str) -> int:
    digest = hashlib.sha256(f"seed:{salt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (MAX_SEED + 1)


def storyboard_json_schema() -> dict[str, Any]:
    """The JSON schema of a storyboard, the contract for every producer (LLM grammars included)."""
    return Storyboard.model_json_schema()


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    minutes, rest = divmod(seconds, 60)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"
