"""``fermion audit``: who changed what, when and from where; and whether the record is intact."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

import typer

from ..errors import UserInputError
from ._output import console, print_error, print_json, print_table
from ._platform import connect


def parse_since(value: str, now: float | None = None) -> float:
    """Epoch seconds from "3600" (seconds ago) or an ISO time (local time when it has no zone)."""
    try:
        return (time.time() if now is None else now) - float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise UserInputError(f"--since {value!r} is neither seconds ago nor an ISO time",
                             hint="e.g. --since 3600 or --since 2025-01-31T09:00") from None


def audit(
    actor: Annotated[str | None, typer.Option(help="Only calls by this user (or 'anonymous').")] = None,
    target: Annotated[str | None, typer.Option(help="Only this object, e.g. deployment/web.")] = None,
    method: Annotated[str | None, typer.Option(help="Only this HTTP method, e.g. DELETE.")] = None,
    since: Annotated[str | None, typer.Option(help="Seconds ago (3600) or an ISO time.")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest; at most 1000).")] = 100,
    verify: Annotated[bool, typer.Option("--verify", help="Check the hash chain instead of listing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Mutating API calls, newest last; --verify checks that no record was altered or removed."""
    conn = connect()
    if verify:
        out = conn.audit.verify()
        if json_out:
            print_json(out)
        elif out["ok"]:
            console.print(f"[green]audit chain intact[/]: {out['records']} records")
        else:
            print_error(f"audit chain broken at record {out['first_bad']} ({out['records']} records)",
                        "that record, or the one before it, was altered or removed")
        if not out["ok"]:
            raise typer.Exit(1)
        return
    rows = conn.audit(actor=actor, target=target, method=method, limit=limit,
                      since=parse_since(since) if since is not None else None)
    if json_out:
        print_json([r.to_json() for r in rows])
        return
    print_table("audit", ["time", "actor", "method", "target", "status", "client"],
                [(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at)), r.actor, r.method,
                  r.target or r.path, r.status, r.client) for r in rows])
