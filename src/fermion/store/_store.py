"""The state store: one SQLAlchemy engine (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, or_, text, update
from sqlalchemy.engine import Connection, Engine, Row, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from ._models import Base, EventRow


def default_db_url(home: Path) -> str:
    return f"sqlite:///{home / 'fermion.db'}"


def display_url(url: str) -> str:
    """``url`` fit to print or log: its password (in the user part or the query) masked as ``***``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy reads: mask "scheme://user:…@" by hand
        return re.sub(r"(://[^/@:]*:).*@", r"\1***@", url)
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


class Store:
    """Sessions over the state store, and the one way to record an event."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, object] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self.schema_changes = migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def claim(self, model: type[Base], owner: str, ttl_s: float, *where: Any) -> int:
        """Take (or extend) the lease of every row matching ``where`` whose lease is free or already
        ``owner``'s, in one statement; how many rows it claimed. A lease that expired is free: the
        controller that held it died or stalled."""
        now = time.time()
        with self.session() as s:
            return s.execute(update(model).where(
                *where, or_(model.lease_owner.is_(None), model.lease_owner == owner, model.lease_until < now),
            ).values(lease_owner=owner, lease_until=now + ttl_s).execution_options(synchronize_session=False)).rowcount

    @staticmethod
    def renew(s: Session, model: type[Base], key: str, owner: str, ttl_s: float, *columns: Any) -> Row | None:
        """In a write-back transaction: renew ``owner``'s lease on one row and return its ``columns``
        (read in the same statement), or None if the lease is not ``owner``'s. Holding it, no one
        else writes the row's actual state until this transaction ends."""
        table = model.__table__
        pk = table.primary_key.columns.values()[0]
        return s.connection().execute(table.update().where(pk == key, table.c.lease_owner == owner)
                                      .values(lease_until=time.time() + ttl_s).returning(pk, *columns)).first()

    def release_all(self, model: type[Base], owner: str) -> None:
        """Free every lease ``owner`` holds (a clean stop: the next owner need not wait for expiry)."""
        with self.session() as s:
            s.execute(update(model).where(model.lease_owner == owner).values(lease_owner=None, lease_until=0.0)
                      .execution_options(synchronize_session=False))

    @staticmethod
    def record(s: Session, kind: str, object_id: str, old: str, new: str, reason: str = "") -> None:
        s.add(EventRow(at=time.time(), kind=kind, object_id=object_id, old=old, new=new, reason=reason))

    def close(self) -> None:
        self.engine.dispose()


RETIRED_COLUMNS = {  # columns a model lost: dropped from an older database
    "replicas": ("pid", "port", "workdir"),  # a backend's handle replaced them
    "attempts": ("pid", "workdir"),
}


def migrate(engine: Engine) -> list[str]:
    """Bring an older database up to the models: add the columns it lacks, with their defaults,
    and drop the retired ones. (create_all adds the tables.)"""
    added = []
    existing = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                default = column.default.arg if column.default is not None and not callable(column.default.arg) else None
                ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(engine.dialect)}"
                if default is not None:
                    literal = (("TRUE" if default else "FALSE") if isinstance(default, bool)  # 1 == True: bool first
                               else repr(default) if isinstance(default, int | float | str) else None)
                    if literal is not None:
                        ddl += f" DEFAULT {literal}"
                conn.execute(text(ddl))
                added.append(f"{table.name}.{column.name}")
            if table.name in RETIRED_COLUMNS and "pid" in have:
                _handles_from_pids(conn, table.name, "port" in have)
            for retired in RETIRED_COLUMNS.get(table.name, ()):
                if retired in have:
                    conn.execute(text(f"ALTER TABLE {table.name} DROP COLUMN {retired}"))
                    added.append(f"-{table.name}.{retired}")
    return added


def _handles_from_pids(conn: Connection, table: str, has_port: bool) -> None:
    """Rows of a version that kept pids: the local backend's handle (and URL), so that the
    workloads still running are re-adopted after the upgrade rather than replaced."""
    rows = conn.execute(text(f"SELECT id, pid{', port' if has_port else ''} FROM {table} "
                             "WHERE pid IS NOT NULL AND handle IS NULL")).fetchall()
    for row in rows:
        url = f"http://127.0.0.1:{row[2]}" if has_port and row[2] else None
        values = {"id": row[0], "handle": json.dumps({"id": row[0], "pid": row[1]})}
        if has_port:
            conn.execute(text(f"UPDATE {table} SET handle = :handle, url = :url WHERE id = :id"), {**values, "url": url})
        else:
            conn.execute(text(f"UPDATE {table} SET handle = :handle WHERE id = :id"), values)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API types
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a power cut may lose the last commits
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
