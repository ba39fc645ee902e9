"""The audit log through a real server: what is recorded, the CLI, concurrency, and tampering by
someone who can write the database (but holds neither the master key nor the server's home)."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from fermion._files import write_atomic
from fermion.api._audit import GENESIS, append, record_hash, target_of, verify_chain
from fermion.errors import UserInputError
from fermion.sdk._access import Audit
from fermion.security import HEAD_FILE, AuditHead, SecretBox
from fermion.store import AuditRow, Store, with_driver
from fermion.testing import ServerProc, running_server, web
from tests.test_migrations import load_previous_version

SECRET_VALUE = "sk-audit-7c1e5b9d3f"
MASTER_KEY = base64.b64encode(b"k" * 32).decode()
COLUMNS = ("id", "seq", "at", "actor", "method", "path", "target", "client", "status", "prev_hash", "hash",
           "key_id", "mac")


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


def db_rows(home: Path, sql: str = "SELECT * FROM audit ORDER BY id", *args: object) -> list[tuple]:
    conn = sqlite3.connect(home / "fermion.db", timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def tamper(home: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(home / "fermion.db", timeout=30)
    try:
        with conn:
            conn.execute(sql, args)
    finally:
        conn.close()


def rechain(home: Path) -> None:
    """What an attacker with the database alone can do: recompute every hash, in seq order."""
    rows = db_rows(home, f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY seq")
    prev = GENESIS
    for values in rows:
        row = AuditRow(**dict(zip(COLUMNS, values, strict=True)))
        digest = record_hash(prev, row, legacy=row.mac is None)
        tamper(home, "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", prev, digest, row.id)
        prev = digest


@contextmanager
def tampered(home: Path) -> Iterator[None]:
    """Whatever the block does to the audit table and the server's head file is undone after it."""
    saved = db_rows(home, f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY id")
    head = (home / HEAD_FILE).read_bytes()
    try:
        yield
    finally:
        tamper(home, "DELETE FROM audit")
        conn = sqlite3.connect(home / "fermion.db", timeout=30)
        try:
            with conn:
                conn.executemany(f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                 saved)
        finally:
            conn.close()
        write_atomic(home / HEAD_FILE, head, 0o600)


def verify(server: ServerProc, **params: object) -> dict:
    with server.api() as api:
        r = api.get("/audit/verify", params=params)
        assert r.status_code == 200, r.text
        return r.json()


def said(cli: subprocess.CompletedProcess[str]) -> str:
    """A command's stderr with Rich's line wrapping undone."""
    return " ".join(cli.stderr.split())


def last_seq(server: ServerProc) -> int:
    return db_rows(server.home, "SELECT max(seq) FROM audit")[0][0]


def test_mutating_calls_are_recorded_without_bodies(server: ServerProc) -> None:
    with server.api() as api:
        assert api.put("/secrets/audit-key", json={"value": SECRET_VALUE}).status_code == 200
        assert api.delete("/secrets/audit-key").status_code == 200
    assert web.post(f"{server.url}/api/v1/secrets/rotate", timeout=30).status_code == 401
    assert web.post(f"{server.url}/api/v1/secrets/rotate", headers={"Authorization": "Bearer fma-wrong"},
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
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))
    assert all(abs(r["at"] - datetime.now().timestamp()) < 120 for r in rows)
    # every record MACed, under a key the database does not hold
    assert all(key_id and len(mac) == 64 for key_id, mac in db_rows(server.home, "SELECT key_id, mac FROM audit"))

    cli_out = server.cli("audit", "--json").stdout + server.cli("audit").stdout
    with server.api() as api:
        api_out = api.get("/audit").text
    for text_ in (cli_out, api_out, json.dumps(db_rows(server.home))):
        assert SECRET_VALUE not in text_
    raw = b"".join(p.read_bytes() for p in sorted(server.home.glob("fermion.db*")))
    assert SECRET_VALUE.encode() not in raw
    out = verify(server)
    assert (out["ok"], out["records"], out["first_bad"], out["problem"], out["legacy"]) == (True, 4, None, None, 0)
    assert out["head"] == {"seq": 4, "hash": rows[-1]["hash"], "at": rows[-1]["at"]} and out["server_head"] == 4
    head_file = server.home / HEAD_FILE
    assert json.loads(head_file.read_text())["seq"] == 4 and head_file.stat().st_mode & 0o777 == 0o600


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


def test_cli_lists_filters_and_verifies(server: ServerProc) -> None:
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
    out = server.cli("audit", "--verify").stdout
    assert "intact" in out and "head seq 5" in out
    as_json = json.loads(server.cli("audit", "--verify", "--json").stdout)
    assert as_json["ok"] is True and as_json["head"]["seq"] == 5
    with server.api() as api:
        assert api.get("/audit", params={"limit": 1001}).status_code in (400, 422)
    assert web.get(f"{server.url}/api/v1/audit", timeout=30).status_code == 401
    assert web.get(f"{server.url}/api/v1/audit/verify", timeout=30).status_code == 401


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
    assert [r["seq"] for r in rows] == list(range(1, before + 41))
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))
    out = verify(server)
    assert (out["ok"], out["records"], out["head"]["seq"]) == (True, before + 40, before + 40)


def test_an_edited_record_fails_even_with_its_hashes_recomputed(server: ServerProc) -> None:
    with tampered(server.home):
        tamper(server.home, "UPDATE audit SET status = 500 WHERE seq = 10")
        out = verify(server)
        assert (out["ok"], out["first_bad"]) == (False, 10) and "record seq 10 was altered" in out["problem"]

        rechain(server.home)  # the sha256 chain alone holds again: only the MAC can tell
        out = verify(server)
        assert (out["ok"], out["first_bad"]) == (False, 10) and "MAC" in out["problem"], out
        cli = server.cli("audit", "--verify", check=False)
        assert cli.returncode == 1 and "seq 10" in said(cli) and "Traceback" not in said(cli)
    assert verify(server)["ok"] is True


def test_a_record_removed_from_the_middle_fails_at_its_seq(server: ServerProc) -> None:
    with tampered(server.home):
        tamper(server.home, "DELETE FROM audit WHERE seq = 7")
        out = verify(server)
        assert (out["ok"], out["first_bad"]) == (False, 7) and "seq 7 is missing" in out["problem"]
        assert json.loads(server.cli("audit", "--verify", "--json", check=False).stdout)["first_bad"] == 7

        # closing the gap: renumbered and rechained, the MACs (which cover the seq) still tell
        tamper(server.home, "UPDATE audit SET seq = -seq + 1 WHERE seq > 7")  # negative first: seq is unique
        tamper(server.home, "UPDATE audit SET seq = -seq WHERE seq < 0")
        rechain(server.home)
        out = verify(server)
        assert (out["ok"], out["first_bad"]) == (False, 7) and "MAC" in out["problem"], out
    assert verify(server)["ok"] is True


def test_reordered_records_fail(server: ServerProc) -> None:
    with tampered(server.home):
        tamper(server.home, "UPDATE audit SET seq = -1 WHERE seq = 5")
        tamper(server.home, "UPDATE audit SET seq = 5 WHERE seq = 6")
        tamper(server.home, "UPDATE audit SET seq = 6 WHERE seq = -1")
        out = verify(server)
        assert (out["ok"], out["first_bad"]) == (False, 5) and "does not follow seq 4" in out["problem"]
    assert verify(server)["ok"] is True


def test_cutting_the_newest_records_fails_on_the_servers_head(server: ServerProc) -> None:
    end = last_seq(server)
    with tampered(server.home):
        tamper(server.home, "DELETE FROM audit WHERE seq > ?", end - 5)
        out = verify(server)
        assert (out["ok"], out["first_bad"], out["server_head"]) == (False, end - 4, end)
        assert f"ends at seq {end - 5}" in out["problem"] and "removed" in out["problem"]
        cli = server.cli("audit", "--verify", check=False)
        assert cli.returncode == 1 and f"seq {end - 4}" in said(cli) and HEAD_FILE in said(cli)
    assert verify(server)["ok"] is True


def test_a_record_stripped_of_its_mac_does_not_pass_as_one_from_before_anchoring(server: ServerProc) -> None:
    end = last_seq(server)
    with tampered(server.home):
        tamper(server.home, "UPDATE audit SET actor = 'mallory', mac = NULL, key_id = NULL WHERE seq = ?", end)
        rechain(server.home)  # hashed the way records from before anchoring were
        out = verify(server)
        assert (out["ok"], out["first_bad"]) == (False, end) and "no MAC" in out["problem"], out
    assert verify(server)["ok"] is True


def test_an_exported_head_catches_a_cut(server: ServerProc, tmp_path: Path) -> None:
    exported = tmp_path / "head.json"
    exported.write_text(server.cli("audit", "--head").stdout)
    head = json.loads(exported.read_text())
    assert head["seq"] == last_seq(server) and len(head["hash"]) == 64
    with server.api() as api:
        for i in range(3):
            assert api.put(f"/secrets/after-head-{i}", json={"value": "v"}).status_code == 200
    wait_records(server, head["seq"] + 3)
    out = server.cli("audit", "--verify", "--since-head", str(exported)).stdout
    assert "intact" in out and f"exported head (seq {head['seq']})" in out

    with tampered(server.home):
        # a server without a head of its own (a new home, another server on the database) cannot see
        # a cut; the exported head can
        (server.home / HEAD_FILE).unlink()
        tamper(server.home, "DELETE FROM audit WHERE seq >= ?", head["seq"] - 1)
        cli = server.cli("audit", "--verify", "--since-head", str(exported), check=False)
        assert cli.returncode == 1 and f"seq {head['seq'] - 1}" in said(cli) and "exported head" in said(cli)
        # what is exported is the head: nothing to rewrite without changing its hash
        assert verify(server, since_seq=head["seq"] - 2, since_hash="0" * 64)["ok"] is False
        assert verify(server)["ok"] is True  # the limit: with no head at all, a cut chain is a shorter chain
    assert verify(server, since_seq=head["seq"], since_hash=head["hash"])["ok"] is True


def test_a_tampered_head_file_fails(server: ServerProc) -> None:
    path = server.home / HEAD_FILE
    with tampered(server.home):
        body = json.loads(path.read_text())
        write_atomic(path, json.dumps({**body, "seq": body["seq"] - 3}), 0o600)  # lowered, to hide a cut
        out = verify(server)
        assert out["ok"] is False and "MAC does not match" in out["problem"] and HEAD_FILE in out["problem"]
        write_atomic(path, "{not json", 0o600)
        assert "malformed" in verify(server)["problem"]
    assert verify(server)["ok"] is True


def test_a_bad_head_is_a_clear_error(server: ServerProc, tmp_path: Path) -> None:
    cases = {"not-json": "{seq: 1", "list": "[1, 2]", "no-hash": '{"seq": 3}', "short-hash": '{"seq": 3, "hash": "ab"}',
             "text-seq": json.dumps({"seq": "3", "hash": "a" * 64}), "zero": json.dumps({"seq": 0, "hash": "a" * 64})}
    for name, content in cases.items():
        (tmp_path / name).write_text(content)
        cli = server.cli("audit", "--verify", "--since-head", str(tmp_path / name), check=False)
        assert cli.returncode == 2 and "is not an audit head" in said(cli) and "Traceback" not in said(cli), name
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    for missing in (tmp_path / "nowhere.json", tmp_path / "binary", tmp_path):
        cli = server.cli("audit", "--verify", "--since-head", str(missing), check=False)
        assert cli.returncode == 2 and "audit head" in said(cli) and "Traceback" not in said(cli), missing
    with server.api() as api:
        assert api.get("/audit/verify", params={"since_seq": 3}).status_code == 400
        assert api.get("/audit/verify", params={"since_seq": 3, "since_hash": "xyz"}).status_code in (400, 422)
        assert api.get("/audit/verify", params={"since_seq": 0, "since_hash": "a" * 64}).status_code in (400, 422)
    with pytest.raises(UserInputError, match="not an audit head"):
        Audit(None).verify(since_head={"seq": True, "hash": "a" * 64})  # type: ignore[arg-type]


def test_a_clean_chain_verifies_after_a_rotation_and_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"

    def calls(srv: ServerProc, names: list[str]) -> None:
        with srv.api() as api:
            for name in names:
                assert api.put(f"/secrets/{name}", json={"value": "v"}).status_code == 200

    with running_server(home) as srv:
        calls(srv, ["a", "b", "c"])
        wait_records(srv, 3)
        assert "rotated" in srv.cli("secret", "rotate").stdout
        calls(srv, ["d", "e"])
        wait_records(srv, 6)
        out = verify(srv)
        assert (out["ok"], out["records"]) == (True, 6), out
    key_ids = [k for (k,) in db_rows(home, "SELECT key_id FROM audit ORDER BY seq")]
    old, new = key_ids[0], key_ids[-1]
    assert old != new and key_ids == [old] * 3 + [new] * 3  # the rotation's own record is written after it
    assert [k for (k,) in db_rows(home, "SELECT key_id FROM audit_keys")] == [old]
    with running_server(home) as srv:  # a new process: it holds only the new master key
        assert verify(srv)["ok"] is True
        assert "intact: 6 records" in srv.cli("audit", "--verify").stdout
        tamper(home, "DELETE FROM audit_keys")  # the retired key is needed for the records MACed under it
        out = verify(srv)
        assert (out["ok"], out["first_bad"]) == (False, 1) and "which this server does not hold" in out["problem"]


def test_verify_chain_on_a_store(db_url: str, tmp_path: Path) -> None:
    box = SecretBox(tmp_path, environ={"FERMION_MASTER_KEY": MASTER_KEY})
    store = Store(db_url)
    try:
        for status in (200, 201, 404):
            append(store, box.audit, at=1.5, authorization="", method="POST", path="/api/v1/jobs/j1/cancel",
                   client="::1", status=status)
        with store.session() as s:
            assert verify_chain(s, box.audit).ok
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE audit SET actor = 'admin' WHERE seq = 2")
        with store.session() as s:
            v = verify_chain(s, box.audit)
            assert (v.ok, v.first_bad, v.records) == (False, 2, 3)
            since = AuditHead(3, "f" * 64)
            assert verify_chain(s, box.audit, since).since == 3
    finally:
        store.close()
    assert target_of("/api/v1/jobs/j1/cancel") == "job/j1"
    assert target_of("/api/v1/photons") == "photon"
    assert target_of("/api/v1/deployments/web") == "deployment/web"


def test_servers_sharing_a_database_take_each_seq_once(db_url: str, tmp_path: Path) -> None:
    """Three servers (each its own store, key box and home, one master key) appending at once: the
    unique seq and the retry give one chain, with no seq twice and none missing."""
    for i in range(3):
        (tmp_path / f"s{i}").mkdir()
    servers = [(Store(db_url), SecretBox(tmp_path / f"s{i}", environ={"FERMION_MASTER_KEY": MASTER_KEY}))
               for i in range(3)]
    errors: list[BaseException] = []

    def writer(store: Store, box: SecretBox, n: int) -> None:
        try:
            for j in range(n):
                append(store, box.audit, at=float(j), authorization="", method="PUT", path=f"/api/v1/secrets/s{j}",
                       client="::1", status=200)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(store, box, 12)) for store, box in servers for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        store, box = servers[0]
        with store.engine.connect() as conn:
            assert [s for (s,) in conn.execute(text("SELECT seq FROM audit ORDER BY seq"))] == list(range(1, 73))
        with store.session() as s:
            v = verify_chain(s, box.audit)
        assert (v.ok, v.records) == (True, 72), v.problem
        # each server's head is the newest record it wrote
        assert max(json.loads((tmp_path / f"s{i}" / HEAD_FILE).read_text())["seq"] for i in range(3)) == 72
    finally:
        for store, _ in servers:
            store.close()


def test_an_old_database_migrates_and_verifies(db_url: str, tmp_path: Path) -> None:
    """A database of a version before anchoring, with a chain of that version's hashes: after the
    migration its records are the legacy prefix (seqs in id order, no MAC), and they verify."""
    load_previous_version(db_url)
    engine = create_engine(with_driver(db_url))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit"))  # the fixture's record has a made-up hash
        prev = GENESIS
        for i in range(4):
            row = AuditRow(at=1700000000.0 + i, actor="ann", method="PUT", path=f"/api/v1/secrets/s{i}",
                           target=f"secret/s{i}", client="127.0.0.1", status=200)
            row.id = conn.execute(text("INSERT INTO audit (at, actor, method, path, target, client, status, prev_hash, "
                                       "hash) VALUES (:at, 'ann', 'PUT', :path, :target, '127.0.0.1', 200, :prev, '') "
                                       "RETURNING id"), {"at": row.at, "path": row.path, "target": row.target,
                                                         "prev": prev}).scalar_one()
            prev = record_hash(prev, row, legacy=True)
            conn.execute(text("UPDATE audit SET hash = :h WHERE id = :id"), {"h": prev, "id": row.id})
    engine.dispose()
    box = SecretBox(tmp_path, environ={"FERMION_MASTER_KEY": MASTER_KEY})
    store = Store(db_url)
    try:
        assert "revision 0006" in store.schema_changes
        with store.session() as s:
            numbered = s.execute(select(AuditRow.seq, AuditRow.mac).order_by(AuditRow.id)).all()
            assert numbered == [(i, None) for i in range(1, 5)]
            v = verify_chain(s, box.audit)
        assert (v.ok, v.records, v.legacy, v.head["seq"]) == (True, 4, 4, 4), v.problem  # type: ignore[index]
        for status in (200, 404):
            append(store, box.audit, at=1.0, authorization="", method="POST", path="/api/v1/jobs", client="::1",
                   status=status)
        with store.session() as s:
            v = verify_chain(s, box.audit)
        assert (v.ok, v.records, v.legacy) == (True, 6, 4), v.problem
        # the legacy records are pinned: changed and every hash recomputed, the first MAC after them fails
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE audit SET actor = 'mallory' WHERE seq = 2"))
            prev = GENESIS
            for row in conn.execute(text("SELECT * FROM audit ORDER BY seq")).mappings().all():
                rec = AuditRow(**{c: row[c] for c in COLUMNS})
                digest = record_hash(prev, rec, legacy=rec.mac is None)
                conn.execute(text("UPDATE audit SET prev_hash = :p, hash = :h WHERE id = :id"),
                             {"p": prev, "h": digest, "id": rec.id})
                prev = digest
        with store.session() as s:
            v = verify_chain(s, box.audit)
        assert (v.ok, v.first_bad) == (False, 5) and "MAC" in (v.problem or "")
    finally:
        store.close()
    assert os.stat(tmp_path / HEAD_FILE).st_mode & 0o777 == 0o600


def test_records_under_every_key_a_rotation_retired_still_verify(tmp_path: Path) -> None:
    """An interrupted rotation (master.key.old beside a new master.key), finished by the next one:
    the records MACed under each of the three keys verify with only the newest key at hand."""
    store = Store(f"sqlite:///{tmp_path / 'fermion.db'}")

    def record(box: SecretBox) -> None:
        append(store, box.audit, at=1.0, authorization="", method="POST", path="/api/v1/jobs", client="::1",
               status=200)

    try:
        first = SecretBox(tmp_path)
        record(first)
        write_atomic(tmp_path / "master.key.old", (tmp_path / "master.key").read_text(), 0o600)
        write_atomic(tmp_path / "master.key", base64.b64encode(os.urandom(32)).decode(), 0o600)
        interrupted = SecretBox(tmp_path)  # holds both keys, as after a crash mid-rotation
        record(interrupted)
        interrupted.rotate(store)
        record(interrupted)
        newest = SecretBox(tmp_path)
        with store.session() as s:
            v = verify_chain(s, newest.audit)
            assert (v.ok, v.records, v.server_head) == (True, 3, 3), v.problem
            assert len(set(s.scalars(select(AuditRow.key_id)).all())) == 3
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_keys")).scalar_one() == 2
    finally:
        store.close()
