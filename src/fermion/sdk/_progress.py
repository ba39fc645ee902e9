"""How long SDK calls report progress: a caller passes a factory of bars (the CLI's draws Rich
bars); without one, nothing is shown."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol


class Bar(Protocol):
    """One task's progress, in bytes (or steps)."""

    def advance(self, n: int) -> None: ...

    def total(self, n: int | None) -> None: ...

    def completed(self, n: int) -> None: ...


ProgressFactory = Callable[[str, int | None], AbstractContextManager[Bar]]
"""``factory(description, total)`` opens a bar for one task; ``total`` None: not known yet."""


class _Quiet:
    def advance(self, n: int) -> None:
        pass

    def total(self, n: int | None) -> None:
        pass

    def completed(self, n: int) -> None:
        pass


@contextlib.contextmanager
def quiet(description: str, total: int | None) -> Iterator[Bar]:
    """The default: no bar."""
    yield _Quiet()
