"""The state store, on SQLite and on a real PostgreSQL server: rows round-trip the same way on both,
leases behave the same, and an older database is brought up to date."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

from fermion.store import (
    AttemptRow,
    CloudRow,
    DeploymentRow,
    EventRow,
    JobRow,
    PhotonRow,
    ReplicaRow,
    Store,
    storable,
    with_driver,
)


def run_sql(url: str, *statements: str) -> None:
    """Statements on a plain connection: the database as an earlier Fermion left it."""
    engine = create_engine(with_driver(url))
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def test_rows_round_trip_alike_on_both_databases(db_url: str) -> None:
    store = Store(db_url)
    with store.session() as s:
        s.add(PhotonRow(sha256="a" * 64, name="p" * 200, archive_path="/x", manifest={"nested": {"list": [1, 2.5, None]}}))
        s.add(CloudRow(name="alpha", kind="local", config={}, outage=True))
        s.flush()
        s.add(DeploymentRow(name="web", photon_sha256="a" * 64, clouds=["alpha"], env={"K": "v"}, public=True))
        s.flush()
        s.add(ReplicaRow(id="r-1", deployment="web", generation=1, photon_sha256="a" * 64, handle=None))
        s.add(ReplicaRow(id="r-2", deployment="web", generation=1, photon_sha256="a" * 64, handle={"id": "r-2", "pid": 7}))
    with store.session() as s:
        photon, d, cloud = s.get(PhotonRow, "a" * 64), s.get(DeploymentRow, "web"), s.get(CloudRow, "alpha")
        assert photon.manifest == {"nested": {"list": [1, 2.5, None]}} and len(photon.name) == 200
        assert (d.public, d.idempotent, d.rate_limit, d.target, d.clouds, d.env) == (True, True, None, None, ["alpha"], {"K": "v"})
        assert cloud.outage is True and isinstance(cloud.outage, bool)
        # none_as_null: a handle of None is SQL NULL (not JSON 'null'), so IS NULL finds it on both
        assert s.scalars(ReplicaRow.__table__.select().with_only_columns(ReplicaRow.id)
                         .where(ReplicaRow.handle.is_(None))).all() == ["r-1"]
        assert s.get(ReplicaRow, "r-2").handle == {"id": "r-2", "pid": 7}
        # booleans filter the same way (SQLite stores 1/0, PostgreSQL a BOOLEAN)
        assert s.query(DeploymentRow).filter(DeploymentRow.public.is_(True)).count() == 1
    store.close()


def test_leases_are_exclusive_until_they_expire_or_are_released(db_url: str) -> None:
    store = Store(db_url)
    with store.session() as s:
        s.add(JobRow(name="j", command=["true"]))
    assert store.claim(JobRow, "a", 30, JobRow.name == "j") == 1
    assert store.claim(JobRow, "b", 30, JobRow.name == "j") == 0  # a holds it
    assert store.claim(JobRow, "a", 30, JobRow.name == "j") == 1  # its owner extends it
    with store.session() as s:
        assert Store.renew(s, JobRow, "j", "b", 30, JobRow.status) is None
        assert tuple(Store.renew(s, JobRow, "j", "a", 30, JobRow.status)) == ("j", "PENDING")
    store.release_all(JobRow, "a")
    assert store.claim(JobRow, "b", 0.01, JobRow.name == "j") == 1
    time.sleep(0.05)
    assert store.claim(JobRow, "c", 30, JobRow.name == "j") == 1  # b's lease expired: free
    with store.session() as s:
        Store.record(s, "job", "j", "PENDING", "RUNNING", "claimed")
    with store.session() as s:
        assert [(e.kind, e.new) for e in s.query(EventRow).all()] == [("job", "RUNNING")]
    store.close()


def test_text_postgresql_cannot_hold_is_stored_alike_on_both_databases(db_url: str) -> None:
    """A NUL (PostgreSQL's text refuses it) and a lone surrogate (not UTF-8; PostgreSQL's json refuses
    its escape) become U+FFFD on both databases: a log line with a NUL is a reason, not a failing write."""
    assert storable("a\x00b\ud800") == "a\ufffdb\ufffd" and storable("ünïcode ✓") == "ünïcode ✓"
    store = Store(db_url)
    with store.session() as s:
        s.add(JobRow(name="j", command=["echo", "a\x00b", "c\ud800"], reason="exit 3: boom\x00here", env={"K": "\x00"}))
    with store.session() as s:
        job = s.get(JobRow, "j")
        assert job.reason == "exit 3: boom\ufffdhere"
        assert job.command == ["echo", "a\x00b", "c\ufffd"] and job.env == {"K": "\x00"}  # in JSON a NUL is an escape
        assert s.get(JobRow, "j\x00") is None  # a key with a NUL finds nothing, on both
    store.close()


def test_a_driverless_postgresql_url_uses_psycopg(pg_url: str) -> None:
    assert with_driver(pg_url).startswith("postgresql+psycopg://")
    assert with_driver(pg_url.replace("postgresql://", "postgres://", 1)) == with_driver(pg_url)
    assert with_driver("sqlite:////x.db") == "sqlite:////x.db"
    assert with_driver("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"  # an explicit driver stays
    store = Store(pg_url.replace("postgresql://", "postgres://", 1))
    assert store.engine.dialect.driver == "psycopg"
    store.close()


def test_an_older_database_gains_the_new_columns(db_url: str) -> None:
    # the jobs table as an earlier Fermion wrote it: no `spot`, and tokens from before users (`user`
    # is a reserved word in PostgreSQL, so the added column must be quoted)
    run_sql(db_url,
            "CREATE TABLE jobs (name VARCHAR(100) PRIMARY KEY, kind VARCHAR(20), command JSON, "
            "resources JSON, clouds JSON, env JSON, workers INTEGER, max_restarts INTEGER, "
            "status VARCHAR(20), reason TEXT, restarts INTEGER, next_start_at FLOAT, checkpoint_dir TEXT, "
            "output_dir TEXT, spec JSON, result JSON, created_at FLOAT, updated_at FLOAT)",
            "INSERT INTO jobs (name, kind, command, status) VALUES ('old', 'command', '[\"true\"]', 'SUCCEEDED')",
            "CREATE TABLE tokens (id VARCHAR(40) PRIMARY KEY, name VARCHAR(100), token_hash VARCHAR(64) UNIQUE, "
            "role VARCHAR(20), created_at FLOAT)",
            "INSERT INTO tokens (id, name, token_hash, role) VALUES ('t-1', 'ci', 'h', 'admin')")
    store = Store(db_url)
    assert {"jobs.spot", "jobs.project", "tokens.user"} <= set(store.schema_changes)
    with store.session() as s:
        old = s.get(JobRow, "old")
        assert old is not None and old.spot is False and old.status == "SUCCEEDED" and old.project == "default"
        assert old.command == ["true"]
    with store.engine.connect() as conn:
        assert conn.execute(text('SELECT "user" FROM tokens')).scalar_one() == "admin"
    store.close()
    again = Store(db_url)
    assert again.schema_changes == []  # idempotent
    again.close()


def test_columns_the_models_retired_are_dropped_and_pids_become_handles(db_url: str) -> None:
    # replicas and attempts as the version before backends' handles kept them
    run_sql(db_url,
            "CREATE TABLE replicas (id VARCHAR(40) PRIMARY KEY, deployment VARCHAR(100), generation INTEGER, "
            "photon_sha256 VARCHAR(64), cloud VARCHAR(100), state VARCHAR(20), reason TEXT, pid INTEGER, "
            "port INTEGER, workdir TEXT, resources JSON, failed_probes INTEGER, auth_secret VARCHAR(100), "
            "created_at FLOAT, state_since FLOAT)",
            "INSERT INTO replicas (id, deployment, generation, photon_sha256, cloud, state, pid, port, workdir) "
            "VALUES ('r-1', 'web', 1, 'x', 'local', 'READY', 4242, 8123, '/w/local/r-1')",
            "CREATE TABLE attempts (id VARCHAR(40) PRIMARY KEY, job VARCHAR(100), number INTEGER, "
            "cloud VARCHAR(100), state VARCHAR(20), reason TEXT, pid INTEGER, workdir TEXT NOT NULL, "
            "exit_code INTEGER, resources JSON, spot BOOLEAN, started_at FLOAT, ended_at FLOAT)")
    store = Store(db_url)
    assert {"-replicas.pid", "-replicas.port", "-replicas.workdir", "-attempts.workdir"} <= set(store.schema_changes)
    with store.session() as s:  # the running replica is re-adopted from its new handle, and rows go in
        old = s.get(ReplicaRow, "r-1")
        assert old is not None and old.handle == {"id": "r-1", "pid": 4242} and old.url == "http://127.0.0.1:8123"
        s.add(JobRow(name="j", command=["true"]))
        s.flush()
        s.add(AttemptRow(job="j", number=1, cloud="local", handle={"id": "a-1"}))
    with store.session() as s:
        assert s.query(AttemptRow).one().handle == {"id": "a-1"}
    store.close()


def test_a_string_too_long_for_its_column_is_refused_by_postgresql_only(db_url: str) -> None:
    """Why the API checks every length itself: SQLite keeps what PostgreSQL refuses (a 500 if unchecked)."""
    from sqlalchemy.exc import DataError

    store = Store(db_url)
    row = PhotonRow(sha256="b" * 64, name="p" * 201, archive_path="/x", manifest={})
    if db_url.startswith("sqlite"):
        with store.session() as s:
            s.add(row)
    else:
        with pytest.raises(DataError, match="too long"), store.session() as s:
            s.add(row)
    store.close()
