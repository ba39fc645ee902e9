"""Who may do what, through the SDK: tokens, users, projects, secrets and the audit record."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from ..errors import UserInputError
from ._http import Transport
from ._results import Result


class Identity(Result):
    """Who a token acts as: ``conn.whoami()``."""

    user: str
    server_admin: bool
    token: str | None = Field(None, description="the token's label")
    role: str | None = None
    project: str | None = None
    expires_at: float | None = None
    projects: dict[str, str] = Field(default_factory=dict, description="the user's role in each project")


class Token(Result):
    id: str
    name: str
    user: str
    project: str | None = None
    role: str
    expires_at: float | None = None
    revoked: bool = False
    token: str | None = Field(None, description="the value: only in the answer that created it")


class User(Result):
    name: str
    admin: bool
    projects: dict[str, str] = Field(default_factory=dict)


class Secret(Result):
    project: str
    name: str
    created_at: float
    updated_at: float


class AuditRecord(Result):
    at: float
    actor: str
    method: str
    path: str
    target: str | None = None
    status: int
    client: str | None = ""
    seq: int | None = Field(None, description="its place in the audit chain: 1, 2, 3… without gaps")


class Tokens:
    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self, user: str | None = None) -> list[Token]:
        """Your tokens (a server admin sees everyone's, or ``user``'s); never their values."""
        return [Token.model_validate(t) for t in self._http.get("/tokens", user=user)]

    def create(self, name: str, *, project: str | None = None, role: str = "viewer", expires_in_days: float = 30,
               user: str | None = None) -> Token:
        """A token scoped to ``project`` (default: all of the user's) and ``role``; its value is in ``.token``."""
        body: dict[str, Any] = {"name": name, "project": project, "role": role, "expires_in_days": expires_in_days}
        if user:
            body["user"] = user
        return Token.model_validate(self._http.request("POST", "/tokens", json=body))

    def revoke(self, token_id: str) -> None:
        """Revoke at once, gateway included."""
        self._http.request("DELETE", f"/tokens/{token_id}")


class Users:
    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self) -> list[User]:
        return [User.model_validate(u) for u in self._http.get("/users")]

    def create(self, name: str, admin: bool = False) -> dict[str, Any]:
        return self._http.request("POST", "/users", json={"name": name, "admin": admin})

    def delete(self, name: str) -> None:
        """Delete a user; its tokens are revoked."""
        self._http.request("DELETE", f"/users/{name}")


class Projects:
    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self) -> list[dict[str, Any]]:
        """The projects you can see, with your role in each."""
        return self._http.get("/projects")

    def get(self, name: str) -> dict[str, Any]:
        """Its members and how many deployments, jobs and secrets it holds."""
        return self._http.get(f"/projects/{name}")

    def create(self, name: str) -> dict[str, Any]:
        return self._http.request("POST", "/projects", json={"name": name})

    def delete(self, name: str) -> None:
        self._http.request("DELETE", f"/projects/{name}")

    def add_member(self, name: str, user: str, role: str = "viewer") -> dict[str, Any]:
        return self._http.request("PUT", f"/projects/{name}/members/{user}", json={"role": role})

    def remove_member(self, name: str, user: str) -> None:
        self._http.request("DELETE", f"/projects/{name}/members/{user}")


class Secrets:
    """Values encrypted at rest, referenced from env as ``secret:NAME``."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self, project: str | None = None) -> list[Secret]:
        return [Secret.model_validate(r) for r in self._http.get("/secrets", project=project)]

    def set(self, name: str, value: str, project: str | None = None) -> bool:
        """Create or replace; True when it was created."""
        return bool(self._http.request("PUT", f"/secrets/{name}", json={"value": value, "project": project})["created"])

    def delete(self, name: str, project: str | None = None) -> None:
        """Refused while a deployment or job refers to it."""
        self._http.request("DELETE", f"/secrets/{name}", params={"project": project} if project else None)

    def rotate(self) -> dict[str, Any]:
        """Re-encrypt every secret and stored env under a new master key."""
        return self._http.request("POST", "/secrets/rotate")


class Audit:
    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self, *, actor: str | None = None, target: str | None = None, method: str | None = None,
                 since: float | None = None, limit: int = 100) -> list[AuditRecord]:
        """Mutating API calls, newest last (``since``: epoch seconds)."""
        rows = self._http.get("/audit", actor=actor, target=target, method=method, since=since, limit=limit)
        return [AuditRecord.model_validate(r) for r in rows]

    def verify(self, since_head: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Whether the chain is intact: ``ok``, ``records``, ``first_bad`` (a seq) and ``problem``, and
        its ``head`` (the newest record's ``seq`` and ``hash``). Keep a head and pass it back as
        ``since_head``: verify then also fails if anything up to it was changed or cut."""
        if since_head is None:
            return self._http.get("/audit/verify")
        seq, digest = since_head.get("seq"), since_head.get("hash")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 or not isinstance(digest, str) \
                or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise UserInputError("not an audit head: it needs a seq (1 or more) and a hash (64 hex digits)",
                                 hint="use the head a verify returned: verify()['head']")
        return self._http.get("/audit/verify", since_seq=seq, since_hash=digest)
