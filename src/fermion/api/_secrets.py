"""REST API v1: secrets. Values go in and never come out; only names and timestamps are listed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from ..errors import ConflictError, NotFoundError
from ..store import SecretRow
from ._auth import require_token

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str


def _platform(request: Request):  # noqa: ANN202
    return request.app.state.platform


def _out(row: SecretRow) -> dict[str, Any]:
    return {"name": row.name, "created_at": row.created_at, "updated_at": row.updated_at}


@router.put("/secrets/{name}")
def put_secret(request: Request, name: str, body: SecretValue) -> dict[str, Any]:
    """Create or replace a secret (its value is sealed before it reaches the database)."""
    p = _platform(request)
    with p.store.session() as s:
        row, created = p.secrets.set_secret(s, name, body.value)
        p.store.record(s, "secret", name[:100], "", "created" if created else "replaced", "")
        return {**_out(row), "created": created}


@router.get("/secrets")
def list_secrets(request: Request) -> list[dict[str, Any]]:
    """Names and timestamps, never values."""
    with _platform(request).store.session() as s:
        return [_out(r) for r in s.scalars(select(SecretRow).order_by(SecretRow.name)).all()]


@router.delete("/secrets/{name}")
def delete_secret(request: Request, name: str) -> dict[str, str]:
    """Remove a secret no live deployment or unfinished job refers to."""
    p = _platform(request)
    with p.store.session() as s:
        row = s.get(SecretRow, name)
        if row is None:
            raise NotFoundError(f"no secret named {name!r}", hint="see `fermion secret list`")
        users = p.secrets.referrers(s, name)
        if users:
            raise ConflictError(f"secret {name!r} is in use by {', '.join(users)}",
                                hint="remove the reference from their env first")
        s.delete(row)
        p.store.record(s, "secret", name[:100], "", "deleted", "")
    return {"deleted": name}


@router.post("/secrets/rotate")
def rotate_secrets(request: Request) -> dict[str, Any]:
    """Re-encrypt every secret and every stored env under a new master key."""
    p = _platform(request)
    out = p.secrets.rotate(p.store)
    with p.store.session() as s:
        p.store.record(s, "secret", "master-key", out["previous_key_id"], out["key_id"], "rotated")
    return out
