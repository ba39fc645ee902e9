"""The state store: one SQLAlchemy engine (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
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
        self.added_columns = migrate_additive(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    @staticmethod
    def record(s: Session, kind: str, object_id: str, old: str, new: str, reason: str = "") -> None:
        s.add(EventRow(at=time.time(), kind=kind, object_id=object_id, old=old, new=new, reason=reason))

    def close(self) -> None:
        self.engine.dispose()


def migrate_additive(engine: Engine) -> list[str]:
    """Bring an older database up to the models: add the columns it lacks, with their defaults.
    (Fermion's schema changes only by adding tables and columns; create_all adds the tables.)"""
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
                    literal = {True: "1", False: "0"}.get(default, repr(default)) if isinstance(default, bool | int | float | str) else None
                    if literal is not None:
                        ddl += f" DEFAULT {literal}"
                conn.execute(text(ddl))
                added.append(f"{table.name}.{column.name}")
    return added


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API types
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
