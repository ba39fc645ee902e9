"""Pipelines run by a real server: steps as jobs on the placed clouds, a gate, a deploy; a re-run
reuses what did not change; a failing gate stops the deploy; a failing step stops what depends on
it with the cause; a new dataset version and a cron time start runs by themselves."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import fermion
from fermion.sdk import Connection
from fermion.testing import ServerProc, running_server
from tests.support import FIXTURE_PHOTONS

CLOUDS = """
clouds:
  - name: cheap
    pricing: {price_per_hour: 0.10, egress_per_gb: 0.09}
  - name: fast
    speed: 4
    pricing: {price_per_hour: 0.80, egress_per_gb: 0.02}
"""

TRAIN = """
import json, os, pathlib
out = pathlib.Path(os.environ["FERMION_JOB_OUTPUT"])
rows = (pathlib.Path(os.environ["FERMION_DATA_DIR"]) / "points" / "points.csv").read_text().split()
(out / "model").mkdir(parents=True, exist_ok=True)
(out / "model" / "weights.json").write_text(json.dumps({"mean": sum(map(float, rows)) / len(rows)}))
(out / "result.json").write_text(json.dumps({"metrics": {"score": len(rows) / 10}, "lineage": {"rows": len(rows)}}))
print("trained on", len(rows), "rows")
"""

EVALUATE = """
import json, os, pathlib
model = os.environ["FERMION_INPUT_TRAIN_MODEL"]
with open(pathlib.Path(os.environ["FERMION_JOB_OUTPUT"]) / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"model": model, "score": float(os.environ.get("SCORE", "0.9")), "baseline": 0.5}) + "\\n")
print("evaluated", model)
"""

FLAKY = """
import os, sys
if os.environ["FERMION_ATTEMPT"] == "1":
    sys.exit("first attempts fail")
print("second attempt")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    home = tmp_path_factory.mktemp("pipelines")
    with running_server(home, CLOUDS) as srv:
        data = home / "points"
        data.mkdir()
        (data / "points.csv").write_text("\n".join(str(i) for i in range(9)))
        srv.cli("dataset", "create", "points", str(data), "--cloud", "cheap")
        yield srv


@pytest.fixture()
def conn(server: ServerProc) -> Iterator[Connection]:
    with fermion.connect(server.url, server.token) as c:
        yield c


def write_pipeline(folder: Path, name: str, gate: object = 0.5, score: str = "0.9", extra: list | None = None,
                   triggers: list | None = None) -> Path:
    code = folder / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "train.py").write_text(TRAIN)
    (code / "evaluate.py").write_text(EVALUATE)
    (code / "flaky.py").write_text(FLAKY)
    spec = {
        "name": name, "alpha": 0, "beta": 1, "triggers": triggers or [],
        "steps": [
            {"name": "train", "command": ["python", "train.py"], "workdir": "code", "datasets": ["points"],
             "with": {"model_name": f"{name}-model"}, "estimate": {"hours": 1}},
            {"name": "evaluate", "kind": "eval", "after": ["train"], "command": ["python", "evaluate.py"],
             "workdir": "code", "env": {"SCORE": score}, "estimate": {"hours": 0.1}},
            {"name": "gate", "kind": "gate", "after": ["evaluate"], "with": {"metric": "score", "at_least": gate}},
            {"name": "deploy", "kind": "deploy", "after": ["gate"],
             "with": {"deployment": name, "photon": f"{FIXTURE_PHOTONS}:Versioned", "model": "step:train",
                      "public": True}},
            *(extra or []),
        ],
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_run_trains_evaluates_gates_and_deploys_then_a_rerun_is_cached(server: ServerProc, conn: Connection,
                                                                         tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "points-pipe")
    run = conn.pipelines.run(path, wait=True, timeout=240)
    assert run.status == "SUCCEEDED", [(s.step, s.status, s.reason) for s in run.steps]
    assert run.plan == {"train": "cheap", "evaluate": "cheap"}  # beta only: the cheap cloud, where the data is
    train, evaluate, gate, deploy = (run.step(n) for n in ("train", "evaluate", "gate", "deploy"))
    assert train.cloud == "cheap" and train.outputs["model"] == "points-pipe-model:1"
    assert train.outputs["metrics"]["score"] == pytest.approx(0.9)
    assert evaluate.outputs["metrics"]["model"] == "points-pipe-model:1"  # it was handed the trained model
    assert gate.status == "SUCCEEDED" and "held: score 0.9000 ≥ 0.5" in gate.reason
    assert deploy.status == "SUCCEEDED" and conn.deployment("points-pipe").get().ready == 1
    model = conn.models.get("points-pipe-model:1")
    assert model.lineage["pipeline"] == {"name": "points-pipe", "run": 1, "step": "train"}
    assert model.lineage["rows"] == 9 and model.metrics == {"score": 0.9}
    logs = conn.pipelines.logs("points-pipe", 1)
    assert "trained on 9 rows" in "".join(logs["train"].values())
    # the run acted with a token of its own, revoked when it ended
    run_tokens = [t for t in conn.tokens() if t.name == "pipeline points-pipe run 1"]
    assert len(run_tokens) == 1 and run_tokens[0].revoked and run_tokens[0].role == "editor"

    again = conn.pipelines.run(path, wait=True, timeout=120)
    assert again.status == "SUCCEEDED" and again.number == 2
    assert again.step("train").status == "CACHED" and again.step("evaluate").status == "CACHED"
    assert "unchanged since run 1" in again.step("train").reason
    assert again.step("train").outputs["model"] == "points-pipe-model:1"  # no second version
    assert [m.version for m in conn.models() if m.name == "points-pipe-model"] == [1]
    assert "2 of them cached" in again.reason

    out = server.cli("pipeline", "status", "points-pipe").stdout
    assert "CACHED" in out and "run 2" in out
    listing = json.loads(server.cli("pipeline", "list", "--json").stdout)
    assert any(p["name"] == "points-pipe" and p["runs"] == 2 for p in listing)
    # an estimate from the spec, the steps' hours from the last run otherwise
    placed = conn.pipelines.plan(path)
    assert placed.estimates["train"] == "the spec"


def test_a_failing_gate_stops_before_the_deploy(conn: Connection, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "gated", gate=0.95)
    run = conn.pipelines.run(path, wait=True, timeout=240)
    assert run.status == "FAILED"
    assert run.step("gate").status == "FAILED" and "did not hold: score 0.9000 < 0.95" in run.step("gate").reason
    assert run.step("deploy").status == "BLOCKED" and "step gate failed" in run.step("deploy").reason
    assert "step gate failed: did not hold" in run.reason
    assert "gated" not in [d.name for d in conn.deployments()]


def test_a_step_retries_on_its_own_and_a_failure_blocks_what_depends_on_it(server: ServerProc, conn: Connection,
                                                                           tmp_path: Path) -> None:
    extra = [{"name": "flaky", "command": ["python", "flaky.py"], "workdir": "code", "retries": 1},
             {"name": "broken", "command": ["python", "-c", "raise SystemExit('no luck')"], "retries": 0,
              "after": ["flaky"]},
             {"name": "after-broken", "command": ["true"], "after": ["broken"]}]
    path = write_pipeline(tmp_path, "shaky", extra=extra)
    r = server.cli("pipeline", "run", str(path), "--timeout", "240", check=False)
    assert r.returncode == 1 and "FAILED" in r.stdout
    run = conn.pipelines.status("shaky")
    assert run.step("flaky").status == "SUCCEEDED"
    assert [a.state for a in conn.jobs.get(run.step("flaky").job).attempts] == ["FAILED", "SUCCEEDED"]
    assert run.step("broken").status == "FAILED" and "no luck" in "".join(conn.jobs.logs(run.step("broken").job).values())
    assert run.step("after-broken").status == "BLOCKED" and "step broken failed" in run.step("after-broken").reason
    assert run.step("deploy").status == "SUCCEEDED"  # the other branch went on
    assert run.reason.startswith("step broken failed: job shaky-broken-1 failed")


def test_a_new_dataset_version_and_a_cron_time_start_runs(server: ServerProc, conn: Connection, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "retrain", triggers=[{"dataset": "points"}, {"cron": "*/5 * * * *"}])
    conn.pipelines.register(path)
    time.sleep(2)
    assert conn.pipelines.get("retrain").runs == 0  # the version there already starts nothing
    data = tmp_path / "points"
    data.mkdir()
    (data / "points.csv").write_text("\n".join(str(i) for i in range(12)))
    conn.datasets.push("points", data)
    run = _first_run(conn, "retrain", 1)
    assert run.trigger == "version 2 of dataset points appeared"
    done = conn.pipelines.wait("retrain", run.number, timeout=240)
    assert done.status == "SUCCEEDED" and done.step("train").outputs["metrics"]["score"] == pytest.approx(1.2)
    # the cron trigger last fired an hour ago (as the server records it): the next pass starts a run
    db = sqlite3.connect(server.home / "fermion.db", timeout=30)
    with db:
        state = json.loads(db.execute("SELECT trigger_state FROM pipelines WHERE name = 'retrain'").fetchone()[0])
        state["cron:*/5 * * * *"] = time.time() - 3600
        db.execute("UPDATE pipelines SET trigger_state = ? WHERE name = 'retrain'", (json.dumps(state),))
    db.close()
    scheduled = _first_run(conn, "retrain", 2)
    assert scheduled.trigger == "cron '*/5 * * * *'"
    finished = conn.pipelines.wait("retrain", scheduled.number, timeout=240)
    assert finished.status == "SUCCEEDED" and finished.step("train").status == "CACHED"  # the same data as run 1


def _first_run(conn: Connection, name: str, runs: int, timeout: float = 30):  # noqa: ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.pipelines.get(name).runs >= runs:
            return conn.pipelines.status(name, runs)
        time.sleep(0.3)
    raise AssertionError(f"{name} did not reach {runs} runs")


def test_viewers_see_no_env_values_and_a_revoked_registering_token_starts_nothing(server: ServerProc, conn: Connection,
                                                                                  tmp_path: Path) -> None:
    conn.users.create("vic")
    conn.projects.add_member("default", "vic", "viewer")
    viewer_token = conn.tokens.create("vic", user="vic", project="default", role="viewer").token
    registrar = conn.tokens.create("registrar", project="default", role="editor")
    path = write_pipeline(tmp_path, "watched", score="0.91", triggers=[{"dataset": "points"}])
    with fermion.connect(server.url, registrar.token) as reg:
        reg.pipelines.register(path)
    with fermion.connect(server.url, viewer_token) as viewer:
        steps = {s["name"]: s for s in viewer.pipelines.get("watched").spec["steps"]}
        assert steps["evaluate"]["env"] == {"SCORE": "***"}  # a viewer reads the spec, not its values
    assert {s["name"]: s for s in conn.pipelines.get("watched").spec["steps"]}["evaluate"]["env"] == {"SCORE": "0.91"}

    conn.tokens.revoke(registrar.id)  # the token it was registered with: its triggers act no more
    data = tmp_path / "more"
    data.mkdir()
    (data / "points.csv").write_text("\n".join(str(i) for i in range(15)))
    conn.datasets.push("points", data)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("started no run" in e.reason for e in conn.events("watched")):
        time.sleep(0.3)
    assert conn.pipelines.get("watched").runs == 0
    assert any("revoked or expired" in e.reason for e in conn.events("watched"))


def test_another_projects_job_on_a_runs_job_name_cannot_make_the_run_fail(server: ServerProc, conn: Connection,
                                                                          tmp_path: Path) -> None:
    """Job names are global and a run's are predictable (PIPELINE-STEP-RUN): a member of another project
    who takes them first only sees the run use names of its own, with the run's random id."""
    conn.projects.create("squatters")
    conn.users.create("mallory")
    conn.projects.add_member("squatters", "mallory", "editor")
    mallory = conn.tokens.create("m", user="mallory", project="squatters", role="editor").token
    with fermion.connect(server.url, mallory) as theirs:
        for n in (1, 2):
            theirs.jobs.submit({"name": f"squatted-only-{n}", "command": ["true"], "project": "squatters",
                                "resources": {"cpus": 0.25, "memory_gb": 0.25}})
    path = tmp_path / "pipeline.yaml"
    for number in (1, 2):  # a step changed each time: no run is served from the cache
        path.write_text(yaml.safe_dump({"name": "squatted", "steps": [
            {"name": "only", "command": ["python", "-c", f"print({number})"]}]}))
        run = conn.pipelines.run(path, wait=True, timeout=120)
        assert run.number == number and run.status == "SUCCEEDED", [(s.step, s.status, s.reason) for s in run.steps]
        job = run.step("only").job
        assert job != f"squatted-only-{number}" and job.startswith(f"squatted-only-{number}-")
        assert conn.jobs.get(job).project == "default"
