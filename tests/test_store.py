"""The state store creates its schema and brings an older database up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fermion.store import JobRow, Store


def test_an_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the jobs table as an earlier Fermion wrote it: no `spot`
        conn.execute("CREATE TABLE jobs (name VARCHAR(100) PRIMARY KEY, kind VARCHAR(20), command JSON, "
                     "resources JSON, clouds JSON, env JSON, workers INTEGER, max_restarts INTEGER, "
                     "status VARCHAR(20), reason TEXT, restarts INTEGER, next_start_at FLOAT, checkpoint_dir TEXT, "
                     "output_dir TEXT, spec JSON, result JSON, created_at FLOAT, updated_at FLOAT)")
        conn.execute("INSERT INTO jobs (name, kind, command, status) VALUES ('old', 'command', '[\"true\"]', 'SUCCEEDED')")
    store = Store(f"sqlite:///{db}")
    assert "jobs.spot" in store.added_columns
    with store.session() as s:
        old = s.get(JobRow, "old")
        assert old is not None and old.spot is False and old.status == "SUCCEEDED"
    assert Store(f"sqlite:///{db}").added_columns == []  # idempotent
