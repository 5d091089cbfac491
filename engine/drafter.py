"""The rule-based drafter: a request in, a sensible storyboard out, with no language model.

It is the fallback when no LLM is installed, and the baseline an LLM must beat. The shape is
always a lesson: a hook, explanation steps, an example, a recap. The words come from the
subject templates in prompts/subjects/ (data, not code); the length and the audience come
from the request when the teacher states them.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from engine.paths import CONFIG_DIR, PROMPTS_DIR
from engine.request import read_request
from engine.settings import Settings
from engine.storyboard import (
    MAX_SCENE_SECONDS,
    MAX_SCENES,
    MIN_SCENE_SECONDS,
    Scene,
    Storyboard,
    Style,
    derived_id,
    derived_seed,
    format_seconds,
)

GENERIC_SUBJECT = "general"
# A scene of about this many seconds holds one idea and one or two spoken sentences.
TARGET_SCENE_SECONDS = 6
DEFAULT_AUDIENCE = {"en": "Students", "zh": "学生"}


@dataclass(frozen=True)
class SubjectTemplate:
    subject: str
    style: str
    keywords: dict[str, list[str]]
    sections: dict[str, dict[str, Any]]  # language -> title, hook, steps, example, recap

    def score(self, text: str) -> int:
        """How strongly a request is about this subject: longer keyword hits weigh more."""
        lowered = text.lower()
        total = 0
        for word in self.keywords.get("en", []):
            if re.search(rf"\b{re.escape(word)}(?:s|es)?\b", lowered):  # magnet(s)
                total += len(word)
        for word in self.keywords.get("zh", []):
            if word in text:
                total += 3 * len(word)  # a hanzi carries about as much as three Latin letters
        return total


@dataclass(frozen=True)
class Draft:
    storyboard: Storyboard
    subject: str
    notes: tuple[str, ...]  # things the teacher should know, e.g. a length that was capped


def draft_storyboard(
    text: str, settings: Settings, *, language: str | None = None, aspect: str | None = None,
) -> Draft:
    """Draft a storyboard from a teacher's request; RequestError if the request cannot be used."""
    request = read_request(
        text,
        max_chars=settings.limits.max_request_chars,
        max_seconds=settings.limits.max_total_seconds,
        min_seconds=settings.limits.min_total_seconds,
        language=language,
    )
    notes: list[str] = []
    title_seconds = settings.storyboard.title_card_seconds
    total = request.seconds or settings.storyboard.total_seconds
    body = total - title_seconds
    longest = MAX_SCENES * MAX_SCENE_SECONDS
    if body > longest:
        body = longest
        notes.append(
            f"A storyboard holds at most {MAX_SCENES} scenes of {MAX_SCENE_SECONDS} s, so this "
            f"one runs {format_seconds(title_seconds + body)} instead of {format_seconds(total)}."
        )
    body = max(body, MIN_SCENE_SECONDS)

    subject = choose_subject(request.text)
    words = subject.sections[request.language]
    generic = subjects()[GENERIC_SUBJECT].sections[request.language]
    durations = split_seconds(body)
    fill = _Filler(request.topic)
    scenes = [
        Scene(
            id=derived_id(f"{index}:{request.text}"),
            visual=fill(part["visual"], number),
            narration=fill(part["narration"], number),
            on_screen_text=fill(part.get("on_screen", ""), number) or None,
            duration=seconds,
            seed=derived_seed(f"{index}:{request.text}"),
        )
        for index, ((part, number), seconds) in enumerate(
            zip(_lesson_parts(words, generic, len(durations)), durations, strict=True)
        )
    ]
    storyboard = Storyboard(
        title=fill(words["title"], 0)[:80],
        audience=(request.audience or DEFAULT_AUDIENCE[request.language])[:40],
        grade=request.grade,
        language=request.language,
        aspect=aspect or settings.storyboard.aspect,
        style=styles()[subject.style],
        title_card_seconds=title_seconds,
        scenes=scenes,
    )
    storyboard.check_total(settings.limits.max_total_seconds)
    return Draft(storyboard, subject.subject, tuple(notes))


def split_seconds(body: int) -> list[int]:
    """Whole-second scene durations, each 2-10 s, about 6 s long, adding up to `body` exactly."""
    fewest = math.ceil(body / MAX_SCENE_SECONDS)
    most = max(1, min(MAX_SCENES, body // MIN_SCENE_SECONDS))
    count = min(most, max(fewest, round(body / TARGET_SCENE_SECONDS), 1))
    base, extra = divmod(body, count)
    return [base + 1 if i < extra else base for i in range(count)]


def choose_subject(text: str) -> SubjectTemplate:
    known = subjects()
    best = max(known.values(), key=lambda template: template.score(text))
    return best if best.score(text) > 0 else known[GENERIC_SUBJECT]


@cache
def subjects(directory: Path = PROMPTS_DIR / "subjects") -> dict[str, SubjectTemplate]:
    found: dict[str, SubjectTemplate] = {}
    for path in sorted(directory.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        template = SubjectTemplate(
            subject=data["subject"],
            style=data["style"],
            keywords=data.get("keywords", {}),
            sections={lang: data[lang] for lang in ("en", "zh")},
        )
        found[template.subject] = template
    return found


@cache
def styles(path: Path = CONFIG_DIR / "styles.toml") -> dict[str, Style]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {key: Style(**value) for key, value in data.items()}


def style_key(style: Style) -> str:
    """The configured key of a style ("nature"); its name if it is not a configured one."""
    return next((key for key, known in styles().items() if known == style), style.name)


def _lesson_parts(
    words: dict[str, Any], generic: dict[str, Any], count: int,
) -> list[tuple[dict[str, str], int]]:
    """Hook, steps, example, recap — trimmed to `count` scenes; each with its step number."""
    steps = list(words["steps"])
    steps += [step for step in generic["steps"] if step not in steps]
    if count == 1:
        return [(words["hook"], 0)]
    if count == 2:
        return [(words["hook"], 0), (words["recap"], 0)]
    step_count = count - 2 if count == 3 else count - 3
    chosen = [(steps[min(i, len(steps) - 1)], i + 1) for i in range(step_count)]
    middle = chosen if count == 3 else [*chosen, (words["example"], 0)]
    return [(words["hook"], 0), *middle, (words["recap"], 0)]


class _Filler:
    """Fills {topic}, {Topic} and {n} in one pass: the topic is text, never a template."""

    PLACEHOLDER = re.compile(r"\{(topic|Topic|n)\}")

    def __init__(self, topic: str) -> None:
        self.values = {"topic": topic, "Topic": topic[:1].upper() + topic[1:]}

    def __call__(self, template: str, number: int) -> str:
        values = {**self.values, "n": str(number)}
        return self.PLACEHOLDER.sub(lambda match: values[match[1]], template)
