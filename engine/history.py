"""Storyboard versions per conversation, kept in Redis.

A conversation (a chat thread, a console session, one `demo` run) has a list of storyboard
versions. Appending never rewrites an earlier version, so "go back to version 2" and "what
did scene 3 say before?" always have an answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal

import redis
from pydantic import BaseModel

from engine.errors import StoryboardError
from engine.storyboard import Storyboard

KEY_PREFIX = "lessonreel:storyboards:"
# Append only if the list still has ARGV[2] versions; -1 otherwise. Atomic in Redis.
APPEND_IF_LATEST = """
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[2]) then return -1 end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


class StoryboardConflict(StoryboardError):
    """The storyboard changed between reading it and saving an edit of it."""


@dataclass(frozen=True)
class StoryboardVersion:
    number: int  # 1-based
    storyboard: Storyboard
    note: str
    created_at: float


class StoryboardHistory:
    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection

    def append(self, conversation: str, storyboard: Storyboard, note: str = "", *,
               after: int | None = None) -> int:
        """Store a new version and return its number.

        With `after`, only if the latest version is still number `after`: two colleagues
        editing one thread must not silently undo each other. StoryboardConflict otherwise.
        """
        record = _Record(storyboard=storyboard, note=note[:200], created_at=time.time())
        if after is None:
            # RPUSH returns the new length, which is the new version's number.
            return int(self._redis.rpush(self._key(conversation), record.model_dump_json()))
        number = int(self._redis.eval(APPEND_IF_LATEST, 1, self._key(conversation),
                                      record.model_dump_json(), after))
        if number < 0:
            raise StoryboardConflict(
                "Someone else changed this storyboard while I was working on your message, so "
                "I kept their version; please look at it and say your change again."
            )
        return number

    def get(self, conversation: str, number: int) -> StoryboardVersion:
        count = self.count(conversation)
        if not 1 <= number <= count:
            raise StoryboardError(
                f"There is no version {number}; this storyboard has versions 1 to {count}."
                if count else "There is no storyboard in this conversation yet."
            )
        raw = self._redis.lindex(self._key(conversation), number - 1)
        return _Record.model_validate_json(raw).as_version(number)

    def latest(self, conversation: str) -> StoryboardVersion | None:
        count = self.count(conversation)
        return self.get(conversation, count) if count else None

    def count(self, conversation: str) -> int:
        return int(self._redis.llen(self._key(conversation)))

    @staticmethod
    def _key(conversation: str) -> str:
        return KEY_PREFIX + conversation


class _Record(BaseModel):
    storyboard: Storyboard
    note: str
    created_at: float

    def as_version(self, number: int) -> StoryboardVersion:
        return StoryboardVersion(number, self.storyboard, self.note, self.created_at)


TURNS_PREFIX = "lessonreel:turns:"
MAX_TURNS = 8  # what the language model sees of the conversation: the last few exchanges
MAX_TURN_CHARS = 600


@dataclass(frozen=True)
class Turn:
    role: Literal["teacher", "assistant"]
    text: str


class RecentTurns:
    """The last few messages of a conversation, oldest first, each cut to a bounded length."""

    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection

    def add(self, conversation: str, turn: Turn) -> None:
        key = TURNS_PREFIX + conversation
        record = json.dumps({"role": turn.role, "text": turn.text[:MAX_TURN_CHARS]},
                            ensure_ascii=False)
        pipe = self._redis.pipeline()
        pipe.rpush(key, record)
        pipe.ltrim(key, -MAX_TURNS, -1)
        pipe.execute()

    def recent(self, conversation: str) -> list[Turn]:
        raw = self._redis.lrange(TURNS_PREFIX + conversation, 0, -1)
        return [Turn(item["role"], item["text"]) for item in map(json.loads, raw)]
