"""The audit log through a real server: what is recorded, the CLI, concurrency, and tampering."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from fermion.api._audit import GENESIS, append, target_of, verify_chain
from fermion.store import Store
from fermion.testing import ServerProc, running_server
SECRET_VALUE = "sk-audit-7c1e5b9d3f"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("audit")) as srv:
        yield srv


def records(server: ServerProc, **params: object) -> list[dict]:
    with server.api() as api:
        r = api.get("/audit", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return r.json()


def wait_records(server: ServerProc, count: int, **params: object) -> list[dict]:
    """Records are written just after the answer goes out: poll until ``count`` match."""
    return server.wait_for(lambda api: (rows := api.get("/audit", params={"limit": 1000, **params}).json())
                           and len(rows) >= count and rows, timeout=30)


def db_rows(home: Path, sql: str = "SELECT * FROM audit ORDER BY id") -> list[tuple]:
    with sqlite3.connect(home / "fermion.db", timeout=30) as conn:
        return conn.execute(sql).fetchall()


def tamper(home: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(home / "fermion.db", timeout=30)
    try:
        with conn:
            conn.execute(sql, args)
    finally:
        conn.close()


def verify(server: ServerProc) -> dict:
    with server.api() as api:
        return api.get("/audit/verify").json()


def test_mutating_calls_are_recorded_without_bodies(server: ServerProc) -> None:
    with server.api() as api:
        assert api.put("/secrets/audit-key", json={"value": SECRET_VALUE}).status_code == 200
        assert api.delete("/secrets/audit-key").status_code == 200
    assert httpx.post(f"{server.url}/api/v1/secrets/rotate", timeout=30).status_code == 401
    assert httpx.post(f"{server.url}/api/v1/secrets/rotate", headers={"Authorization": "Bearer fma-wrong"},
                      timeout=30).status_code == 401

    rows = wait_records(server, 4)
    # each record is written after its answer, so two quick calls may land in either order: compare by time
    assert [(r["actor"], r["method"], r["target"], r["status"], r["client"])
            for r in sorted(rows, key=lambda r: r["at"])] == [
        ("admin", "PUT", "secret/audit-key", 200, "127.0.0.1"),
        ("admin", "DELETE", "secret/audit-key", 200, "127.0.0.1"),
        ("anonymous", "POST", "secret/rotate", 401, "127.0.0.1"),
        ("unknown", "POST", "secret/rotate", 401, "127.0.0.1"),
    ]
    assert {r["path"] for r in rows} == {"/api/v1/secrets/audit-key", "/api/v1/secrets/rotate"}
    assert rows[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))
    assert all(abs(r["at"] - datetime.now().timestamp()) < 120 for r in rows)

    cli_out = server.cli("audit", "--json").stdout + server.cli("audit").stdout
    with server.api() as api:
        api_out = api.get("/audit").text
    for text in (cli_out, api_out, json.dumps(db_rows(server.home))):
        assert SECRET_VALUE not in text
    raw = b"".join(p.read_bytes() for p in sorted(server.home.glob("fermion.db*")))
    assert SECRET_VALUE.encode() not in raw
    assert verify(server) == {"ok": True, "records": 4, "first_bad": None}


def test_reads_are_not_recorded(server: ServerProc) -> None:
    before = len(records(server))
    with server.api() as api:
        assert api.get("/secrets").status_code == 200
        assert api.get("/audit/verify").status_code == 200
        assert api.get("/clouds").status_code == 200
        assert api.delete("/secrets/no-such-secret").status_code == 404  # a marker: recorded after the GETs
    rows = wait_records(server, before + 1)
    assert len(rows) == before + 1
    assert (rows[-1]["method"], rows[-1]["target"], rows[-1]["status"]) == ("DELETE", "secret/no-such-secret", 404)
    assert all(r["method"] != "GET" for r in rows)
    assert not db_rows(server.home, "SELECT id FROM audit WHERE method = 'GET'")


def test_cli_lists_and_filters(server: ServerProc) -> None:
    def cli_json(*args: str) -> list[dict]:
        return json.loads(server.cli("audit", "--json", *args).stdout)

    by_target = cli_json("--target", "secret/audit-key")
    assert [r["method"] for r in by_target] == ["PUT", "DELETE"]
    assert {r["actor"] for r in cli_json("--actor", "anonymous")} == {"anonymous"}
    deletes = cli_json("--method", "delete", "--actor", "admin")
    assert [r["target"] for r in deletes] == ["secret/audit-key", "secret/no-such-secret"]
    assert len(cli_json("--since", "3600")) == len(records(server))
    future = (datetime.now() + timedelta(hours=1)).isoformat(timespec="seconds")
    assert cli_json("--since", future) == []
    newest = cli_json("--limit", "1")
    assert len(newest) == 1 and newest[0]["target"] == "secret/no-such-secret"

    table = server.cli("audit", "--actor", "admin").stdout
    assert "secret/audit-key" in table and "admin" in table and "127.0.0.1" in table
    bad = server.cli("audit", "--since", "yesterday", check=False)
    assert bad.returncode != 0 and "--since" in bad.stderr
    assert "intact" in server.cli("audit", "--verify").stdout
    with server.api() as api:
        assert api.get("/audit", params={"limit": 1001}).status_code in (400, 422)
    assert httpx.get(f"{server.url}/api/v1/audit", timeout=30).status_code == 401
    assert httpx.get(f"{server.url}/api/v1/audit/verify", timeout=30).status_code == 401


def test_concurrent_calls_form_one_chain(server: ServerProc) -> None:
    before = len(records(server))
    errors: list[str] = []

    def worker(i: int) -> None:
        with server.api() as api:
            for j in range(5):
                r = api.put(f"/secrets/conc-{i}-{j}", json={"value": "v"})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    rows = wait_records(server, before + 40)
    assert len(rows) == before + 40
    assert {r["target"] for r in rows[before:]} == {f"secret/conc-{i}-{j}" for i in range(8) for j in range(5)}
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))
    assert verify(server) == {"ok": True, "records": before + 40, "first_bad": None}


def test_tampering_is_detected(server: ServerProc) -> None:
    ids = [row[0] for row in db_rows(server.home, "SELECT id FROM audit ORDER BY id")]
    changed, removed = ids[3], ids[10]
    [(status,)] = db_rows(server.home, f"SELECT status FROM audit WHERE id = {changed}")

    tamper(server.home, "UPDATE audit SET status = ? WHERE id = ?", status + 1, changed)
    assert verify(server) == {"ok": False, "records": len(ids), "first_bad": changed}
    out = server.cli("audit", "--verify", check=False)
    assert out.returncode == 1 and f"record {changed}" in out.stderr
    tamper(server.home, "UPDATE audit SET status = ? WHERE id = ?", status, changed)
    assert verify(server)["ok"] is True

    tamper(server.home, "DELETE FROM audit WHERE id = ?", removed)
    result = verify(server)
    assert result == {"ok": False, "records": len(ids) - 1, "first_bad": ids[11]}
    assert json.loads(server.cli("audit", "--verify", "--json", check=False).stdout)["first_bad"] == ids[11]


def test_verify_chain_on_a_store(db_url: str) -> None:
    store = Store(db_url)
    try:
        for status in (200, 201, 404):
            append(store, at=1.5, authorization="", method="POST", path="/api/v1/jobs/j1/cancel", client="::1",
                   status=status)
        with store.session() as s:
            assert verify_chain(s) == (True, None)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE audit SET actor = 'admin' WHERE id = 2")
        with store.session() as s:
            assert verify_chain(s) == (False, 2)
    finally:
        store.close()
    assert target_of("/api/v1/jobs/j1/cancel") == "job/j1"
    assert target_of("/api/v1/photons") == "photon"
    assert target_of("/api/v1/deployments/web") == "deployment/web"
