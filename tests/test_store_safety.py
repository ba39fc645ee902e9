"""The state store's guards and backups on real databases (SQLite files, and a real PostgreSQL
server where the dev extra ships one): a replaced database file is noticed and never written, a
backup restores row for row (from SQLite into PostgreSQL too), and a damaged backup is refused."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fermion.errors import ConflictError
from fermion.store import (
    AttemptRow,
    AuditRow,
    Backup,
    BackupError,
    CloudRow,
    ControllerLeaseRow,
    DatabaseLostError,
    DatabaseWatch,
    DeploymentRow,
    EventRow,
    JobRow,
    MembershipRow,
    ModelVersionRow,
    PhotonRow,
    ProjectRow,
    ReplicaRow,
    SecretRow,
    Store,
    TokenRow,
    UserRow,
    create_backup,
    restore_backup,
)
from fermion.store._models import Base
from fermion.testing import fermion_cmd

SHA = "a" * 64


def filled_store(url: str, photon_store: Path) -> Store:
    """A store with a row in every table, leases held, as a running server leaves it."""
    photon_store.mkdir(parents=True, exist_ok=True)
    (photon_store / f"{SHA}.photon").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    store = Store(url)
    held = time.time() + 30
    with store.session() as s:
        s.add_all([UserRow(name="admin", admin=True), UserRow(name="carol"), ProjectRow(name="default"),
                   ProjectRow(name="ml"), CloudRow(name="local", kind="local", config={"name": "local"}, outage=True),
                   PhotonRow(sha256=SHA, name="text", archive_path=str(photon_store / f"{SHA}.photon"),
                             manifest={"name": "text", "handlers": {"upper": {}}})])
        s.flush()
        s.add_all([MembershipRow(user="carol", project="ml", role="editor"),
                   DeploymentRow(name="web", photon_sha256=SHA, env={"K": "fmenc:v1:x:y"}, rate_limit=None,
                                 target={"local": 2}, lease_owner="srv-1/deployments", lease_until=held),
                   JobRow(name="train", command=["python", "-c", "print(1)"], spot=True, lease_owner="srv-1/jobs",
                          lease_until=held, result={"loss": 0.25})])
        s.flush()
        s.add_all([ReplicaRow(id="r-1", deployment="web", generation=1, photon_sha256=SHA, cloud="local",
                              state="READY", handle={"id": "r-1", "pid": 4242}, url="http://127.0.0.1:1"),
                   AttemptRow(id="a-1", job="train", number=1, cloud="local", state="RUNNING", handle=None),
                   SecretRow(project="ml", name="api-key", ciphertext="fmenc:v1:k:sealed"),
                   TokenRow(name="admin", token_hash="f" * 64, role="admin", user="admin"),
                   ModelVersionRow(name="m", version=1, artifact_uri="file:///m", metrics={"acc": 0.5}),
                   ControllerLeaseRow(name="controller", lease_owner="srv-1", lease_until=held, url="http://x"),
                   AuditRow(at=1.0, actor="admin", method="PUT", path="/api/v1/secrets/api-key",
                            target="secret/api-key", status=200, prev_hash="0" * 64, hash="1" * 64)])
        s.add_all(EventRow(kind="replica", object_id="r-1", old="", new="READY", reason=f"n{i}") for i in range(700))
    return store


def rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, by column, in key order."""
    out = {}
    with store.engine.connect() as conn:
        for t in Base.metadata.sorted_tables:
            result = conn.execute(select(t).order_by(*t.primary_key.columns))
            out[t.name] = [dict(r._mapping) for r in result]
    return out


def test_a_replaced_database_file_is_noticed_and_neither_file_is_written(tmp_path: Path) -> None:
    path = tmp_path / "fermion.db"
    store = Store(f"sqlite:///{path}")
    with store.session() as s:
        s.add(EventRow(kind="cloud", object_id="c", reason="before"))
    lost: list[str] = []
    watch = DatabaseWatch(store.engine, path, lost.append, interval_s=0.1).start()
    try:
        other = tmp_path / "other.db"
        with sqlite3.connect(other) as conn:
            conn.execute("CREATE TABLE t (x)")
        os.replace(other, path)  # as `mv other.db fermion.db` or a restore by hand would
        replaced = path.read_bytes()
        deadline = time.monotonic() + 2
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lost and f"the database file {path} was replaced by another file" in lost[0]
        assert "fermion backup restore" in lost[0]
        with pytest.raises(DatabaseLostError, match="was replaced"), store.session() as s:
            s.add(EventRow(kind="cloud", object_id="c", reason="after"))
        store.engine.dispose()  # new connections too: refused before SQLite opens the new file
        with pytest.raises(DatabaseLostError), store.session() as s:
            s.scalars(select(EventRow)).all()
        assert path.read_bytes() == replaced
    finally:
        watch.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    pg = pytest.importorskip("tests.pg", reason="PostgreSQL tests need the dev extra")
    server = pg.start_postgres()
    try:
        yield server
    finally:
        server.stop()


def test_a_sqlite_backup_restores_into_postgresql_row_for_row(tmp_path: Path, postgres: Any) -> None:
    source = filled_store(f"sqlite:///{tmp_path / 'fermion.db'}", tmp_path / "photon-store")
    before = rows(source)
    key = tmp_path / "master.key"
    key.write_text("a2V5\n")
    backup = tmp_path / "b.fbk"
    summary = create_backup(source.url, backup, files={"master.key": key})
    source.close()
    assert summary.tables["events"] == 700 and summary.photons == 1 and summary.files == ["master.key"]
    assert (backup.stat().st_mode & 0o777) == 0o600

    url = postgres.create_database()
    photons = tmp_path / "restored-photons"
    restored = restore_backup(Backup(backup), url, photon_store=photons)
    assert restored.tables == summary.tables
    target = Store(url)
    try:
        after = rows(target)
        for table, want in before.items():
            for row in want:  # what a restore changes on purpose: no lease survives, archives move home
                if "lease_owner" in row:
                    row.update(lease_owner=None, lease_until=0.0)
                if table == "photons":
                    row["archive_path"] = str(photons / f"{SHA}.photon")
            assert after[table] == want, table
        assert (photons / f"{SHA}.photon").read_bytes() == (tmp_path / "photon-store" / f"{SHA}.photon").read_bytes()
        assert Backup(backup).read("files/master.key") == b"a2V5\n"
        with target.session() as s:  # explicit ids went in: the id sequences moved past them
            event = EventRow(kind="cloud", object_id="c", reason="new")
            s.add(event)
            s.flush()
            assert event.id == 701

        with pytest.raises(ConflictError, match="is not empty"):
            restore_backup(Backup(backup), url, photon_store=photons)
        again = restore_backup(Backup(backup), url, photon_store=photons, force=True)  # replaced in one transaction
        assert again.tables == summary.tables
        with target.session() as s:
            assert s.scalars(select(EventRow).where(EventRow.reason == "new")).first() is None
    finally:
        target.close()
        postgres.drop_database(url)


def test_a_forced_sqlite_restore_keeps_the_old_file_and_a_damaged_backup_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fermion.db'}"
    filled_store(url, tmp_path / "photon-store").close()
    backup = tmp_path / "b.fbk"
    create_backup(url, backup)
    holds = "jobs: 1, model versions: 1, photons: 1, secrets: 1, tokens: 1, attempts: 1, deployments: 1, replicas: 1"
    with pytest.raises(ConflictError, match=rf"is not empty \(it holds {holds}\)"):
        restore_backup(Backup(backup), url, photon_store=tmp_path / "photon-store")
    # a server elsewhere on this database (its controllers hold leases): not even --force replaces it
    with pytest.raises(ConflictError, match="a server is using the database .*: server srv-1 holds the controller"):
        restore_backup(Backup(backup), url, photon_store=tmp_path / "photon-store", force=True)
    with sqlite3.connect(tmp_path / "fermion.db") as conn:  # that server stopped: its leases ran out
        for table in ("deployments", "jobs", "controller_lease"):
            conn.execute(f"UPDATE {table} SET lease_until = 0")
    done = restore_backup(Backup(backup), url, photon_store=tmp_path / "photon-store", force=True)
    (kept,) = tmp_path.glob("fermion.db.*.bak")
    assert f"kept the previous fermion.db as {kept}" in done.notes
    assert sqlite3.connect(kept).execute("SELECT count(*) FROM events").fetchone() == (700,)
    assert not list(tmp_path.glob("fermion.db-wal"))  # one self-contained file

    # one row changed inside the tar, its manifest left as it was
    damaged = tmp_path / "damaged.fbk"
    with tarfile.open(backup) as src, tarfile.open(damaged, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "tables/deployments.jsonl":
                data = data.replace(b'"web"', b'"wex"')
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(BackupError, match="the checksum of tables/deployments.jsonl does not match"):
        Backup(damaged)
    cut = tmp_path / "cut.fbk"
    cut.write_bytes(backup.read_bytes()[:2000])
    with pytest.raises(BackupError, match="not a Fermion backup, or is damaged"):
        Backup(cut)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BackupError, match="is not a Fermion backup"):
        Backup(tmp_path / "notes.txt")

    env = {**os.environ, "FERMION_HOME": str(tmp_path / "home"), "COLUMNS": "1000"}
    out = subprocess.run(fermion_cmd("backup", "restore", str(damaged), "--unsealed"), capture_output=True, text=True,
                         env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {damaged} is damaged: the checksum of tables/deployments.jsonl")
    assert not (tmp_path / "home" / "fermion.db").exists()
    shown = subprocess.run(fermion_cmd("backup", "verify", str(backup), "--unsealed"), capture_output=True, text=True,
                           env=env)
    assert shown.returncode == 0 and "intact, but unsealed" in shown.stdout and "deployments: 1" in shown.stdout
    assert json.loads(Backup(backup).read("manifest.json"))["version"] == 1
