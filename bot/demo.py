"""`lessonreel demo`: the whole path once, in a terminal.

A request is drafted into a storyboard, the storyboard is saved as version 1 of a console
conversation, a render job goes onto an RQ queue in Redis (embedded unless
LESSONREEL_REDIS_URL says otherwise), a non-forking worker in this process takes it, and
the progress bar follows the job's events in the Redis stream, as a chat bot would.
With LESSONREEL_PUBLIC_URL set, the demo ends with a share link to the video, unless --out
moved the files out of the media root (then it says that no link can open them).
The job goes on a queue of its own, so a demo pointed at a school's shared Redis renders
its own video and nobody else's.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from rich.console import Console

from bot.messages import say
from bot.terminal import RenderProgress, print_outputs, storyboard_table
from engine.connection import connect
from engine.dialogue import Dialogue
from engine.drafter import styles
from engine.errors import RequestError
from engine.events import EventLog, RenderEvent
from engine.jobs import RenderSpec, enqueue_render, new_job_id, render_queue
from engine.llm import StoryboardLLM
from engine.moderation import Policy, Verdict
from engine.presets import plan_for
from engine.request import detect_language
from engine.settings import load_settings
from engine.share import share_secret, share_url
from engine.storyboard import format_seconds
from worker.render import prepare_output_dir
from worker.runner import run_worker
from worker.text import font_file

# Once the job has ended, its final event is at most this far behind.
EVENT_GRACE_SECONDS = 10
EXIT_FAILED = 1
EXIT_STOPPED = 130


@dataclass(frozen=True)
class DemoOptions:
    request: str
    out: Path | None
    language: str | None
    aspect: str | None


def run_demo(options: DemoOptions, console: Console, errors: Console) -> int:
    settings = load_settings()
    font_file(settings.render.font_path)  # a bad font path is a start-up error, not a failed job
    plan_for(settings, "16:9")  # so is a video model that is asked for but cannot be used
    if options.out:
        prepare_output_dir(options.out)  # refuse an unwritable --out before anything else
    # A bad share secret is a start-up error too, not a surprise after the render.
    secret = share_secret(settings) if settings.public_url and not options.out else None
    llm = StoryboardLLM(settings, list(styles())) if settings.llm.model_path else None
    policy = Policy.load(settings=settings)
    _check(policy.check_text(options.request), options.language or
           detect_language(options.request))

    connection = connect(settings)
    job_id = new_job_id()
    conversation = f"console:{job_id}"
    reply = Dialogue(connection, settings, llm).turn(
        conversation, options.request, language=options.language, aspect=options.aspect)
    if reply.storyboard is None:
        raise RequestError(reply.message)
    storyboard, version = reply.storyboard, reply.version
    _check(policy.check_storyboard(storyboard), storyboard.language)  # a model's answer too
    console.print(storyboard_table(storyboard))
    console.print(reply.text, markup=False)

    events = EventLog(connection)
    after = events.last_id()
    spec = RenderSpec(job_id=job_id, conversation=conversation, version=version,
                      storyboard=storyboard, output=job_id)
    # A private queue: on a shared Redis, a demo must not take the school's render jobs.
    queue = render_queue(connection, settings, name=f"{settings.queue.name}-demo-{job_id}")
    enqueue_render(connection, settings, spec, queue=queue)
    watcher = None
    try:
        with RenderProgress(errors) as progress:
            watcher = _EventWatcher(events, after, job_id, progress.show)
            watcher.start()
            try:
                run_worker(settings, connection, burst=True, logging_level="CRITICAL",
                           queue=queue, foreground=True)
            except SystemExit:  # a CUDA fault: this process's GPU context is gone
                errors.print("lessonreel: the GPU failed during the render (a CUDA error); "
                             "nothing was saved. Try again, or ask your IT contact to check "
                             "the GPU.", markup=False, highlight=False, soft_wrap=True)
                return EXIT_FAILED
            final = watcher.wait(EVENT_GRACE_SECONDS)
    finally:
        if watcher is not None:
            watcher.stop()  # before the connection closes under it at exit
        queue.delete(delete_jobs=True)  # nothing of this demo is left queued

    if final is None or final.kind != "finished":
        message = final.message if final else (
            f"The render (job {job_id}) ended without reporting back; check the worker's log.")
        errors.print(f"lessonreel: {message}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_STOPPED if final and final.kind == "cancelled" else EXIT_FAILED
    outputs = {name: Path(path) for name, path in final.outputs.items()}
    if options.out:
        outputs = move_outputs(outputs, options.out)
    print_outputs(console, outputs)
    if final.seconds is not None and round(final.seconds) != storyboard.total_seconds:
        console.print(f"Timed to the narration: {format_seconds(round(final.seconds))} "
                      f"(the storyboard above said {format_seconds(storyboard.total_seconds)}).",
                      markup=False)
    for note in final.notes:
        console.print(f"Note: {note}", markup=False)
    if secret is not None:
        console.print(f"Share link: {share_url(settings, secret, job_id)}", markup=False,
                      soft_wrap=True)
    elif settings.public_url:
        console.print("No share link: --out moved the files out of the media root, which is "
                      "the only place share links serve from.", markup=False)
    return 0


def _check(verdict: Verdict, language: str) -> None:
    """The same policy as in chat: a request or storyboard unsuitable for students stops here."""
    if not verdict.allowed:
        category = say(language, f"category_{verdict.category}")
        raise RequestError(say(language, "blocked", category=category))


def move_outputs(outputs: dict[str, Path], destination: Path) -> dict[str, Path]:
    """Move finished files to `destination`, the video last, and drop the emptied folder."""
    moved = {}
    for name, path in outputs.items():  # already in publishing order: the video is last
        moved[name] = destination / path.name
        shutil.move(path, moved[name])
    with contextlib.suppress(OSError):
        next(iter(outputs.values())).parent.rmdir()
    return moved


class _EventWatcher(threading.Thread):
    """Reads the event stream in the background until the job's final event arrives."""

    def __init__(self, events: EventLog, after: str, job_id: str, show) -> None:
        super().__init__(daemon=True)
        self._events = events
        self._after = after
        self._job_id = job_id
        self._show = show
        self._done = threading.Event()
        self.final: RenderEvent | None = None

    def run(self) -> None:
        while not self._done.is_set():
            try:
                batch = self._events.read(self._after, block_ms=200)
            except redis.RedisError:  # a hiccup must not lose the job's news: read again
                time.sleep(0.1)
                continue
            for entry_id, event in batch:
                self._after = entry_id
                if event.job_id != self._job_id:
                    continue
                self._show(event)
                if event.is_final:
                    self.final = event
                    self._done.set()

    def wait(self, timeout: float) -> RenderEvent | None:
        self._done.wait(timeout)
        return self.final

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=2)
