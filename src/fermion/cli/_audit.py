"""``fermion audit``: who changed what, when and from where; and whether the record is intact."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

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


def read_head(path: Path) -> dict[str, Any]:
    """The head a file holds: what ``fermion audit --head`` printed (or ``--verify --json``'s output)."""
    hint = 'it should hold what `fermion audit --head` printed: {"seq": N, "hash": "<64 hex digits>"}'
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read the audit head {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise UserInputError(f"{path} is not an audit head: not JSON", hint=hint) from None
    if isinstance(data, dict) and isinstance(data.get("head"), dict):
        data = data["head"]
    seq, digest = (data.get("seq"), data.get("hash")) if isinstance(data, dict) else (None, None)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 or not isinstance(digest, str) \
            or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise UserInputError(f"{path} is not an audit head: it needs a seq (1 or more) and a hash", hint=hint)
    return {"seq": seq, "hash": digest}


def _verified(out: dict[str, Any]) -> str:
    """The line for a chain that holds."""
    head = out.get("head")
    line = f"[green]audit chain intact[/]: {out['records']} records"
    if head:
        line += f", head seq {head['seq']} (hash {head['hash'][:16]}…)"
    if out.get("legacy"):
        line += (f"; the first {out['legacy']} are from before the log was anchored: checked by their hashes, "
                 "which the records after them pin")
    if out.get("since"):
        line += f"; it still holds the exported head (seq {out['since']})"
    return line


def audit(
    actor: Annotated[str | None, typer.Option(help="Only calls by this user (or 'anonymous').")] = None,
    target: Annotated[str | None, typer.Option(help="Only this object, e.g. deployment/web.")] = None,
    method: Annotated[str | None, typer.Option(help="Only this HTTP method, e.g. DELETE.")] = None,
    since: Annotated[str | None, typer.Option(help="Seconds ago (3600) or an ISO time.")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest; at most 1000).")] = 100,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Check the chain (seqs, hashes, MACs, heads) instead of listing.")] = False,
    since_head: Annotated[Path | None, typer.Option(
        "--since-head", help="Verify, and also that nothing up to this exported head was changed or cut.")] = None,
    head: Annotated[bool, typer.Option(
        "--head", help="Verify, then print the head as JSON, to keep (> head.json) for --since-head.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Mutating API calls, newest last; --verify checks that no record was altered, removed or cut."""
    # before connecting: a bad file is the first error
    expected = read_head(since_head) if since_head is not None else None
    conn = connect()
    if verify or head or expected is not None:
        out = conn.audit.verify(since_head=expected)
        if not out["ok"]:
            if json_out and not head:
                print_json(out)
            else:
                print_error(f"audit chain broken: {out['problem']}",
                            out.get("hint") or "see the records around it: fermion audit --json --limit 1000")
            raise typer.Exit(1)
        if head:
            if out.get("head") is None:
                raise UserInputError("the audit log is empty: there is no head to export yet")
            print_json(out["head"])
        elif json_out:
            print_json(out)
        else:
            console.print(_verified(out))
        return
    rows = conn.audit(actor=actor, target=target, method=method, limit=limit,
                      since=parse_since(since) if since is not None else None)
    if json_out:
        print_json([r.to_json() for r in rows])
        return
    print_table("audit", ["time", "actor", "method", "target", "status", "client"],
                [(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at)), r.actor, r.method,
                  r.target or r.path, r.status, r.client) for r in rows])
