"""`fermion pipeline plan` against a real server: its clouds' prices, speeds and egress, the stores
that hold each dataset, and the durations of earlier runs decide where each step goes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import fermion
from fermion.errors import NotFoundError, UserInputError
from fermion.testing import ServerProc, running_server
from tests.support import EXAMPLES

CLOUDS = """
clouds:
  - name: cheap
    pricing: {price_per_hour: 0.10, egress_per_gb: 0.09}
  - name: fast
    speed: 4
    pricing: {price_per_hour: 0.80, egress_per_gb: 0.02}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    home = tmp_path_factory.mktemp("pipeline-plan")
    with running_server(home, CLOUDS) as srv:
        data = home / "reviews"
        data.mkdir()
        (data / "reviews.csv").write_text("text,label\n" + "good,1\nbad,0\n" * 500)
        srv.cli("dataset", "create", "reviews", str(data), "--cloud", "fast")
        yield srv


def test_the_weights_choose_between_the_fast_cloud_and_the_cheap_one(server: ServerProc) -> None:
    example = EXAMPLES / "pipelines" / "train-and-deploy.yaml"
    with fermion.connect(server.url, server.token) as conn:
        quick = conn.pipelines.plan(example, alpha=1, beta=0)
        thrifty = conn.pipelines.plan(example, alpha=0, beta=1)
    assert quick.plan.method == "dp"  # the gate and the deploy run on the server: the rest is a chain
    assert quick.server_steps == ["gate", "deploy"]
    assert set(quick.plan.assignment) == {"prepare", "train", "evaluate", "compress"}
    assert set(quick.plan.assignment.values()) == {"fast"}
    assert quick.plan.completion_h == pytest.approx((0.2 + 1.5 + 0.1 + 0.3) / 4)
    assert set(thrifty.plan.assignment.values()) == {"cheap"}
    prepare = next(p for p in thrifty.plan.steps if p.step == "prepare")
    assert [m.what for m in prepare.moves] == ["reviews"] and prepare.moves[0].source == "fast"
    assert "reviews" in thrifty.explanation and "from fast" in thrifty.explanation
    assert quick.estimates == {s: "the spec" for s in ("prepare", "train", "evaluate", "compress")}


def test_a_step_without_an_estimate_takes_its_last_run(server: ServerProc, tmp_path: Path) -> None:
    spec = {"name": "solo", "alpha": 0, "beta": 1,
            "steps": [{"name": "work", "command": ["python", "-c", "import time; time.sleep(1.0)"]},
                      {"name": "other", "command": ["true"], "after": ["work"], "estimate": {"hours": 0.5}}]}
    with fermion.connect(server.url, server.token) as conn:
        before = conn.pipelines.plan(spec, alpha=1, beta=0)
        assert before.estimates["work"].startswith("a guess") and before.estimates["other"] == "the spec"
        ran = conn.pipelines.run(spec, wait=True, timeout=120)
        assert ran.status == "SUCCEEDED", [(s.step, s.reason) for s in ran.steps]
        assert ran.step("work").cloud == "cheap"  # beta only: the cheap cloud
        out = conn.pipelines.plan(spec, alpha=1, beta=0)
    assert out.estimates["work"] == "run 1 (on cheap)"
    work = next(p for p in out.plan.steps if p.step == "work")
    assert 1.0 / 3600 / 4 <= work.run_h < 30.0 / 3600  # about a second on cheap, a quarter of it on fast


def test_the_cli_prints_the_plan_and_refuses_bad_pipelines(server: ServerProc, tmp_path: Path) -> None:
    example = EXAMPLES / "pipelines" / "train-and-deploy.yaml"
    out = server.cli("pipeline", "plan", str(example), "--beta", "10").stdout
    assert "plan for train-and-deploy" in out and "next best" in out and "on the server: gate, deploy" in out
    data = json.loads(server.cli("pipeline", "plan", str(example), "--method", "ilp", "--json").stdout)
    assert data["plan"]["method"] == "ilp" and data["plan"]["feasible"]
    dp = json.loads(server.cli("pipeline", "plan", str(example), "--json").stdout)
    assert dp["plan"]["score"] == pytest.approx(data["plan"]["score"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "steps": [{"name": "a", "after": ["b"]}, {"name": "b", "after": ["a"]}]}))
    r = server.cli("pipeline", "plan", str(bad), check=False)
    assert r.returncode == 2 and "cycle: a, b" in r.stderr and "Traceback" not in r.stderr
    missing = server.cli("pipeline", "plan", str(tmp_path / "nope.yaml"), check=False)
    assert missing.returncode == 2 and "does not exist" in " ".join(missing.stderr.split())
    with fermion.connect(server.url, server.token) as conn:
        with pytest.raises(UserInputError, match="no cloud named 'mars'"):
            conn.pipelines.plan({"name": "x", "steps": [{"name": "a", "clouds": ["mars"]}]})
        with pytest.raises(NotFoundError, match="no dataset named 'ghost'"):
            conn.pipelines.plan({"name": "x", "steps": [{"name": "a", "datasets": ["ghost"]}]})
        with pytest.raises(UserInputError, match="no step that runs on a cloud"):
            conn.pipelines.plan({"name": "x", "steps": [{"name": "g", "kind": "gate"}]})
