"""Compression as a job on the clouds: a fine-tuned classifier made smaller and faster, registered
as its next version with a measured report beside its parent's, served by the classifier photon,
shown and compared by the registry's commands; bad requests are clear 4xx errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

import pytest

from fermion.testing import ServerProc, running_server, web
from tests.support import EXAMPLES

CLOUDS = """
clouds:
  - name: east
    pricing: {price_per_hour: 0.10}
  - name: west
    pricing: {price_per_hour: 0.20}
"""
EVAL = EXAMPLES / "data/tickets/eval.csv"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("compress")
    with running_server(tmp, CLOUDS) as srv:
        rows = list(csv.reader((EXAMPLES / "data/tickets/train.csv").open()))
        train = tmp / "train.csv"
        csv.writer(train.open("w", newline="")).writerows(rows[:121])
        srv.cli("finetune", "--name", "tickets", "--data", str(train), "--eval-data", str(EVAL), "--epochs", "3",
                "--batch-size", "8", "--lr", "3e-3", "--timeout", "300")
        yield srv


def classify(server: ServerProc, deployment: str, texts: list[str]) -> list[str]:
    r = web.post(f"{server.url}/d/{deployment}/classify", json={"texts": texts}, timeout=60)
    assert r.status_code == 200, r.text
    return [a["label"] for a in r.json()]


def test_auto_keeps_the_fastest_variant_within_the_bound_and_it_serves(server: ServerProc) -> None:
    # a one-layer student barely trained is faster than the int8 model but far less accurate: auto must
    # pass it over for the quantized one, however fast it is
    done = server.cli("compress", "tickets:1", "--method", "auto", "--candidates", "quantize,distill", "--layers", "1",
                      "--epochs", "1", "--lr", "1e-7", "--max-accuracy-drop", "1", "--name", "squeeze",
                      "--timeout", "400", "--json")
    out = json.loads(done.stdout)
    job, model = out["job"], out["model"]
    assert job["status"] == "SUCCEEDED" and job["result"]["model"] == "tickets:2", job
    assert job["result"]["method"] == "quantize" and job["attempts"][0]["cloud"] == "east"
    candidates = {c["method"]: c for c in model["metrics"]["candidates"]}
    assert candidates["distill"]["within_bound"] is False and candidates["distill"]["accuracy_drop"] > 1
    assert candidates["quantize"]["within_bound"] is True and candidates["quantize"]["accuracy_drop"] <= 1
    report, parent = model["metrics"]["report"], model["metrics"]["parent_report"]
    assert report["agreement"] >= 0.9, report  # int8 labels what fp32 labels on at least 90% of the eval set
    assert report["measured"]["format"] == "onnx" and parent["format"] == "torch"
    assert report["measured"]["size_bytes"] < 0.35 * parent["size_bytes"]
    assert report["measured"]["eval_rows"] == 80 and report["measured"]["p99_ms"] >= report["measured"]["p50_ms"] > 0
    # the distilled student measured other figures than its parent: they come from its own run
    student = candidates["distill"]["measured"]
    assert student["loss"] != parent["loss"] and student["size_bytes"] < parent["size_bytes"]
    lineage = model["lineage"]
    assert lineage["parent"] == "tickets:1" and lineage["method"] == "auto" and lineage["chosen"] == "quantize"
    assert lineage["steps"] == [{"method": "quantize", "backend": "onnx"}] and lineage["settings"]["layers"] == 1
    assert lineage["job"] == "squeeze" and lineage["clouds"] == ["east"] and lineage["parent_digest"]
    # the parent's data came from its fine-tune job's code, through the stores
    assert lineage["train_data"] == "code/train/train.csv"
    costs = model["per_cloud"]
    assert {"aws", "gcp", "azure"} <= {r["cloud"] for r in costs["rows"]} and "vCPUs" in costs["scaling"]
    row = costs["rows"][0]
    expected = row["price"] / (report["measured"]["throughput"] / report["measured"]["threads"] * row["vcpus"] * 3600)
    assert row["cost_per_million"] == pytest.approx(expected * 1e6, rel=1e-3)

    parent_view = json.loads(server.cli("model", "show", "tickets:1", "--json").stdout)
    assert [v["version"] for v in parent_view["variants"]] == [2]
    shown = server.cli("model", "show", "tickets:1").stdout
    assert "variants" in shown and "v2" in shown and "quantize" in shown
    shown = server.cli("model", "show", "tickets:2").stdout
    assert "performance and resource use per cloud" in shown and "throughput, batch 32" in shown
    compared = server.cli("model", "compare", "tickets:1", "tickets:2").stdout
    assert "size on disk" in compared and "p50 latency" in compared

    # both serve through the classifier photon, and label the same texts alike
    texts = [row[0] for row in list(csv.reader(EVAL.open()))[1:21]]
    server.cli("deploy", "--model", "tickets:1", "--name", "fp32", "--public")
    server.cli("deploy", "--model", "tickets:2", "--name", "int8", "--public")
    fp32, int8 = classify(server, "fp32", texts), classify(server, "int8", texts)
    assert sum(a == b for a, b in zip(fp32, int8, strict=True)) >= 18, (fp32, int8)
    server.cli("deployment", "delete", "fp32")
    server.cli("deployment", "delete", "int8")


def test_bad_compress_requests_are_clear_errors(server: ServerProc) -> None:
    bad = server.cli("compress", "tickets:1", "--method", "shrink", "--no-follow", check=False)
    assert bad.returncode != 0 and "unknown method 'shrink'" in bad.stderr and "quantize" in bad.stderr
    bad = server.cli("compress", "tickets:9", "--method", "onnx", "--no-follow", check=False)
    assert bad.returncode != 0 and "no model version 'tickets:9'" in bad.stderr
    bad = server.cli("compress", "tickets:1", "--method", "quantize+distill", "--no-follow", check=False)
    assert bad.returncode != 0 and "before quantize" in bad.stderr
    bad = server.cli("compress", "tickets:1", "--method", "prune", "--sparsity", "1.5", "--no-follow", check=False)
    assert bad.returncode != 0 and "sparsity" in bad.stderr
    with server.api() as api:
        r = api.post("/jobs", json={"name": "c1", "compress": {"model": "tickets:1", "method": "onnx", "nope": 1}})
        assert r.status_code == 400 and "nope" in r.json()["error"]["message"]
        r = api.post("/jobs", json={"name": "c2", "compress": {"model": "tickets:1", "method": "distill",
                                                                "eval_data": "dataset:none/x.csv"}})
        assert r.status_code in (400, 404), r.text
