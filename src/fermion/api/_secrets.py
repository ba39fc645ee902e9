"""REST API v1: secrets. Values go in and never come out; only names and timestamps are listed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from ..errors import ConflictError, NotFoundError, shorten
from ..security import SECRET_NAME_PATTERN
from ..store import SecretRow
from ._auth import caller, require_token
from ._principal import require_project
from ._schemas import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    value: str
    project: str | None = None  # default: the caller's default project


def _hidden(name: str, project: str) -> NotFoundError:
    return NotFoundError(f"no secret named {shorten(name)!r} in project {shorten(project)!r}",
                         hint="see `fermion secret list`")


def _platform(request: Request):  # noqa: ANN202
    return request.app.state.platform


def _out(row: SecretRow) -> dict[str, Any]:
    return {"name": row.name, "project": row.project, "created_at": row.created_at, "updated_at": row.updated_at}


@router.put("/secrets/{name}")
def put_secret(request: Request, name: Annotated[str, Path(pattern=f"^{SECRET_NAME_PATTERN}$")], body: SecretValue) -> dict[str, Any]:
    """Create or replace a secret of a project (sealed before it reaches the database); editors."""
    p = _platform(request)
    me = caller(request)
    project = body.project or me.default_project()
    with p.store.session() as s:
        require_project(s, project, me, "editor")
        row, created = p.secrets.set_secret(s, name, body.value, project)
        p.store.record(s, "secret", name[:100], "", "created" if created else "replaced", "")
        return {**_out(row), "created": created}


@router.get("/secrets")
def list_secrets(request: Request, project: str | None = None) -> list[dict[str, Any]]:
    """Names and timestamps of the secrets in the projects the caller can see, never values."""
    me = caller(request)
    with _platform(request).store.session() as s:
        q = select(SecretRow).order_by(SecretRow.project, SecretRow.name)
        if project is not None:
            q = q.where(SecretRow.project == project)
        return [_out(r) for r in s.scalars(q).all() if me.visible(r.project)]


@router.delete("/secrets/{name}")
def delete_secret(request: Request, name: str, project: str | None = None) -> dict[str, str]:
    """Remove a secret no live deployment or unfinished job refers to; editors."""
    p = _platform(request)
    me = caller(request)
    project = project or me.default_project()
    with p.store.session() as s:
        row = s.get(SecretRow, (project, name))
        if row is None:
            raise _hidden(name, project)
        me.require(project, "editor", _hidden(name, project))
        users = p.secrets.referrers(s, name, project)
        if users:
            raise ConflictError(f"secret {name!r} is in use by {', '.join(users)}",
                                hint="remove the reference from their env first")
        s.delete(row)
        p.store.record(s, "secret", name[:100], "", "deleted", "")
    return {"deleted": name}


@router.post("/secrets/rotate")
def rotate_secrets(request: Request) -> dict[str, Any]:
    """Re-encrypt every secret and every stored env under a new master key; server admins."""
    caller(request).require_admin()
    p = _platform(request)
    out = p.secrets.rotate(p.store)
    with p.store.session() as s:
        p.store.record(s, "secret", "master-key", out["previous_key_id"], out["key_id"], "rotated")
    return out
