"""``fermion token …``, ``fermion user …``, ``fermion project …`` and ``fermion whoami``."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ._output import console, print_json, print_table
from ._platform import connect

token_app = typer.Typer(help="Create, list and revoke API tokens (scoped to a project and a role).",
                        no_args_is_help=True)
user_app = typer.Typer(help="Manage users (server admins).", no_args_is_help=True)
project_app = typer.Typer(help="Manage projects and their members.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
RoleOpt = Annotated[str, typer.Option(help="viewer, editor or admin.")]


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if at else "never"


def whoami(json_out: JsonOpt = False) -> None:
    """The user, token, scope and roles the CLI acts as."""
    me = connect().whoami()
    if json_out:
        print_json(me.to_json())
        return
    scope = f"project {me.project}" if me.project else "all of the user's projects"
    console.print(f"user [bold]{me.user}[/]{' (server admin)' if me.server_admin else ''} — token "
                  f"{me.token!r}: {me.role} in {scope}, expires {_when(me.expires_at)}")
    print_table(None, ["project", "role"], sorted(me.projects.items()))


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="A label for the token.")],
    project: Annotated[str | None, typer.Option(help="Scope it to this project (default: all of the user's).")] = None,
    role: RoleOpt = "viewer",
    expires_in_days: Annotated[float, typer.Option(help="Days until it expires.")] = 30,
    user: Annotated[str | None, typer.Option(help="Server admins: for another user.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a token; it is shown once."""
    out = connect().tokens.create(name, project=project, role=role, expires_in_days=expires_in_days, user=user)
    if json_out:
        print_json(out.to_json())
        return
    console.print(f"token {out.id} for {out.user}: {out.role} in {out.project or 'all projects'}, "
                  f"expires {_when(out.expires_at)}")
    console.print(f"token (shown once): [bold]{out.token}[/]")


@token_app.command("list")
def token_list(user: Annotated[str | None, typer.Option(help="Server admins: this user's.")] = None,
               json_out: JsonOpt = False) -> None:
    """Your tokens (a server admin sees everyone's). Never their values."""
    rows = connect().tokens(user)
    if json_out:
        print_json([t.to_json() for t in rows])
        return
    print_table("tokens", ["id", "name", "user", "project", "role", "expires", "state"],
                [(t.id, t.name, t.user, t.project or "*", t.role, _when(t.expires_at),
                  "revoked" if t.revoked else "expired" if t.expires_at and t.expires_at < time.time()
                  else "active") for t in rows])


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="The token's id (see `fermion token list`).")]) -> None:
    """Revoke a token at once, gateway included."""
    connect().tokens.revoke(token_id)
    console.print(f"token {token_id}: revoked")


@user_app.command("create")
def user_create(name: str, admin: Annotated[bool, typer.Option(help="Make a server admin.")] = False) -> None:
    """Create a user (then give it roles with `fermion project add-member`)."""
    connect().users.create(name, admin)
    console.print(f"user {name}: created{' (server admin)' if admin else ''}")


@user_app.command("list")
def user_list(json_out: JsonOpt = False) -> None:
    """Users and their roles per project."""
    rows = connect().users()
    if json_out:
        print_json([u.to_json() for u in rows])
        return
    print_table("users", ["name", "server admin", "projects"],
                [(u.name, "yes" if u.admin else "", ", ".join(f"{p}:{r}" for p, r in sorted(u.projects.items())))
                 for u in rows])


@user_app.command("delete")
def user_delete(name: str) -> None:
    """Delete a user; its tokens are revoked."""
    connect().users.delete(name)
    console.print(f"user {name}: deleted, tokens revoked")


@project_app.command("create")
def project_create(name: str) -> None:
    """Create a project (server admins)."""
    connect().projects.create(name)
    console.print(f"project {name}: created")


@project_app.command("list")
def project_list(json_out: JsonOpt = False) -> None:
    """The projects you can see, with your role in each."""
    rows = connect().projects()
    if json_out:
        print_json(rows)
        return
    print_table("projects", ["name", "your role"], [(p["name"], p["role"]) for p in rows])


@project_app.command("show")
def project_show(name: str, json_out: JsonOpt = False) -> None:
    """A project's members and what it holds."""
    out = connect().projects.get(name)
    if json_out:
        print_json(out)
        return
    console.print(f"[bold]{name}[/]: {out['deployments']} deployments, {out['jobs']} jobs, {out['secrets']} secrets")
    print_table("members", ["user", "role"], sorted(out["members"].items()))


@project_app.command("delete")
def project_delete(name: str) -> None:
    """Delete an empty project."""
    connect().projects.delete(name)
    console.print(f"project {name}: deleted")


@project_app.command("add-member")
def project_add_member(name: str, user: str, role: RoleOpt = "viewer") -> None:
    """Give a user a role in a project (or change it)."""
    connect().projects.add_member(name, user, role)
    console.print(f"{user} is {role} in {name}")


@project_app.command("remove-member")
def project_remove_member(name: str, user: str) -> None:
    """Take a user's role in a project away."""
    connect().projects.remove_member(name, user)
    console.print(f"{user} removed from {name}")
