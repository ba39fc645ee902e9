"""The CLI's way to a Fermion server: the SDK's connection, and Rich bars for its progress."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from ..sdk import CREDENTIALS, Bar, Connection, connect, load_credentials, save_credentials

__all__ = ["CREDENTIALS", "Connection", "bars", "connect", "load_credentials", "progress_console", "save_credentials"]

progress_console = Console(stderr=True)  # bars on stderr: stdout stays the result (`--json` parses)


class _RichBar:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def total(self, n: int | None) -> None:
        self._progress.update(self._task, total=n)

    def completed(self, n: int) -> None:
        self._progress.update(self._task, completed=n)


@contextlib.contextmanager
def bars(description: str, total: int | None) -> Iterator[Bar]:
    """A Rich bar of bytes with the rate (the SDK's progress, drawn on stderr); one of unknown size
    (reading a folder) leaves no line behind."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=progress_console, transient=total is None) as progress:
        yield _RichBar(progress, progress.add_task(description, total=total))
