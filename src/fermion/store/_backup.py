"""Backups of the state store: a consistent logical dump of every table, read through SQLAlchemy in
one snapshot (so a backup of SQLite restores into PostgreSQL and back), with the photon archives
the rows point to and whatever files the caller adds (the secret master key), in one tar file.

Layout (gzip'd tar; ``manifest.json`` first):

- ``manifest.json``: format, version, when, from which database, and for every other member its
  size and sha256 (a restore verifies all of them before it changes anything);
- ``tables/<table>.jsonl``: one JSON object per row, by column name;
- ``photons/<sha256>.photon``: the archives of the photon rows;
- ``files/<name>``: the caller's files, e.g. ``files/master.key``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Integer, Table, event, func, inspect, select, text
from sqlalchemy.engine import Connection, Engine

from .. import __version__
from ..errors import ConflictError, FermionError, UserInputError
from ._models import Base
from ._safety import _plain_engine, check_database, keep_database_aside, sidecars, sqlite_file
from ._store import Store, display_url

FORMAT = "fermion-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BATCH = 500
# tables that any start (or a refused request) writes: the admin user, the default project, the
# clouds, the leader lease, events and audit records; a database holding only these lost nothing
BOOTSTRAP_TABLES = frozenset({"users", "projects", "clouds", "events", "memberships", "controller_lease", "audit",
                              "audit_keys"})
LABELS = {"project_secrets": "secrets", "model_versions": "model versions", "controller_lease": "controller lease"}
LEASE_COLUMNS = ("lease_owner", "lease_until")


def counted(tables: Mapping[str, int]) -> str:
    """``{"deployments": 2, ...}`` as "deployments: 2, ..." (the tables a user knows by name)."""
    return ", ".join(f"{LABELS.get(t, t)}: {n}" for t, n in tables.items()
                     if n and t not in ("events", "audit", "audit_keys"))


class BackupError(FermionError):
    """A backup file that cannot be used: unreadable, not a Fermion backup, or altered."""

    exit_code = 2


@dataclass
class BackupSummary:
    """What a backup holds (or a restore put back)."""

    path: Path
    tables: dict[str, int]
    photons: int
    files: list[str]
    created_at: float
    source: str
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        rows = counted(self.tables)
        return (f"{rows or 'no rows'} ({sum(self.tables.values())} rows in all); "
                f"{self.photons} photon archive{'' if self.photons == 1 else 's'}")


# -- writing -------------------------------------------------------------------------------------


def create_backup(url: str, out: Path, *, files: Mapping[str, Path] | None = None,
                  overwrite: bool = False) -> BackupSummary:
    """Write a backup of the database at ``url`` (and ``files``, by name) to ``out``, mode 0600.
    Safe while a server runs on the database: every table is read in one read-only snapshot."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserInputError(f"{out} exists", hint="choose another file name, or add --force to replace it")
    if not out.parent.is_dir():
        raise UserInputError(f"cannot write {out}: the folder {out.parent} does not exist")
    path = sqlite_file(url)
    if path is not None and (not path.exists() or path.stat().st_size == 0):
        raise UserInputError(f"there is no database at {path} to back up",
                             hint="is FERMION_HOME (or --db) the server's?")
    engine = _snapshot_engine(url)
    created = time.time()
    members: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    notes: list[str] = []
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fermion-backup-") as spool_dir:
            spool = Path(spool_dir)
            columns: dict[str, list[str]] = {}
            archives: list[tuple[str, Path]] = []
            with engine.connect() as conn, _snapshot(conn):
                present = set(inspect(conn).get_table_names())
                for t in Base.metadata.sorted_tables:
                    if t.name not in present:
                        continue
                    have = {c["name"] for c in inspect(conn).get_columns(t.name)}
                    cols = [c.name for c in t.columns if c.name in have]
                    columns[t.name] = cols
                    counts[t.name] = _dump_table(conn, t, cols, spool / f"{t.name}.jsonl")
                    if t.name == "photons":
                        archives = [(sha, Path(p)) for sha, p in conn.execute(select(t.c.sha256, t.c.archive_path))]
            for name in columns:
                members[f"tables/{name}.jsonl"] = _digest(spool / f"{name}.jsonl")
            photons = 0
            sources: dict[str, Path] = {f"tables/{n}.jsonl": spool / f"{n}.jsonl" for n in columns}
            for sha, archive in archives:
                if not archive.is_file():  # said loudly: a deployment of it could not start after a restore
                    notes.append(f"the archive of photon {sha[:12]} is missing ({archive}); it is not in the backup")
                    continue
                name = f"photons/{sha}.photon"
                sources[name], members[name] = archive, _digest(archive)
                photons += 1
            for name, source in (files or {}).items():
                sources[f"files/{name}"], members[f"files/{name}"] = source, _digest(source)
            manifest = {"format": FORMAT, "version": FORMAT_VERSION, "created_at": created,
                        "fermion_version": __version__,
                        "source": {"dialect": engine.dialect.name, "url": display_url(url)},
                        "tables": {n: {"rows": counts[n], "columns": columns[n]} for n in columns},
                        "members": members, "notes": notes}
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds keys: never readable by others
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                    _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode(), created)
                    for name, source in sources.items():
                        _add_file(tar, name, source, members[name]["size"], created)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, out)
    finally:
        engine.dispose()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return BackupSummary(out, counts, photons, sorted(files or {}), created, display_url(url), notes)


def _snapshot_engine(url: str) -> Engine:
    engine = _plain_engine(url)
    if engine.dialect.name == "sqlite":
        # pysqlite opens no transaction before a SELECT: take control of BEGIN, so that every table
        # is read in one transaction, i.e. from one WAL snapshot while the server writes on
        @event.listens_for(engine, "connect")
        def _manual(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API types
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")
    return engine


@contextlib.contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    """One read-only transaction that sees one state of the whole database."""
    if conn.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    with conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET TRANSACTION READ ONLY"))
        yield


def _dump_table(conn: Connection, table: Table, columns: list[str], out: Path) -> int:
    n = 0
    order = list(table.primary_key.columns)
    with out.open("w", encoding="utf-8") as f:
        query = select(*(table.c[c] for c in columns)).order_by(*order)
        result = conn.execution_options(yield_per=BATCH).execute(query)
        for row in result:
            f.write(json.dumps(dict(zip(columns, row, strict=True)), separators=(",", ":"), default=_jsonable))
            f.write("\n")
            n += 1
    return n


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    raise TypeError(f"cannot write {type(value).__name__} to a backup")


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o600
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, source: Path, size: int, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o600
    with source.open("rb") as f:
        tar.addfile(info, f)  # exactly ``size`` bytes, those the manifest's digest is of


# -- reading -------------------------------------------------------------------------------------


class Backup:
    """A backup file whose manifest was read and every member verified against it."""

    def __init__(self, path: Path, *, shown_as: Path | None = None) -> None:
        self.path = Path(path)
        self.shown = Path(shown_as) if shown_as is not None else self.path  # the file the user named
        self.manifest = self._verify()

    def open_tar(self) -> tarfile.TarFile:
        try:
            return tarfile.open(self.path, mode="r:*")
        except FileNotFoundError:
            raise UserInputError(f"no backup file {self.shown}") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{self.shown} is not a Fermion backup ({exc})") from None

    def _verify(self) -> dict[str, Any]:
        bad = f"{self.shown} is not a Fermion backup, or is damaged"
        seen: dict[str, dict[str, Any]] = {}
        manifest: dict[str, Any] | None = None
        try:
            with self.open_tar() as tar:
                for member in tar:
                    if not member.isfile():
                        raise BackupError(f"{bad}: {member.name!r} is not a plain file")
                    _check_member_name(member.name, bad)
                    f = tar.extractfile(member)
                    assert f is not None  # a plain file
                    if member.name == MANIFEST and manifest is None:
                        manifest = _parse_manifest(f.read(), bad)
                        continue
                    h, size = hashlib.sha256(), 0
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                        size += len(chunk)
                    seen[member.name] = {"sha256": h.hexdigest(), "size": size}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BackupError(f"{bad} ({exc})") from None
        if manifest is None:
            raise BackupError(f"{bad}: it has no {MANIFEST}")
        expected: dict[str, dict[str, Any]] = manifest["members"]
        for name in expected:
            _check_member_name(name, bad)
        for name, want in expected.items():
            got = seen.get(name)
            if got is None:
                raise BackupError(f"{bad}: {name} is missing from it")
            if got != {"sha256": want.get("sha256"), "size": want.get("size")}:
                raise BackupError(f"{self.shown} is damaged: the checksum of {name} does not match its manifest",
                                  hint="use another copy of the backup")
        extra = sorted(set(seen) - set(expected))
        if extra:
            raise BackupError(f"{bad}: it holds {extra[0]}, which its manifest does not list")
        return manifest

    @property
    def created_at(self) -> float:
        return float(self.manifest.get("created_at", 0))

    def summary(self) -> BackupSummary:
        tables = {n: int(t["rows"]) for n, t in self.manifest["tables"].items()}
        photons = sum(1 for m in self.manifest["members"] if m.startswith("photons/"))
        files = sorted(m.removeprefix("files/") for m in self.manifest["members"] if m.startswith("files/"))
        return BackupSummary(self.path, tables, photons, files, self.created_at,
                             str(self.manifest.get("source", {}).get("url", "")), list(self.manifest.get("notes", [])))

    def has_file(self, name: str) -> bool:
        return f"files/{name}" in self.manifest["members"]

    def read(self, member: str) -> bytes:
        with self.open_tar() as tar, self.member(tar, member) as f:
            return f.read()

    @contextlib.contextmanager
    def member(self, tar: tarfile.TarFile, name: str) -> Iterator[IO[bytes]]:
        try:
            f = tar.extractfile(tar.getmember(name))
        except KeyError:
            raise BackupError(f"{self.shown}: {name} is missing from it") from None
        assert f is not None
        with f:
            yield f

    def rows(self, tar: tarfile.TarFile, table: str) -> Iterator[dict[str, Any]]:
        with self.member(tar, f"tables/{table}.jsonl") as f:
            for line in io.TextIOWrapper(f, encoding="utf-8"):
                if line.strip():
                    yield json.loads(line)


# the only names a backup's members may have: a restore writes photons/ and files/ members under
# the home by these names, so one like ``photons/../../x`` or ``/etc/x`` must never get that far
MEMBER_NAMES = re.compile(r"^(manifest\.json|tables/[a-z_][a-z0-9_]{0,62}\.jsonl|photons/[0-9a-f]{64}\.photon"
                          r"|files/[A-Za-z0-9_][A-Za-z0-9_.-]{0,99})$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_member_name(name: str, bad: str) -> None:
    if not MEMBER_NAMES.match(name) or ".." in name:
        raise BackupError(f"{bad}: it holds a member named {name[:120]!r}, which no Fermion backup has",
                          hint="restore only backups that `fermion backup create` made")


def _parse_manifest(raw: bytes, bad: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise BackupError(f"{bad}: its {MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(bad)
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BackupError(f"the backup is of format version {version}, newer than this Fermion reads "
                          f"({FORMAT_VERSION})",
                          hint="restore it with the Fermion version that wrote it, or a newer one")
    if not isinstance(manifest.get("members"), dict) or not isinstance(manifest.get("tables"), dict):
        raise BackupError(bad)
    return manifest


# -- restoring -----------------------------------------------------------------------------------


def data_rows(url: str) -> dict[str, int]:
    """Rows per table, of the tables a start alone never fills (empty if there is no database)."""
    engine = _plain_engine(url)
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            tables = [t for t in Base.metadata.sorted_tables if t.name in present and t.name not in BOOTSTRAP_TABLES]
            return {t.name: n for t in tables if (n := conn.execute(select(func.count()).select_from(t)).scalar_one())}
    finally:
        engine.dispose()


def live_leases(url: str) -> list[str]:
    """The leases a running server holds now (the controller lease, deployments, jobs): a server on
    another home or machine, which the home's lock cannot see, is using the database."""
    engine = _plain_engine(url)
    now = time.time()
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            held = []
            for t in Base.metadata.sorted_tables:
                if t.name in present and "lease_until" in t.c and "lease_until" in {
                        c["name"] for c in inspect(conn).get_columns(t.name)}:
                    key = list(t.primary_key.columns)[0]
                    for k, owner in conn.execute(select(key, t.c.lease_owner).where(t.c.lease_until > now)):
                        held.append(f"server {owner} holds the controller lease" if t.name == "controller_lease"
                                    else f"{LABELS.get(t.name, t.name)[:-1]} {k} is leased by {owner}")
            return held
    finally:
        engine.dispose()


def restore_backup(backup: Backup, url: str, *, photon_store: Path, force: bool = False) -> BackupSummary:
    """Load ``backup`` into the database at ``url`` and its photon archives into ``photon_store``.
    Refuses a database that holds data unless ``force``; then a SQLite file is kept aside (never
    deleted) and a PostgreSQL database is emptied in the same transaction that fills it again."""
    path = sqlite_file(url)
    corrupt = None
    try:
        state = check_database(url)
    except FermionError as exc:  # a corrupt SQLite file: exactly what a restore is for (with --force)
        state, corrupt = "ready", exc.message
    held = data_rows(url) if state == "ready" and corrupt is None else {}
    if (held or corrupt) and not force:
        what = corrupt or f"it holds {counted(held)}"
        raise ConflictError(f"the database {display_url(url)} is not empty ({what}): a restore would replace it",
                            hint="add --force to replace it" + (" (the current file is kept aside)" if path else ""))
    if state != "missing" and corrupt is None and (busy := live_leases(url)):
        raise ConflictError(f"a server is using the database {display_url(url)}: {busy[0]}",
                            hint="stop every server on that database (or wait 30 s after one was killed), then restore")
    photon_store.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with backup.open_tar() as tar:
        for member in backup.manifest["members"]:
            if member.startswith("photons/"):
                target = photon_store / member.removeprefix("photons/")
                if not target.exists():  # content-addressed: one there already is the same archive
                    with backup.member(tar, member) as f:
                        _write_new(target, f)
    if path is None:
        store = Store(url)
        try:
            counts = _load(store.engine, backup, photon_store, clear=True)
        finally:
            store.close()
    else:
        counts = _restore_sqlite(backup, path, photon_store, notes)
    summary = backup.summary()
    summary.tables, summary.notes = counts, notes + summary.notes
    return summary


def _restore_sqlite(backup: Backup, path: Path, photon_store: Path, notes: list[str]) -> dict[str, int]:
    """Build the new database in a file beside the old, then swap it in: a failed restore leaves the
    old database as it was, and the old one (if any) is kept aside rather than overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.restore-{os.getpid()}")
    for f in (tmp, *sidecars(tmp)):
        f.unlink(missing_ok=True)
    try:
        store = Store(f"sqlite:///{tmp}")
        try:
            counts = _load(store.engine, backup, photon_store, clear=False)
            with store.engine.connect() as conn:  # one self-contained file: no WAL left to carry along
                conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
        finally:
            store.close()
        notes += [f"kept the previous {old.name} as {new}" for old, new in keep_database_aside(path)]
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        for f in (tmp, *sidecars(tmp)):
            f.unlink(missing_ok=True)
    return counts


def _load(engine: Engine, backup: Backup, photon_store: Path, *, clear: bool) -> dict[str, int]:
    """Every table of the backup into ``engine``'s database, in one transaction."""
    counts: dict[str, int] = {}
    tables = backup.manifest["tables"]
    with engine.begin() as conn, backup.open_tar() as tar:
        present = set(inspect(conn).get_table_names())
        if clear:
            for t in reversed(Base.metadata.sorted_tables):
                if t.name in present:
                    conn.execute(t.delete())
        for t in Base.metadata.sorted_tables:  # parents before children: foreign keys hold at every insert
            if t.name not in tables:
                continue
            columns = [c for c in tables[t.name]["columns"] if c in t.c]
            batch: list[dict[str, Any]] = []
            n = 0
            for row in backup.rows(tar, t.name):
                values = {c: row.get(c) for c in columns}
                if all(c in t.c for c in LEASE_COLUMNS):
                    # the controllers that held these leases are gone: the next server claims at once
                    values.update(lease_owner=None, lease_until=0.0)
                if t.name == "photons":  # the archive now lies in this home's photon store
                    if not SHA256.match(str(values.get("sha256"))):
                        raise BackupError(f"{backup.shown}: a photon row has no sha256 digest as its name")
                    values["archive_path"] = str(photon_store / f"{values['sha256']}.photon")
                batch.append(values)
                if len(batch) >= BATCH:
                    conn.execute(t.insert(), batch)
                    n += len(batch)
                    batch = []
            if batch:
                conn.execute(t.insert(), batch)
                n += len(batch)
            counts[t.name] = n
        if conn.dialect.name == "postgresql":  # explicit ids were inserted: move each id sequence past them
            for t in Base.metadata.sorted_tables:
                keys = list(t.primary_key.columns)
                if len(keys) == 1 and isinstance(keys[0].type, Integer):  # no sequence: setval(NULL) does nothing
                    c = keys[0].name
                    conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{t.name}', '{c}'), "
                                      f"COALESCE((SELECT MAX({c}) FROM {t.name}), 1), "
                                      f"(SELECT MAX({c}) FROM {t.name}) IS NOT NULL)"))
    return counts


def _write_new(target: Path, source: IO[bytes]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
