"""The platform on a real PostgreSQL server: a deployment served through the gateway and re-adopted
across a restart, and inputs that SQLite would keep but PostgreSQL refuses (too long, a NUL, a lone
surrogate) answered with a 4xx that says why, never a 500."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fermion.store import JobRow, ReplicaRow, Store
from fermion.testing import ServerProc, kill_workloads, start_server, stop, web
from tests.pg import PostgresServer
from tests.support import TEXT_PHOTON

CLOUDS = "clouds:\n  - name: alpha\n    capacity: {cpus: 4, memory_gb: 8}\n"


def replica_pids(db_url: str) -> dict[str, int]:
    """Live replica id -> pid, read from the backend's handles in the database."""
    store = Store(db_url)
    try:
        with store.session() as s:
            return {r.id: r.handle["pid"] for r in s.query(ReplicaRow).filter(ReplicaRow.state == "READY")}
    finally:
        store.close()


def test_a_deployment_on_postgresql_serves_and_is_readopted_after_a_restart(tmp_path: Path, pg_url: str) -> None:
    home, workloads = tmp_path / "home", tmp_path / "workloads"
    env = {"FERMION_WORKLOADS": str(workloads)}
    server = start_server(home, CLOUDS, db_url=pg_url, env=env)
    try:
        assert "READY" in server.cli("deploy", TEXT_PHOTON, "--name", "text", "--public").stdout
        assert not (home / "fermion.db").exists()  # the state is in PostgreSQL, not the home
        before = replica_pids(pg_url)
        assert len(before) == 1
        assert web.post(f"{server.url}/d/text/upper", json={"texts": ["on postgresql"]}).json() == ["ON POSTGRESQL"]
        assert stop(server.proc) == 0
        server = start_server(home, CLOUDS, db_url=pg_url, env=env)
        d = server.wait_for(lambda api: (d := api.get("/deployments/text").json())["status"] == "READY" and d)
        assert [r["id"] for r in d["replica_list"]] == list(before)  # re-adopted, not replaced
        assert replica_pids(pg_url) == before  # the same process
        assert web.post(f"{server.url}/d/text/upper", json={"texts": ["still here"]}).json() == ["STILL HERE"]
    finally:
        stop(server.proc)
        kill_workloads(workloads)


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, str]]:
    """One server on its own PostgreSQL database for the input checks below."""
    url = postgres.create_database()
    root = tmp_path_factory.mktemp("pg-api")
    srv = start_server(root / "home", CLOUDS, db_url=url, env={"FERMION_WORKLOADS": str(root / "workloads")})
    try:
        yield srv, url
    finally:
        stop(srv.proc)
        kill_workloads(root / "workloads")
        postgres.drop_database(url)


def photon_archive(name: str, sha256: str) -> bytes:
    """A .photon archive whose manifest says ``name`` and ``sha256`` (the checks read the manifest first)."""
    source = b"from fermion import Photon\n\nclass P(Photon):\n    pass\n"
    manifest = {"name": name, "entry": "p.py:P", "files": {"p.py": hashlib.sha256(source).hexdigest()}, "sha256": sha256}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("src/p.py", source)
    return out.getvalue()


# (method, path, request arguments, status, what the message says): each string column with a
# length, reached through the API with one character more than it holds, and keys with a NUL
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("POST", "/photons", {"files": {"file": ("p.photon", photon_archive("n" * 201, "0" * 64))}}, 400,
     "name must be 1 to 200 characters"),  # photons.name
    ("POST", "/photons", {"files": {"file": ("p.photon", photon_archive("p", "0" * 65))}}, 400,
     "sha256 must be 64 lowercase hex digits"),  # photons.sha256
    ("PUT", "/deployments/web", {"json": {"photon": "a" * 65}}, 422, "photon: String should match pattern"),
    ("PUT", f"/deployments/{'d' * 101}", {"json": {"photon": "a" * 64}}, 400, "invalid deployment name"),
    ("POST", "/tokens", {"json": {"name": "t" * 101}}, 422, "name: String should have at most 100 characters"),
    ("POST", "/tokens", {"json": {"name": "a\x00b"}}, 422, "name: String should match pattern"),
    ("POST", "/users", {"json": {"name": "u" * 101}}, 422, "name: String should match pattern"),
    ("POST", "/projects", {"json": {"name": "p" * 101}}, 422, "name: String should match pattern"),
    ("PUT", "/projects/default/members/admin", {"json": {"role": "r" * 21}}, 422, "role: Input should be"),
    ("POST", "/jobs", {"json": {"name": "j" * 101, "command": ["true"]}}, 422, "name: String should match pattern"),
    ("PUT", f"/secrets/{'S' * 129}", {"json": {"value": "v"}}, 422, "String should match pattern"),
    ("POST", "/models/m:1/promote", {"json": {"stage": "s" * 21}}, 404, "no model version 'm:1'"),
    ("GET", "/deployments/a%00b", {}, 404, "no deployment named 'a\\x00b'"),
    ("POST", "/deployments/a%00b/scale", {"json": {"replicas": 1}}, 404, "no deployment named"),
    ("DELETE", "/tokens/t%00", {}, 404, "no token"),
    ("GET", "/jobs/j%00", {}, 404, "no job named"),
    ("GET", "/projects/p%00", {}, 404, "no project named"),
    ("POST", "/jobs", {"json": {"name": "nul", "command": ["true"], "project": "a\x00b"}}, 404, "no project named"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "message"), CASES,
                         ids=[f"{c[0]} {c[1][:30]} {c[4][:30]}" for c in CASES])
def test_what_postgresql_cannot_store_is_a_4xx_with_the_reason(server: tuple[ServerProc, str], method: str, path: str,
                                                               kwargs: dict[str, Any], status: int, message: str) -> None:
    srv, _ = server
    with srv.api() as api:
        r = api.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"], r.text
    assert "photon-store" not in r.text  # an upload's temporary path is the server's business


def test_lists_filtered_by_a_key_with_a_nul_are_empty(server: tuple[ServerProc, str]) -> None:
    srv, _ = server
    with srv.api() as api:
        for path, params in [("/events", {"object_id": "a\x00b"}), ("/replicas", {"deployment": "a\x00b"}),
                             ("/audit", {"actor": "a\x00b"}), ("/tokens", {"user": "a\x00b"})]:
            r = api.get(path, params=params)
            assert (r.status_code, r.json()) == (200, []), (path, r.text)
        # calls whose paths held a NUL were audited, and the chain still verifies
        assert api.get("/audit/verify").json()["ok"] is True


def test_text_postgresql_cannot_store_is_kept_with_a_replacement_character(server: tuple[ServerProc, str]) -> None:
    """A job's command with a lone surrogate (JSON PostgreSQL refuses), and its output with a NUL
    becoming its reason (text PostgreSQL refuses): stored with U+FFFD, and the job ends."""
    srv, url = server
    with srv.api() as api:
        body = '{"name": "odd", "command": ["sh", "-c", "printf \'boom\\\\000here\\\\n\' >&2; exit 3", "\\ud800"], ' \
               '"max_restarts": 0}'
        r = api.post("/jobs", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 201, r.text
        job = srv.wait_for(lambda a: (j := a.get("/jobs/odd").json())["status"] in ("FAILED", "SUCCEEDED") and j,
                           timeout=60)
    assert job["status"] == "FAILED" and job["command"][-1] == "\ufffd"
    assert "exit 3: boom\ufffdhere" in job["reason"]  # the output's line, as stored
    store = Store(url)
    try:
        with store.session() as s:
            assert s.get(JobRow, "odd").reason == job["reason"]
    finally:
        store.close()
