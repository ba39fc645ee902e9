"""Alembic migrations, on SQLite and on a real PostgreSQL server: a new database and one made by the
previous version (before Alembic) both end at the models' schema, and the old one keeps its rows."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from fermion.store import (
    AttemptRow,
    AuditRow,
    CloudRow,
    DeploymentRow,
    EventRow,
    JobRow,
    MembershipRow,
    ModelVersionRow,
    PhotonRow,
    ReplicaRow,
    SecretRow,
    Store,
    StoreUnusableError,
    TokenRow,
    UserRow,
    with_driver,
)

FIXTURES = Path(__file__).parent / "fixtures"
SHA = "a" * 64


def load_previous_version(url: str) -> None:
    """The database a server of commit 9f06b29 made (its create_all, captured as SQL) and rows it wrote."""
    dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
    script = (FIXTURES / f"fermion_0_1_schema.{dialect}.sql").read_text() + (FIXTURES / "fermion_0_1_data.sql").read_text()
    engine = create_engine(with_driver(url))
    with engine.begin() as conn:
        for statement in script.split(";\n"):
            if re.sub(r"--[^\n]*", "", statement).strip():
                conn.exec_driver_sql(statement)
    engine.dispose()


def revisions(changes: list[str]) -> list[str]:
    return [c for c in changes if c.startswith("revision ")]


def test_a_new_database_gets_every_revision_and_matches_the_models(db_url: str) -> None:
    store = Store(db_url)
    assert store.schema_changes[0] == "revision 0001" and revisions(store.schema_changes) == store.schema_changes
    assert store.schema_diff() == []
    store.close()
    again = Store(db_url)
    assert again.schema_changes == [] and again.schema_diff() == []
    again.close()


def test_a_database_of_the_previous_version_is_upgraded_with_its_rows(db_url: str) -> None:
    load_previous_version(db_url)
    store = Store(db_url)
    # it had revision 0001's schema already: stamped, not converted, and the later revisions applied
    assert "revision 0001" not in store.schema_changes and revisions(store.schema_changes) == store.schema_changes
    assert store.schema_diff() == []  # the same schema as a new database
    with store.session() as s:
        d = s.get(DeploymentRow, "web")
        assert (d.photon_sha256, d.generation, d.status, d.project) == (SHA, 2, "READY", "team")
        assert (d.resources, d.clouds, d.env) == ({"cpus": 1, "memory_gb": 1}, ["alpha"], {"GREETING": "hi"})
        assert (d.public, d.idempotent, d.rate_limit, d.target, d.lease_owner) == (False, True, None, None, None)
        r = s.get(ReplicaRow, "r-0000000001")
        assert (r.state, r.handle, r.url, r.auth_secret) == ("READY", {"id": "r-0000000001", "pid": 4242},
                                                             "http://127.0.0.1:8123", "secret-1")
        assert s.get(PhotonRow, SHA).manifest["entry"] == "photon.py:TextTools"
        cloud = s.get(CloudRow, "alpha")
        assert (cloud.health, cloud.outage) == ("unhealthy", True)
        job = s.get(JobRow, "train")
        assert (job.command, job.spot, job.cancel_requested, job.result) == (["python", "train.py"], True, False,
                                                                              {"loss": 0.25})
        assert s.get(AttemptRow, "a-0000000001").exit_code == 0
        assert s.get(ModelVersionRow, ("tiny", 1)).metrics == {"accuracy": 0.9}
        assert s.get(SecretRow, ("team", "API_KEY")).ciphertext == "v1:opaque-ciphertext"
        assert (s.get(UserRow, "admin").admin, s.get(UserRow, "ann").admin) == (True, False)
        assert s.get(MembershipRow, ("ann", "team")).role == "editor"
        assert (s.get(TokenRow, "t-0000000001").user, s.get(TokenRow, "t-0000000001").project) == ("ann", "team")
        assert s.scalars(select(AuditRow.actor)).all() == ["ann"]
        # revision 0006 numbered it: a record from before anchoring, with a seq and no MAC
        assert s.execute(select(AuditRow.seq, AuditRow.key_id, AuditRow.mac)).all() == [(1, None, None)]
        assert [(e.id, e.new) for e in s.scalars(select(EventRow))] == [(1, "READY")]
        Store.record(s, "deployment", "web", "READY", "DEGRADED", "after the upgrade")
        s.add(AuditRow(at=1.0, actor="admin", method="POST", path="/", target="", status=200, prev_hash="", hash=""))
    with store.session() as s:  # new rows take the next ids (PostgreSQL's sequences were left right)
        assert s.scalars(select(EventRow.id).order_by(EventRow.id)).all() == [1, 2]
        assert s.scalars(select(AuditRow.id).order_by(AuditRow.id)).all() == [1, 2]
    store.close()


def test_a_database_older_still_is_converted_then_migrated_to_the_same_tables(db_url: str) -> None:
    engine = create_engine(with_driver(db_url))
    with engine.begin() as conn:  # one table of a version before projects, leases and handles
        conn.execute(text("CREATE TABLE replicas (id VARCHAR(40) PRIMARY KEY, deployment VARCHAR(100), "
                          "generation INTEGER, photon_sha256 VARCHAR(64), cloud VARCHAR(100), state VARCHAR(20), "
                          "reason TEXT, pid INTEGER, port INTEGER, workdir TEXT)"))
    engine.dispose()
    store = Store(db_url)
    assert "-replicas.pid" in store.schema_changes and "replicas.handle" in store.schema_changes
    # every table, column, type and index is there; what differs is only the constraints that old
    # table never had and ALTER cannot add on SQLite: NOT NULL, and its foreign key
    kinds = {(d[0][0] if isinstance(d, list) else d[0]) for d in store.schema_diff()}  # column diffs come in lists
    assert kinds <= {"modify_nullable", "add_fk"}, store.schema_diff()
    store.close()


def test_a_database_a_newer_version_migrated_is_refused_with_the_reason(db_url: str) -> None:
    Store(db_url).close()
    engine = create_engine(with_driver(db_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreUnusableError, match="revision 9999, which this version of Fermion does not know"):
        Store(db_url)


def test_servers_opening_a_new_postgresql_database_at_once_all_start(pg_url: str) -> None:
    """Processes starting together on one new database: the advisory lock lets one migrate while the
    others wait and find it done (without it, their CREATE TABLEs collide)."""
    go = time.time() + 3  # after their imports: they reach the database together
    code = ("import sys, time; from fermion.store import Store; time.sleep(max(0, float(sys.argv[2]) - time.time())); "
            "print(len(Store(sys.argv[1]).schema_changes))")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert sorted(int(out) > 0 for out, _ in outs) == [False, False, True]  # one of them migrated


def test_threads_opening_stores_at_once_do_not_share_alembic_state(pg_url: str, tmp_path: Path) -> None:
    """Alembic keeps its context in module globals: one migration at a time in a process, and the
    order of the locks (the database's, then the process's) never deadlocks."""
    urls = [pg_url, pg_url, f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"]
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(Store, urls))
    assert sorted(bool(s.schema_changes) for s in stores[:2]) == [False, True]
    assert all(s.schema_diff() == [] for s in stores)
    for s in stores:
        s.close()
