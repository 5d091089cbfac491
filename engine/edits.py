"""Plain, unambiguous edits, applied by rule without the language model.

"make scene 2 shorter", "delete scene 3", "move scene 4 to the start", "duplicate scene 1",
"9:16", "new seed for scene 2", "make it 45 seconds" — and their Chinese forms. A message is
a plain edit only when the whole of it is one of these; anything else ("make scene 2 shorter
and funnier") goes to the language model, which sees the full message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import StoryboardError
from engine.request import find_duration, zh_number
from engine.storyboard import (
    MAX_SCENE_SECONDS,
    MAX_SCENES,
    MIN_SCENE_SECONDS,
    Storyboard,
    derived_id,
    derived_seed,
    format_seconds,
)

DURATION_STEP = 2  # "shorter" / "longer", in seconds

_EN_ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                "ninth", "tenth", "eleventh", "twelfth"]
_EN_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
             "eleven", "twelve"]
_ZH_NUM = r"\d{1,2}|[一二两三四五六七八九十]{1,3}"
# A reference to one scene, captured whole and read by _scene_index.
_SCENE = (
    rf"(?:scene\s*(?:\d{{1,2}}|{'|'.join(_EN_WORDS)})"
    rf"|(?:the\s+)?(?:{'|'.join(_EN_ORDINALS)}|last)\s+scene"
    rf"|场景\s*(?:{_ZH_NUM})|第\s*(?:{_ZH_NUM})\s*(?:个)?\s*(?:场景|幕|镜头)|最后(?:一个)?场景)"
)
_A = rf"(?P<a>{_SCENE})"
_B = rf"(?P<b>{_SCENE})"
_SECONDS = rf"(?P<sec>{_ZH_NUM})\s*(?:s|secs?|seconds?|秒钟?)"

# A voice's name as espeak-ng and the voice presets spell them ("en-gb", "cmn-latn-pinyin",
# "mms-tts-eng"), or "default"; a music track is a file name with an audio extension, or
# "none", "random" or "default". Narrow on purpose: "use music to show rhythm" is no edit.
_VOICE = r"(?P<voice>default|[a-z]{2,3}(?:[-_+][a-z0-9]{1,12}){0,4})"
_TRACK = (r"(?P<track>none|random|default|[\w][\w .()'&-]{0,100}"
          r"\.(?:mp3|ogg|oga|opus|wav|flac|m4a|aac))")

# A render quality level, as said in English or Chinese; "default" leaves it to the settings.
_QUALITY_WORDS = {
    "draft": "draft", "standard": "standard", "normal": "standard", "high": "high",
    "best": "high", "default": "", "草稿": "draft", "标准": "standard", "高": "high",
    "默认": "",
}
_QUALITY_EN = r"(?P<quality>draft|standard|normal|high|best|default)"
_QUALITY_ZH = r"(?P<quality>草稿|标准|高|默认)"

_POLITE = re.compile(
    r"^(?:please|pls|can you|could you|would you|kindly|ok(?:ay)?|now)[\s,]+"
    r"|[\s,]+(?:please|thanks?)$"
    r"|^(?:请|麻烦|帮我|能不能|可以)|(?:吧|谢谢)$"
)

_ASPECT_WORDS = {
    "16:9": "16:9", "landscape": "16:9", "horizontal": "16:9", "widescreen": "16:9", "横屏": "16:9",
    "9:16": "9:16", "vertical": "9:16", "portrait": "9:16", "竖屏": "9:16",
    "1:1": "1:1", "square": "1:1", "方形": "1:1", "正方形": "1:1",
}

MESSAGES = {
    "en": {
        "no_scene": "There is no scene {n}; this storyboard has {count} scenes.",
        "min": "Scene {n} is already {min} s, the shortest a scene can be.",
        "max": "Scene {n} is already {max} s, the longest a scene can be; split it into two?",
        "last": "A storyboard needs at least one scene, so scene {n} stays.",
        "full": f"A storyboard holds at most {MAX_SCENES} scenes; remove one first.",
        "bad_seconds": f"A scene lasts {MIN_SCENE_SECONDS} to {MAX_SCENE_SECONDS} seconds.",
        "retime": ("{total} cannot be shared among {count} scenes of {min}-{max} s each; "
                   "add or remove scenes first."),
    },
    "zh": {
        "no_scene": "没有场景 {n}；这个分镜共有 {count} 个场景。",
        "min": "场景 {n} 已经是 {min} 秒，不能再短了。",
        "max": "场景 {n} 已经是 {max} 秒，不能再长了；要不要拆成两个场景？",
        "last": "分镜至少要有一个场景，所以保留场景 {n}。",
        "full": f"一个分镜最多 {MAX_SCENES} 个场景；请先删掉一个。",
        "bad_seconds": f"每个场景的时长为 {MIN_SCENE_SECONDS} 到 {MAX_SCENE_SECONDS} 秒。",
        "retime": "{total} 无法分配给 {count} 个场景（每个 {min}-{max} 秒）；请先增加或删除场景。",
    },
}


class EditError(StoryboardError):
    """A plain edit that cannot be done as asked; the storyboard stays as it was."""


@dataclass(frozen=True)
class PlainEdit:
    storyboard: Storyboard
    moved: tuple[str, ...] = ()  # the scene the teacher moved: "scene 2 moved", not "scene 1"


def apply_plain_edit(storyboard: Storyboard, message: str) -> PlainEdit | None:
    """The edit if `message` is one plain edit, else None; EditError if it cannot be done."""
    text = _normalise(message)
    for pattern, handler in _RULES:
        match = pattern.fullmatch(text)
        if match:
            result = handler(storyboard, match)
            if result is None or isinstance(result, PlainEdit):
                return result
            return PlainEdit(result)
    return None


def _normalise(message: str) -> str:
    text = " ".join(message.split()).strip(" .!。！?？").lower()
    previous = None
    while previous != text:
        previous = text
        text = _POLITE.sub("", text).strip(" ,，.!。！")
    return text


def _fail(storyboard: Storyboard, key: str, **values: object) -> EditError:
    say = MESSAGES.get(storyboard.language, MESSAGES["en"])
    return EditError(say[key].format(min=MIN_SCENE_SECONDS, max=MAX_SCENE_SECONDS, **values))


def _scene_index(storyboard: Storyboard, reference: str) -> int:
    """0-based index of "scene 2", "the second scene", "第二个场景", "最后一个场景"…"""
    count = len(storyboard.scenes)
    if "last" in reference or "最后" in reference:
        return count - 1
    number = None
    if digits := re.search(r"\d+", reference):
        number = int(digits.group())
    elif word := re.search("|".join(_EN_WORDS), reference):
        number = _EN_WORDS.index(word.group()) + 1
    elif word := re.search("|".join(_EN_ORDINALS), reference):
        number = _EN_ORDINALS.index(word.group()) + 1
    elif zh := re.search(r"[一二两三四五六七八九十]+", reference):
        number = int(zh_number(zh.group()) or 0)
    if number is None or not 1 <= number <= count:
        raise _fail(storyboard, "no_scene", n=number if number is not None else reference,
                    count=count)
    return number - 1


def _seconds(storyboard: Storyboard, raw: str) -> int:
    value = int(raw) if raw.isdigit() else int(zh_number(raw) or 0)
    if not MIN_SCENE_SECONDS <= value <= MAX_SCENE_SECONDS:
        raise _fail(storyboard, "bad_seconds")
    return value


def _with_scenes(storyboard: Storyboard, scenes: list[dict]) -> Storyboard:
    return storyboard.revise(scenes=scenes)


def _scenes(storyboard: Storyboard) -> list[dict]:
    return [scene.model_dump() for scene in storyboard.scenes]


def _set_duration(storyboard: Storyboard, match: re.Match) -> Storyboard:
    index = _scene_index(storyboard, match["a"])
    scenes = _scenes(storyboard)
    scenes[index]["duration"] = _seconds(storyboard, match["sec"])
    return _with_scenes(storyboard, scenes)


def _nudge_duration(storyboard: Storyboard, match: re.Match) -> Storyboard:
    index = _scene_index(storyboard, match["a"])
    shorter = match["dir"] in ("shorter", "短", "缩短")
    scenes = _scenes(storyboard)
    current = scenes[index]["duration"]
    if shorter and current <= MIN_SCENE_SECONDS:
        raise _fail(storyboard, "min", n=index + 1)
    if not shorter and current >= MAX_SCENE_SECONDS:
        raise _fail(storyboard, "max", n=index + 1)
    step = -DURATION_STEP if shorter else DURATION_STEP
    scenes[index]["duration"] = min(MAX_SCENE_SECONDS, max(MIN_SCENE_SECONDS, current + step))
    return _with_scenes(storyboard, scenes)


def _delete(storyboard: Storyboard, match: re.Match) -> Storyboard:
    index = _scene_index(storyboard, match["a"])
    if len(storyboard.scenes) == 1:
        raise _fail(storyboard, "last", n=index + 1)
    scenes = _scenes(storyboard)
    del scenes[index]
    return _with_scenes(storyboard, scenes)


def _duplicate(storyboard: Storyboard, match: re.Match) -> Storyboard:
    index = _scene_index(storyboard, match["a"])
    if len(storyboard.scenes) >= MAX_SCENES:
        raise _fail(storyboard, "full")
    scenes = _scenes(storyboard)
    taken = {scene.id for scene in storyboard.scenes}
    copy = dict(scenes[index], id=derived_id(f"copy-of-{scenes[index]['id']}", taken))
    scenes.insert(index + 1, copy)
    return _with_scenes(storyboard, scenes)


def _move(storyboard: Storyboard, match: re.Match) -> PlainEdit:
    index = _scene_index(storyboard, match["a"])
    scenes = _scenes(storyboard)
    moving = scenes.pop(index)
    groups = match.groupdict()
    where = (groups.get("pos") or "").strip()
    if groups.get("b"):
        anchor_id = storyboard.scenes[_scene_index(storyboard, groups["b"])].id
        if anchor_id == moving["id"]:
            return PlainEdit(storyboard)  # "move scene 2 after scene 2": nothing to do
        anchor = next(i for i, scene in enumerate(scenes) if scene["id"] == anchor_id)
        target = anchor if groups.get("rel") in ("before", "之前", "前面") else anchor + 1
    elif where in ("start", "beginning", "front", "first", "开头", "最前面"):
        target = 0
    elif where in ("end", "last", "最后", "最后面", "末尾"):
        target = len(scenes)
    else:
        number = re.search(r"\d+|[一二两三四五六七八九十]+", where)
        position = 0
        if number:
            raw = number.group()
            position = int(raw) if raw.isdigit() else int(zh_number(raw) or 0)
        if not 1 <= position <= len(storyboard.scenes):
            raise _fail(storyboard, "no_scene", n=position, count=len(storyboard.scenes))
        target = position - 1
    scenes.insert(target, moving)
    return PlainEdit(_with_scenes(storyboard, scenes), (moving["id"],))


def _aspect(storyboard: Storyboard, match: re.Match) -> Storyboard:
    return storyboard.revise(aspect=_ASPECT_WORDS[match["aspect"]])


def _new_seed(storyboard: Storyboard, match: re.Match) -> Storyboard:
    index = _scene_index(storyboard, match["a"])
    scenes = _scenes(storyboard)
    scenes[index]["seed"] = derived_seed(f"reseed:{scenes[index]['seed']}")
    return _with_scenes(storyboard, scenes)


def _voice(storyboard: Storyboard, match: re.Match) -> Storyboard:
    voice = match["voice"] or ""
    return storyboard.revise(voice="" if voice == "default" else voice)


def _music(storyboard: Storyboard, match: re.Match) -> Storyboard:
    track = match["track"] if "track" in match.groupdict() and match["track"] else "none"
    if track.lower() in ("default", "默认"):
        track = ""  # the school's setting decides again
    return storyboard.revise(music=track)


def _quality(storyboard: Storyboard, match: re.Match) -> Storyboard:
    return storyboard.revise(quality=_QUALITY_WORDS[match["quality"]])


def _total_length(storyboard: Storyboard, match: re.Match) -> Storyboard | None:
    seconds, span = find_duration(match["len"])
    rest = match["len"][span[1]:] if span else ""
    if seconds is None or not re.fullmatch(r"\s*(?:long|in total|total|长|左右|以内)?\s*", rest):
        return None  # not only a length: let the language model read it
    body = seconds - storyboard.title_card_seconds
    scenes = _scenes(storyboard)
    durations = retime([scene["duration"] for scene in scenes], body)
    if durations is None:
        raise _fail(storyboard, "retime", total=format_seconds(seconds), count=len(scenes))
    for scene, duration in zip(scenes, durations, strict=True):
        scene["duration"] = duration
    return _with_scenes(storyboard, scenes)


def retime(durations: list[int], body: int) -> list[int] | None:
    """Scale durations to add up to `body`, keeping their proportions and the 2-10 s bounds."""
    count = len(durations)
    if not MIN_SCENE_SECONDS * count <= body <= MAX_SCENE_SECONDS * count:
        return None
    total = sum(durations)
    exact = [d * body / total for d in durations]
    result = [min(MAX_SCENE_SECONDS, max(MIN_SCENE_SECONDS, int(x))) for x in exact]
    # Hand out (or take back) the remaining seconds where rounding lost the most.
    order = sorted(range(count), key=lambda i: exact[i] - result[i], reverse=True)
    while sum(result) != body:
        step = 1 if sum(result) < body else -1
        for i in order if step > 0 else order[::-1]:
            if sum(result) != body and MIN_SCENE_SECONDS <= result[i] + step <= MAX_SCENE_SECONDS:
                result[i] += step
    return result


_Rule = tuple[re.Pattern[str],
              Callable[[Storyboard, re.Match], Storyboard | PlainEdit | None]]
_ZH_POS = rf"(?P<pos>开头|最前面|最后面|最后|末尾|第\s*(?:{_ZH_NUM})\s*(?:个|位)?)"


def _rules() -> list[_Rule]:
    rules = [
        # durations
        (rf"(?:make |set |change )?(?:the )?{_A}(?: to| =|:| should be| lasts?| last for)? "
         rf"?{_SECONDS}(?: long)?", _set_duration),
        (rf"(?:把)?{_A}(?:的)?(?:时长)?(?:改成|改为|设为|设成|变成|调成|缩短到|延长到|为)\s*{_SECONDS}",
         _set_duration),
        (rf"(?:make )?(?:the )?{_A}(?: a bit| a little| much)? (?P<dir>shorter|longer)",
         _nudge_duration),
        (rf"(?:把)?{_A}(?:变|改|弄|调)?得?(?P<dir>短|长)一?(?:点|些)(?:儿)?", _nudge_duration),
        (rf"(?P<dir>缩短|加长|延长)(?:一下)?{_A}", _nudge_duration),
        # scene order and count
        (rf"(?:delete|remove|drop|cut)(?: the)? {_A}", _delete),
        (rf"(?:删除|删掉|去掉|删去)(?:了)?{_A}", _delete),
        (rf"(?:把)?{_A}(?:删除|删掉|去掉)", _delete),
        (rf"(?:duplicate|copy|repeat)(?: the)? {_A}", _duplicate),
        (rf"(?:复制|重复)(?:一下)?{_A}", _duplicate),
        (rf"move(?: the)? {_A} (?:to (?:position |the )?(?P<pos>\d{{1,2}}|start|beginning|front|"
         rf"end|first|last)(?: position| place)?|(?P<rel>before|after)(?: the)? {_B})", _move),
        (rf"(?:把)?{_A}(?:移到|移动到|放到|挪到)(?:{_B}(?P<rel>之前|前面|之后|后面)|{_ZH_POS})",
         _move),
        # whole storyboard
        (r"(?:make it |change (?:it |the aspect(?: ratio)? )?to |switch to |use |"
         r"set (?:the )?aspect(?: ratio)? to )?(?:an? |the )?"
         r"(?P<aspect>16:9|9:16|1:1|vertical|portrait|landscape|horizontal|square|widescreen)"
         r"(?: format| video| mode| aspect(?: ratio)?)?", _aspect),
        (r"(?:改成|换成|变成|用|改为)?(?P<aspect>竖屏|横屏|正方形|方形|16:9|9:16|1:1)(?:的)?"
         r"(?:格式|比例|画面|视频)?", _aspect),
        # the sound: a voice, a music track, or none
        (rf"(?:use (?:the )?|change the voice to |set the voice to )?voice:? {_VOICE}", _voice),
        (rf"(?:用|换成|改成|使用)?(?:声音|语音|配音)(?:改成|换成|用|为|:|：)?\s*(?:{_VOICE}|"
         r"(?P<zh_default>默认))", _voice),
        (r"(?:no|without|remove the|turn off the|drop the) (?:background )?music", _music),
        (r"(?:不要|去掉|关掉|取消)(?:背景)?音乐", _music),
        (rf"(?:use |play |change the music to |set the music to )?(?:background )?music:? "
         rf"{_TRACK}", _music),
        (rf"(?:用|换成|改成|播放)?(?:背景)?音乐(?:改成|换成|用|为|:|：)\s*{_TRACK}", _music),
        # the render quality: "draft quality", "quality high", "质量 草稿", "高质量"
        (rf"(?:use |make it |render (?:it )?(?:in |at )?|switch to )?(?:an? |the )?{_QUALITY_EN}"
         r"[ -]quality", _quality),
        (rf"(?:(?:set|change|switch) (?:the )?)?quality(?: level)?(?: to)?:? {_QUALITY_EN}",
         _quality),
        (rf"(?:用|换成|改成|使用)?(?:质量|画质)(?:改成|换成|改为|设为|用|为|:|：)?\s*{_QUALITY_ZH}",
         _quality),
        (rf"(?:用|换成|改成|使用)?{_QUALITY_ZH}(?:质量|画质)", _quality),
        (rf"(?:new seed|reroll|re-roll|another take|a different take|regenerate)(?: for)?"
         rf"(?: the)? {_A}", _new_seed),
        (rf"(?:give )?(?:the )?{_A} (?:a )?(?:new|different) (?:seed|take)", _new_seed),
        (rf"{_A}(?:换个|换一个)(?:随机)?种子", _new_seed),
        (rf"重新生成{_A}", _new_seed),
        (r"(?:make (?:it|the video|the whole video|the whole thing)|change (?:it|the length|"
         r"the total(?: length)?) to|set (?:the )?(?:total )?length to|total(?: length)?:?)"
         r" (?P<len>.+)", _total_length),
        (r"(?:把)?(?:总时长|时长|视频|整个视频)?(?:改成|改为|设为|变成|缩短到|延长到|控制在)(?P<len>.+)",
         _total_length),
    ]
    return [(re.compile(pattern), handler) for pattern, handler in rules]


_RULES = _rules()
