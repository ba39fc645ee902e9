"""Secrets at rest: AES-256-GCM under a master key kept outside the database.

A sealed value reads ``fmenc:v1:<key id>:<base64url(nonce || ciphertext+tag)>``. The header and a
purpose string (``secret:NAME``, ``env:deployment:NAME:KEY``…) are the authenticated data, so a
ciphertext moved to another row, or given another key id, fails to open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.orm import Session

from .._files import write_atomic
from ..errors import ConflictError, FermionError, UserInputError
from ..store import DEFAULT_PROJECT, DatasetRow, DeploymentRow, JobRow, PipelineRunRow, SecretRow, Store
from ..store import AuditKeyRow
from ._audit_anchor import AUDIT_MAC_INFO, AuditAnchor, audit_key_purpose

MASTER_KEY_ENV = "FERMION_MASTER_KEY"
KEY_FILE = "master.key"
OLD_KEY_FILE = "master.key.old"
PREFIX = "fmenc:v1:"
SECRET_REF = "secret:"
SECRET_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_.-]{0,127}"
MAX_SECRET_BYTES = 64 * 1024
FINISHED_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


class SecretError(FermionError):
    """The master key is missing or malformed, or a stored value does not open."""

    http_status = 500


class MissingSecretError(FermionError):
    """An env refers to a secret that does not exist (any more)."""

    http_status = 400
    exit_code = 2

    def __init__(self, name: str, message: str | None = None, *, hint: str | None = None) -> None:
        super().__init__(message or f"secret {name!r} does not exist",
                         hint=hint or f"create it with `fermion secret set {name}`")
        self.name = name


def secret_purpose(project: str, name: str) -> str:
    """What a stored secret's ciphertext is bound to: its project and name."""
    return f"secret:{project}/{name}"


def env_purpose(kind: str, name: str) -> str:
    """The purpose of a stored env: ``env_purpose("deployment", "web")`` is ``"env:deployment:web"``;
    each value is bound to ``"<purpose>:<KEY>"``."""
    return f"env:{kind}:{name}"


def dataset_key_purpose(name: str) -> str:
    """What a dataset's sealed key is bound to: it opens for that dataset only."""
    return f"dataset-key:{name}"


def run_token_purpose(run_id: str) -> str:
    """What a pipeline run's sealed token is bound to: it opens for that run only."""
    return f"pipeline-run:{run_id}"


def secret_ref(value: str) -> str | None:
    """The secret name a ``secret:NAME`` env value refers to, else None."""
    return value[len(SECRET_REF):] if value.startswith(SECRET_REF) else None


def valid_secret_name(name: str) -> bool:
    return re.fullmatch(SECRET_NAME_PATTERN, name) is not None


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"fermion master key id\0" + key).hexdigest()[:16]


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _parse_key(text: str, where: str, hint: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise SecretError(f"the master key in {where} is malformed: it must be base64 of 32 bytes", hint=hint)
    return key


def _read_key_file(path: Path) -> bytes:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(f"the master key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise SecretError(f"refusing the master key file {path}: its mode is {stat.S_IMODE(st.st_mode):o}, "
                          "open to group or others", hint=f"chmod 600 {path}")
    return _parse_key(path.read_text(), str(path),
                      "restore it from a backup: values sealed under it cannot be opened with a new key")


def _write_key_file(path: Path, key: bytes) -> None:
    """Write a key file atomically and durably, with mode 0600."""
    write_atomic(path, base64.b64encode(key).decode() + "\n", 0o600, durable=True)


class SecretBox:
    """Seals and opens values under the master key; stores secrets and resolves env references.

    The key is ``$FERMION_MASTER_KEY`` (base64 of 32 bytes) or, if unset, ``home/master.key``
    (created 0600 on first use). ``home/master.key.old`` exists only during a rotation; while it
    does, values under either key open.
    """

    def __init__(self, home: Path, environ: Mapping[str, str] | None = None) -> None:
        self.home = home
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}  # by key id; two only while a rotation is unfinished
        value = (os.environ if environ is None else environ).get(MASTER_KEY_ENV)
        self.from_environment = bool(value)
        if value:
            key = _parse_key(value, f"${MASTER_KEY_ENV}", "make one with: python -c \"import os, base64; "
                             "print(base64.b64encode(os.urandom(32)).decode())\"")
        else:
            key = self._load_or_create(home / KEY_FILE)
            old = home / OLD_KEY_FILE
            if old.exists():  # an interrupted rotation: rows may still be under the old key
                old_key = _read_key_file(old)
                self._keys[_key_id(old_key)] = old_key
        self.key_id = _key_id(key)
        self._keys[self.key_id] = key
        self.audit = AuditAnchor(self)  # the audit chain's MAC keys derive from these keys

    @staticmethod
    def _load_or_create(path: Path) -> bytes:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _read_key_file(path)
        key = os.urandom(32)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(key).decode() + "\n")
            f.flush()
            os.fsync(f.fileno())
        return key

    # -- values ------------------------------------------------------------------------------
    @staticmethod
    def is_sealed(value: str) -> bool:
        return value.startswith(PREFIX)

    def seal(self, value: str, purpose: str, *, key_id: str | None = None) -> str:
        """Encrypt ``value`` for ``purpose`` under the current key (or the key ``key_id``)."""
        kid = key_id or self.key_id
        header = f"{PREFIX}{kid}:"
        nonce = os.urandom(12)
        ct = AESGCM(self._keys[kid]).encrypt(nonce, value.encode(), f"{header}{purpose}".encode())
        return header + base64.urlsafe_b64encode(nonce + ct).decode()

    def mac(self, purpose: str, message: str) -> str:
        """A tag of ``message`` for ``purpose`` under the current key: a credential the server can
        check again later without having stored it."""
        return hmac.new(self._keys[self.key_id], f"mac:{purpose}:{message}".encode(), hashlib.sha256).hexdigest()

    def check_mac(self, purpose: str, message: str, tag: str) -> bool:
        """Whether ``tag`` is ``message``'s tag under any key this box holds (two during a rotation)."""
        return any(hmac.compare_digest(hmac.new(k, f"mac:{purpose}:{message}".encode(), hashlib.sha256).hexdigest(), tag)
                   for k in self._keys.values())

    def derive(self, info: bytes, key_id: str | None = None) -> bytes | None:
        """A 32-byte key for the one use ``info`` names, derived by HKDF-SHA256 from the master key
        ``key_id`` (default: the current one); None if this box does not hold that key."""
        key = self._keys.get(key_id or self.key_id)
        return None if key is None else _hkdf(key, info)

    def open(self, token: str, purpose: str) -> str:
        """Decrypt a sealed value; fails if it was sealed for another purpose or altered."""
        if not token.startswith(PREFIX):
            raise SecretError(f"the stored value for {purpose} is not sealed")
        kid, sep, body = token[len(PREFIX):].partition(":")
        key = self._keys.get(kid)
        if not sep or key is None:
            raise SecretError(f"the stored value for {purpose} is sealed under an unknown key {kid!r}",
                              hint="was the master key replaced without a rotation?")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            if len(raw) < 12 + 16:
                raise ValueError("too short")
            return AESGCM(key).decrypt(raw[:12], raw[12:], f"{PREFIX}{kid}:{purpose}".encode()).decode()
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise SecretError(f"the stored value for {purpose} does not decrypt: altered, or sealed for "
                              "another purpose") from exc

    def key_of(self, token: str) -> str | None:
        """The key id a sealed value is under, or None for a plain (legacy) value."""
        return token[len(PREFIX):].partition(":")[0] if token.startswith(PREFIX) else None

    # -- envs ----------------------------------------------------------------------------------
    def seal_env(self, env: Mapping[str, str], purpose: str, *, key_id: str | None = None) -> dict[str, str]:
        """Every value sealed (``secret:NAME`` references too), each bound to ``purpose:KEY``."""
        return {k: self.seal(v, f"{purpose}:{k}", key_id=key_id) for k, v in env.items()}

    def plain_env(self, stored_env: Mapping[str, str], purpose: str) -> dict[str, str]:
        """A stored env decrypted, references left as ``secret:NAME``; legacy plain values pass."""
        return {k: self.open(v, f"{purpose}:{k}") if self.is_sealed(v) else v for k, v in stored_env.items()}

    def is_sealed_env(self, stored_env: Mapping[str, str]) -> bool:
        return all(self.is_sealed(v) for v in stored_env.values())

    def check_references(self, session: Session, env: Mapping[str, str], project: str = DEFAULT_PROJECT) -> None:
        """Raise a 400 naming the first ``secret:NAME`` in a plain env that does not exist."""
        for key, value in env.items():
            name = secret_ref(value)
            if name is not None and (not valid_secret_name(name) or session.get(SecretRow, (project, name)) is None):
                raise MissingSecretError(name, f"env {key} refers to secret {name!r}, which does not exist")

    def open_env(self, session: Session, stored_env: Mapping[str, str], purpose: str, *,
                 missing_ok: bool = False, project: str = DEFAULT_PROJECT) -> dict[str, str]:
        """A stored env as the process should see it: decrypted, with ``secret:NAME`` replaced by the
        secret's current value. A deleted secret raises MissingSecretError (or, with missing_ok,
        leaves its key out)."""
        out = {}
        for key, value in self.plain_env(stored_env, purpose).items():
            name = secret_ref(value)
            if name is None:
                out[key] = value
                continue
            row = session.get(SecretRow, (project, name)) if valid_secret_name(name) else None
            if row is None:
                if missing_ok:
                    continue
                raise MissingSecretError(name, f"env {key} refers to secret {name!r}, which no longer exists")
            out[key] = self.open(row.ciphertext, secret_purpose(project, name))
        return out

    # -- stored secrets ------------------------------------------------------------------------
    def set_secret(self, session: Session, name: str, value: str,
                   project: str = DEFAULT_PROJECT) -> tuple[SecretRow, bool]:
        """Create or replace a secret; returns the row and whether it was created."""
        if not valid_secret_name(name):
            raise UserInputError(f"invalid secret name {name!r}",
                                 hint="start with a letter or '_', then letters, digits, '_', '.', '-' (128 at most)")
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise UserInputError(f"secret {name!r} is larger than {MAX_SECRET_BYTES // 1024} KiB")
        row = session.get(SecretRow, (project, name))
        now = time.time()
        sealed = self.seal(value, secret_purpose(project, name))
        if row is None:
            row = SecretRow(project=project, name=name, ciphertext=sealed, created_at=now, updated_at=now)
            session.add(row)
            return row, True
        row.ciphertext, row.updated_at = sealed, now
        return row, False

    def referrers(self, session: Session, name: str, project: str = DEFAULT_PROJECT) -> list[str]:
        """Live deployments and unfinished jobs whose env refers to secret ``name``."""
        ref = SECRET_REF + name
        out = [f"deployment {d.name}" for d in session.scalars(select(DeploymentRow)).all()
               if d.project == project and d.status != "DELETING" and ref in self.plain_env(d.env, env_purpose("deployment", d.name)).values()]
        out += [f"job {j.name}" for j in session.scalars(select(JobRow)).all()
                if j.project == project and j.status not in FINISHED_JOB_STATES and ref in self.plain_env(j.env, env_purpose("job", j.name)).values()]
        return out

    # -- rotation --------------------------------------------------------------------------------
    def _reseal_all(self, session: Session, key_id: str) -> dict[str, int]:
        """Re-encrypt every secret, stored env and dataset key under ``key_id`` (legacy plain envs too);
        keep the audit key of every other master key held, sealed under ``key_id``."""
        counts = {"secrets": 0, "deployments": 0, "jobs": 0, "datasets": 0}
        for kid, master in self._keys.items():  # the key being retired: its audit records keep their MACs
            if kid != key_id and session.get(AuditKeyRow, kid) is None:
                audit_key = _hkdf(master, AUDIT_MAC_INFO)
                session.add(AuditKeyRow(key_id=kid, retired_at=time.time(), sealed=self.seal(
                    base64.b64encode(audit_key).decode(), audit_key_purpose(kid), key_id=key_id)))
        for row in session.scalars(select(AuditKeyRow)).all():
            if self.key_of(row.sealed) != key_id:
                purpose = audit_key_purpose(row.key_id)
                try:
                    row.sealed = self.seal(self.open(row.sealed, purpose), purpose, key_id=key_id)
                except SecretError:  # altered in the database: left for `fermion audit --verify` to report,
                    pass  # rather than letting it block the rotation of every secret
        for row in session.scalars(select(SecretRow)).all():
            if self.key_of(row.ciphertext) != key_id:
                purpose = secret_purpose(row.project, row.name)
                row.ciphertext = self.seal(self.open(row.ciphertext, purpose), purpose,
                                           key_id=key_id)
                counts["secrets"] += 1
        for model, kind, counter in ((DeploymentRow, "deployment", "deployments"), (JobRow, "job", "jobs")):
            for row in session.scalars(select(model)).all():
                if any(self.key_of(v) != key_id for v in row.env.values()):
                    purpose = env_purpose(kind, row.name)
                    row.env = self.seal_env(self.plain_env(row.env, purpose), purpose, key_id=key_id)
                    counts[counter] += 1
        for ds in session.scalars(select(DatasetRow).where(DatasetRow.key_sealed.is_not(None))).all():
            if self.key_of(ds.key_sealed) != key_id:
                purpose = dataset_key_purpose(ds.name)
                ds.key_sealed = self.seal(self.open(ds.key_sealed, purpose), purpose, key_id=key_id)
                counts["datasets"] += 1
        for run in session.scalars(select(PipelineRunRow).where(PipelineRunRow.token_sealed.is_not(None))).all():
            if self.key_of(run.token_sealed) != key_id:  # the token a run under way acts with
                purpose = run_token_purpose(run.id)
                run.token_sealed = self.seal(self.open(run.token_sealed, purpose), purpose, key_id=key_id)
        return counts

    def rotate(self, store: Store) -> dict[str, Any]:
        """Re-encrypt every secret and stored env under a new key file, and keep the retired key's
        audit MAC key in audit_keys (sealed under the new one); returns counts.

        Order: rows re-sealed in one transaction; before it commits, the current key is kept as
        master.key.old and the new one replaces master.key (both atomic, 0600); after the commit a
        second pass catches rows written meanwhile; only then is master.key.old removed.
        """
        if self.from_environment:
            raise ConflictError(f"the master key comes from ${MASTER_KEY_ENV}, so the server cannot rotate it",
                                hint="rotate the environment variable instead (the server rotates only a "
                                     f"key file it owns, {KEY_FILE} in its home)")
        key_path, old_path = self.home / KEY_FILE, self.home / OLD_KEY_FILE
        with self._lock:
            if old_path.exists():  # finish an interrupted rotation before starting another
                with store.session() as s:
                    self._reseal_all(s, self.key_id)
                old_path.unlink()
                self._keys = {self.key_id: self._keys[self.key_id]}
            old_id, new_key = self.key_id, os.urandom(32)
            new_id = _key_id(new_key)
            self._keys[new_id] = new_key
            try:
                with store.session() as s:
                    counts = self._reseal_all(s, new_id)
                    s.flush()
                    _write_key_file(old_path, self._keys[old_id])
                    _write_key_file(key_path, new_key)
                    self.key_id = new_id
            except BaseException:
                if self.key_id != new_id:
                    del self._keys[new_id]
                    old_path.unlink(missing_ok=True)
                raise
            with store.session() as s:
                late = self._reseal_all(s, new_id)
            old_path.unlink()
            del self._keys[old_id]
        return {"key_id": new_id, "previous_key_id": old_id, **counts,
                "late": sum(late.values())}

    # -- logs ----------------------------------------------------------------------------------
    @staticmethod
    def redact(text: str, values: Iterable[str]) -> str:
        """``text`` with each value of 4 characters or more replaced by ``***`` (longest first, so a
        value that contains another is not half-revealed). Each line of a multi-line value counts
        too, since a log tail may hold only part of it."""
        hide = set()
        for value in values:
            hide.add(value)
            hide.update(line.strip() for line in value.splitlines())
        for value in sorted((v for v in hide if len(v) >= 4), key=len, reverse=True):
            text = text.replace(value, "***")
        return text
