"""The audit log: every mutating API call, recorded after its answer, in a sha256 hash chain.

Each record's ``hash`` is sha256 of the previous record's hash and the canonical JSON of its
own fields, so changing, inserting or removing a record in the middle breaks the chain."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ..security import bearer_digest
from ..store import AuditRow, Store, TokenRow, db_error_text, storable
from ..types import ASGIApp, Receive, Scope, Send
from ._auth import caller, require_token
from ._schemas import ERROR_RESPONSES

GENESIS = "0" * 64
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIX = "/api/v1/"
MAX_PATH = 2000

log = logging.getLogger("fermion.audit")
# one appender at a time: each record must see the hash of the one written just before it
_append_lock = threading.Lock()

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])


def target_of(path: str) -> str:
    """The object a path acts on: "/api/v1/deployments/web/scale" → "deployment/web"."""
    parts = [p for p in path[len(API_PREFIX):].split("/") if p] if path.startswith(API_PREFIX) else []
    if not parts:
        return ""
    kind = parts[0][:-1] if parts[0].endswith("s") else parts[0]
    return f"{kind}/{parts[1]}" if len(parts) > 1 else kind


def record_hash(prev_hash: str, row: AuditRow) -> str:
    """sha256 of the previous hash and the canonical JSON of the record's other fields."""
    fields = {"id": row.id, "at": row.at, "actor": row.actor, "method": row.method, "path": row.path,
              "target": row.target, "client": row.client, "status": row.status}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _actor(s: Session, authorization: str) -> str:
    digest = bearer_digest(authorization)
    if digest is None:
        return "anonymous"
    name = s.scalars(select(TokenRow.user).where(TokenRow.token_hash == digest)).first()
    return name if name is not None else "unknown"


def append(store: Store, *, at: float, authorization: str, method: str, path: str, client: str,
           status: int) -> AuditRow:
    """Write one record at the end of the chain (blocking: call it from a worker thread)."""
    with _append_lock, store.session() as s:
        # the last hash is read in the transaction that inserts, so no other writer slips between
        prev = s.scalars(select(AuditRow.hash).order_by(AuditRow.id.desc()).limit(1).with_for_update()).first()
        path = storable(path)  # as it will be stored (a %00 in the URL is a NUL): the hash covers that
        row = AuditRow(at=at, actor=_actor(s, authorization), method=method, path=path[:MAX_PATH],
                       target=target_of(path)[:MAX_PATH], client=client, status=status,
                       prev_hash=prev or GENESIS, hash="")
        s.add(row)
        s.flush()  # assigns the id, which the hash covers
        row.hash = record_hash(row.prev_hash, row)
        return row


def verify_chain(session: Session) -> tuple[bool, int | None]:
    """Whether every record links to the one before it and matches its hash; else the first bad id."""
    first_bad, _ = _walk(session)
    return first_bad is None, first_bad


def _walk(session: Session) -> tuple[int | None, int]:
    """The first bad record's id (None if none) and how many records there are."""
    prev, count, first_bad = GENESIS, 0, None
    for row in session.scalars(select(AuditRow).order_by(AuditRow.id).execution_options(yield_per=1000)):
        count += 1
        if first_bad is None and (row.prev_hash != prev or row.hash != record_hash(prev, row)):
            first_bad = row.id
        prev = row.hash
    return first_bad, count


def _bulk(method: str, path: str) -> bool:
    """The many small calls of one transfer: a chunk sent, or the question which chunks to send.
    A push of a gigabyte is a thousand of them; its commit is what the audit log keeps."""
    return ((method == "PUT" and "/chunks/" in path) or (method == "POST" and path.endswith("/missing"))) and \
        path.startswith(("/api/v1/datasets/", "/api/v1/code/", "/api/v1/attempts/self/"))


def audit_requests(app: ASGIApp, store: Store) -> ASGIApp:
    """Wrap ``app`` so each mutating /api/v1/ call is recorded once its answer has gone out."""

    async def audited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING or not scope["path"].startswith(API_PREFIX):
            return await app(scope, receive, send)
        at = time.time()
        status = 500  # what the server answers when the app raises or never starts a response

        async def watched_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, watched_send)
        finally:
            if status < 400 and _bulk(scope["method"], scope["path"]):
                return  # the version they make is recorded; a refused one is recorded like any call
            # the first Authorization header, the one require_token reads
            authorization = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            client = scope.get("client")
            record = {"at": at, "authorization": authorization.decode("latin-1"),
                      "method": scope["method"], "path": scope["path"], "client": client[0] if client else "",
                      "status": status}
            # shielded: a cancelled request is still recorded; in a thread: the loop never waits on the database
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(lambda: append(store, **record))
                except DBAPIError as exc:  # a full or read-only disk: one line per request, not a traceback
                    log.error("could not write the audit record for %s %s: %s", record["method"], record["path"],
                              db_error_text(exc))
                except Exception:
                    log.exception("could not write the audit record for %s %s", record["method"], record["path"])

    return audited


def _out(row: AuditRow) -> dict[str, Any]:
    return {"id": row.id, "at": row.at, "actor": row.actor, "method": row.method, "path": row.path,
            "target": row.target, "client": row.client, "status": row.status, "prev_hash": row.prev_hash,
            "hash": row.hash}


@router.get("/audit")
def list_audit(request: Request, actor: str | None = None, target: str | None = None, method: str | None = None,
               since: float | None = None, until: float | None = None,
               limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Audit records matching every filter given, newest last (``since``/``until``: epoch seconds); server admins."""
    caller(request).require_admin()
    q = select(AuditRow)
    if actor is not None:
        q = q.where(AuditRow.actor == actor)
    if target is not None:
        q = q.where(AuditRow.target == target)
    if method is not None:
        q = q.where(AuditRow.method == method.upper())
    if since is not None:
        q = q.where(AuditRow.at >= since)
    if until is not None:
        q = q.where(AuditRow.at <= until)
    with request.app.state.platform.store.session() as s:
        rows = s.scalars(q.order_by(AuditRow.id.desc()).limit(limit)).all()
        return [_out(r) for r in reversed(rows)]


@router.get("/audit/verify")
def verify_audit(request: Request) -> dict[str, Any]:
    """Whether the hash chain holds, how many records it has, and the first bad record's id; server admins."""
    caller(request).require_admin()
    with request.app.state.platform.store.session() as s:
        first_bad, count = _walk(s)
    return {"ok": first_bad is None, "records": count, "first_bad": first_bad}
