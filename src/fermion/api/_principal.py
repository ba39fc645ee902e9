"""Who is calling: the token's user, its scope and its role, resolved once per request.

A user is a server admin (may do anything) or acts through memberships: a role per project.
A token caps its user: it may be scoped to one project and carry a lower role. The role a call
gets in a project is the lower of the user's and the token's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import AuthError, NotFoundError, PermissionDeniedError, shorten
from ..security import bearer_digest
from ..store import MembershipRow, ProjectRow, TokenRow, UserRow

ROLES = ("viewer", "editor", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}


@dataclass(frozen=True)
class Principal:
    token_id: str
    token_name: str
    user: str
    server_admin: bool  # the user administers the whole server
    token_project: str | None  # None: every project the user may use
    token_role: str
    memberships: dict[str, str] = field(default_factory=dict)
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        """May manage the server itself: users, projects, clouds, the audit log."""
        return self.server_admin and self.token_project is None and self.token_role == "admin"

    def role_in(self, project: str) -> str | None:
        if self.token_project is not None and self.token_project != project:
            return None
        user_role = "admin" if self.server_admin else self.memberships.get(project)
        if user_role is None:
            return None
        return min(user_role, self.token_role, key=RANK.__getitem__)

    def can(self, project: str, role: str) -> bool:
        have = self.role_in(project)
        return have is not None and RANK[have] >= RANK[role]

    def can_edit_any(self) -> bool:
        """Whether the caller is an editor somewhere (e.g. to upload a photon)."""
        if self.server_admin:
            return RANK[self.token_role] >= RANK["editor"]
        return any(self.can(p, "editor") for p in self.memberships)

    def visible(self, project: str) -> bool:
        return self.role_in(project) is not None

    def require(self, project: str, role: str, hidden: NotFoundError) -> None:
        """Raise ``hidden`` if the caller may not even see ``project`` (so names do not leak
        across projects), PermissionDeniedError if its role there is below ``role``."""
        have = self.role_in(project)
        if have is None:
            raise hidden
        if RANK[have] < RANK[role]:
            raise PermissionDeniedError(f"this needs the {role} role in project {project!r}; this token has {have}",
                                        hint="ask a project admin, or use a token with that role")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDeniedError("only a server admin may do this",
                                        hint="use a server admin's unscoped admin token")

    def default_project(self) -> str:
        """Where new objects go when the call names no project: the token's project, else the
        user's only project, else "default"."""
        if self.token_project is not None:
            return self.token_project
        if not self.server_admin and len(self.memberships) == 1:
            return next(iter(self.memberships))
        return "default"


def require_project(s: Session, name: str, me: Principal, role: str) -> ProjectRow:
    """The project, if it exists and the caller has ``role`` in it; else a 404 (existence does
    not leak) or a 403."""
    row = s.get(ProjectRow, name)
    hidden = NotFoundError(f"no project named {shorten(name)!r}", hint="see `fermion project list`")
    if row is None:
        raise hidden
    me.require(name, role, hidden)
    return row


_bearer = HTTPBearer(auto_error=False, description="an API token (`fermion token create`)")


def live_token_row(s: Session, authorization: str) -> TokenRow:
    """The token in an ``Authorization`` header value if it is known, not revoked and not expired;
    else AuthError saying which."""
    digest = bearer_digest(authorization)
    if digest is None:
        raise AuthError("missing bearer token", hint="send 'Authorization: Bearer <token>' (see `fermion login`)")
    token = s.scalars(select(TokenRow).where(TokenRow.token_hash == digest)).first()
    if token is None:
        raise AuthError("invalid token")
    if token.revoked_at is not None:
        raise AuthError("this token was revoked", hint="ask for a new one (`fermion token create`)")
    if token.expires_at is not None and token.expires_at <= time.time():
        raise AuthError("this token has expired", hint="ask for a new one (`fermion token create`)")
    return token


def live_token(store, authorization: str) -> bool:  # noqa: ANN001
    """Whether the header value carries a live token (see live_token_row)."""
    with store.session() as s:
        try:
            live_token_row(s, authorization)
        except AuthError:
            return False
        return True


def authenticate(request: Request, _declared: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
    """FastAPI dependency: the caller, or a 401. Resolved once per request. (``_declared`` only
    puts the bearer scheme in the OpenAPI schema; the header is read here, with Fermion's errors.)"""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    with request.app.state.platform.store.session() as s:
        token = live_token_row(s, request.headers.get("authorization", ""))
        user = s.get(UserRow, token.user)
        if user is None:
            raise AuthError("this token's user no longer exists")
        memberships = {m.project: m.role for m in s.scalars(select(MembershipRow).where(MembershipRow.user == user.name))}
        principal = Principal(token.id, token.name, user.name, user.admin, token.project, token.role, memberships,
                              token.expires_at)
    request.state.principal = principal
    return principal
