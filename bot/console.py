"""`lessonreel chat`: the conversation in a terminal, the same as in a chat thread.

Each line is a message in one thread; the storyboard card prints as a table, its buttons as
the words that do the same ("render", "preview"…). Render news arrives through the event
relay like on any platform. Unless told otherwise, an in-process worker renders the jobs this
session queues, so a laptop needs nothing else running.
"""

from __future__ import annotations

import secrets
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.console import Console

from bot.core import Author, ChatService, Out, Place, Route
from bot.relay import Delivery
from bot.runtime import RelayThread, Runtime, build_runtime, relay_for
from bot.terminal import storyboard_table
from engine.jobs import render_queue

FINAL_GRACE_SECONDS = 10


class ConsoleNotifier:
    def __init__(self, show: Callable[[str], None]) -> None:
        self._show = show
        self.deliveries: list[Delivery] = []
        self.finished_jobs: set[str] = set()
        self.changed = threading.Condition()

    async def post_status(self, route: Route, text: str) -> str:
        self._show(text)
        return "status"

    async def edit_status(self, route: Route, ref: str, text: str) -> None:
        self._show(text)

    async def show_preview(self, route: Route, ref: str | None, picture: Path,
                           caption: str) -> str:
        self._show(f"{caption} {picture}")  # a terminal can open the file while it lasts
        return "live"

    async def remove_preview(self, route: Route, ref: str) -> None:
        """Nothing to remove: printed lines stay."""

    async def deliver(self, route: Route, delivery: Delivery) -> None:
        self._show(delivery.text)
        if delivery.video is not None:
            self._show(f"Preview: {delivery.video}")
        with self.changed:
            self.deliveries.append(delivery)
            self.finished_jobs.add(route.job_id)
            self.changed.notify_all()

    def wait_for(self, jobs: set[str], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: jobs <= self.finished_jobs, timeout)


class ConsoleChat:
    """One terminal thread. `send` takes a line and prints the replies."""

    def __init__(self, runtime: Runtime, console: Console, *, user: str = "console",
                 render_here: bool = True) -> None:
        self.runtime = runtime
        self.console = console
        self.place = Place("console", user, secrets.token_hex(4))
        self.service = ChatService(runtime.connection, runtime.settings,
                                   share_secret=runtime.secret, llm=runtime.service.llm)
        if render_here:
            # A queue of its own: pointed at a school's Redis, a terminal must not take
            # (and render on its CPU) the jobs of Slack and Telegram teachers.
            self.service.queue_name = f"{runtime.settings.queue.name}-chat-{self.place.thread}"
        self.author = Author(user)
        self.notifier = ConsoleNotifier(self._print)
        # A group of its own: two terminals chatting at once each see their own renders.
        self.relay = RelayThread(relay_for(runtime, "console", self.notifier,
                                           group=f"console-{self.place.thread}",
                                           only=lambda route: route.place == self.place))
        self.render_here = render_here
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.followed: set[str] = set()  # jobs this session queued

    def __enter__(self) -> ConsoleChat:
        self.relay.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._worker is not None:
            self._worker.join()
            # Rendered here: its last news is on the stream, a moment from being shown.
            self.notifier.wait_for(self.followed, FINAL_GRACE_SECONDS)
        self.relay.stop(remove_group=True)
        if self.service.queue_name:
            render_queue(self.runtime.connection, self.runtime.settings,
                         self.service.queue_name).delete(delete_jobs=True)

    def send(self, line: str) -> list[Out]:
        outs = self.service.message(self.place, self.author, line)
        for out in outs:
            if out.card is not None:
                self.console.print(storyboard_table(out.card.storyboard))
                hint = " · ".join(button.label for button in out.card.buttons)
                self._print(f"{out.text}\n[{hint}]".strip())
            else:
                self._print(out.text)
            if out.follows_job:
                self.followed.add(out.follows_job)
                # The line just printed is this job's status; later news prints below it.
                self.service.routes.claim_status(out.follows_job, "console")
                if self.render_here:
                    self._render_in_background()
        return outs

    def run(self, lines: Iterable[str]) -> None:
        for line in lines:
            if line.strip() in ("quit", "exit", "退出"):
                break
            self.send(line)

    def _render_in_background(self) -> None:
        from worker.runner import run_worker  # a chat without renders never imports it

        if self._worker is not None:
            self._worker.join()  # one job at a time, like a single-GPU worker

        queue = render_queue(self.runtime.connection, self.runtime.settings,
                             self.service.queue_name)

        def work() -> None:
            run_worker(self.runtime.settings, self.runtime.connection, burst=True,
                       logging_level="CRITICAL", queue=queue, foreground=True)

        self._worker = threading.Thread(target=work, daemon=True, name="console-worker")
        self._worker.start()

    def _print(self, text: str) -> None:
        with self._lock:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def run_chat(*, render_here: bool, console: Console | None = None) -> int:
    console = console or Console()
    runtime = build_runtime()
    interactive = sys.stdin.isatty()
    if interactive:
        console.print("Tell me what video to make (“help” lists the commands, Ctrl-D ends).",
                      markup=False)
    with ConsoleChat(runtime, console, render_here=render_here) as chat:
        for line in _lines(interactive):
            if line.strip() in ("quit", "exit", "退出"):
                break
            if line.strip():
                chat.send(line)
    return 0


def _lines(interactive: bool):
    while True:
        try:
            yield input("> " if interactive else "")
        except EOFError:
            return
