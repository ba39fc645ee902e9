"""REST API v1: users, projects and their members, and scoped tokens."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select

from ..errors import ConflictError, NotFoundError, UserInputError, shorten
from ..security import hash_token, new_token
from ..store import (
    DeploymentRow,
    JobRow,
    MembershipRow,
    ModelVersionRow,
    ProjectRow,
    SecretRow,
    TokenRow,
    UserRow,
)
from ..types import NAME_PATTERN
from ._principal import RANK, Principal, authenticate, require_project
from ._schemas import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(authenticate)])

Role = Literal["viewer", "editor", "admin"]
MAX_TOKEN_DAYS = 3650


def _platform(request: Request):  # noqa: ANN202
    return request.app.state.platform


# -- who am I -----------------------------------------------------------------------------------
@router.get("/whoami")
def whoami(me: Principal = Depends(authenticate)) -> dict[str, Any]:
    """The caller: user, token, scope and role in each project it can see."""
    return {"user": me.user, "token": me.token_name, "token_id": me.token_id, "server_admin": me.is_admin,
            "project": me.token_project, "role": me.token_role, "expires_at": me.expires_at,
            "projects": {p: me.role_in(p) for p in sorted(me.memberships) if me.role_in(p)}}


# -- tokens ---------------------------------------------------------------------------------------
class TokenSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    # at most the column's length (PostgreSQL refuses more); a label, so no control characters
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$", description="a label")
    project: str | None = Field(None, description="scope the token to one project; none means all of the user's")
    role: Role = "viewer"
    expires_in_days: float = Field(30, gt=0, le=MAX_TOKEN_DAYS)
    user: str | None = Field(None, description="server admins only: make a token for another user")


def _token_out(t: TokenRow) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "user": t.user, "project": t.project, "role": t.role,
            "created_at": t.created_at, "expires_at": t.expires_at, "revoked": t.revoked_at is not None}


@router.post("/tokens", status_code=201)
def create_token(request: Request, spec: TokenSpec, me: Principal = Depends(authenticate)) -> dict[str, Any]:
    """A new token, shown once. It can never do more than the token that made it."""
    p = _platform(request)
    user = spec.user or me.user
    if user != me.user:
        me.require_admin()
    expires_at = time.time() + spec.expires_in_days * 86400
    if me.expires_at is not None:
        expires_at = min(expires_at, me.expires_at)
    with p.store.session() as s:
        target = s.get(UserRow, user)
        if target is None:
            raise NotFoundError(f"no user named {shorten(user)!r}", hint="see `fermion user list`")
        if spec.project is not None:
            if s.get(ProjectRow, spec.project) is None:
                raise NotFoundError(f"no project named {shorten(spec.project)!r}", hint="see `fermion project list`")
            mine = me.role_in(spec.project)
            if mine is None or RANK[mine] < RANK[spec.role]:
                raise UserInputError(f"a token with the {spec.role} role in {spec.project!r} is more than this token "
                                     f"may grant ({mine or 'no role'} there)")
        elif me.token_project is not None or RANK[me.token_role] < RANK[spec.role]:
            raise UserInputError("an unscoped token, or one with a higher role, cannot come from this token",
                                 hint="give --project, or a role no higher than this token's")
        token = new_token("fmt")
        row = TokenRow(name=spec.name, token_hash=hash_token(token), role=spec.role, user=user,
                       project=spec.project, expires_at=expires_at)
        s.add(row)
        s.flush()
        p.store.record(s, "token", row.id, "", "created",
                       f"{spec.role} token {spec.name!r} for {user}" + (f" in {spec.project}" if spec.project else ""))
        out = {**_token_out(row), "token": token}
    p.refresh_gateway_admins()
    return out


@router.get("/tokens")
def list_tokens(request: Request, user: str | None = None, me: Principal = Depends(authenticate)) -> list[dict[str, Any]]:
    """The caller's tokens; a server admin sees everyone's (or ``user``'s)."""
    with _platform(request).store.session() as s:
        q = select(TokenRow).order_by(TokenRow.created_at)
        if not me.is_admin:
            q = q.where(TokenRow.user == me.user)
        elif user:
            q = q.where(TokenRow.user == user)
        return [_token_out(t) for t in s.scalars(q).all()]


@router.delete("/tokens/{token_id}")
def revoke_token(request: Request, token_id: str, me: Principal = Depends(authenticate)) -> dict[str, Any]:
    """Revoke a token (one's own; a server admin any). The last server admin token cannot go."""
    p = _platform(request)
    with p.store.session() as s:
        t = s.get(TokenRow, token_id)
        if t is None or (t.user != me.user and not me.is_admin):
            raise NotFoundError(f"no token {shorten(token_id)!r}", hint="see `fermion token list`")
        if t.revoked_at is None:
            if _is_admin_token(s, t) and _live_admin_tokens(s) <= 1:
                raise ConflictError("this is the last server admin token", hint="create another admin token first")
            t.revoked_at = time.time()
            p.store.record(s, "token", t.id, "created", "revoked", f"revoked by {me.user}")
        out = _token_out(t)
    p.refresh_gateway_admins()
    return out


def _is_admin_token(s, t: TokenRow) -> bool:  # noqa: ANN001
    user = s.get(UserRow, t.user)
    return bool(user and user.admin and t.project is None and t.role == "admin")


def _live_admin_tokens(s) -> int:  # noqa: ANN001
    now = time.time()
    return sum(1 for t in s.scalars(select(TokenRow).where(TokenRow.revoked_at.is_(None))).all()
               if (t.expires_at is None or t.expires_at > now) and _is_admin_token(s, t))


# -- users ------------------------------------------------------------------------------------------
class UserSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=NAME_PATTERN)
    admin: bool = Field(False, description="a server admin may do anything")


@router.post("/users", status_code=201)
def create_user(request: Request, spec: UserSpec, me: Principal = Depends(authenticate)) -> dict[str, Any]:
    me.require_admin()
    p = _platform(request)
    with p.store.session() as s:
        if s.get(UserRow, spec.name) is not None:
            raise ConflictError(f"user {spec.name!r} exists")
        s.add(UserRow(name=spec.name, admin=spec.admin))
        p.store.record(s, "user", spec.name, "", "created", "server admin" if spec.admin else "user")
    return {"name": spec.name, "admin": spec.admin, "projects": {}}


@router.get("/users")
def list_users(request: Request, me: Principal = Depends(authenticate)) -> list[dict[str, Any]]:
    me.require_admin()
    with _platform(request).store.session() as s:
        members: dict[str, dict[str, str]] = {}
        for m in s.scalars(select(MembershipRow)).all():
            members.setdefault(m.user, {})[m.project] = m.role
        return [{"name": u.name, "admin": u.admin, "projects": members.get(u.name, {})}
                for u in s.scalars(select(UserRow).order_by(UserRow.name)).all()]


@router.delete("/users/{name}")
def delete_user(request: Request, name: str, me: Principal = Depends(authenticate)) -> dict[str, str]:
    """Remove a user, its memberships and (revoked first) its tokens."""
    me.require_admin()
    p = _platform(request)
    with p.store.session() as s:
        user = s.get(UserRow, name)
        if user is None:
            raise NotFoundError(f"no user named {shorten(name)!r}", hint="see `fermion user list`")
        if name == me.user:
            raise ConflictError("a user cannot delete itself", hint="ask another server admin")
        s.execute(delete(MembershipRow).where(MembershipRow.user == name))
        for t in s.scalars(select(TokenRow).where(TokenRow.user == name, TokenRow.revoked_at.is_(None))).all():
            t.revoked_at = time.time()
        s.delete(user)
        p.store.record(s, "user", name, "created", "deleted", f"deleted by {me.user}")
    p.refresh_gateway_admins()
    return {"deleted": name}


# -- projects ---------------------------------------------------------------------------------------
class ProjectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=NAME_PATTERN)


class MemberSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Role


@router.post("/projects", status_code=201)
def create_project(request: Request, spec: ProjectSpec, me: Principal = Depends(authenticate)) -> dict[str, Any]:
    me.require_admin()
    p = _platform(request)
    with p.store.session() as s:
        if s.get(ProjectRow, spec.name) is not None:
            raise ConflictError(f"project {spec.name!r} exists")
        s.add(ProjectRow(name=spec.name))
        p.store.record(s, "project", spec.name, "", "created", f"by {me.user}")
    return {"name": spec.name, "members": {}}


@router.get("/projects")
def list_projects(request: Request, me: Principal = Depends(authenticate)) -> list[dict[str, Any]]:
    with _platform(request).store.session() as s:
        return [{"name": r.name, "role": me.role_in(r.name), "created_at": r.created_at}
                for r in s.scalars(select(ProjectRow).order_by(ProjectRow.name)).all() if me.visible(r.name)]


@router.get("/projects/{name}")
def show_project(request: Request, name: str, me: Principal = Depends(authenticate)) -> dict[str, Any]:
    with _platform(request).store.session() as s:
        row = require_project(s, name, me, "viewer")
        members = {m.user: m.role for m in s.scalars(select(MembershipRow).where(MembershipRow.project == name))}
        counts = {kind: len(s.scalars(select(model.name).where(model.project == name)).all())
                  for kind, model in (("deployments", DeploymentRow), ("jobs", JobRow), ("secrets", SecretRow))}
        return {"name": row.name, "role": me.role_in(name), "members": members, **counts}


@router.delete("/projects/{name}")
def delete_project(request: Request, name: str, me: Principal = Depends(authenticate)) -> dict[str, str]:
    """Remove an empty project (no deployments, jobs, models or secrets left)."""
    me.require_admin()
    p = _platform(request)
    with p.store.session() as s:
        require_project(s, name, me, "admin")
        if name == "default":
            raise ConflictError("the default project cannot be deleted")
        for kind, model in (("deployments", DeploymentRow), ("jobs", JobRow), ("models", ModelVersionRow),
                            ("secrets", SecretRow)):
            if s.scalars(select(model).where(model.project == name).limit(1)).first() is not None:
                raise ConflictError(f"project {name!r} still has {kind}", hint="delete them first")
        s.execute(delete(MembershipRow).where(MembershipRow.project == name))
        for t in s.scalars(select(TokenRow).where(TokenRow.project == name, TokenRow.revoked_at.is_(None))).all():
            t.revoked_at = time.time()
        s.execute(delete(ProjectRow).where(ProjectRow.name == name))
        p.store.record(s, "project", name, "created", "deleted", f"by {me.user}")
    return {"deleted": name}


@router.put("/projects/{name}/members/{user}")
def set_member(request: Request, name: str, user: str, spec: MemberSpec,
               me: Principal = Depends(authenticate)) -> dict[str, Any]:
    """Give ``user`` a role in the project (project admins and server admins)."""
    p = _platform(request)
    with p.store.session() as s:
        require_project(s, name, me, "admin")
        if s.get(UserRow, user) is None:
            raise NotFoundError(f"no user named {shorten(user)!r}", hint="a server admin creates users")
        row = s.get(MembershipRow, (user, name))
        old = row.role if row else ""
        if row is None:
            s.add(MembershipRow(user=user, project=name, role=spec.role))
        else:
            row.role = spec.role
        p.store.record(s, "project", name, old, spec.role, f"{user} is {spec.role} (by {me.user})")
    return {"project": name, "user": user, "role": spec.role}


@router.delete("/projects/{name}/members/{user}")
def remove_member(request: Request, name: str, user: str, me: Principal = Depends(authenticate)) -> dict[str, Any]:
    p = _platform(request)
    with p.store.session() as s:
        require_project(s, name, me, "admin")
        row = s.get(MembershipRow, (user, name))
        if row is None:
            raise NotFoundError(f"{shorten(user)!r} is not a member of {name!r}")
        s.delete(row)
        p.store.record(s, "project", name, row.role, "", f"{user} removed (by {me.user})")
    return {"project": name, "user": user, "removed": True}
