"""Shared console helpers: errors without tracebacks, tables, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


def print_error(message: str, hint: str | None = None) -> None:
    # messages carry names and server text: shown as they are, never read as markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title, header_style="bold cyan")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else v if isinstance(v, Text) else Text(str(v)) for v in row))
    console.print(table)


EGRESS_HELP = ("May reach the network. On a local cloud it then shares this machine's network, its loopback "
               "included, instead of a namespace of its own.")
