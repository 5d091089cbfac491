"""The optional moderation classifier: a second opinion on what the word lists pass.

The word lists (engine/moderation.py) always run first, and when they block, they decide alone.
When `moderation.classifier` names a preset of config/classifiers.toml, the text they pass is
also read by a safety classifier model, Llama Guard 3 (a GGUF file run by llama.cpp), and
refused when it answers "unsafe":

1. The prompt is Llama Guard 3's own: the hazard categories the preset asks about, then the
   text as the one "User" turn of a conversation. The text is tokenized as plain text, so a
   "<|eot_id|>" typed by a teacher is characters, not the model's end-of-turn token.
2. Decoding is greedy and constrained by a GBNF grammar to `safe` or `unsafe\\nS<n>(,S<n>)*`,
   over the preset's codes only.
3. The answer becomes a `Verdict`: its Llama Guard code is mapped to our category (`HAZARDS`),
   and its rule ("classifier:S1") is what the audit log keeps.

When the classifier cannot answer (no model file, no llama.cpp, too slow, an answer that is
neither "safe" nor "unsafe"), `moderation.classifier_fails` decides: "closed", the default for
an audience of minors, refuses with `ModerationUnavailable`, whose sentence the chat shows;
"open" lets the text through and logs a warning.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.errors import SettingsError, UserError
from engine.llm import load_gguf, load_grammar
from engine.moderation import ALLOWED, CATEGORIES, Verdict
from engine.paths import CONFIG_DIR
from engine.preset_files import read_presets
from engine.settings import Settings

log = logging.getLogger(__name__)

PRESETS_FILE = CONFIG_DIR / "classifiers.toml"
OTHER = "other"  # a hazard outside our five categories: crime, defamation, elections…
# Llama Guard 3's hazard codes: (the name its prompt gives, the category our verdict names).
HAZARDS: dict[str, tuple[str, str]] = {
    "S1": ("Violent Crimes", "violence"),
    "S2": ("Non-Violent Crimes", OTHER),
    "S3": ("Sex Crimes", "sexual"),
    "S4": ("Child Exploitation", "sexual"),
    "S5": ("Defamation", OTHER),
    "S6": ("Specialized Advice", OTHER),
    "S7": ("Privacy", "personal_data"),
    "S8": ("Intellectual Property", OTHER),
    "S9": ("Indiscriminate Weapons", "violence"),
    "S10": ("Hate", "hate"),
    "S11": ("Self-Harm", "self_harm"),
    "S12": ("Sexual Content", "sexual"),
    "S13": ("Elections", OTHER),
    "S14": ("Code Interpreter Abuse", OTHER),
}
UNAVAILABLE = ("Moderation is unavailable right now, so I can't check this and nothing was "
               "changed. Please try again in a few minutes; if it keeps happening, tell your IT "
               "contact (the server log says why).")


class ModerationUnavailable(UserError):
    """The classifier could not answer and fails closed: nothing passes unchecked."""


class ClassifierError(Exception):
    """Why the classifier gave no verdict, for the log (never the text it read)."""


# 1. Presets.

class ClassifierPreset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = ""
    title: str
    repo: str
    revision: str = "main"
    file: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\.gguf$")
    prompt: Literal["llama-guard-3"]
    codes: tuple[str, ...] = Field(min_length=1)

    @field_validator("codes")
    @classmethod
    def _known_codes(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [code for code in codes if code not in HAZARDS]
        if unknown:
            raise ValueError(f"unknown codes {unknown}; allowed: {', '.join(HAZARDS)}")
        if len(set(codes)) != len(codes):
            raise ValueError("a code is listed twice")
        return codes


@cache
def load_classifier_presets(path: Path = PRESETS_FILE) -> dict[str, ClassifierPreset]:
    return read_presets(path, ClassifierPreset, "Classifier preset")


# 2. The prompt, the grammar and the answer.

TASK = ("Task: Check if there is unsafe content in 'User' messages in conversations according "
        "our safety policy with the below categories.")  # sic: the words it was trained on
INSTRUCTIONS = (
    "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)
# The prompt's own section markers, broken up where the text holds them ("< END CONVERSATION").
_MARKER = re.compile(r"<(?=\s*(?:BEGIN|END)\b)", re.I)
_CODE = re.compile(r"S[0-9]{1,2}")


def llama_guard_prompt(text: str, codes: Sequence[str]) -> tuple[str, str, str]:
    """Llama Guard 3's prompt for `text` in three parts: before it, the text, after it. Only
    the first and last may hold control tokens; the model's BOS token goes before all three."""
    categories = "\n".join(f"{code}: {HAZARDS[code][0]}." for code in codes)
    before = (
        "<|start_header_id|>user<|end_header_id|>\n\n"
        f"{TASK}\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        "<BEGIN CONVERSATION>\n\nUser:"
    )
    # Meta's template ends at the assistant header; the blank line after it is the one every
    # Llama 3 turn starts with, written here because the grammar lets the answer hold none.
    after = (
        f"\n\n<END CONVERSATION>\n\n{INSTRUCTIONS} "
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # The space goes with the text: " Explain" is one token, as in the model's training.
    return before, " " + _MARKER.sub("< ", text.strip()), after


def llama_guard_grammar(codes: Sequence[str]) -> str:
    """GBNF for the only answers we accept: `safe`, or `unsafe` and the codes asked about."""
    alternatives = " | ".join(f'"{code}"' for code in codes)
    return f'root ::= "safe" | "unsafe\\n" code ("," code)*\ncode ::= {alternatives}\n'


def parse_answer(answer: str) -> Verdict:
    """Llama Guard's answer as a verdict; ClassifierError when it is neither safe nor unsafe.

    "unsafe" decides on its own: a code list cut off at max_tokens loses its last, partial
    code, and an unsafe answer with no code we can read still refuses, as "other"."""
    first, _, rest = answer.strip().partition("\n")
    if first.strip() == "safe" and not rest.strip():
        return ALLOWED
    if first.strip() != "unsafe":
        raise ClassifierError(f"an answer that is neither safe nor unsafe: {answer[:40]!r}")
    codes = [code for code in (part.strip() for part in rest.split(",")) if _CODE.fullmatch(code)]
    if not codes:
        return Verdict(False, OTHER, "classifier:unsafe")
    # As with the word lists, the most specific of our categories names the verdict.
    code = min(codes, key=lambda code: _rank(_category(code)))
    return Verdict(False, _category(code), f"classifier:{code}")


def _category(code: str) -> str:
    return HAZARDS[code][1] if code in HAZARDS else OTHER


def _rank(category: str) -> int:
    return CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES)


# 3. Running the model.

class LlamaGuard:
    """Llama Guard 3 in llama.cpp, loaded at its first check: a text in, its raw answer out.

    Loading waits for the first check, so a bot starts as fast without the file as with it; a
    failed load is tried again at the next check (the file may have been copied in since)."""

    def __init__(self, path: Path, preset: ClassifierPreset, settings: Settings, *,
                 clock: Callable[[], float] = time.monotonic, temperature: float = 0.0) -> None:
        self.path = path
        self.preset = preset
        self.grammar_text = llama_guard_grammar(preset.codes)
        self._options = settings.moderation
        self._llm = settings.llm  # the same machine runs both models: same layers and threads
        self._clock = clock
        # 0: greedy, as Llama Guard is meant to run. Tests sample at 1.0 to walk the grammar.
        self._temperature = temperature
        self._lock = threading.Lock()  # one llama.cpp context serves one check at a time
        self._model: tuple[Any, Any] | None = None  # (llama_cpp.Llama, llama_cpp.LlamaGrammar)

    def __call__(self, text: str) -> str:
        with self._lock:
            llama, grammar = self._loaded()
            from llama_cpp import StoppingCriteriaList  # there once a model has loaded

            tokens = self._tokens(llama, text)
            room = self._options.context - self._options.max_tokens
            if len(tokens) > room:
                raise ClassifierError(f"a text of {len(tokens)} tokens is longer than "
                                      f"moderation.context leaves room for ({room})")
            # llama.cpp asks after each answer token whether to stop; reading the prompt
            # itself cannot be interrupted, so a very long text may overrun the timeout.
            deadline = self._clock() + self._options.timeout_seconds
            timed_out = False

            def past_deadline(_tokens: Any, _logits: Any) -> bool:
                nonlocal timed_out
                timed_out = timed_out or self._clock() > deadline
                return timed_out

            try:
                completion = llama.create_completion(
                    prompt=tokens, grammar=grammar, max_tokens=self._options.max_tokens,
                    temperature=self._temperature,
                    stopping_criteria=StoppingCriteriaList([past_deadline]),
                )
            except (ValueError, RuntimeError) as exc:  # llama.cpp refused the request
                raise ClassifierError(f"llama.cpp failed: {exc}") from None
            if timed_out:
                raise ClassifierError(f"no answer within moderation.timeout_seconds "
                                      f"({self._options.timeout_seconds:g} s)")
            return completion["choices"][0]["text"]

    def prompt_tokens(self, text: str) -> list[int]:
        """The tokens the model reads for `text` (loading it if need be)."""
        with self._lock:
            return self._tokens(self._loaded()[0], text)

    def _loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            if not self.path.is_file():
                raise ClassifierError(_missing_file(self.path, self.preset))
            try:
                llama = load_gguf(self.path, context=self._options.context,
                                  gpu_layers=self._llm.gpu_layers, threads=self._llm.threads)
                grammar = load_grammar(self.grammar_text, "the moderation classifier's")
            except SettingsError as exc:
                raise ClassifierError(str(exc)) from None
            self._model = (llama, grammar)
        return self._model

    def _tokens(self, llama: Any, text: str) -> list[int]:
        before, text, after = llama_guard_prompt(text, self.preset.codes)
        # add_bos: the model's BOS token when its metadata asks for one (Llama 3 does).
        return (llama.tokenize(before.encode("utf-8"), add_bos=True, special=True)
                + llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                + llama.tokenize(after.encode("utf-8"), add_bos=False, special=True))


def _missing_file(path: Path, preset: ClassifierPreset) -> str:
    return (f"the classifier's model file {path} is missing: download {preset.file} from "
            f"{preset.repo} on a machine with internet access (config/classifiers.toml says "
            "how) and copy it there, or point moderation.model_path at it")


# 4. The classifier, as the policy sees it.

class Classifier:
    """A text's verdict from a safety classifier, with `moderation.classifier_fails` applied."""

    def __init__(self, complete: Callable[[str], str], *, fails: Literal["closed", "open"],
                 name: str) -> None:
        # The seam: a text in, the model's raw answer out, ClassifierError when there is none.
        self.complete = complete
        self.fails = fails
        self.name = name

    def __call__(self, text: str) -> Verdict:
        try:
            return parse_answer(self.complete(text))
        except ClassifierError as exc:
            log.warning("moderation classifier %s gave no verdict (%s); failing %s",
                        self.name, exc, self.fails)
            if self.fails == "open":
                return ALLOWED
            raise ModerationUnavailable(UNAVAILABLE) from None


def load_classifier(settings: Settings) -> Classifier | None:
    """The classifier `moderation.classifier` names, or None when it is off. A name that is
    not a preset stops start-up; a missing model file is only warned about here, and
    `moderation.classifier_fails` decides at each check until it is there."""
    options = settings.moderation
    if not options.classifier:
        return None
    presets = load_classifier_presets()
    if options.classifier not in presets:
        raise SettingsError(
            f"Setting moderation.classifier names {options.classifier!r}, which is not a "
            f"classifier preset; the presets are: {', '.join(presets)} (empty: no classifier)."
        )
    preset = presets[options.classifier]
    if options.model_path:
        path = Path(options.model_path).expanduser()
    else:
        path = settings.models_path / preset.file
    if not path.is_file():
        log.warning("moderation: %s; until then every check fails %s", _missing_file(path, preset),
                    options.classifier_fails)
    return Classifier(LlamaGuard(path, preset, settings), fails=options.classifier_fails,
                      name=preset.name)
