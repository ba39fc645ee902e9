"""A PostgreSQL database that lets clients in without a password is refused (issue 28, must-fix 8):
with `trust` on loopback any process on the machine, a workload too, could rewrite Fermion's state.
The suite's own PostgreSQL asks for a password (scram-sha-256), as the README's set-up does."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from fermion.testing import fermion_cmd
from tests.pg import PostgresServer

TRUSTED_ROLE = "trusting"


@pytest.fixture
def trusted_url(postgres: PostgresServer, pg_url: str) -> str:
    """``pg_url`` reached as a role that pg_hba.conf lets in without a password (as `trust` would
    let everyone), the lines for it removed afterwards."""
    hba = postgres.root / "data" / "pg_hba.conf"
    before = hba.read_text()
    postgres.execute(f"DO $$ BEGIN CREATE ROLE {TRUSTED_ROLE} LOGIN SUPERUSER; "
                     "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    hba.write_text(f"host all {TRUSTED_ROLE} 127.0.0.1/32 trust\n" + before)
    postgres.execute("SELECT pg_reload_conf()")
    try:
        yield make_url(pg_url).set(username=TRUSTED_ROLE, password=None).render_as_string(hide_password=False)
    finally:
        hba.write_text(before)
        postgres.execute("SELECT pg_reload_conf()")


def start(home: Path, db_url: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "FERMION_HOME": str(home), "FERMION_DB_URL": db_url, "COLUMNS": "1000"}
    env.pop("PGPASSWORD", None)
    return subprocess.Popen(fermion_cmd("server", "start", "--port", "0", "--port-file", str(home / "port"), *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_the_suites_postgresql_asks_for_a_password(postgres: PostgresServer, pg_url: str) -> None:
    url = make_url(pg_url)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database, password="",
                        passfile="/dev/null", connect_timeout=5).close()


def test_a_server_refuses_a_database_that_opens_without_a_password(tmp_path: Path, trusted_url: str) -> None:
    proc = start(tmp_path / "home", trusted_url)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err
    assert "lets anyone in without a password" in err and "scram-sha-256" in err and "--allow-passwordless-db" in err
    assert not (tmp_path / "home" / "port").exists()

    # the operator's explicit choice is honoured: the server starts on it
    proc = start(tmp_path / "home", trusted_url, "--allow-passwordless-db")
    try:
        port = tmp_path / "home" / "port"
        for _ in range(600):
            if port.exists() or proc.poll() is not None:
                break
            try:
                proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        assert port.exists(), proc.stderr.read() if proc.poll() is not None else "no port file"
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
