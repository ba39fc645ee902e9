"""The state store creates its schema and brings an older database up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fermion.store import AttemptRow, JobRow, ReplicaRow, Store


def test_an_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the jobs table as an earlier Fermion wrote it: no `spot`
        conn.execute("CREATE TABLE jobs (name VARCHAR(100) PRIMARY KEY, kind VARCHAR(20), command JSON, "
                     "resources JSON, clouds JSON, env JSON, workers INTEGER, max_restarts INTEGER, "
                     "status VARCHAR(20), reason TEXT, restarts INTEGER, next_start_at FLOAT, checkpoint_dir TEXT, "
                     "output_dir TEXT, spec JSON, result JSON, created_at FLOAT, updated_at FLOAT)")
        conn.execute("INSERT INTO jobs (name, kind, command, status) VALUES ('old', 'command', '[\"true\"]', 'SUCCEEDED')")
    store = Store(f"sqlite:///{db}")
    assert "jobs.spot" in store.schema_changes
    with store.session() as s:
        old = s.get(JobRow, "old")
        assert old is not None and old.spot is False and old.status == "SUCCEEDED"
    assert Store(f"sqlite:///{db}").schema_changes == []  # idempotent


def test_columns_the_models_retired_are_dropped_and_pids_become_handles(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # replicas and attempts as the version before backends' handles kept them
        conn.execute("CREATE TABLE replicas (id VARCHAR(40) PRIMARY KEY, deployment VARCHAR(100), generation INTEGER, "
                     "photon_sha256 VARCHAR(64), cloud VARCHAR(100), state VARCHAR(20), reason TEXT, pid INTEGER, "
                     "port INTEGER, workdir TEXT, resources JSON, failed_probes INTEGER, auth_secret VARCHAR(100), "
                     "created_at FLOAT, state_since FLOAT)")
        conn.execute("INSERT INTO replicas (id, deployment, generation, photon_sha256, cloud, state, pid, port, workdir) "
                     "VALUES ('r-1', 'web', 1, 'x', 'local', 'READY', 4242, 8123, '/w/local/r-1')")
        conn.execute("CREATE TABLE attempts (id VARCHAR(40) PRIMARY KEY, job VARCHAR(100), number INTEGER, "
                     "cloud VARCHAR(100), state VARCHAR(20), reason TEXT, pid INTEGER, workdir TEXT NOT NULL, "
                     "exit_code INTEGER, resources JSON, spot BOOLEAN, started_at FLOAT, ended_at FLOAT)")
    store = Store(f"sqlite:///{db}")
    assert {"-replicas.pid", "-replicas.port", "-replicas.workdir", "-attempts.workdir"} <= set(store.schema_changes)
    with store.session() as s:  # the running replica is re-adopted from its new handle, and rows go in
        old = s.get(ReplicaRow, "r-1")
        assert old is not None and old.handle == {"id": "r-1", "pid": 4242} and old.url == "http://127.0.0.1:8123"
        s.add(JobRow(name="j", command=["true"]))
        s.flush()
        s.add(AttemptRow(job="j", number=1, cloud="local", handle={"id": "a-1"}))
    with store.session() as s:
        assert s.query(AttemptRow).one().handle == {"id": "a-1"}
