"""Moderation: one policy for a teacher's text and every storyboard field before a render.

The audience is minors, so the policy blocks five categories (`CATEGORIES`) using word lists
kept as data in config/moderation/<language>.toml. Each file declares how its words match:

- "words" (English): whole words and phrases, case-insensitive, after NFKC normalisation, with
  obfuscation undone first: spaced letters ("k i l l", "k.i.l.l"), leetspeak inside words that
  are mostly letters ("k1ll", "$uicide"), stretched letters ("kiiill"), accents and look-alike
  Cyrillic letters.
- "substring" (Chinese): plain substrings, since Chinese has no spaces between words, after
  NFKC and with spaces and punctuation between hanzi removed ("杀 人", "杀.人").

Every language's rules run on every text: a message may mix languages. An `allow` phrase
neutralises a block match that lies inside it ("sexual reproduction" vs "sexual"), so ordinary
curriculum passes. A `Verdict` names the rule by position ("en:violence:12"), never by the
words it matched: an audit record may keep the rule, but not text that holds personal data.

The word lists always run first. Where `moderation.classifier` is set, what they pass is read
again by a safety classifier model (engine/classifier.py), whose verdicts name rules such as
"classifier:S1"; when it cannot answer, it refuses with `ModerationUnavailable` (or, set to
fail open, lets the text through).
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import SettingsError
from engine.paths import CONFIG_DIR
from engine.settings import Settings, load_settings
from engine.storyboard import Storyboard

DEFAULT_DIRECTORY = CONFIG_DIR / "moderation"
# Also the order of checks: the first category that matches names the verdict, so the more
# specific ones come first ("kill yourself" is self-harm before it is violence).
CATEGORIES: tuple[str, ...] = ("personal_data", "self_harm", "sexual", "hate", "violence")
MATCHING_MODES: tuple[str, ...] = ("words", "substring")
CATEGORY_KEYS: tuple[str, ...] = ("block", "allow", "patterns", "pair")
PAIR_KEYS: tuple[str, ...] = ("names", "details")

# Leetspeak, decoded only inside tokens that are mostly letters (see `_decode_leet`).
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "@": "a", "$": "s"})
# Cyrillic and Greek letters that look Latin: "kіll" with a Cyrillic і is still "kill".
LOOK_ALIKES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ѕ": "s",
    "ј": "j", "к": "k", "м": "m", "т": "t", "в": "b", "н": "h", "ο": "o", "α": "a", "ι": "i",
    "κ": "k", "ν": "v", "τ": "t", "ρ": "p", "ε": "e",
})
HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Three or more single characters with one to three separators between each: "k i l l",
# "k.i.l.l", "s-e-x". A newline never joins: it separates fields of a storyboard.
_SPACED_LETTERS = re.compile(
    r"(?<![\w@$])(?:[\w@$][ \t.\-_*·•,/|]{1,3}){2,}[\w@$](?![\w@$])"
)
_SPACED_SEPARATORS = re.compile(r"[ \t.\-_*·•,/|]+")
# Both start only where a token starts: tried at every position inside a long token, they
# would make checking a long message quadratic.
_LEET_TOKEN = re.compile(r"(?<![\w@$])[\w@$]*[0-9@$][\w@$]*")
_NOT_LATIN = re.compile(r"[^a-z0-9]+")
_LONG_RUN = re.compile(r"(.)\1{3,}")
MAX_WORD_CHARS = 48
_BETWEEN_HAN = re.compile(rf"(?<=[{HAN}])[\W_]+(?=[{HAN}])")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    category: str | None = None
    rule: str | None = None  # "en:violence:12": the rule's position, never the matched text


ALLOWED = Verdict(allowed=True)


# 1. Normalisation: every text is read in three forms.

def plain_form(text: str) -> str:
    """NFKC, format characters (zero-width spaces…) removed: what `patterns` regexes read."""
    if text.isascii():  # the common case, and ASCII holds no format characters
        return text
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def words_form(text: str) -> str:
    """Latin words only, lower case, obfuscation undone, one space between and around them:
    " k i l l!" -> " kill "."""
    return _words(plain_form(text))


def _words(plain: str) -> str:
    text = plain.casefold()
    if not text.isascii():  # accents off, look-alike letters read as Latin
        text = unicodedata.normalize("NFD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch)).translate(LOOK_ALIKES)
    text = _SPACED_LETTERS.sub(lambda m: _SPACED_SEPARATORS.sub("", m.group()), text)
    text = _LEET_TOKEN.sub(_decode_leet, text)
    # "kiiiiill" is matched by "k+i+l+l+"; a run longer than any word needs is cut to three,
    # or a long run of one letter makes those patterns slow (quadratic in its length).
    text = _LONG_RUN.sub(r"\1\1\1", text)
    # Rules match from a word's start, and no listed word or run-together phrase is longer
    # than this: a longer "word" is cut, so a 4,000-letter one cannot make matching slow.
    words = _NOT_LATIN.sub(" ", text).split()
    return " " + " ".join(word[:MAX_WORD_CHARS] for word in words) + " "


def substring_form(text: str) -> str:
    """Case-folded text with the spaces and punctuation between hanzi removed ("杀 人" → "杀人")."""
    return _substring(plain_form(text))


def _substring(plain: str) -> str:
    return _BETWEEN_HAN.sub("", plain.casefold())


def _decode_leet(match: re.Match[str]) -> str:
    token = match.group()
    letters = sum(ch.isalpha() or ch in "@$" for ch in token)
    # "k1ll", "s3x", "a$$" decode; "5 - 3 - x" (joined to "53x") and "3d" do not: a token
    # with a single letter is more likely maths than a disguised word.
    if letters >= 2 and any("a" <= ch <= "z" for ch in token):
        return token.translate(LEET)
    return token


# 2. Compiling the word lists.

def _words_regex(entry: str) -> str:
    """One "words" entry as a regex on `words_form` text, to follow the space before it:
    `*` ends a word with any letters or stands for one word; a letter may repeat ("kiiill");
    words may be run together ("killyourself")."""
    parts = []
    for raw in entry.split():
        stem = raw.rstrip("*")
        if not stem:
            parts.append(r"[a-z0-9]+")
            continue
        words = words_form(stem).split()
        parts += ["".join(re.escape(ch) + "+" for ch in word) for word in words]
        if raw.endswith("*") and words:
            parts[-1] += r"[a-z0-9]*"
    return " ?".join(parts) + "(?= )"


def _substring_regex(entry: str) -> str:
    return re.escape(substring_form(entry).strip())


def _alternation(sources: list[tuple[str | None, str]], prefix: str) -> re.Pattern[str] | None:
    """One regex for many (group name, source) pairs. Python's re tries every branch at every
    position, so branches are grouped by their first character behind a lookahead, and "words"
    sources share their leading space: a 4000-character message checks in about a millisecond
    instead of tens."""
    if not sources:
        return None
    by_first: dict[str, list[str]] = {}
    for name, source in sources:
        key = source[:1] if source[:1].isalnum() else ""  # a wildcard or an escape: no shortcut
        branch = f"(?P<{name}>{source})" if name else f"(?:{source})"
        by_first.setdefault(key, []).append(branch)
    groups = [
        (f"(?={key})" if key else "") + "(?:" + "|".join(branches) + ")"
        for key, branches in by_first.items()
    ]
    # Most places in a text start no entry at all: one character class says so at once.
    first = "" if "" in by_first else "(?=[" + "".join(by_first) + "])"
    return re.compile(prefix + first + "(?:" + "|".join(groups) + ")")


@dataclass(frozen=True)
class _Pair:
    category: str
    index: int
    names: tuple[re.Pattern[str], ...]  # read on the plain form, with its case
    details: re.Pattern[str] | None  # read on the language's form


@dataclass(frozen=True)
class _Language:
    """One word-list file, compiled."""

    name: str
    matching: str  # "words" or "substring": which form of the text its rules read
    # Every category's block entries in one regex; group "violence_12" is violence's 12th entry.
    block: re.Pattern[str] | None
    allow: dict[str, re.Pattern[str]]  # per category
    patterns: tuple[tuple[str, int, re.Pattern[str]], ...]  # (category, position, regex)
    pairs: tuple[_Pair, ...]

    def blocked(self, forms: dict[str, str]) -> list[Verdict]:
        """Every rule this text breaks (usually none, so the whole text is read once)."""
        text = forms[self.matching]
        verdicts = []
        allowed_spans: dict[str, list[tuple[int, int]]] = {}
        position = 0
        while self.block is not None and (match := self.block.search(text, position)):
            # A match that an allow phrase covers may overlap another category's block word:
            # look again one character on, not after the match.
            position = match.start() + 1
            category, index = (match.lastgroup or "").rsplit("_", 1)
            if category not in allowed_spans:  # only paid for when a block word occurs
                allow = self.allow.get(category)
                allowed_spans[category] = [m.span() for m in allow.finditer(text)] if allow else []
            start, end = match.span()
            if not any(a <= start and end <= b for a, b in allowed_spans[category]):
                verdicts.append(self._verdict(category, index))
        for category, index, pattern in self.patterns:
            if pattern.search(forms["plain"]):
                verdicts.append(self._verdict(category, f"pattern:{index}"))
        for pair in self.pairs:
            if pair.details is not None and pair.details.search(text) \
                    and any(name.search(forms["plain"]) for name in pair.names):
                verdicts.append(self._verdict(pair.category, f"pair:{pair.index}"))
        return verdicts

    def _verdict(self, category: str, rule: str) -> Verdict:
        return Verdict(False, category, f"{self.name}:{category}:{rule}")


def _load_language(path: Path) -> _Language:
    def fail(detail: str) -> SettingsError:
        return SettingsError(f"Moderation list {path}: {detail}")

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise fail(f"cannot be read ({exc}).") from exc
    matching = data.pop("matching", None)
    if matching not in MATCHING_MODES:
        raise fail(f"'matching' is {matching!r}; allowed: {', '.join(MATCHING_MODES)}.")
    to_regex = _words_regex if matching == "words" else _substring_regex
    prefix = " " if matching == "words" else ""

    def alternation(entries: list[str], names: list[str] | None = None) -> Any:
        sources = [(names[i] if names else None, to_regex(e)) for i, e in enumerate(entries)]
        return _alternation(sources, prefix)

    block: list[tuple[str, str]] = []  # (group name, entry)
    allow, patterns, pairs = {}, [], []
    # Category order decides which branch wins where two block words start at one place.
    for category, table in sorted(data.items(), key=lambda item: _priority(item[0])):
        if category not in CATEGORIES or not isinstance(table, dict):
            raise fail(f"unknown category [{category}]; allowed: {', '.join(CATEGORIES)}.")
        unknown = set(table) - set(CATEGORY_KEYS)
        if unknown:
            raise fail(f"[{category}] has unknown keys {sorted(unknown)}; "
                       f"allowed: {', '.join(CATEGORY_KEYS)}.")
        try:
            entries = _strings(table, "block", fail)
            block += [(f"{category}_{i}", e) for i, e in enumerate(entries, start=1)]
            if table.get("allow"):
                allow[category] = alternation(_strings(table, "allow", fail))
            patterns += [(category, i, re.compile(p))
                         for i, p in enumerate(_strings(table, "patterns", fail), start=1)]
            for i, pair in enumerate(table.get("pair", []), start=1):
                if not isinstance(pair, dict) or set(pair) != set(PAIR_KEYS):
                    raise fail(f"each [[{category}.pair]] needs exactly: {', '.join(PAIR_KEYS)}.")
                names = tuple(re.compile(p) for p in _strings(pair, "names", fail))
                pairs.append(_Pair(category, i, names,
                                   alternation(_strings(pair, "details", fail))))
        except re.error as exc:
            raise fail(f"[{category}] has a regex that does not compile ({exc}).") from exc
    return _Language(
        name=path.stem, matching=matching,
        block=alternation([e for _, e in block], [name for name, _ in block]),
        allow=allow, patterns=tuple(patterns), pairs=tuple(pairs),
    )


def _strings(table: dict[str, Any], key: str, fail: Any) -> list[str]:
    values = table.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise fail(f"'{key}' must be a list of non-empty strings.")
    return values


def _priority(category: str) -> int:
    return CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES)


# 3. The policy.

@dataclass(frozen=True)
class Policy:
    languages: tuple[_Language, ...] = field(default=())
    # A second opinion on what the word lists pass (engine/classifier.py); None: off.
    classifier: Callable[[str], Verdict] | None = None

    @classmethod
    def load(cls, directory: Path | None = None, settings: Settings | None = None) -> Policy:
        """Every *.toml in config/moderation/, and the classifier `moderation.classifier`
        names in `settings` (by default, `load_settings()`); a bad list or preset stops
        start-up with one sentence."""
        from engine.classifier import load_classifier  # it imports Verdict from this module

        directory = directory or DEFAULT_DIRECTORY
        paths = sorted(directory.glob("*.toml"))
        if not paths:
            raise SettingsError(f"No moderation word lists (*.toml) in {directory}.")
        return cls(languages=tuple(_load_language(path) for path in paths),
                   classifier=load_classifier(settings or load_settings()))

    def check_text(self, text: str) -> Verdict:
        """Allowed, or the first category (in `CATEGORIES` order) of the rules `text` breaks.

        What the word lists pass goes to the classifier, when there is one: its verdict, or
        `ModerationUnavailable` (a UserError) when it cannot answer and fails closed."""
        plain = plain_form(text)
        forms = {"plain": plain, "words": _words(plain), "substring": _substring(plain)}
        verdicts = [v for language in self.languages for v in language.blocked(forms)]
        if verdicts:
            return min(verdicts, key=lambda verdict: _priority(verdict.category or ""))
        if self.classifier is None or not plain.strip():  # an empty caption needs no model
            return ALLOWED
        return self.classifier(text)

    def check_storyboard(self, board: Storyboard) -> Verdict:
        """Every field a render shows or is prompted with, read as one text: a named student in
        the title and a health detail in a narration still make a pair."""
        fields = [board.title, board.audience, board.style.name]
        for scene in board.scenes:
            fields += [scene.visual, scene.narration, scene.on_screen_text or ""]
            if scene.image:  # "KillScene_01.png" reads as "Kill Scene_01.png"
                fields.append(_CAMEL.sub(" ", scene.image))
        return self.check_text("\n".join(fields))
