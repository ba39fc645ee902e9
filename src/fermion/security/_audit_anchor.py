"""What anchors the audit chain outside the database, so that write access to it is not enough to
rewrite or cut the chain unnoticed.

- The MAC key: HKDF-SHA256 of the master key (the one that seals secrets) with the label
  ``AUDIT_MAC_INFO``; it is named by that master key's id, stored with each record. The database
  never holds it in the clear.
- Rotation: ``fermion secret rotate`` keeps the retired master key's audit key in ``audit_keys``,
  sealed under the new master key like any secret (and re-sealed at each later rotation), so
  records keep their MACs and still verify; a rotation costs one row, not a pass over the log.
- The head file: ``audit-head.json`` in the server's home (0600), the newest record this server
  wrote or verified, MACed: a tail cut below it, or a rewrite at or before it, fails verification.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from .._files import write_atomic
from ..errors import FermionError
from ..store import AuditKeyRow

if TYPE_CHECKING:
    from ._secrets import SecretBox

AUDIT_MAC_INFO = b"fermion audit-log mac v1"
HEAD_FILE = "audit-head.json"
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("fermion.audit")


def audit_key_purpose(key_id: str) -> str:
    """What a retired audit key's sealed copy is bound to: it opens for that key id only."""
    return f"audit-key:{key_id}"


def _tag(key: bytes, kind: str, seq: int, digest: str) -> str:
    # the kind keeps a record's MAC from passing as a head's, and the reverse
    return hmac.new(key, f"fermion-audit:{kind}:{seq}:{digest}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditHead:
    """A point of the chain: record ``seq`` and its hash, which covers every record up to it."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, data: object) -> AuditHead | None:
        """The head in ``data`` (``{"seq": N, "hash": "<64 hex>"}``, extra keys ignored), else None."""
        if not isinstance(data, dict):
            return None
        seq, digest = data.get("seq"), data.get("hash")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 or not isinstance(digest, str) \
                or not HASH_PATTERN.fullmatch(digest):
            return None
        return cls(seq, digest)


class HeadFileError(Exception):
    """The server's head file cannot be trusted: unreadable, malformed, or its MAC does not match."""


class AuditKeyring:
    """The audit keys one pass over the chain may need, each looked up once: derived from a
    master key the box holds, else opened from ``audit_keys``."""

    def __init__(self, box: SecretBox, session: Session) -> None:
        self._box, self._session = box, session
        self._keys: dict[str, bytes | None] = {}

    def key(self, key_id: str) -> bytes | None:
        if not key_id:  # derive() would read "" as the current key
            return None
        if key_id not in self._keys:
            key = self._box.derive(AUDIT_MAC_INFO, key_id)
            if key is None:
                row = self._session.get(AuditKeyRow, key_id)
                if row is not None:
                    try:
                        key = base64.b64decode(self._box.open(row.sealed, audit_key_purpose(key_id)), validate=True)
                    except (FermionError, ValueError):  # a sealed copy that does not open is no key
                        key = None
            self._keys[key_id] = key
        return self._keys[key_id]

    def check(self, kind: str, seq: int, digest: str, key_id: str, tag: str) -> bool | None:
        """Whether ``tag`` is the MAC of (seq, digest) under ``key_id``'s audit key; None if no key has that id."""
        key = self.key(key_id)
        return None if key is None else hmac.compare_digest(_tag(key, kind, seq, digest), tag)


class AuditAnchor:
    """The audit chain's anchors for one server: its MAC keys (through ``box``) and its head file."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        self.head_path = box.home / HEAD_FILE
        # one appender at a time in this process: servers sharing a database still race, and the
        # unique seq settles that; this only spares a process from retrying against itself
        self.lock = threading.Lock()
        self._head_lock = threading.Lock()

    def _current(self) -> tuple[str, bytes]:
        """The current master key's id and its audit key, read together: a rotation may switch keys
        between two reads (and a MAC under the retired key still verifies, through audit_keys)."""
        while True:
            key_id = self.box.key_id
            key = self.box.derive(AUDIT_MAC_INFO, key_id)
            if key is not None:
                return key_id, key

    def mac(self, seq: int, digest: str) -> tuple[str, str]:
        """The current key's id and record ``seq``'s MAC under it."""
        key_id, key = self._current()
        return key_id, _tag(key, "record", seq, digest)

    def keyring(self, session: Session) -> AuditKeyring:
        return AuditKeyring(self.box, session)

    def read_head(self, keyring: AuditKeyring) -> AuditHead | None:
        """The head this server keeps; None if it has none yet. Raises HeadFileError when the file is
        there but cannot be trusted."""
        try:
            data = json.loads(self.head_path.read_text())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HeadFileError(f"cannot read it: {exc.strerror}") from None
        except ValueError:  # not UTF-8, or not JSON
            data = None
        head = AuditHead.parse(data)
        key_id, tag = (data.get("key_id"), data.get("mac")) if isinstance(data, dict) else (None, None)
        if head is None or not isinstance(key_id, str) or not isinstance(tag, str):
            raise HeadFileError("it is not a head this server wrote (malformed)")
        ok = keyring.check("head", head.seq, head.hash, key_id, tag)
        if ok is None:
            raise HeadFileError(f"it is MACed under key {key_id}, which this server does not hold")
        if not ok:
            raise HeadFileError("its MAC does not match: it was altered")
        return head

    def advance_head(self, seq: int, digest: str) -> None:
        """Record (seq, digest) as this server's head if it is newer than the one kept. Never
        backwards (two appends may get here in either order), and never over a file
        that cannot be read: that is evidence for verify to report. The file is read each time, not
        cached, so that an admin who removed it (see verify's hint) is heard at once."""
        with self._head_lock:
            try:
                kept = AuditHead.parse(json.loads(self.head_path.read_text()))
            except FileNotFoundError:
                kept = AuditHead(0, "")
            except (OSError, ValueError):
                kept = None
            if kept is None:
                log.error("the audit head file %s is unreadable: not updating it (fermion audit --verify "
                          "reports it)", self.head_path)
                return
            if seq <= kept.seq:
                return
            key_id, key = self._current()
            body = {"seq": seq, "hash": digest, "key_id": key_id, "mac": _tag(key, "head", seq, digest)}
            try:
                write_atomic(self.head_path, json.dumps(body) + "\n", 0o600)
            except OSError as exc:  # the record is committed all the same: the head only lags
                log.error("could not update the audit head file %s: %s", self.head_path, exc.strerror or exc)
