"""How engine objects look in a terminal: the storyboard table, render progress, output paths."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from engine.events import EventKind, RenderEvent
from engine.storyboard import Storyboard, format_seconds

OUTPUT_LABELS = {
    "video": "Video",
    "preview": "Preview",
    "captions_srt": "Captions (SRT)",
    "captions_vtt": "Captions (WebVTT)",
    "poster": "Poster",
    "contact_sheet": "Contact sheet",
    "storyboard": "Storyboard",
    "qc": "Quality report",
    "bundle": "Export bundle (ZIP)",
}


STATUS: dict[EventKind, str] = {
    "queued": "Queued", "started": "Starting", "progress": "Rendering", "finished": "Done",
    "failed": "Failed", "cancelled": "Stopped",
}


def storyboard_table(storyboard: Storyboard) -> Table:
    """The storyboard as a table. Every teacher-written string is a Text, never markup:
    "list[i]" must print as typed, and "[/]" must not crash the terminal."""
    table = Table(
        title=Text(storyboard.title),
        caption=Text(f"{storyboard.audience} · {format_seconds(storyboard.total_seconds)} · "
                     f"{storyboard.aspect} · {storyboard.language} · {storyboard.style.name}"),
        show_lines=True,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("Time", justify="right", no_wrap=True)
    table.add_column("On screen", max_width=22)
    # "fold": Chinese has no spaces to wrap at, and must not be cut short with "…".
    table.add_column("Visual", ratio=1, overflow="fold")
    table.add_column("Narration", ratio=1, overflow="fold")
    if storyboard.title_card_seconds:
        table.add_row("—", f"{storyboard.title_card_seconds} s", Text(storyboard.title),
                      "Title card", "")
    for number, scene in enumerate(storyboard.scenes, start=1):
        table.add_row(str(number), f"{scene.duration} s", Text(scene.on_screen_text or ""),
                      Text(scene.visual + (f" (image: {scene.image})" if scene.image else "")),
                      Text(scene.narration))
    return table


class RenderProgress:
    """A progress bar fed by render events."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), console=console, transient=False,
        )
        self._task = self._progress.add_task("Queued", total=1.0)

    def __enter__(self) -> RenderProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def show(self, event: RenderEvent) -> None:
        if event.kind == "progress" and event.scene and event.step is not None:
            description = (f"Rendering scene {event.scene}/{event.scenes}, "
                           f"step {event.step}/{event.steps}")
        elif event.kind == "progress" and event.scene:
            description = f"Rendering scene {event.scene}/{event.scenes}"
        elif event.kind == "progress":
            description = "Rendering the title card"
        else:
            description = STATUS[event.kind]
        self._progress.update(self._task, description=description, completed=event.fraction)


def print_outputs(console: Console, outputs: Mapping[str, str | Path]) -> None:
    """One "label  path" line per file, never wrapped, so a path can be copied or scripted."""
    width = max(len(label) for label in OUTPUT_LABELS.values())
    for name, label in OUTPUT_LABELS.items():
        if name in outputs:
            console.print(f"{label:<{width}}  {outputs[name]}", soft_wrap=True, markup=False,
                          highlight=False)
