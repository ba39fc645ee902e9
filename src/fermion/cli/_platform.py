"""The CLI's way to a Fermion server: the SDK's connection, and Rich bars for its progress."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..errors import FermionError, UserInputError
from ..sdk import (CREDENTIALS, Bar, Connection, Credentials, Identity, Transport, connect, load_credentials,
                   save_credentials)

__all__ = ["CREDENTIALS", "Connection", "bars", "check_login", "connect", "load_credentials", "login",
           "progress_console", "save_credentials"]

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


def check_login(url: str, token: str, ca: str | None) -> Identity:
    """Who ``token`` acts as on the server at ``url`` (verified with the certificate file ``ca``):
    a Fermion error when the URL is not a reachable Fermion server or the token is refused."""
    if not url.startswith(("http://", "https://")):
        raise UserInputError(f"{url!r} is not an http(s) URL",
                             hint="e.g. fermion login http://127.0.0.1:8400 --token TOKEN")
    # these very credentials, not connect()'s: FERMION_URL or FERMION_TOKEN would test another server or token
    with Connection(Transport(Credentials(url, token, ca), timeout=30)) as conn:
        try:
            return conn.whoami()
        except ValueError:  # an answer, but not a Fermion server's JSON (another web server on that port)
            raise UserInputError(f"{url} does not answer as a Fermion server",
                                 hint="check the URL: the one `fermion server start` printed") from None


def login(url: Annotated[str, typer.Argument(help="Server URL")],
          token: Annotated[str, typer.Option(help="API token", prompt=True, hide_input=True)],
          ca: Annotated[Path | None, typer.Option(
              help="CA (or the server's own) certificate to verify an https server with.")] = None) -> None:
    """Check a server URL and token (and CA certificate), then save them for the CLI.

    Nothing is saved unless the server answers and accepts the token: a failed login leaves the saved ones as they were.
    """
    from ._output import console

    url = url.rstrip("/")
    ca_file = str(ca.resolve()) if ca else None
    try:
        me = check_login(url, token, ca_file or os.environ.get("FERMION_CA") or None)
    except FermionError as exc:
        # the same error (its kind and exit code), saying that what was saved still stands
        exc.message = f"login to {url} failed, nothing saved: {exc.message}"
        raise
    path = save_credentials(url, token, ca=ca_file)
    console.print(f"logged in to {url} as {me.user}; saved to {path}")
