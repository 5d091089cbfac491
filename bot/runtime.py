"""What every bot process sets up the same way: settings, Redis, the share secret, the model,
and a thread running the render-event relay beside the platform's own loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis

from bot.core import ChatService
from bot.relay import EventRelay, Notifier
from engine.connection import connect
from engine.drafter import styles
from engine.llm import StoryboardLLM
from engine.logs import redact_token_in_logs as redact_token_in_logs  # the bots' import
from engine.settings import Settings, load_settings
from engine.share import share_secret

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    connection: redis.Redis
    secret: bytes
    service: ChatService


def build_runtime(settings: Settings | None = None) -> Runtime:
    settings = settings or load_settings()
    secret = share_secret(settings)  # a bad secret stops start-up, before any connection
    llm = StoryboardLLM(settings, list(styles())) if settings.llm.model_path else None
    connection = connect(settings)
    service = ChatService(connection, settings, share_secret=secret, llm=llm)
    return Runtime(settings, connection, secret, service)


def relay_for(runtime: Runtime, platform: str, notifier: Notifier, *,
              group: str | None = None, only=None) -> EventRelay:
    return EventRelay(runtime.connection, runtime.settings, share_secret=runtime.secret,
                      platform=platform, notifier=notifier, group=group, only=only)


def use_bot_executor() -> None:
    """More threads than asyncio's default (cores + 4): a conversation waiting for the model
    or for its thread's earlier message holds one, and must not hold up every other chat."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=64, thread_name_prefix="turn"))


class RelayThread(threading.Thread):
    """Runs a relay on an event loop of its own (for the console, which has no loop)."""

    def __init__(self, relay: EventRelay) -> None:
        super().__init__(daemon=True, name="event-relay")
        self.relay = relay
        self._loop = asyncio.new_event_loop()
        self._stop_event = asyncio.Event()
        self.relay.ensure_group()  # before start() returns: no event after it is missed

    def run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.relay.run(self._stop_event, block_ms=200))

    def stop(self, *, remove_group: bool = False) -> None:
        self._loop.call_soon_threadsafe(self._stop_event.set)
        self.join(timeout=5)
        if remove_group:
            self.relay.remove_group()
