"""The state store: one SQLAlchemy engine (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, or_, update
from sqlalchemy.engine import Engine, Row, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from ._migrate import schema_diff, upgrade
from ._models import Base, EventRow

# NUL: PostgreSQL's text types cannot hold it; a lone surrogate is not UTF-8 (psycopg cannot send
# it, and PostgreSQL's json refuses its escape). SQLite keeps both: without this, a name or a log
# line that SQLite stores would be a 500, or a controller pass failing forever, on PostgreSQL.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` as the store keeps it, on SQLite and PostgreSQL alike: NUL and lone surrogates
    replaced by U+FFFD. (Every string the store writes or looks up passes through this; apply it
    first to text whose exact stored form matters, e.g. what a hash covers.)"""
    return _UNSTORABLE.sub("\ufffd", text)


def default_db_url(home: Path) -> str:
    return f"sqlite:///{home / 'fermion.db'}"


def with_driver(url: str) -> str:
    """``url`` naming the driver Fermion ships: a driverless ``postgresql://`` (or ``postgres://``)
    URL would get SQLAlchemy's default, psycopg2, which is not installed; psycopg (3) is."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep and scheme in ("postgresql", "postgres") else url


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
        """Open the database at ``url`` and bring its schema to the newest migration (see
        fermion.store.migrations); ``schema_changes`` says what that changed."""
        self.url = url
        kwargs: dict[str, object] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(with_driver(url), json_serializer=_json_text, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "before_cursor_execute", _storable_parameters, retval=True)
        self.schema_changes: list[str] = upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def schema_diff(self) -> list[Any]:
        """How the database differs from the models; [] when the migrations are complete."""
        return schema_diff(self.engine)

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

    def release_others(self, model: type[Base], owner: str) -> None:
        """Free every lease not ``owner``'s: what the sole controller does when it takes over, so
        that it need not wait for a dead controller's leases to expire. (A write-back of the old
        holder still checks its lease, so it changes nothing.)"""
        with self.session() as s:
            s.execute(update(model).where(model.lease_owner.is_not(None), model.lease_owner != owner)
                      .values(lease_owner=None, lease_until=0.0).execution_options(synchronize_session=False))

    @staticmethod
    def record(s: Session, kind: str, object_id: str, old: str, new: str, reason: str = "") -> None:
        s.add(EventRow(at=time.time(), kind=kind, object_id=object_id, old=old, new=new, reason=reason))

    def close(self) -> None:
        self.engine.dispose()


def _json_text(value: Any) -> str:
    """A JSON column's text. Unescaped, so that a lone surrogate is seen and replaced (its escape
    "\\ud800" is what PostgreSQL's json refuses); control characters, NUL too, stay escaped. psycopg
    serializes JSON itself, after the parameters were made storable: hence here."""
    return storable(json.dumps(value, ensure_ascii=False))


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_unstorable(v) for v in value.values())
    return isinstance(value, list | tuple) and any(_unstorable(v) for v in value)


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_storable(v) for v in value)
    return value


def _storable_parameters(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202 - SQLAlchemy's event
    """Every string parameter made storable (see ``storable``): written text and looked-up keys alike,
    so a key with a NUL finds nothing on either database instead of failing on one."""
    return statement, (_storable(parameters) if _unstorable(parameters) else parameters)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API types
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a power cut may lose the last commits
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
