"""Progress on stderr: a bar per digest for pull, push and create, and the status lines.

The server streams ``{status, digest, total, completed}`` records; a record with
a digest and a total moves that digest's bar, any other record is a status line,
printed once however often it repeats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class ProgressDisplay:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._bars: dict[str, TaskID] = {}
        self._last_status = ""
        self._started = False

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *_: object) -> None:
        if self._started:
            self._progress.stop()

    def _add_task(self, description: str, total: int) -> TaskID:
        if not self._started:  # the bars appear with the first one, not before
            self._progress.start()
            self._started = True
        return self._progress.add_task(description, total=total)

    def update(self, record: Mapping[str, Any]) -> None:
        """Show one NDJSON progress record."""
        status = str(record.get("status") or "")
        digest = record.get("digest")
        total = record.get("total")
        if digest and isinstance(total, int) and total > 0:
            completed = record.get("completed")
            description = status or f"pulling {_short(str(digest))}"
            bar = self._bars.get(str(digest))
            if bar is None:
                bar = self._add_task(description, total)
                self._bars[str(digest)] = bar
            done = completed if isinstance(completed, int) else 0
            self._progress.update(bar, completed=done, total=total, description=description)
            return
        if status and status != self._last_status:
            self.status(status)

    def status(self, text: str) -> None:
        """A line above the bars."""
        self._last_status = text
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def bar(self, description: str, total: int) -> Callable[[int], None]:
        """A new bar; the function it returns advances it by a number of bytes."""
        task = self._add_task(description, total)

        def advance(n: int) -> None:
            self._progress.advance(task, n)

        return advance


def _short(digest: str) -> str:
    """The 12 hex digits Ollama shows for a digest."""
    return digest.split(":", 1)[-1].split("-", 1)[-1][:12]
