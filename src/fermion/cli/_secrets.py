"""``fermion secret …``: values encrypted at rest, referenced from env as ``secret:NAME``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserInputError
from ._output import console, print_json, print_table
from ._platform import connect

ProjectOpt = Annotated[str | None, typer.Option(help="The project (default: your token's, or default).")]
secret_app = typer.Typer(help="Manage secrets (use them in env as secret:NAME).", no_args_is_help=True)


def _read_value(value: str | None, from_file: Path | None) -> str:
    if value is not None:
        return value
    if from_file is not None:
        try:
            return from_file.read_text()
        except OSError as exc:
            raise UserInputError(f"cannot read {from_file}: {exc.strerror}") from None
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        # `echo value | fermion secret set X` should not store echo's newline
        return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    return typer.prompt("value", hide_input=True, confirmation_prompt=True)


@secret_app.command("set")
def secret_set(
    name: str,
    value: Annotated[str | None, typer.Option(help="The value (visible in shell history; prefer stdin).")] = None,
    from_file: Annotated[Path | None, typer.Option("--from-file", help="Read the value from this file.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Create or replace a secret; the value comes from --value, --from-file, stdin, else a prompt."""
    created = connect().secrets.set(name, _read_value(value, from_file), project)
    console.print(f"secret {name}: {'created' if created else 'replaced'}")


@secret_app.command("list")
def secret_list(json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
                project: ProjectOpt = None) -> None:
    """Secret names and when they changed (never their values)."""
    rows = connect().secrets(project)
    if json_out:
        print_json([r.to_json() for r in rows])
        return
    fmt = "%Y-%m-%d %H:%M:%S"
    print_table("secrets", ["project", "name", "created", "updated"],
                [(r.project, r.name, time.strftime(fmt, time.localtime(r.created_at)),
                  time.strftime(fmt, time.localtime(r.updated_at))) for r in rows])


@secret_app.command("delete")
def secret_delete(name: str, project: ProjectOpt = None) -> None:
    """Delete a secret (refused while a deployment or job refers to it)."""
    connect().secrets.delete(name, project)
    console.print(f"secret {name}: deleted")


@secret_app.command("rotate")
def secret_rotate() -> None:
    """Re-encrypt every secret and stored env under a new master key."""
    out = connect().secrets.rotate()
    console.print(f"master key rotated to {out['key_id']}: {out['secrets']} secrets, "
                  f"{out['deployments']} deployment envs and {out['jobs']} job envs re-encrypted")
