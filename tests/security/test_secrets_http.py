"""Secrets through a real server: the CLI, the API, the SQLite file's bytes, references, rotation."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fermion.security import SecretBox, env_purpose
from fermion.store import DeploymentRow, JobRow, Store, default_db_url
from fermion.testing import ServerProc, fermion_cmd, running_server, stop
from tests.support import TEXT_PHOTON
API_VALUE = "sk-live-9f8e7d6c5b4a"
PLAIN_VALUE = "visible-value-123"
JOB_VALUE = "job-token-value-42"
ENV = {"API_KEY": "secret:api-key", "PLAIN": PLAIN_VALUE}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("secrets")) as srv:
        yield srv


def db_bytes(home: Path) -> bytes:
    """The database as it is on disk, the write-ahead log included."""
    return b"".join(p.read_bytes() for p in sorted(home.glob("fermion.db*")))


def assert_not_at_rest(home: Path, *values: str) -> None:
    raw = db_bytes(home)
    assert raw, "the server has written no database"
    for value in values:
        assert value.encode() not in raw, f"{value!r} is in the database in plain text"


def test_secrets_set_by_the_cli_are_listed_without_values(server: ServerProc) -> None:
    server.cli("secret", "set", "api-key", "--value", "first-value-to-replace")
    out = server.cli("secret", "set", "api-key", "--value", API_VALUE)
    assert "replaced" in out.stdout
    piped = subprocess.run(fermion_cmd("secret", "set", "job-token"), input=JOB_VALUE + "\n", text=True,
                           capture_output=True, env=server.env, timeout=60)
    assert piped.returncode == 0, piped.stderr
    listing = server.cli("secret", "list", "--json").stdout + server.cli("secret", "list").stdout
    assert "api-key" in listing and "job-token" in listing
    with server.api() as api:
        r = api.get("/secrets")
        assert r.status_code == 200
        assert [s["name"] for s in r.json()] == ["api-key", "job-token"]
        assert set(r.json()[0]) == {"name", "project", "created_at", "updated_at"}
        for value in (API_VALUE, JOB_VALUE, "first-value"):
            assert value not in r.text and value not in listing
        assert api.put("/secrets/bad name!", json={"value": "x"}).status_code == 422  # the schema refuses the name
        assert api.put("/secrets/big", json={"value": "x" * (64 * 1024 + 1)}).status_code == 400
        assert api.put("/secrets/ok", json={"value": "x" * (64 * 1024)}).status_code == 200
        assert api.delete("/secrets/ok").status_code == 200
        assert api.get("/secrets", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert_not_at_rest(server.home, API_VALUE, JOB_VALUE, "first-value-to-replace")


def test_a_deployment_env_is_encrypted_at_rest_and_its_logs_are_redacted(server: ServerProc) -> None:
    server.cli("deploy", TEXT_PHOTON, "--name", "sec", "--public", "--no-wait",
               *(arg for k, v in ENV.items() for arg in ("--env", f"{k}={v}")))
    assert_not_at_rest(server.home, API_VALUE, PLAIN_VALUE, "secret:api-key")
    # a READY replica: the controller copies a failed replica's last log line into its reason
    replica = server.wait_for(lambda api: next((r for r in api.get("/deployments/sec").json()["replica_list"]
                                                if r["state"] == "READY"), None), timeout=90)
    # what a careless photon would print: the resolved secret and a plain env value
    with (server.workdir(replica["cloud"], replica["id"]) / "replica.log").open("a") as f:
        f.write(f"debug: API_KEY={API_VALUE} PLAIN={PLAIN_VALUE}\n")
    with server.api() as api:
        logs = api.get("/deployments/sec/logs", params={"tail": 1000}).json()[replica["id"]]
    assert "debug: API_KEY=*** PLAIN=***" in logs
    assert API_VALUE not in logs and PLAIN_VALUE not in logs


def test_references_to_missing_secrets_are_refused(server: ServerProc) -> None:
    with server.api() as api:
        photon = api.get("/deployments/sec").json()["photon"]
        r = api.put("/deployments/other", json={"photon": photon, "replicas": 0, "env": {"X": "secret:nope"}})
        assert r.status_code == 400 and "'nope'" in r.json()["error"]["message"]
        assert api.get("/deployments/other").status_code == 404
        r = api.post("/jobs", json={"name": "j", "command": [sys.executable, "-c", "0"], "env": {"X": "secret:gone"}})
        assert r.status_code == 400 and "'gone'" in r.json()["error"]["message"]


def test_a_referenced_secret_cannot_be_deleted(server: ServerProc) -> None:
    out = server.cli("secret", "delete", "api-key", check=False)
    assert out.returncode == 4 and "deployment sec" in out.stderr
    with server.api() as api:
        r = api.delete("/secrets/api-key")
        assert r.status_code == 409 and "deployment sec" in r.json()["error"]["message"]
        api.put("/secrets/unused", json={"value": "whatever"})
    assert "deleted" in server.cli("secret", "delete", "unused").stdout
    with server.api() as api:
        assert api.delete("/secrets/unused").status_code == 404


def test_job_env_is_encrypted_and_job_logs_are_redacted(server: ServerProc) -> None:
    # the command builds the values so that they are not in the stored command line either
    code = "print('job-token-' + 'value-42', 'plain-job-' + 'value-7')"
    with server.api() as api:
        r = api.post("/jobs", json={"name": "redact", "command": [sys.executable, "-c", code],
                                    "env": {"TOKEN": "secret:job-token", "PLAIN": "plain-job-value-7"}})
        assert r.status_code == 201, r.text
    server.wait_for(lambda api: api.get("/jobs/redact").json()["status"] in ("SUCCEEDED", "FAILED"), timeout=90)
    with server.api() as api:
        text = "\n".join(api.get("/jobs/redact/logs").json().values())
    assert "*** ***" in text and JOB_VALUE not in text and "plain-job-value-7" not in text
    assert_not_at_rest(server.home, JOB_VALUE, "plain-job-value-7", "secret:job-token")


def test_rotation_keeps_every_value_readable(server: ServerProc) -> None:
    key = server.home / "master.key"
    before = key.read_text()
    out = server.cli("secret", "rotate")
    assert "rotated" in out.stdout
    assert key.read_text() != before and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (server.home / "master.key.old").exists()
    with server.api() as api:
        photon = api.get("/deployments/sec").json()["photon"]
        same = api.put("/deployments/sec", json={"photon": photon, "env": ENV, "public": True}).json()
        assert same["generation"] == 1  # the decrypted env is unchanged, so nothing rolls out
        assert api.put("/deployments/sec", json={"photon": photon, "replicas": 0, "public": True,
                                                  "env": {**ENV, "PLAIN": PLAIN_VALUE + "-v2"}}).json()["generation"] == 2
    stop(server.proc)
    assert_not_at_rest(server.home, API_VALUE, PLAIN_VALUE, JOB_VALUE)
    store, box = Store(default_db_url(server.home)), SecretBox(server.home, environ={})
    try:
        with store.session() as s:
            assert box.open_env(s, s.get(DeploymentRow, "sec").env, env_purpose("deployment", "sec")) == {
                "API_KEY": API_VALUE, "PLAIN": PLAIN_VALUE + "-v2"}
            assert box.open_env(s, s.get(JobRow, "redact").env, env_purpose("job", "redact")) == {
                "TOKEN": JOB_VALUE, "PLAIN": "plain-job-value-7"}
    finally:
        store.close()
