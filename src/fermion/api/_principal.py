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

from ..errors import AuthError, NotFoundError, PermissionDeniedError
from ..security import hash_token
from ..store import MembershipRow, TokenRow, UserRow

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


_bearer = HTTPBearer(auto_error=False, description="an API token (`fermion token create`)")


def live_token(store, authorization: str) -> bool:  # noqa: ANN001
    """Whether the header carries a token that is known, not revoked and not expired."""
    if not authorization.lower().startswith("bearer "):
        return False
    with store.session() as s:
        t = s.scalars(select(TokenRow).where(TokenRow.token_hash == hash_token(authorization[7:].strip()))).first()
        return t is not None and t.revoked_at is None and (t.expires_at is None or t.expires_at > time.time())


def authenticate(request: Request, _declared: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
    """FastAPI dependency: the caller, or a 401. Resolved once per request. (``_declared`` only
    puts the bearer scheme in the OpenAPI schema; the header is read here, with Fermion's errors.)"""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise AuthError("missing bearer token", hint="send 'Authorization: Bearer <token>' (see `fermion login`)")
    digest = hash_token(auth[7:].strip())
    store = request.app.state.platform.store
    with store.session() as s:
        token = s.scalars(select(TokenRow).where(TokenRow.token_hash == digest)).first()
        if token is None:
            raise AuthError("invalid token")
        if token.revoked_at is not None:
            raise AuthError("this token was revoked", hint="ask for a new one (`fermion token create`)")
        if token.expires_at is not None and token.expires_at <= time.time():
            raise AuthError("this token has expired", hint="ask for a new one (`fermion token create`)")
        user = s.get(UserRow, token.user)
        if user is None:
            raise AuthError("this token's user no longer exists")
        memberships = {m.project: m.role for m in s.scalars(select(MembershipRow).where(MembershipRow.user == user.name))}
        principal = Principal(token.id, token.name, user.name, user.admin, token.project, token.role, memberships,
                              token.expires_at)
    request.state.principal = principal
    return principal
