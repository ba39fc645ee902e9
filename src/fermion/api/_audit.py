"""The audit log: every mutating API call, recorded after its answer, in a chain anchored outside
the database.

Record ``seq`` (1, 2, 3… without gaps) has ``hash``: sha256 of the previous record's hash and the
canonical JSON of its own fields, seq included; and ``mac``: an HMAC of its seq and hash under a key
derived from the master key (fermion.security._audit_anchor), which the database never holds. So
someone who can only write the database can change no record, even recomputing the hashes (the
MACs no longer match), remove none in the middle (a gap in seq, a broken link), and cut none from
the end below the head the server keeps in its home, or below a head an admin exported.

Records from before revision 0006 got seqs in id order and no MAC: they are the chain's legacy
prefix, checked by their hashes in the old form (the id in place of the seq); the first MACed
record after them, and the server's head, pin them. A record without a MAC anywhere else fails."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from ..errors import UserInputError
from ..security import HEAD_FILE, AuditAnchor, AuditHead, AuditKeyring, HeadFileError, bearer_digest
from ..store import AuditRow, Store, TokenRow, db_error_text, storable
from ..types import ASGIApp, Receive, Scope, Send
from ._auth import caller, require_token
from ._schemas import ERROR_RESPONSES

GENESIS = "0" * 64
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIX = "/api/v1/"
MAX_PATH = 2000
SEQ_TRIES = 50  # servers sharing a database, each taking the next seq: one of them wins each round

log = logging.getLogger("fermion.audit")

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])


def target_of(path: str) -> str:
    """The object a path acts on: "/api/v1/deployments/web/scale" → "deployment/web"."""
    parts = [p for p in path[len(API_PREFIX):].split("/") if p] if path.startswith(API_PREFIX) else []
    if not parts:
        return ""
    kind = parts[0][:-1] if parts[0].endswith("s") else parts[0]
    return f"{kind}/{parts[1]}" if len(parts) > 1 else kind


def record_hash(prev_hash: str, row: AuditRow, *, legacy: bool = False) -> str:
    """sha256 of the previous hash and the canonical JSON of the record's fields: its seq, or for a
    legacy record (from before anchoring) its id, as that version hashed it."""
    fields: dict[str, Any] = {"at": row.at, "actor": row.actor, "method": row.method, "path": row.path,
                              "target": row.target, "client": row.client, "status": row.status}
    if legacy:
        fields["id"] = row.id
    else:
        fields["seq"] = row.seq
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _actor(s: Session, authorization: str) -> str:
    digest = bearer_digest(authorization)
    if digest is None:
        return "anonymous"
    name = s.scalars(select(TokenRow.user).where(TokenRow.token_hash == digest)).first()
    return name if name is not None else "unknown"


def append(store: Store, anchor: AuditAnchor, *, at: float, authorization: str, method: str, path: str,
           client: str, status: int) -> AuditRow:
    """Write one record at the end of the chain and advance this server's head (blocking: call it
    from a worker thread)."""
    path = storable(path)  # as it will be stored (a %00 in the URL is a NUL): the hash covers that
    with anchor.lock:
        for attempt in range(1, SEQ_TRIES + 1):
            try:
                with store.session() as s:
                    last = s.execute(select(AuditRow.seq, AuditRow.hash).where(AuditRow.seq.is_not(None))
                                     .order_by(AuditRow.seq.desc()).limit(1)).first()
                    row = AuditRow(seq=last.seq + 1 if last else 1, at=at, actor=_actor(s, authorization),
                                   method=method, path=path[:MAX_PATH], target=target_of(path)[:MAX_PATH],
                                   client=client, status=status, prev_hash=last.hash if last else GENESIS)
                    row.hash = record_hash(row.prev_hash, row)
                    row.key_id, row.mac = anchor.mac(row.seq, row.hash)
                    s.add(row)
                break
            except IntegrityError:  # another server took this seq first: read the new end and try again
                if attempt == SEQ_TRIES:
                    raise
                time.sleep(random.uniform(0, 0.005 * attempt))
    anchor.advance_head(row.seq, row.hash)  # after the commit: the head never names a record that is not there
    return row


@dataclass
class Verdict:
    """What verify found: ``problem`` (naming the seq, ``first_bad``) is None when the chain holds."""

    records: int = 0
    legacy: int = 0  # records from before anchoring, checked by their hashes only
    first_bad: int | None = None
    problem: str | None = None
    hint: str | None = None
    head: dict[str, Any] | None = None  # the newest record: seq, hash, at
    server_head: int | None = None  # the seq this server's head file pins
    since: int | None = None  # the seq of the exported head checked
    _hashes: dict[int, str] = field(default_factory=dict, repr=False)  # hashes at the heads' seqs

    @property
    def ok(self) -> bool:
        return self.problem is None

    def fail(self, seq: int | None, problem: str, hint: str | None = None) -> None:
        if self.problem is None:
            self.first_bad, self.problem, self.hint = seq, problem, hint

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "legacy": self.legacy, "first_bad": self.first_bad,
                "problem": self.problem, "hint": self.hint, "head": self.head, "server_head": self.server_head,
                "since": self.since}


def _check_record(v: Verdict, row: AuditRow, prev: AuditRow | None, keys: AuditKeyring,
                  server_head: AuditHead | None, macs_before: bool) -> None:
    """Fail ``v`` at the first thing wrong with ``row``, which follows ``prev`` in seq order."""
    prev_seq, prev_hash = (prev.seq or 0, prev.hash) if prev else (0, GENESIS)
    if row.seq is None:
        return v.fail(None, f"record id {row.id} has no seq: the server did not write it")
    if row.seq == prev_seq:  # only where the unique index was dropped
        return v.fail(row.seq, f"seq {row.seq} appears twice")
    if row.seq != prev_seq + 1:
        return v.fail(prev_seq + 1, f"seq {prev_seq + 1} is missing: the record after seq {prev_seq} is seq "
                                    f"{row.seq}; records were removed")
    if row.prev_hash != prev_hash:
        return v.fail(row.seq, f"record seq {row.seq} does not follow seq {prev_seq}: records were reordered, "
                               "replaced or removed")
    legacy = row.mac is None
    if row.hash != record_hash(prev_hash, row, legacy=legacy):
        return v.fail(row.seq, f"record seq {row.seq} was altered: its hash does not match its fields")
    if legacy:
        if macs_before or (server_head is not None and row.seq > server_head.seq):
            return v.fail(row.seq, f"record seq {row.seq} has no MAC, and it is not from before the audit log "
                                   "was anchored: its MAC was removed, or someone without the server's key wrote it")
        v.legacy += 1
        return None
    ok = keys.check("record", row.seq, row.hash, row.key_id or "", row.mac or "")
    if ok is None:
        return v.fail(row.seq, f"record seq {row.seq} is MACed under key {row.key_id}, which this server does not "
                               "hold", "was the master key replaced without `fermion secret rotate`, or a row of "
                                       "audit_keys removed?")
    if not ok:
        return v.fail(row.seq, f"record seq {row.seq} has a MAC that does not match: it was altered, and its "
                               "hashes recomputed, by someone without the server's key")
    return None


def _check_head(v: Verdict, head: AuditHead, last: int, whose: str, hint: str | None) -> None:
    """Fail ``v`` unless the chain still holds ``head``: its seq, with the same hash."""
    if head.seq > last:
        v.fail(last + 1, f"the chain ends at seq {last}, but {whose} is seq {head.seq}: "
                         f"the records from seq {last + 1} on were removed", hint)
    elif v._hashes.get(head.seq) != head.hash:
        v.fail(head.seq, f"record seq {head.seq} is not the one {whose} names: the chain up to it was rewritten")


def verify_chain(session: Session, anchor: AuditAnchor, since: AuditHead | None = None) -> Verdict:
    """Walk the chain in seq order: each record's seq, link, hash and MAC; then that it still holds
    this server's head and ``since`` (an exported head). A chain that holds advances the server's head."""
    v = Verdict(since=since.seq if since else None)
    keys = anchor.keyring(session)
    server_head: AuditHead | None = None
    bad_head_file = None
    try:  # read before the records: one committed meanwhile is then in the walk, not a cut
        server_head = anchor.read_head(keys)
    except HeadFileError as exc:
        bad_head_file = f"this server's audit head ({HEAD_FILE} in its home) cannot be trusted: {exc}"
    v.server_head = server_head.seq if server_head else None
    pins = {h.seq for h in (server_head, since) if h is not None}
    prev: AuditRow | None = None
    macs_before = False
    rows = select(AuditRow).order_by(AuditRow.seq.asc().nulls_last(), AuditRow.id).execution_options(yield_per=1000)
    for row in session.scalars(rows):
        v.records += 1
        if v.ok:
            _check_record(v, row, prev, keys, server_head, macs_before)
            macs_before = macs_before or row.mac is not None
        if row.seq in pins:
            v._hashes[row.seq] = row.hash
        if row.seq is not None:
            prev = row
    last = (prev.seq or 0) if prev else 0
    if prev is not None:
        v.head = {"seq": prev.seq, "hash": prev.hash, "at": prev.at}
    if bad_head_file is not None:
        v.fail(None, bad_head_file, f"if it was not you, the server's home was written to; remove {HEAD_FILE} "
                                    "there to start a new head")
    if server_head is not None:
        _check_head(v, server_head, last, "this server's head",
                    f"if you know why (a restore from an older backup, a lost disk cache), remove {HEAD_FILE} in "
                    "the server's home: the next record anchors the chain again")
    if since is not None:
        _check_head(v, since, last, "the exported head", None)
    if v.ok and prev is not None and prev.seq is not None:
        anchor.advance_head(prev.seq, prev.hash)
    return v


def _bulk(method: str, path: str) -> bool:
    """The many small calls of one transfer: a chunk sent, or the question which chunks to send.
    A push of a gigabyte is a thousand of them; its commit is what the audit log keeps. And an
    agent's link: a poll and a report each second (what it is asked to do is in the events)."""
    return ((method == "PUT" and "/chunks/" in path) or (method == "POST" and path.endswith("/missing"))) and \
        path.startswith(("/api/v1/datasets/", "/api/v1/code/", "/api/v1/attempts/self/")) or \
        (method == "POST" and path.startswith("/api/v1/agent/") and path.endswith(("/poll", "/report")))


def _anchor(scope: Scope) -> AuditAnchor:
    """The server's audit anchor (its secret box's), reached as the routes reach the platform:
    through the app Starlette puts in the scope, there once the app has seen the request."""
    return scope["app"].state.platform.secrets.audit


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
                    anchor = _anchor(scope)
                    await anyio.to_thread.run_sync(lambda: append(store, anchor, **record))
                except DBAPIError as exc:  # a full or read-only disk: one line per request, not a traceback
                    log.error("could not write the audit record for %s %s: %s", record["method"], record["path"],
                              db_error_text(exc))
                except Exception:
                    log.exception("could not write the audit record for %s %s", record["method"], record["path"])

    return audited


def _out(row: AuditRow) -> dict[str, Any]:
    return {"id": row.id, "at": row.at, "actor": row.actor, "method": row.method, "path": row.path,
            "target": row.target, "client": row.client, "status": row.status, "prev_hash": row.prev_hash,
            "hash": row.hash, "seq": row.seq}


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
def verify_audit(request: Request, since_seq: int | None = Query(None, ge=1),
                 since_hash: str | None = Query(None, pattern="^[0-9a-f]{64}$")) -> dict[str, Any]:
    """Whether the chain holds (every seq, link, hash and MAC; this server's head; the exported head
    ``since_seq``/``since_hash`` if given), what is wrong first, and the head to export; server admins."""
    caller(request).require_admin()
    if (since_seq is None) != (since_hash is None):
        raise UserInputError("since_seq and since_hash go together: they are the head to check",
                             hint="export one with `fermion audit --head > head.json`")
    since = AuditHead(since_seq, since_hash) if since_seq is not None and since_hash is not None else None
    platform = request.app.state.platform
    with platform.store.session() as s:
        return verify_chain(s, platform.secrets.audit, since).to_json()
