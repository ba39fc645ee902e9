"""Traps a newcomer hit, each against a real server on loopback: a pipeline with runs deleted (a 500
from a foreign key), a dataset created from a URL through the SDK (a mangled path and an empty
dataset left behind), two first uploads of one photon at once (a 500 from a unique key), a canary
that cut the running version's replicas, and three replicas of which two landed on one cloud."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import fermion
from fermion.data import open_store
from fermion.errors import ConflictError, FermionError, NotFoundError, UserInputError
from fermion.photon._package import content_sha256
from fermion.sdk import Connection
from fermion.testing import ServerProc, running_server, start_s3_emulator, start_server, stop, web
from tests.support import FIXTURE_PHOTONS

VERSIONED = f"{FIXTURE_PHOTONS}:Versioned"
CLOUDS = """
clouds:
  - name: cheap
    capacity: {cpus: 4, memory_gb: 8}
    pricing: {price_per_hour: 0.10}
  - name: mid
    capacity: {cpus: 4, memory_gb: 8}
    pricing: {price_per_hour: 0.30}
  - name: dear
    capacity: {cpus: 4, memory_gb: 8}
    pricing: {price_per_hour: 0.90}
"""
# the deployment settings a canary must leave alone (env: sealed, so unchanged ciphertext means unchanged)
SETTINGS = ("photon_sha256", "generation", "replicas", "resources", "clouds", "autoscale", "spot", "placement", "env",
            "public", "idempotent", "rate_limit", "token_hash")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("traps") / "home", CLOUDS) as srv:
        yield srv


@pytest.fixture()
def conn(server: ServerProc) -> Iterator[Connection]:
    with fermion.connect(server.url, server.token) as c:
        yield c


def rows(server: ServerProc, sql: str, *args: object) -> list[tuple]:
    """What the server's SQLite store holds (read as the server wrote it)."""
    with sqlite3.connect(server.home / "fermion.db", timeout=30) as db:
        return db.execute(sql, args).fetchall()


# -- 1. deleting a pipeline that has runs -------------------------------------------------------
def test_a_pipeline_with_runs_is_deleted_with_them_and_one_with_a_run_under_way_is_refused(
        server: ServerProc, conn: Connection) -> None:
    spec = {"name": "sleepy", "alpha": 0, "beta": 1,
            "steps": [{"name": "nap", "command": ["python", "-c", "import time; time.sleep(600)"],
                       "estimate": {"hours": 0.1}}]}
    run = conn.pipelines.run(spec)
    server.wait_for(lambda _: conn.pipelines.status("sleepy", run.number).step("nap").status == "RUNNING", timeout=60)

    refused = server.cli("pipeline", "delete", "sleepy", check=False)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0 and "has a run under way (run 1)" in said and "Traceback" not in said, said
    with pytest.raises(ConflictError, match="pipeline cancel sleepy"):
        conn.pipelines.delete("sleepy")
    assert conn.pipelines.get("sleepy").runs == 1  # nothing was deleted

    conn.pipelines.cancel("sleepy", run.number)
    ended = conn.pipelines.wait("sleepy", run.number, timeout=60)
    assert ended.status == "CANCELLED"
    job = ended.step("nap").job
    assert rows(server, "SELECT count(*) FROM pipeline_steps s JOIN pipeline_runs r ON r.id = s.run_id "
                        "WHERE r.pipeline = 'sleepy'") == [(1,)]

    out = server.cli("pipeline", "delete", "sleepy")  # the trap: a 500 from pipeline_steps' foreign key
    assert "pipeline sleepy: deleted" in out.stdout
    with pytest.raises(NotFoundError):
        conn.pipelines.get("sleepy")
    assert rows(server, "SELECT count(*) FROM pipeline_runs WHERE pipeline = 'sleepy'") == [(0,)]
    assert rows(server, "SELECT count(*) FROM pipeline_steps WHERE run_id NOT IN (SELECT id FROM pipeline_runs)") \
        == [(0,)]
    assert conn.jobs.get(job).name == job  # what the run made stays
    conn.pipelines.run(spec | {"steps": [{"name": "nap", "command": ["true"]}]}, wait=True, timeout=120)
    assert conn.pipelines.runs("sleepy")[0].number == 1  # the name starts afresh


# -- 2. a dataset from a URL through the SDK ----------------------------------------------------
def test_the_sdk_creates_a_dataset_from_a_url_or_refuses_it_leaving_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERMION_HOME", str(tmp_path / "client"))  # where imports are fetched to
    s3 = start_s3_emulator(tmp_path / "s3")
    try:
        bucket = f"b-{uuid.uuid4().hex[:12]}"
        files = {"a.csv": b"text,label\nhello,greeting\n", "deep/b.jsonl": b'{"text": "bye"}\n' * 5000}
        theirs = open_store(s3.store(bucket, "raw/2026"), "someone-elses")
        for key, body in files.items():
            theirs.put(key, body)
        local = tmp_path / "local"
        for key, body in files.items():
            (local / key).parent.mkdir(parents=True, exist_ok=True)
            (local / key).write_bytes(body)
        creds = {"key": "testing", "secret": "testing"}
        # a cloud whose store's server is gone: creating a dataset there works, pushing to it cannot
        clouds = (f"clouds:\n  - name: east\n  - name: gone\n    store: {{url: 's3://{bucket}', "
                  "endpoint: 'http://127.0.0.1:9', options: {key: testing, secret: testing}}\n")
        with running_server(tmp_path / "home", clouds) as srv, fermion.connect(srv.url, srv.token) as conn:
            made = conn.datasets.create("raw", f"s3://{bucket}/raw/2026", cloud="east", endpoint=s3.endpoint,
                                        source_options=creds)
            assert (made.number, made.files, made.size) == (1, 2, sum(map(len, files.values())))
            assert conn.datasets.version("raw").message == f"imported from s3://{bucket}/raw/2026"
            conn.datasets.pull("raw", tmp_path / "out")
            assert {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
                    for p in (tmp_path / "out").rglob("*") if p.is_file()} == files
            from_file = conn.datasets.create("mirrored", local.resolve().as_uri(), cloud="east")
            assert (from_file.files, from_file.size) == (2, made.size)
            assert from_file.sent_bytes == 0  # the same chunks as raw's, in the same project's space
            again = conn.datasets.push("raw", f"s3://{bucket}/raw/2026", endpoint=s3.endpoint, source_options=creds)
            assert again.number == 1 and not again.new

            (tmp_path / "linked").mkdir()
            (tmp_path / "linked" / "outside").symlink_to(tmp_path / "local" / "a.csv")
            refused: list[tuple[object, dict, type[FermionError], str]] = [
                (f"s3://nope-{bucket}", {"endpoint": s3.endpoint, "source_options": creds}, FermionError,
                 "no bucket or container"),
                (f"s3://{bucket}/empty", {"endpoint": s3.endpoint, "source_options": creds}, UserInputError,
                 "holds no objects"),
                ("ftp://host/x", {}, UserInputError, "use s3://BUCKET"),
                ("http://127.0.0.1:9/data.csv", {}, UserInputError, "cannot fetch http://127.0.0.1:9/data.csv"),
                (tmp_path / "missing", {}, UserInputError, "is not a folder"),
                (tmp_path / "linked", {}, UserInputError, "is a symbolic link"),
                (local, {"cloud": "gone"}, FermionError, "store gone"),  # fails after the dataset was made
            ]
            for source, kwargs, error, said in refused:
                with pytest.raises(error, match=said):
                    conn.datasets.create("broken", source, **{"cloud": "east", **kwargs})
                with pytest.raises(NotFoundError):  # nothing half made, not even an empty dataset
                    conn.datasets.get("broken")
            assert sorted(d.name for d in conn.datasets()) == ["mirrored", "raw"]
            # only the push to the gone store made it, and it was taken away again; the rest made nothing
            assert [e.new for e in conn.events("broken")] == ["created", "deleted"]
        assert not list((tmp_path / "client").glob("import-*"))  # the fetched copies are gone
    finally:
        s3.stop()


# -- 3. two first uploads of one photon at once --------------------------------------------------
def photon_archive(marker: str) -> bytes:
    """A valid .photon whose content (and so sha256) is ``marker``'s own."""
    files = {"p.py": (f"# {marker}\nfrom fermion import Photon, handler\nclass P(Photon):\n    @handler\n"
                      "    def f(self) -> int:\n        return 1\n").encode()}
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    identity = {"name": "p", "entry": "p.py:P", "requirements": [], "resources": {}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps({**identity, "files": digests, "sha256": content_sha256(digests, identity)}))
        for name, data in files.items():
            zf.writestr(f"src/{name}", data)
    return buf.getvalue()


def test_identical_first_uploads_at_once_all_succeed(tmp_path: Path, db_url: str) -> None:
    server = start_server(tmp_path / "home", db_url=db_url)
    try:
        for round_ in range(6):  # each round a photon the server has never seen, sent 8 times at once
            data = photon_archive(f"{uuid.uuid4().hex} {round_}")
            start, answers = threading.Barrier(8), []

            def upload(data: bytes = data, start: threading.Barrier = start, answers: list = answers) -> None:
                with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60,
                                  headers={"Authorization": f"Bearer {server.token}"}) as http:
                    start.wait()
                    answers.append(http.post("/photons", files={"file": ("p.photon", data, "application/zip")}))

            threads = [threading.Thread(target=upload) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert [r.status_code for r in answers] == [201] * 8, [r.text for r in answers if r.status_code != 201]
            assert len({r.json()["sha256"] for r in answers}) == 1
        with server.api() as api:
            assert len(api.get("/photons").json()) == 6  # one row per photon
    finally:
        stop(server.proc)


# -- 4. a canary leaves the running version's settings alone --------------------------------------
def test_a_canary_keeps_the_running_versions_settings_and_a_rollback_finds_them_as_before(server: ServerProc) -> None:
    server.cli("deploy", VERSIONED, "--name", "steady", "--replicas", "2", "--public", "--env", "VERSION=1",
               "--cloud", "cheap", "--cloud", "mid", "--min-replicas", "2", "--max-replicas", "3",
               "--rate-limit", "500", "--burst", "50")

    def settings() -> dict[str, object]:
        (row,) = rows(server, f"SELECT {', '.join(SETTINGS)} FROM deployments WHERE name = 'steady'")
        return dict(zip(SETTINGS, row, strict=True))

    def stable_ready() -> set[str]:
        return {r["id"] for r in server.deployment("steady")["replica_list"]
                if r["generation"] == 1 and r["state"] == "READY"}

    before, replicas = settings(), server.wait_for(lambda _: (ids := stable_ready()) and len(ids) == 2 and ids)
    assert before["replicas"] == 2 and before["public"] == 1 and json.loads(before["autoscale"])["min"] == 2

    # --replicas with --canary is ambiguous (whose count?): refused before anything is sent
    bad = server.cli("deploy", VERSIONED, "--name", "steady", "--env", "VERSION=2", "--canary", "30",
                     "--replicas", "1", check=False)
    said = " ".join((bad.stdout + bad.stderr).split())
    assert bad.returncode == 2 and "--canary-replicas" in said and "Traceback" not in said, said
    assert settings() == before

    # no --replicas, no --public, no --cloud, no autoscale, no rate limit: the trap cut the stable to 1
    out = server.cli("deploy", VERSIONED, "--name", "steady", "--env", "VERSION=2", "--canary", "30",
                     "--no-canary-auto", "--json")
    d = json.loads(out.stdout)
    assert d["canary"]["weight"] == 30 and d["replicas"] == 2 and d["public"] and d["token"] is None
    server.wait_for(lambda _: (server.deployment("steady")["canary"] or {}).get("ready") == 1)
    assert settings() == before
    assert stable_ready() == replicas  # both stable replicas ran on, untouched
    answers = {web.post(f"{server.url}/d/steady/version", json={}, headers={"X-Fermion-Version": str(v)}).json()
               ["version"] for v in (1, d["canary"]["generation"])}
    assert answers == {"1", "2"}  # public as before: no token needed, for either version

    server.cli("deployment", "rollback", "steady")
    server.wait_for(lambda _: (x := server.deployment("steady"))["canary"] is None
                    and {r["generation"] for r in x["replica_list"]} == {1})
    assert settings() == before
    assert stable_ready() == replicas
    with server.api() as api:
        events = api.get("/events", params={"object_id": "steady", "limit": 100}).json()
    assert not any(e["reason"] == "scaled" for e in events)


# -- 5. the spread rule: at most half the replicas on one cloud ------------------------------------
def test_three_replicas_over_three_healthy_clouds_take_one_each(server: ServerProc) -> None:
    server.cli("deploy", VERSIONED, "--name", "spread", "--replicas", "3", "--public")
    d = server.wait_for(lambda _: (x := server.deployment("spread"))["ready"] == 3 and x)
    # cheap is a third of mid's price: before the fix it took two (ceil(3 / 2))
    assert sorted(r["cloud"] for r in d["replica_list"]) == ["cheap", "dear", "mid"]
