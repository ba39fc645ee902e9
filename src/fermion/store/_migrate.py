"""Bringing a database to the current schema: the Alembic revisions in ``migrations/``, after a
one-time conversion of a database made before Alembic (by ``create_all`` and hand-written ALTERs)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

from ._models import Base
from ._safety import StoreUnusableError

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"  # the schema of the last version before Alembic
LOCK_KEY = 0x6665726D696F6E  # "fermion": PostgreSQL advisory lock held while migrating
# Alembic's `context` and `op` are module globals: two threads migrating at once would swap them.
# Taken after the database's advisory lock, never before, so the two cannot deadlock.
_ALEMBIC = threading.Lock()

RETIRED_COLUMNS = {  # columns older databases have and the baseline does not: dropped on conversion
    "replicas": ("pid", "port", "workdir"),  # a backend's handle replaced them
    "attempts": ("pid", "workdir"),
}


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code: the scripts ship inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")  # %% : ConfigParser interpolation
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine) -> list[str]:
    """Take the database to the newest revision, in one transaction; what changed (columns a legacy
    database gained, ``-table.column`` for those it lost, ``revision N`` for each revision applied)."""
    changes: list[str] = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # servers starting at once on a new database: one migrates
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        with _ALEMBIC:
            cfg = alembic_config(conn)
            scripts = ScriptDirectory.from_config(cfg)
            _check_known(conn, scripts)
            baseline: MetaData = scripts.get_revision(BASELINE).module.metadata
            tables = set(inspect(conn).get_table_names())
            if "alembic_version" not in tables and tables & set(baseline.tables):
                changes += _convert_legacy(conn, baseline)
                command.stamp(cfg, BASELINE)
            cfg.attributes["on_version_apply"] = lambda step, **_: changes.append(f"revision {step.up_revision_id}")
            command.upgrade(cfg, "head")
    return changes


def _check_known(conn: Connection, scripts: ScriptDirectory) -> None:
    """Refuse a database that a newer Fermion migrated: this version cannot know its schema."""
    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
        raise StoreUnusableError(f"the database is at schema revision {current}, which this version of Fermion does "
                                 f"not know (its newest is {scripts.get_current_head()}): a newer Fermion migrated it",
                                 hint="run that newer version, or restore a backup made before the upgrade")


def schema_diff(engine: Engine) -> list[Any]:
    """How the database's schema differs from the models (Alembic's autogenerate diff; [] if none)."""
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def new_revision(message: str) -> Path:
    """Write the next revision: the operations that take a database at the current head to the
    models, found by autogenerate on a scratch in-memory SQLite database. Review it before use."""
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn, _ALEMBIC:
            cfg = alembic_config(conn)
            command.upgrade(cfg, "head")
            head = ScriptDirectory.from_config(cfg).get_current_head()
            script = command.revision(cfg, message=message, autogenerate=True, rev_id=f"{int(head or 0) + 1:04d}")
    finally:
        engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


def _convert_legacy(conn: Connection, baseline: MetaData) -> list[str]:
    """A database made before Alembic, brought to the baseline: the tables, columns and indexes it
    lacks are added (a column with its scalar default, so existing rows get it), and retired columns
    dropped once their pids became handles. A database the last such version created is already
    the baseline and is left as it is."""
    added = []
    baseline.create_all(conn)  # only the missing tables
    existing, quote = inspect(conn), conn.dialect.identifier_preparer.quote  # e.g. tokens.user: reserved in PostgreSQL
    for table in baseline.sorted_tables:
        have = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            ddl = f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {column.type.compile(conn.dialect)}"
            default = column.default.arg if column.default is not None and not callable(column.default.arg) else None
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
                conn.execute(text(f"ALTER TABLE {quote(table.name)} DROP COLUMN {quote(retired)}"))
                added.append(f"-{table.name}.{retired}")
        indexes = {i["name"] for i in existing.get_indexes(table.name)}
        for index in table.indexes:  # the old ALTERs added columns but never their indexes
            if index.name not in indexes:
                index.create(conn)
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
