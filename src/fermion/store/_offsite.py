"""Sealed backups: every backup, on disk or in an object store (S3, GCS, Azure Blob, a folder), is
encrypted and authenticated under a passphrase, because a backup holds the secret master key and
the admin token, and because whoever can write a backup file must not be able to make a restore
put in rows of their own (a token, say): they do not hold the passphrase.

A sealed backup is ``FBKE2 | log2(n) (1) | salt (16) | nonce (12) | AES-256-GCM(backup)``, its key
derived from a passphrase by scrypt (n=2^17, r=8, p=1; n is in the header, so it can grow), its
name in a store (which carries its time) bound in as associated data: the passphrase never
travels, and the store's owner can neither read a backup, alter it, nor pass an old one off as
newer by renaming it. A backup sealed for a file on disk is bound to no name. One backup is sealed in one piece (AES-GCM's limit, 64 GB, is far beyond a state dump)."""

from __future__ import annotations

import os
import re
import sys
import time
from typing import TYPE_CHECKING

from ..errors import NotFoundError, UserInputError

if TYPE_CHECKING:
    from ..data import ObjectStore

MAGIC = b"FBKE2"
LOG2_N = 17
SUFFIX = ".fbk.sealed"
NAME = re.compile(r"^fermion-backup-\d{8}T\d{6}(\.\d{3})?Z\.fbk\.sealed$")
PASSPHRASE_ENV = "FERMION_BACKUP_PASSPHRASE"
MIN_PASSPHRASE = 12


def _key(passphrase: str, salt: bytes, log2_n: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if len(passphrase) < MIN_PASSPHRASE:
        raise UserInputError(f"the backup passphrase must have at least {MIN_PASSPHRASE} characters",
                             hint=f"set ${PASSPHRASE_ENV} to a long one, and keep it apart from the backups")
    # never more than this Fermion writes: whoever can put a file in its place cannot make a restore
    # spend gigabytes and minutes on scrypt before it fails
    if not 14 <= log2_n <= LOG2_N:
        raise UserInputError("this sealed backup names a key-derivation cost out of range: it is not Fermion's")
    return Scrypt(salt=salt, length=32, n=2**log2_n, r=8, p=1).derive(passphrase.encode())


def seal(data: bytes, passphrase: str, name: str) -> bytes:
    """``data`` sealed under ``passphrase``, bound to the object name it will have."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(16), os.urandom(12)
    head = MAGIC + bytes([LOG2_N]) + salt + nonce
    return head + AESGCM(_key(passphrase, salt, LOG2_N)).encrypt(nonce, data, MAGIC + name.encode())


def unseal(blob: bytes, passphrase: str, name: str) -> bytes:
    """The backup inside sealed object ``name``; a clear error for a wrong passphrase, an altered
    object, or one stored under another name than it was sealed for."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 29 + 16:
        raise UserInputError("this object is not a sealed Fermion backup")
    log2_n, salt, nonce = blob[5], blob[6:22], blob[22:34]
    try:
        return AESGCM(_key(passphrase, salt, log2_n)).decrypt(nonce, blob[34:], MAGIC + name.encode())
    except InvalidTag:
        raise UserInputError("the backup does not open with this passphrase (or it was altered or renamed in the "
                             "store)", hint=f"give the passphrase it was made with (${PASSPHRASE_ENV})") from None


def passphrase_from_env(*, ask: bool = False, confirm: bool = False) -> str:
    """The backup passphrase: ``$FERMION_BACKUP_PASSPHRASE``, else (with ``ask``, on a terminal) typed."""
    value = os.environ.get(PASSPHRASE_ENV, "")
    if not value and ask and sys.stdin.isatty():
        import getpass

        value = getpass.getpass("backup passphrase: ")
        if confirm and getpass.getpass("the same again: ") != value:
            raise UserInputError("the two passphrases differ")
    if not value:
        raise UserInputError(f"every backup is sealed (encrypted and authenticated) with a passphrase: set "
                             f"${PASSPHRASE_ENV}", hint="a passphrase of 12 characters or more, kept apart from the backups")
    return value


def seal_file(data: bytes, passphrase: str) -> bytes:
    """A backup sealed for a file on disk: bound to no name, so it may be copied or renamed."""
    return seal(data, passphrase, "")


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


def unseal_file(blob: bytes, passphrase: str, file_name: str) -> bytes:
    """A sealed backup file: one sealed for disk, or an object fetched from a store by hand (it is
    bound to its object name)."""
    try:
        return unseal(blob, passphrase, "")
    except UserInputError:
        if not NAME.match(file_name):
            raise
    return unseal(blob, passphrase, file_name)


def send(store: ObjectStore, data: bytes, passphrase: str, now: float | None = None) -> tuple[str, int]:
    """Seal a backup and put it in ``store`` under a name that sorts by time; (its name, its bytes)."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    name = f"fermion-backup-{stamp}{SUFFIX}"
    sealed = seal(data, passphrase, name)
    if not store.put(name, sealed, create_only=True):
        raise UserInputError(f"{name} exists in the store already", hint="try again")
    return name, len(sealed)


def listed(store: ObjectStore) -> dict[str, int]:
    """The sealed backups in ``store`` (name → bytes), oldest first."""
    return dict(sorted((k, v) for k, v in store.list("").items() if NAME.match(k)))


def fetch(store: ObjectStore, passphrase: str, name: str | None = None) -> tuple[str, bytes]:
    """A backup of ``store`` by name, or the newest, opened."""
    names = listed(store)
    if name is None:
        if not names:
            raise NotFoundError(f"no Fermion backup in {store.config.url}", hint="`fermion backup create --to URL` first")
        name = next(reversed(names))
    elif name not in names:
        raise NotFoundError(f"no backup named {name!r} in {store.config.url}", hint="see `fermion backup list --from URL`")
    return name, unseal(store.get(name), passphrase, name)
