"""The Python SDK against a real server: typed answers, Fermion's errors, and the verbs the CLI
is built on (deploy, migrate with no failed request, optimize with its explanation, jobs, data)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import fermion
from fermion.errors import AuthError, ConflictError, NotFoundError, UserInputError
from fermion.sdk import Connection, Deployment, Event, Job, Optimization, Pushed
from fermion.testing import Load, ServerProc, running_server
from tests.photon.fixture_photons import Versioned
from tests.support import FIXTURE_PHOTONS

CLOUDS = """
clouds:
  - name: east
    pricing: {price_per_hour: 0.10}
  - name: west
    pricing: {price_per_hour: 0.20}
  - name: north
    pricing: {price_per_hour: 0.40}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("sdk"), CLOUDS) as srv:
        yield srv


@pytest.fixture()
def conn(server: ServerProc) -> Iterator[Connection]:
    with fermion.connect(server.url, server.token) as c:
        yield c


def test_connect_reads_the_cli_credentials_and_says_when_there_are_none(
        server: ServerProc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FERMION_URL", "FERMION_TOKEN", "FERMION_CA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FERMION_HOME", str(tmp_path))
    with pytest.raises(AuthError) as err:
        fermion.connect()
    assert err.value.hint and "fermion login" in err.value.hint
    monkeypatch.setenv("FERMION_HOME", str(server.home))  # `fermion server start` saved its URL and token here
    with fermion.connect() as saved:
        me = saved.whoami()
    assert saved.url == server.url and me.server_admin and me.user == "admin"


def test_deploy_a_photon_class_and_drive_it(conn: Connection) -> None:
    d = conn.deploy(Versioned, name="sdk-web", replicas=2, public=True, clouds=["east", "west"])
    assert isinstance(d, Deployment) and d.status == "READY" and d.ready == 2
    assert d.placed == {"east": 1, "west": 1} and d.photon_name == "versioned"
    assert [x.name for x in conn.deployments()] == ["sdk-web"]
    smaller = conn.deployment("sdk-web").scale(1)
    assert smaller.replicas == 1
    settled = conn.deployment("sdk-web").wait(lambda x: len(x.replica_list) == 1 and x.ready == 1)
    assert settled.status == "READY"
    logs = conn.deployment("sdk-web").logs(tail=20)
    assert {r.id for r in settled.replica_list} <= set(logs) and all(isinstance(t, str) for t in logs.values())
    events = conn.deployment("sdk-web").events()
    assert events and all(isinstance(e, Event) for e in events) and any(e.reason == "scaled" for e in events)
    assert conn.events("sdk-web", limit=5)[-1].object_id == "sdk-web"


def test_migrate_moves_a_live_deployment_with_no_failed_request(conn: Connection, server: ServerProc) -> None:
    conn.deploy(f"{FIXTURE_PHOTONS}:Versioned", name="sdk-move", replicas=2, public=True, clouds=["east", "west"])
    with Load(f"{server.url}/d/sdk-move/version", {}) as load:
        moved = conn.deployment("sdk-move").migrate(["north"])
        after = conn.deployment("sdk-move").get()
    assert isinstance(moved, Optimization) and moved.applied and moved.target == {"north": 2}
    assert moved.current == {"east": 1, "west": 1}
    assert after.clouds == ["north"] and after.placed == {"north": 2}
    assert load.failures == [] and load.ok > 20, load.failures[:3]
    # the CLI is the same call: back to two clouds, by the command
    out = json.loads(server.cli("deployment", "migrate", "sdk-move", "--cloud", "east", "--cloud", "west",
                                "--json", "--timeout", "120").stdout)
    assert out["applied"] and out["target"] == {"east": 1, "west": 1}
    assert conn.deployment("sdk-move").get().placed == {"east": 1, "west": 1}


def test_migrate_refuses_what_it_cannot_do_with_the_reason(conn: Connection, server: ServerProc) -> None:
    conn.deploy(f"{FIXTURE_PHOTONS}:Versioned", name="sdk-stay", replicas=1, public=True, clouds=["east"])
    with pytest.raises(UserInputError, match="no cloud named 'mars'"):
        conn.deployment("sdk-stay").migrate(["mars"])
    with pytest.raises(NotFoundError, match="no deployment named 'ghost'"):
        conn.deployment("ghost").migrate(["east"])
    conn.clouds.fail("north")
    try:
        with pytest.raises(ConflictError, match="cannot run on north") as err:
            conn.deployment("sdk-stay").migrate(["north"])
        assert "unhealthy" in str(err.value)
    finally:
        conn.clouds.recover("north")
    assert conn.deployment("sdk-stay").get().clouds == ["east"]  # nothing changed
    bad = server.cli("deployment", "migrate", "sdk-stay", "--cloud", "mars", check=False)
    assert bad.returncode != 0 and "no cloud named 'mars'" in bad.stderr and "Traceback" not in bad.stderr


def test_optimize_returns_the_plan_and_its_explanation(conn: Connection) -> None:
    conn.clouds.fail("east")  # the cheapest cloud is down while it deploys
    try:
        conn.deploy(f"{FIXTURE_PHOTONS}:Versioned", name="sdk-opt", replicas=2, public=True)
    finally:
        conn.clouds.recover("east")
    handle = conn.deployment("sdk-opt")
    assert handle.get().placed == {"west": 1, "north": 1}
    cheapest = handle.optimize(alpha=0, beta=1)
    assert cheapest.plan.feasible and cheapest.current == {"west": 1, "north": 1}
    assert cheapest.target == {"east": 1, "west": 1} and not cheapest.applied
    assert cheapest.saving == pytest.approx(1 - 0.30 / 0.60)
    text = cheapest.explanation
    assert "1 on east" in text and "$0.1000/h each" in text and "total $0.3000/h" in text
    assert handle.get().placed == {"west": 1, "north": 1}  # a dry run moves nothing
    applied = handle.optimize(alpha=0, beta=1, apply=True, min_saving=0.2)
    assert applied.applied
    assert handle.wait(lambda d: d.placed == {"east": 1, "west": 1} and len(d.replica_list) == 2, 120).ready == 2


def test_jobs_models_and_datasets(conn: Connection, tmp_path: Path) -> None:
    job = conn.jobs.run("sdk-hello", ["python", "-c", "print('hello from the sdk')"], wait=True, timeout=120)
    assert isinstance(job, Job) and job.status == "SUCCEEDED" and job.attempts[0].exit_code == 0
    assert "hello from the sdk" in "".join(conn.jobs.logs("sdk-hello").values())
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text("import pathlib; print(pathlib.Path('data.txt').read_text())\n")
    (code / "data.txt").write_text("shipped with the job\n")
    shipped = conn.jobs.run("sdk-workdir", ["python", "main.py"], workdir=code, wait=True, timeout=120)
    assert shipped.status == "SUCCEEDED", shipped.reason
    assert "shipped with the job" in "".join(conn.jobs.logs("sdk-workdir").values())
    assert {"sdk-hello", "sdk-workdir"} <= {j.name for j in conn.jobs()}

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha\n" * 1000)
    (data / "b.txt").write_text("beta\n" * 1000)
    first = conn.datasets.create("sdk-data", data, message="first")
    assert isinstance(first, Pushed) and first.new and first.number == 1 and first.sent_bytes > 0
    again = conn.datasets.push("sdk-data", data)
    assert not again.new and again.sent_bytes == 0
    (data / "b.txt").write_text("changed\n")
    second = conn.datasets.push("sdk-data", data, message="second")
    assert second.new and second.number == 2
    pulled = conn.datasets.pull("sdk-data@1", tmp_path / "out")
    assert pulled.fetched == 2 and (tmp_path / "out" / "b.txt").read_text() == "beta\n" * 1000
    info = conn.datasets.get("sdk-data")
    assert [v.number for v in info.versions] == [1, 2] and [v.message for v in info.versions] == ["first", "second"]
    diff = conn.datasets.diff("sdk-data", "1", "2")
    assert diff["changed"] == ["b.txt"]
    assert conn.models() == [] or all(m.ref for m in conn.models())
    with pytest.raises(NotFoundError):
        conn.models.get("nothing:1")
    with pytest.raises(NotFoundError):
        conn.jobs.get("no-such-job")
