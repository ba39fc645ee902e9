"""The recommender example: the model beats its popularity baseline, and its pipeline trains,
gates, deploys, then retrains on a new data version and rolls the update out as a canary, with
no failed request on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fermion
from fermion.testing import Load, running_server, web
from tests.support import EXAMPLES

RECOMMENDER = EXAMPLES / "recommender"
CLOUDS = """
clouds:
  - name: east
    pricing: {price_per_hour: 0.10}
  - name: west
    pricing: {price_per_hour: 0.20}
"""


def generate(folder: Path, version: int) -> Path:
    """A folder holding interactions.csv: what the dataset's versions are."""
    subprocess.run([sys.executable, str(RECOMMENDER / "generate.py"), str(folder), "--version", str(version)],
                   check=True, capture_output=True)
    return folder


def test_matrix_factorization_beats_popularity_on_recall_and_ndcg(tmp_path: Path) -> None:
    generate(tmp_path / "data" / "interactions", 1)  # as the job finds the dataset: $FERMION_DATA_DIR/NAME
    out = tmp_path / "out"
    env = {**os.environ, "FERMION_DATA_DIR": str(tmp_path / "data"), "FERMION_JOB_OUTPUT": str(out)}
    subprocess.run([sys.executable, str(RECOMMENDER / "train.py")], check=True, env=env, capture_output=True,
                   timeout=300)
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    assert metrics["recall_at_10"] > 2 * metrics["popularity_recall_at_10"]
    assert metrics["ndcg_at_10"] > 2 * metrics["popularity_ndcg_at_10"]
    assert metrics["users"] == 400 and metrics["interactions"] == 400 * 22
    curve = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train_loss"] for m in curve if "train_loss" in m]
    assert losses[-1] < losses[0] * 0.5  # it learned
    assert {"users.npy", "items.npy", "meta.json"} <= {p.name for p in (out / "model").iterdir()}


def test_the_pipeline_deploys_then_rolls_out_a_retrained_model_on_new_data(tmp_path: Path) -> None:
    with running_server(tmp_path / "home", CLOUDS) as server, fermion.connect(server.url, server.token) as conn:
        conn.datasets.create("interactions", generate(tmp_path / "v1", 1))
        first = conn.pipelines.run(RECOMMENDER / "pipeline.yaml", wait=True, timeout=300)
        assert first.status == "SUCCEEDED", [(s.step, s.status, s.reason) for s in first.steps]
        assert "no production version" in first.step("no-worse-than-production").reason
        assert conn.models.get("recommender:1").stage == "production"
        answer = web.post(f"{server.url}/d/recommender/recommend", json={"user": "u7"}, timeout=30).json()
        assert len(answer["items"]) == 10 and answer["model"] == "recommender:1"

        with Load(f"{server.url}/d/recommender/recommend", {"user": "u7", "k": 5}, workers=3) as load:
            conn.datasets.push("interactions", generate(tmp_path / "v2", 2), message="a week later")
            deadline = time.monotonic() + 30
            while conn.pipelines.get("recommender").runs < 2 and time.monotonic() < deadline:
                time.sleep(0.3)
            second = conn.pipelines.wait("recommender", 2, timeout=300)
        assert second.status == "SUCCEEDED", [(s.step, s.status, s.reason) for s in second.steps]
        assert second.trigger == "version 2 of dataset interactions appeared"
        assert "canary generation" in second.step("deploy").reason and "promoted" in second.step("deploy").reason
        assert "held: recall_at_10" in second.step("no-worse-than-production").reason
        assert load.failures == [] and load.ok > 20, load.failures[:3]
        assert {a["model"] for a in load.answers} == {"recommender:1", "recommender:2"}  # both served, then one
        latest = web.post(f"{server.url}/d/recommender/recommend", json={"user": "u7"}, timeout=30).json()
        assert latest["model"] == "recommender:2"
        model = conn.models.get("recommender:2")
        assert model.stage == "production" and conn.models.get("recommender:1").stage != "production"
        assert model.lineage["pipeline"] == {"name": "recommender", "run": 2, "step": "train"}
        assert model.lineage["datasets"][0]["version"] == 2
        assert model.metrics["recall_at_10"] > model.metrics["popularity_recall_at_10"]
