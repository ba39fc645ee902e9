"""Guards around the state store: a database file deleted or replaced under a running server, a
database that is corrupt, missing or empty at start, and database errors told as what to do."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import create_engine, event, func, inspect, select, table
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from ..errors import FermionError

log = logging.getLogger("fermion.store")

RESTORE_COMMAND = "fermion backup restore BACKUP"
NEW_DATABASE_FLAG = "--new-database"
DatabaseState = Literal["missing", "empty", "ready"]


class StoreUnusableError(FermionError):
    """The state store cannot be used as it is: corrupt, gone, read-only or full."""

    http_status = 503


class DatabaseLostError(StoreUnusableError, SQLAlchemyError):
    """The SQLite file under a running server was deleted or replaced. Also an SQLAlchemyError:
    code that copes with an unreachable database (e.g. the controller lease) copes with this."""


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database, or an in-memory one)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def sidecars(path: Path) -> list[Path]:
    """SQLite's files beside a database in WAL mode: they belong to that file and to no other."""
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def keep_aside(path: Path, stamp: str | None = None) -> Path:
    """Rename ``path`` to ``<name>.<date-time>.bak`` beside it (never over another file); the new path."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while target.exists() or target.is_symlink():
        target = path.with_name(f"{path.name}.{stamp}-{n}.bak")
        n += 1
    os.rename(path, target)
    return target


def keep_database_aside(path: Path, stamp: str | None = None) -> list[tuple[Path, Path]]:
    """A SQLite database and its sidecar files renamed aside together, the sidecars named after the
    new file (``fermion.db.<stamp>.bak-wal``) so that SQLite still pairs them: the WAL may hold the
    last commits. The (old, new) paths of what was moved."""
    moved = []
    if path.exists():
        target = keep_aside(path, stamp)
        moved.append((path, target))
    else:  # only the sidecars are left: keep them under names no database will pair with by chance
        return [(side, keep_aside(side, stamp)) for side in sidecars(path) if side.exists()]
    for side in sidecars(path):
        if side.exists():
            new = target.with_name(target.name + side.name[len(path.name):])
            os.rename(side, new)
            moved.append((side, new))
    return moved


def check_database(url: str) -> DatabaseState:
    """Whether the database at ``url`` is missing, empty (never finished a first start: no token),
    or ready. Raises StoreUnusableError, naming the file and the way to restore, for a corrupt
    SQLite file; a database that cannot be reached raises SQLAlchemy's DBAPIError."""
    path = sqlite_file(url)
    if path is not None:
        if not path.exists():
            return "missing"
        if path.stat().st_size == 0:
            return "empty"
        corrupt = _sqlite_corruption(path)
        if corrupt:
            raise StoreUnusableError(
                f"the database {path} is corrupt ({corrupt}): restore a backup with `{RESTORE_COMMAND} --force` "
                "(the corrupt file is kept aside)",
                hint=f"or start with a new, empty database: `fermion server start {NEW_DATABASE_FLAG}`")
    engine = _plain_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("tokens"):
                return "empty"
            count = conn.execute(select(func.count()).select_from(table("tokens"))).scalar_one()
            return "ready" if count else "empty"
    finally:
        engine.dispose()


def _sqlite_corruption(path: Path) -> str | None:
    """SQLite's own words for what is wrong with the file, or None if it reads as sound. Opens it
    as a server would (its WAL included) and runs quick_check, which reads every page once."""
    try:
        conn = sqlite3.connect(path, timeout=30)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = conn.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return None  # busy, not broken: the start itself will wait for it
        return str(exc)
    finally:
        conn.close()
    problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
    return "; ".join(problems) or None


def _plain_engine(url: str) -> Engine:
    """An engine that only reads: no schema created, no migration run."""
    from ._store import with_driver

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    return create_engine(with_driver(url), **kwargs)


def prior_use(home: Path, workloads_root: Path) -> list[str]:
    """What shows that a server ran on ``home`` before (so a missing database was lost, not new)."""
    found = [name for name in ("cli.json", "server-id") if (home / name).exists()]
    archives = sum(1 for _ in (home / "photon-store").glob("*.photon")) if (home / "photon-store").is_dir() else 0
    if archives:
        found.append(f"{archives} photon archive{'s' if archives > 1 else ''} in photon-store")
    try:
        clouds = [c for c in workloads_root.iterdir() if c.is_dir()]
        if any(w.is_dir() for c in clouds for w in c.iterdir()):
            found.append(f"workloads under {workloads_root}")
    except OSError:
        pass
    return found


class DatabaseWatch:
    """Notices, within ``interval_s``, that the SQLite file under a running server was deleted or
    replaced (another inode or device at its path). From then on the engine refuses every
    statement and every new connection: SQLite would write on into the deleted file (lost at the
    next start), or open the new one at its path and mix two databases. ``on_lost`` is told once."""

    def __init__(self, engine: Engine, path: Path, on_lost: Callable[[str], None], interval_s: float = 1.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self.on_lost = on_lost
        self.lost: str | None = None
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fermion-database-watch", daemon=True)
        event.listen(engine, "do_connect", self._refuse_connect)
        event.listen(engine, "before_cursor_execute", self._refuse_statement)

    def start(self) -> DatabaseWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> str | None:
        """What happened to the file, if anything: one stat, cheap enough to run every second."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            what = "was deleted"
        except OSError as exc:
            return f"the database file {self.path} cannot be read any more ({exc.strerror or exc})"
        else:
            if (st.st_dev, st.st_ino) == self._identity:
                return None
            what = "was replaced by another file"
        return (f"the database file {self.path} {what} while the server ran: the server stops rather than "
                f"write on into a file no one can read again. Restore the last backup (`{RESTORE_COMMAND}`) "
                f"and start the server again, or start anew with `fermion server start {NEW_DATABASE_FLAG}`; "
                "at the next start, replicas and job attempts that no database row knows are stopped")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            message = self.check()
            if message:
                self.lost = message
                try:
                    self.on_lost(message)
                except Exception:  # noqa: BLE001 - the refusal above stands whatever the callback does
                    log.exception("reacting to the lost database failed")
                return

    def _refuse(self) -> None:
        if self.lost:
            raise DatabaseLostError(self.lost)

    def _refuse_connect(self, *_: object) -> None:
        self._refuse()  # None: SQLAlchemy goes on to connect as usual

    def _refuse_statement(self, *_: object) -> None:
        self._refuse()


def explain_db_error(exc: DBAPIError) -> tuple[int, str] | None:
    """An HTTP status and a message saying what a failed database call means for the caller and
    what fixes it, for the causes SQLite's and PostgreSQL's codes tell (None for another cause)."""
    orig = exc.orig if exc.orig is not None else exc
    low = db_error_text(exc).lower()
    code = str(getattr(orig, "sqlite_errorname", "") or getattr(orig, "sqlstate", "") or "")
    if code == "SQLITE_FULL" or code == "53100" or "disk is full" in low or "no space left" in low:
        return 507, ("the disk that holds the server's database is full: the change was not saved; "
                     "free space on it and retry")
    if code.startswith("SQLITE_READONLY") or code == "25006" or "readonly database" in low or "read-only" in low:
        return 503, ("the server's database is read-only: the change was not saved; make the database and its "
                     "folder writable again and retry")
    if code.startswith("SQLITE_IOERR") or "disk i/o error" in low:
        return 503, ("the server's database could not be written (disk I/O error): its disk may be full, "
                     "read-only or failing; the change was not saved")
    if code.startswith("SQLITE_BUSY") or "database is locked" in low:
        return 503, "the server's database is busy (locked by another writer): retry"
    if code.startswith("SQLITE_CANTOPEN") or "unable to open database" in low:
        return 503, "the server cannot open its database file: was it moved, or its folder made unreadable?"
    if code.startswith("SQLITE_CORRUPT") or code == "SQLITE_NOTADB" or "malformed" in low:
        return 503, f"the server's database is corrupt: stop the server and restore a backup (`{RESTORE_COMMAND}`)"
    if code.startswith("08") or "could not connect" in low or "connection" in low:
        return 503, f"the server cannot reach its database: {db_error_text(exc)}"
    return None


def db_error_text(exc: DBAPIError) -> str:
    """The driver's own message, first line only (a SQLAlchemy error appends the statement)."""
    orig = exc.orig if exc.orig is not None else exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
