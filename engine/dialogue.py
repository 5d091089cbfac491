"""One turn of the conversation about a storyboard.

A teacher's message is, in this order: a new request (no storyboard yet), a plain edit that
rules can apply exactly ("make scene 2 shorter"), or anything else, which goes to the
language model when one is installed. Every turn ends with a reply that says what changed,
scene by scene; a turn that changes nothing keeps the current version, and a turn that
fails keeps it too. Nothing a teacher can type raises out of `turn`: errors become replies.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from engine.changes import describe_changes
from engine.drafter import draft_storyboard, styles
from engine.edits import apply_plain_edit, retime
from engine.errors import UserError
from engine.history import RecentTurns, StoryboardHistory, StoryboardVersion, Turn
from engine.llm import LLMError, StoryboardLLM, answer_to_storyboard
from engine.request import clean_text, detect_language, read_request
from engine.settings import Settings
from engine.storyboard import Storyboard, format_seconds

SAY = {
    "en": {
        "drafted": "Here is a first draft: {title}, {total}, {scenes} scene{plural}.",
        "edited": "Done.",
        "unchanged": "Nothing changed; this is still version {version}.",
        "no_llm_draft": ("Drafted from a subject template: the language model is not "
                         "installed, so edit it with plain changes."),
        "no_llm_edit": ("I can only make plain edits: the language model is not installed. "
                        "Try “make scene 2 shorter”, “scene 3 to 5 seconds”, “delete scene 4”, "
                        "“move scene 5 to the start”, “duplicate scene 1”, “9:16”, "
                        "“new seed for scene 2” or “make it 45 seconds”."),
        "empty": "Your message is empty; say what to make or what to change.",
        "too_long": ("Your message is {length:,} characters long; the limit is {limit:,}. "
                     "Please say it in a few sentences."),
        "fitted": "The video was longer than the {limit} limit, so the scenes were shortened.",
        "version": "Version {version}.",
        "llm_failed_draft": ("The language model could not draft it, so this draft comes "
                             "from a subject template."),
    },
    "zh": {
        "drafted": "初稿：{title}，{total}，{scenes} 个场景。",
        "edited": "好的，已修改。",
        "unchanged": "没有改动，仍是第 {version} 版。",
        "no_llm_draft": "这是按学科模板生成的初稿：语言模型未安装，只能做简单修改。",
        "no_llm_edit": ("语言模型未安装，我只能做简单修改，例如“场景2短一点”“把场景3改成5秒”"
                        "“删除场景4”“把场景5移到开头”“复制场景1”“竖屏”“场景2换个种子”"
                        "“总时长改成45秒”。"),
        "empty": "消息是空的；请说说要做什么或改什么。",
        "too_long": "消息有 {length:,} 个字符，上限是 {limit:,}。请用几句话说明。",
        "fitted": "视频超过了 {limit} 的上限，已缩短各场景。",
        "version": "第 {version} 版。",
        "llm_failed_draft": "语言模型没能生成初稿，这是按学科模板生成的。",
    },
}


@dataclass(frozen=True)
class Reply:
    message: str  # the sentence(s) to show first
    storyboard: Storyboard | None  # the current storyboard after this turn
    version: int | None
    changes: tuple[str, ...] = ()
    failed: bool = False  # the message could not be acted on; nothing changed

    @property
    def text(self) -> str:
        """The whole reply as plain text: the message, then one line per change."""
        lines = [self.message, *(f"• {change}" for change in self.changes)]
        if self.changes and self.version and self.storyboard:
            lines.append(_say(self.storyboard.language, "version", version=self.version))
        return "\n".join(lines)


class Dialogue:
    def __init__(self, connection: redis.Redis, settings: Settings,
                 llm: StoryboardLLM | None = None) -> None:
        self.settings = settings
        self.llm = llm
        self.history = StoryboardHistory(connection)
        self.turns = RecentTurns(connection)

    def turn(self, conversation: str, message: str, *, language: str | None = None,
             aspect: str | None = None) -> Reply:
        """Act on one message. `language` and `aspect` steer a first draft (the CLI's flags)."""
        latest = self.history.latest(conversation)
        current = latest.storyboard if latest else None
        message = clean_text(message)
        reply_language = current.language if current else (language or detect_language(message))
        limit = self.settings.limits.max_request_chars
        if not message:
            return self._failed(_say(reply_language, "empty"), latest)
        if len(message) > limit:
            return self._failed(
                _say(reply_language, "too_long", length=len(message), limit=limit), latest)
        recent = self.turns.recent(conversation)
        try:
            if current is None:
                new, said = self._draft(conversation, message, language)
                if aspect:
                    new = new.revise(aspect=aspect)
                moved: tuple[str, ...] = ()
            else:
                new, said, moved = self._edit(conversation, current, recent, message)
            reply = self._keep(conversation, current, new, said,
                               latest.number if latest else 0, moved)
        except UserError as exc:
            reply = self._failed(str(exc), latest)
        self.turns.add(conversation, Turn("teacher", message))
        self.turns.add(conversation, Turn("assistant", reply.text))
        return reply

    # -- the three kinds of turn -------------------------------------------------------------

    def _draft(self, conversation: str, message: str,
               language: str | None) -> tuple[Storyboard, str]:
        if self.llm is None:
            draft = draft_storyboard(message, self.settings, language=language)
            board = draft.storyboard
            notes = " ".join((*draft.notes, _say(board.language, "no_llm_draft")))
            return board, f"{_drafted(board)} {notes}"
        limits = self.settings.limits
        request = read_request(message, max_chars=limits.max_request_chars,
                               max_seconds=limits.max_total_seconds,
                               min_seconds=limits.min_total_seconds, language=language)
        try:
            answer = self.llm.answer(None, [], message, language=request.language)
        except LLMError:  # a first draft is always possible: the rule-based one
            draft = draft_storyboard(message, self.settings, language=language)
            fallback = _say(draft.storyboard.language, "llm_failed_draft")
            return draft.storyboard, f"{_drafted(draft.storyboard)} {fallback}"
        board = answer_to_storyboard(
            answer, None, styles(), grade=request.grade,
            title_card_seconds=self.settings.storyboard.title_card_seconds,
            salt=f"{conversation}:1")
        if request.seconds:  # the teacher said how long: hold the model to it where possible
            board = _retimed(board, request.seconds) or board
        return board, answer.reply or _drafted(board)

    def _edit(self, conversation: str, current: Storyboard, recent: list[Turn],
              message: str) -> tuple[Storyboard, str, tuple[str, ...]]:
        """The edited storyboard, what to say, and the scenes a plain "move" moved."""
        edited = apply_plain_edit(current, message)
        if edited is not None:
            return edited.storyboard, _say(current.language, "edited"), edited.moved
        if self.llm is None:
            raise UserError(_say(current.language, "no_llm_edit"))
        answer = self.llm.answer(current, recent, message)
        version = self.history.count(conversation) + 1
        board = answer_to_storyboard(
            answer, current, styles(), grade=current.grade,
            title_card_seconds=current.title_card_seconds, salt=f"{conversation}:{version}")
        return board, answer.reply or _say(board.language, "edited"), ()

    # -- outcomes ----------------------------------------------------------------------------

    def _keep(self, conversation: str, current: Storyboard | None, new: Storyboard,
              said: str, current_number: int, moved: tuple[str, ...] = ()) -> Reply:
        limit = self.settings.limits.max_total_seconds
        if new.total_seconds > limit:
            new = _retimed(new, limit) or new
            said = f"{said} {_say(new.language, 'fitted', limit=format_seconds(limit))}"
            new.check_total(limit)  # still too long: the UserError becomes a reply
        if current is not None:
            changes = tuple(describe_changes(current, new, moved))
            if not changes:  # a question answered, or an edit that changed nothing
                unchanged = _say(new.language, "unchanged", version=current_number)
                said = "" if said == _say(new.language, "edited") else f"{said} "
                return Reply(f"{said}{unchanged}", current, current_number)
        else:
            changes = ()
        note = "drafted" if current is None else "; ".join(changes)[:200]
        number = self.history.append(conversation, new, note, after=current_number)
        return Reply(said, new, number, changes)

    def _failed(self, message: str, latest: StoryboardVersion | None) -> Reply:
        return Reply(message, latest.storyboard if latest else None,
                     latest.number if latest else None, failed=True)


def _retimed(board: Storyboard, seconds: int) -> Storyboard | None:
    durations = retime([scene.duration for scene in board.scenes],
                       seconds - board.title_card_seconds)
    if durations is None:
        return None
    return board.revise(scenes=[dict(scene.model_dump(), duration=duration)
                                for scene, duration in zip(board.scenes, durations, strict=True)])


def _drafted(board: Storyboard) -> str:
    return _say(board.language, "drafted", title=board.title,
                total=format_seconds(board.total_seconds), scenes=len(board.scenes),
                plural="" if len(board.scenes) == 1 else "s")


def _say(language: str, key: str, **values: object) -> str:
    return SAY.get(language, SAY["en"])[key].format(**values)
