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
from tests.pg import SUPERUSER, PostgresServer, _free_port

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


@pytest.fixture
def superuser_trusted(postgres: PostgresServer, pg_url: str) -> str:
    """``pg_url`` as a role with a password, on a server that lets ``postgres`` in without one."""
    hba = postgres.root / "data" / "pg_hba.conf"
    before = hba.read_text()
    postgres.execute("DO $$ BEGIN CREATE ROLE app LOGIN PASSWORD 'app-password-1'; "
                     "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    hba.write_text(f"host all {SUPERUSER} 127.0.0.1/32 trust\n" + before)
    postgres.execute("SELECT pg_reload_conf()")
    try:
        yield make_url(pg_url).set(username="app", password="app-password-1").render_as_string(hide_password=False)
    finally:
        hba.write_text(before)
        postgres.execute("SELECT pg_reload_conf()")


def test_every_spelling_of_the_address_and_a_trusted_superuser_are_caught(trusted_url: str) -> None:
    from fermion.cli._server import opens_without_password

    url = make_url(trusted_url)
    assert opens_without_password(trusted_url)
    for spelled in (f"postgresql://{url.username}@/{url.database}?host={url.host}&port={url.port}",
                    f"postgresql://{url.username}@/{url.database}?host={url.host}:{url.port}",
                    f"postgresql://{url.username}@/{url.database}?hostaddr={url.host}&port={url.port}",
                    f"postgresql://{url.username}:@{url.host}:{url.port}/{url.database}"):
        assert opens_without_password(spelled), spelled


def test_a_password_role_on_a_server_that_trusts_its_superuser_is_refused(superuser_trusted: str) -> None:
    from fermion.cli._server import opens_without_password

    assert opens_without_password(superuser_trusted)  # a workload would connect as postgres


def test_a_database_that_is_down_is_left_to_the_start_to_report(postgres: PostgresServer) -> None:
    from fermion.cli._server import opens_without_password

    assert not opens_without_password(f"postgresql://x@127.0.0.1:{_free_port()}/x")


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
