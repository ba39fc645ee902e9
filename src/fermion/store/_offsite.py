"""Backups kept in an object store (S3, GCS, Azure Blob, a folder): sealed first, because a backup
holds the secret master key, and it leaves the server's machine only encrypted.

A sealed backup is ``FBKE1 | salt (16) | nonce (12) | AES-256-GCM(backup)``, its key derived from a
passphrase by scrypt (n=2^15, r=8, p=1): the passphrase never travels, and the store's owner
cannot read or alter what it keeps."""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING

from ..errors import NotFoundError, UserInputError

if TYPE_CHECKING:
    from ..data import ObjectStore

MAGIC = b"FBKE1"
SUFFIX = ".fbk.sealed"
NAME = re.compile(r"^fermion-backup-\d{8}T\d{6}(\.\d{3})?Z\.fbk\.sealed$")
PASSPHRASE_ENV = "FERMION_BACKUP_PASSPHRASE"
MIN_PASSPHRASE = 12


def _key(passphrase: str, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if len(passphrase) < MIN_PASSPHRASE:
        raise UserInputError(f"the backup passphrase must have at least {MIN_PASSPHRASE} characters",
                             hint=f"set ${PASSPHRASE_ENV} to a long one, and keep it apart from the backups")
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())


def seal(data: bytes, passphrase: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(16), os.urandom(12)
    return MAGIC + salt + nonce + AESGCM(_key(passphrase, salt)).encrypt(nonce, data, MAGIC)


def unseal(blob: bytes, passphrase: str) -> bytes:
    """The backup inside a sealed one; a clear error for a wrong passphrase or an altered object."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 28 + 16:
        raise UserInputError("this object is not a sealed Fermion backup")
    salt, nonce = blob[5:21], blob[21:33]
    try:
        return AESGCM(_key(passphrase, salt)).decrypt(nonce, blob[33:], MAGIC)
    except InvalidTag:
        raise UserInputError("the backup does not open with this passphrase (or it was altered in the store)",
                             hint=f"give the passphrase it was made with (${PASSPHRASE_ENV})") from None


def passphrase_from_env() -> str:
    value = os.environ.get(PASSPHRASE_ENV, "")
    if not value:
        raise UserInputError(f"a backup leaves this machine only encrypted: set ${PASSPHRASE_ENV}",
                             hint="a passphrase of 12 characters or more, kept apart from the backups")
    return value


def send(store: ObjectStore, sealed: bytes, now: float | None = None) -> str:
    """Put a sealed backup in ``store`` under a name that sorts by time; returns the name."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    name = f"fermion-backup-{stamp}{SUFFIX}"
    if not store.put(name, sealed, create_only=True):
        raise UserInputError(f"{name} exists in the store already", hint="try again")
    return name


def listed(store: ObjectStore) -> dict[str, int]:
    """The sealed backups in ``store`` (name → bytes), oldest first."""
    return dict(sorted((k, v) for k, v in store.list("").items() if NAME.match(k)))


def fetch(store: ObjectStore, name: str | None = None) -> tuple[str, bytes]:
    """A sealed backup of ``store`` by name, or the newest."""
    names = listed(store)
    if name is None:
        if not names:
            raise NotFoundError(f"no Fermion backup in {store.config.url}", hint="`fermion backup create --to URL` first")
        name = next(reversed(names))
    elif name not in names:
        raise NotFoundError(f"no backup named {name!r} in {store.config.url}", hint="see `fermion backup list --from URL`")
    return name, store.get(name)
