"""Reading a teacher's free-text request: its topic, language, length and audience.

"Explain photosynthesis to grade 7 in 30 seconds" and "用30秒给初一学生讲解光合作用" both become
a `TeacherRequest`. The length and grade are only taken when the teacher states them; the
drafter fills in defaults for the rest.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from engine.errors import RequestError
from engine.storyboard import REFUSED_CATEGORIES, format_seconds

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

EN_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40, "forty-five": 45,
    "fifty": 50, "sixty": 60, "ninety": 90,
}
EN_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
    "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12,
}
ZH_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5,
             "六": 6, "七": 7, "八": 8, "九": 9}

# At most five digits: a 400-digit "length" must not overflow a float.
_EN_NUMBER = r"\d{1,5}(?:\.\d{1,3})?|" + "|".join(sorted(EN_NUMBERS, key=len, reverse=True))
_EN_UNITS = {
    "second": 1, "seconds": 1, "sec": 1, "secs": 1, "s": 1,
    "minute": 60, "minutes": 60, "min": 60, "mins": 60,
    "hour": 3600, "hours": 3600, "hr": 3600, "hrs": 3600,
}
# "30 seconds", "30-second", "1.5 minutes", "an hour", "30s". Only a length when the words
# around it say so (see _is_length): "the 24-hour clock", "what a second is" and "music of
# the 60s" are topics, not lengths.
EN_DURATION = re.compile(
    rf"(?<![\w'])(?P<num>{_EN_NUMBER})\s*-?\s*"
    r"(?P<unit>seconds?|secs?|minutes?|mins?|hours?|hrs?|s)\b"
    r"(?P<half>\s+and\s+a\s+half)?",
    re.IGNORECASE,
)
EN_HALF = re.compile(r"\bhalf\s+(?:a|an)\s+(?P<unit>minute|hour)\b", re.IGNORECASE)
EN_CUE_BEFORE = re.compile(
    r"(?:^|[,;:(]\s*|\b(?:in|within|under|about|around|roughly|approximately|for|of|lasting|"
    r"total|exactly|max|maximum|most|only|just|it|be|is)\s+)$",
    re.IGNORECASE,
)
EN_CUE_AFTER = re.compile(
    r"^\s*(?:long|video|clip|lesson|explainer|animation|film|movie|reel|short|in total)\b",
    re.IGNORECASE,
)
ZH_NUMBER = r"\d{1,5}(?:\.\d{1,3})?|[零一二两三四五六七八九十百半]{1,6}"
# No bare 分: 百分比 (percent) and 二分之一 (one half) are topics; 1分30秒 is read whole.
ZH_DURATION = re.compile(
    rf"(?P<cue>用|在|花|约|大约|控制在)?(?P<num>{ZH_NUMBER})\s*(?:个)?\s*"
    r"(?:(?P<unit>秒钟|秒|分钟|分半钟|分半|小时|钟头)|分\s*(?P<sec>\d{1,2}|[一二三四五六七八九十]{1,3})\s*秒)"
)
ZH_CUE_AFTER = re.compile(
    r"^(?:的)?(?:视频|短片|动画|微课|课|讲|介绍|以内|之内|左右|内|[，。,.；;！!]|$)"
)
ZH_SUBJECTS = "物理|化学|生物|数学|历史|英语|语文|地理"

EN_GRADE = re.compile(
    r"\b(?:grade\s*(?P<n1>\d{1,2}|" + "|".join(set(EN_NUMBERS) - {"a", "an"}) + r")"
    r"|(?P<n2>\d{1,2})(?:st|nd|rd|th)[\s-]*grade(?:rs)?"
    r"|(?P<ord>" + "|".join(EN_ORDINALS) + r")[\s-]*grade(?:rs)?"
    r"|(?P<year>year\s*(?P<y>\d{1,2}))"
    r"|(?P<k>kindergarten|kindergarteners))\b",
    re.IGNORECASE,
)
EN_STAGES = {"primary school": "Primary school", "elementary school": "Elementary school",
             "middle school": "Middle school", "high school": "High school",
             "university": "University", "college": "College", "adults": "Adults"}
# 初一/高二 only count with something that says "students" around them: 提高一个 is not 高一.
ZH_GRADE = re.compile(
    r"(?P<to>给|为|向|对|适合)?(?:(?P<stage>[初高])(?P<n>[一二三])"
    r"|(?P<g>[一二三四五六七八九]|\d{1,2})\s*年级"
    r"|(?P<k>幼儿园|学前班))(?:的)?(?P<who>学生们|学生|同学们|同学|小朋友|孩子们|孩子|生)?"
)
ZH_STAGES = {"小学": "小学生", "初中": "初中生", "高中": "高中生", "大学": "大学生"}

# Words that carry no topic: asking for a video, and naming who it is for. They are only
# stripped from the ends of a phrase, so "the causes of World War I" keeps its "of".
EN_FILLER = frozenset("""
please can could would you need want i'd like give me help make create produce generate
draft build render prepare a an the short quick brief simple little educational animated fun
video videos clip film movie lesson lessons explainer animation presentation about on of for
to in within under explaining explain explains teach teaching introduce introducing
introduction intro describe describing show showing overview my our students student pupils
kids children class learners grade graders level long length total that which covers
covering how works work what is are with and
""".split())
ZH_FILLER = sorted("""
请 帮我 帮忙 麻烦 能不能 可以 我想 我要 需要 做 制作 生成 创建 准备 一个 一段 一部 关于 有关
视频 短片 动画 课件 微课 小视频 讲解 讲讲 讲一讲 讲一下 介绍一下 介绍 解释 说明 科普 的 一下 吧 呢
给 向 学生们 学生 同学们 同学 小朋友 孩子们
""".split(), key=len, reverse=True)
PHRASE_BREAK = re.compile(r"[,.;:!?，。；：！？、\n]+")


@dataclass(frozen=True)
class TeacherRequest:
    text: str
    topic: str
    language: str  # "en" | "zh"
    seconds: int | None  # None: the teacher did not say
    grade: int | None
    audience: str | None  # e.g. "Grade 7", "初一", "High school"; None: not said


def read_request(
    text: str, *, max_chars: int, max_seconds: int, min_seconds: int,
    language: str | None = None,
) -> TeacherRequest:
    """Parse a request; raise RequestError with a sentence the teacher can act on."""
    text = clean_text(text)
    if not text:
        raise RequestError(
            "The request is empty; say what the video should teach, "
            'e.g. "Explain photosynthesis to grade 7 in 30 seconds".'
        )
    if len(text) > max_chars:
        raise RequestError(
            f"The request is {len(text):,} characters long; the limit is {max_chars:,}. "
            "Describe the video in a few sentences instead."
        )
    detected = detect_language(text)
    seconds, duration_span = find_duration(text)
    if seconds is not None and seconds > max_seconds:
        raise RequestError(
            f"That asks for {format_seconds(seconds)} of video, but a video can be at most "
            f"{format_seconds(max_seconds)} long; ask for something shorter, e.g. \"1 minute\"."
        )
    if seconds is not None and seconds < min_seconds:
        raise RequestError(
            f"That asks for {format_seconds(seconds)} of video, but a video needs at least "
            f"{format_seconds(min_seconds)}; ask for something longer, e.g. \"30 seconds\"."
        )
    grade, audience, grade_spans = find_audience(text)
    topic = find_topic(text, [s for s in (duration_span, *grade_spans) if s])
    if not topic:
        raise RequestError(
            "The request does not say what the video should teach; name a topic, "
            'e.g. "Explain photosynthesis to grade 7 in 30 seconds".'
        )
    return TeacherRequest(text, topic, language or detected, seconds, grade, audience)


def detect_language(text: str) -> str:
    """"zh" when a good share of the text is hanzi; one 水 in English is still English."""
    return "zh" if len(CJK.findall(text)) >= max(2, len(text) // 10) else "en"


def clean_text(text: str) -> str:
    """Drop control and format characters (they never belong in a storyboard); one space."""
    kept = "".join(ch for ch in (text or "")
                   if unicodedata.category(ch) not in REFUSED_CATEGORIES or ch in "\t\n\r")
    return " ".join(kept.split())


def find_duration(text: str) -> tuple[int | None, tuple[int, int] | None]:
    """The total length the teacher asks for, in seconds, and where it was said."""
    found: list[tuple[int, int, float, bool]] = []  # start, end, seconds, said as a length
    for match in EN_DURATION.finditer(text):
        value = _en_number(match["num"])
        unit = match["unit"].lower()
        cued = bool(EN_CUE_BEFORE.search(text[: match.start()])) or (
            unit != "s" and bool(EN_CUE_AFTER.match(text[match.end():])))
        if match["half"]:
            value += 0.5
        found.append((match.start(), match.end(), value * _EN_UNITS[unit], cued))
    for match in EN_HALF.finditer(text):
        seconds = 30 if match["unit"].lower() == "minute" else 1800
        cued = bool(EN_CUE_BEFORE.search(text[: match.start()]))
        found.append((match.start(), match.end(), seconds, cued))
    for match in ZH_DURATION.finditer(text):
        value = zh_number(match["num"])
        if value is None:
            continue
        at_phrase_start = match.start() == 0 or text[match.start() - 1] in " ，。,.；;：:！!（("
        cued = bool(match["cue"] or at_phrase_start or ZH_CUE_AFTER.match(text[match.end():]))
        unit = match["unit"]
        if match["sec"]:
            seconds = value * 60 + (zh_number(match["sec"]) or 0)
        elif unit in ("分半钟", "分半"):
            seconds = value * 60 + 30
        else:
            seconds = value * (1 if unit.startswith("秒") else 3600 if unit in ("小时", "钟头")
                               else 60)
        found.append((match.start(), match.end(), seconds, cued))
    found.sort()
    first = next((i for i, item in enumerate(found) if item[3]), None)
    if first is None:
        return None, None
    start, end, total, _cued = found[first]
    # "1 minute 30 seconds": a smaller unit right after the first one adds to it.
    for next_start, next_end, value, _ in found[first + 1:first + 2]:
        gap = text[end:next_start]
        if len(gap) <= 5 and re.fullmatch(r"[\s,]*(?:and)?[\s,]*", gap) and value < total:
            total += value
            end = next_end
    return round(total), (start, end)


def find_audience(text: str) -> tuple[int | None, str | None, list[tuple[int, int]]]:
    """The grade (0 kindergarten … 12) and how to name the audience, and where they were said."""
    spans: list[tuple[int, int]] = []
    match = next((m for m in ZH_GRADE.finditer(text) if _is_audience(text, m)), None)
    if match:
        spans.append(match.span())
        if match["stage"]:
            grade = (7 if match["stage"] == "初" else 10) + ZH_DIGITS[match["n"]] - 1
            return grade, match["stage"] + match["n"], spans
        if match["k"]:
            return 0, match["k"], spans
        grade = int(match["g"]) if match["g"].isdigit() else ZH_DIGITS[match["g"]]
        return grade, f"{match['g']}年级", spans
    match = EN_GRADE.search(text)
    if match:
        spans.append(match.span())
        if match["k"]:
            return 0, "Kindergarten", spans
        if match["year"]:
            year = int(match["y"])  # UK "Year 7" is the US grade 6
            return max(0, min(13, year - 1)), f"Year {year}", spans
        raw = match["n1"] or match["n2"]
        grade = EN_ORDINALS[match["ord"].lower()] if match["ord"] else _en_number(raw)
        grade = int(min(13, grade))
        return grade, f"Grade {grade}", spans
    for phrase, label in (*ZH_STAGES.items(), *EN_STAGES.items()):
        index = text.lower().find(phrase)
        if index >= 0:
            spans.append((index, index + len(phrase)))
            return None, label, spans
    return None, None, spans


def _is_audience(text: str, match: re.Match) -> bool:
    if not match["stage"]:
        return True  # 七年级, 幼儿园: never anything else
    before = text[: match.start()]
    after = text[match.end():]
    return bool(match["to"] or match["who"] or not before.strip(" ，,")
                or re.match(rf"^(?:[，。,.；;！!]|$|{ZH_SUBJECTS})", after))


def find_topic(text: str, spans: list[tuple[int, int]]) -> str:
    """What is left of the request once length, audience and instructions are taken out."""
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + "," + text[end:]
    phrases = [_strip_filler(phrase) for phrase in PHRASE_BREAK.split(text)]
    # The longest phrase; on a tie the later one ("初二物理：浮力" is about 浮力).
    topic = max(reversed(phrases), key=len, default="")
    return topic[:60].strip()


def _strip_filler(phrase: str) -> str:
    phrase = phrase.strip(" \"“”'‘’()（）")
    if CJK.search(phrase):
        changed = True
        while changed and phrase:
            changed = False
            for word in ZH_FILLER:
                if phrase.startswith(word):
                    phrase, changed = phrase[len(word):].strip(), True
                if phrase.endswith(word):
                    phrase, changed = phrase[: -len(word)].strip(), True
        return phrase
    words = phrase.split()
    while words and words[0].lower() in EN_FILLER:
        words.pop(0)
    while words and words[-1].lower() in EN_FILLER:
        words.pop()
    return " ".join(words)


def _en_number(raw: str) -> float:
    raw = raw.lower()
    return float(EN_NUMBERS[raw]) if raw in EN_NUMBERS else float(raw)


def zh_number(raw: str) -> float | None:
    """Arabic digits or Chinese numerals up to the hundreds: 30, 三十, 一百二十, 半."""
    if raw[0].isdigit():
        return float(raw)
    if raw == "半":
        return 0.5
    total, current = 0, 0
    for ch in raw:
        if ch in ZH_DIGITS:
            current = ZH_DIGITS[ch]
        elif ch == "十":
            total += (current or 1) * 10
            current = 0
        elif ch == "百":
            total += (current or 1) * 100
            current = 0
        else:
            return None
    return float(total + current) or None
