"""The server's home at start: writable, its database there (or deliberately new), its credentials
never overwritten silently, and a lock that tells a restore a server runs on it."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from ..errors import ConflictError, UserInputError
from ..store import (
    DatabaseLostError,
    DatabaseWatch,
    StoreUnusableError,
    check_database,
    display_url,
    keep_aside,
    keep_database_aside,
    prior_use,
    sqlite_file,
)

log = logging.getLogger("fermion.store")

SERVER_LOCK_FILE = "server.running"  # held alone by the server running on this home
LOCK_FILE = "server.lock"
RESTORE = "`fermion backup restore BACKUP`"
NEW_DATABASE = "`fermion server start --new-database`"
_held: list[int] = []  # the home lock's descriptors: open for as long as this process runs


def writable_home() -> Path:
    """``$FERMION_HOME``, created if need be and checked to be writable: the server keeps its
    database, keys and credentials there, and a read-only one would fail later, less clearly."""
    from ..config import fermion_home

    shown = os.environ.get("FERMION_HOME") or "~/.fermion"
    try:
        home = fermion_home()
        probe = home / f".write-check-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0")  # a byte, not only a name: a full disk often still has inodes
        finally:
            os.close(fd)
            probe.unlink()
    except OSError as exc:
        why = {errno.EROFS: "on a read-only file system", errno.ENOSPC: "on a full disk",
               errno.EDQUOT: "over its disk quota"}.get(exc.errno or 0, "not writable by this user")
        raise StoreUnusableError(
            f"FERMION_HOME {shown} is {why} ({exc.strerror or exc}): the server keeps its database, keys and "
            "credentials there", hint="make it writable (remount it read-write, free space, fix its owner), or set "
            "FERMION_HOME to a writable folder") from None
    return home


def _lock(path: Path, mode: int, refused: ConflictError) -> int:
    """``path`` locked (``fcntl.LOCK_SH`` or ``LOCK_EX``) without waiting; ``refused`` if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise refused from None
    return fd


def hold_home(home: Path) -> None:
    """Hold the home's locks while this server runs: the restore lock, shared (a restore takes it
    exclusively), and its own, alone (a second server on the same home would have the same
    identity, so both would lead)."""
    _held.append(_lock(home / LOCK_FILE, fcntl.LOCK_SH, ConflictError(
        f"a restore is running on {home}", hint="start the server once it has finished")))
    _held.append(_lock(home / SERVER_LOCK_FILE, fcntl.LOCK_EX, ConflictError(
        f"a Fermion server is already running on {home}",
        hint="give each server its own FERMION_HOME (servers share a database, not a home)")))


def lock_home_exclusive(home: Path) -> int:
    """The home's lock, held alone (by a restore): refused while any server runs on the home."""
    home.mkdir(parents=True, exist_ok=True)
    return _lock(home / LOCK_FILE, fcntl.LOCK_EX, ConflictError(
        f"a Fermion server is running on {home}: a restore would replace the database under it",
        hint="stop that server first, then restore"))


def prepare_database(home: Path, db_url: str, workloads_root: Path, *, new_database: bool) -> list[str]:
    """Refuse to start on a database that is corrupt, read-only, or missing from a home that was
    used before (unless ``new_database``); what was kept aside, to tell the user."""
    shown = display_url(db_url)
    path = sqlite_file(db_url)
    if path is not None and path.exists() and not os.access(path, os.W_OK):
        raise StoreUnusableError(f"the database {path} is read-only for this user",
                                 hint=f"make it writable (chmod u+w {path}), or run the server as its owner")
    try:
        state = check_database(db_url)
    except StoreUnusableError:
        if not (new_database and path is not None):
            raise
        state = "corrupt"
    if state == "ready":
        if new_database:
            raise UserInputError(f"--new-database starts anew only where the database is missing, empty or corrupt, "
                                 f"and {shown} holds data", hint="to start anew anyway, back it up "
                                 "(`fermion backup create FILE`) and move it aside first")
        return []
    used = prior_use(home, workloads_root)
    if used and not new_database:
        raise StoreUnusableError(
            f"the database {shown} is {state}, but this home was used before ({', '.join(used)}): a server on a new "
            "database would forget every deployment, job, token and secret",
            hint=f"restore the last backup with {RESTORE}, or start anew with {NEW_DATABASE} (cli.json is then kept "
                 "aside, and workloads no database row knows are stopped)")
    if path is None:
        return []
    # missing: a new file would take in an old WAL left beside it (it may hold the last commits);
    # empty or corrupt: aside only when asked to start anew, else an empty one is simply used
    if state != "missing" and not new_database:
        return []
    return [f"kept the old {old.name} as {new}" for old, new in keep_database_aside(path)]


def keep_credentials_aside(home: Path) -> Path | None:
    """Before a new admin token is saved: the old cli.json renamed (never overwritten silently)."""
    from ._platform import CREDENTIALS

    creds = home / CREDENTIALS
    return keep_aside(creds) if creds.exists() else None


def watch_database(db_url: str, engine: Engine, on_lost: Callable[[str], None] | None = None) -> DatabaseWatch | None:
    """For a SQLite database: a watch that notices its file deleted or replaced and then calls
    ``on_lost`` (by default: exit the process at once). None for another database."""
    path = sqlite_file(db_url)
    if path is None:
        return None
    return DatabaseWatch(engine, path, on_lost or exit_database_lost).start()


def exit_database_lost(message: str) -> None:
    """Log why, then end the process at once, with no graceful stop: every step of one (freeing
    leases, closing SQLite's connections) would write, and closing the last connection deletes
    the ``-wal`` file at the database's path, which may hold the only copy of the last commits
    (or belong to the file that replaced it). Replicas and jobs run on in their own sessions."""
    from ._output import print_error

    log.error(message)
    print_error(message)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(DatabaseLostError.exit_code)
