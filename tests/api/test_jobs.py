"""Jobs on the clouds: resume on another cloud after a cloud failure, bounded retries of the
job's own errors, torch distributed workers, and fine-tunes that land in the registry."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from fermion.testing import ServerProc, dashboard, running_server, web
from tests.support import EXAMPLES

CLOUDS = """
clouds:
  - name: east
    pricing: {price_per_hour: 0.10}
  - name: west
    pricing: {price_per_hour: 0.20}
  - name: spotty
    pricing: {price_per_hour: 0.50, spot_price_per_hour: 0.02}
    inject: {spot_preempt_after_s: 1.5}
"""
JOBS = EXAMPLES / "jobs"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("jobs"), CLOUDS) as srv:
        yield srv


def job(server: ServerProc, name: str) -> dict:
    with server.api() as api:
        return api.get(f"/jobs/{name}").json()


def logs(server: ServerProc, name: str) -> dict[str, str]:
    with server.api() as api:
        return api.get(f"/jobs/{name}/logs").json()


def test_a_job_resumes_on_another_cloud_when_its_cloud_dies(server: ServerProc) -> None:
    server.cli("job", "run", "--name", "steps", "--workdir", str(JOBS), "--", "python", "steps.py", "40", "0.15")
    first = server.wait_for(lambda api: (j := api.get("/jobs/steps").json())["status"] == "RUNNING" and j)
    cloud = first["attempts"][0]["cloud"]
    assert cloud == "east"  # the cheaper cloud
    server.wait_for(lambda _: "step 8 on" in next(iter(logs(server, "steps").values()), ""))
    server.cli("cloud", "fail", cloud)
    seen = max(int(n) for n in re.findall(r"step (\d+) on", next(iter(logs(server, "steps").values()))))
    done = server.wait_for(lambda api: (j := api.get("/jobs/steps").json())["status"] in ("SUCCEEDED", "FAILED")
                           and j, timeout=90)
    server.cli("cloud", "recover", cloud)
    assert done["status"] == "SUCCEEDED", done
    states = [(a["cloud"], a["state"], a["exit_code"]) for a in done["attempts"]]
    assert states == [("east", "PREEMPTED", None), ("west", "SUCCEEDED", 0)]  # killed mid-run, then finished
    assert done["restarts"] == 0  # a cloud failure is not the job's fault
    second = list(logs(server, "steps").values())[1]
    resumed = int(re.search(r"resumed from step (\d+) on west", second).group(1))
    # the checkpoint came back through the stores: at most what the steps of one sending interval
    # (0.5 s, ~4 steps) and the kill's own latency lose, and the kill came mid-run
    assert seen - 8 <= resumed < 40, (seen, resumed)
    assert "restored checkpoint" in second
    assert "done: sum of steps 820" in second  # 1 + 2 + ... + 40: no step lost or repeated
    with server.api() as api:
        events = api.get("/events", params={"object_id": "steps"}).json()
    assert any("lost (cloud east failed)" in e["reason"] for e in events)


def test_a_spot_job_is_preempted_and_resumes_on_the_next_best_cloud(server: ServerProc, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: spot-steps\nworkdir: {JOBS}\ncommand: [python, steps.py, '25', '0.1']\nspot: true\n"
                    "resources: {cpus: 0.5, memory_gb: 0.5}\nmax_restarts: 0\n")
    server.cli("job", "run", "--spec", str(spec), "--follow", "--timeout", "90")
    done = job(server, "spot-steps")
    assert done["status"] == "SUCCEEDED" and done["spot"] is True
    first, second = done["attempts"][0], done["attempts"][1]
    assert (first["cloud"], first["spot"], first["state"]) == ("spotty", True, "PREEMPTED")
    assert first["reason"] == "spot capacity reclaimed on spotty"
    assert (second["cloud"], second["spot"], second["state"]) == ("east", False, "SUCCEEDED")
    assert done["restarts"] == 0  # preemption is not the job's error, even with max_restarts 0
    assert "done: sum of steps 325" in list(logs(server, "spot-steps").values())[-1]


def test_own_errors_are_retried_at_most_max_restarts(server: ServerProc) -> None:
    out = server.cli("job", "run", "--name", "buggy", "--max-restarts", "1", "--follow", "--timeout", "60",
                     "--workdir", str(JOBS), "--", "python", "fail.py", check=False)
    assert out.returncode == 1
    j = job(server, "buggy")
    assert j["status"] == "FAILED" and len(j["attempts"]) == 2 and j["restarts"] == 2
    assert "column 'label' missing" in j["reason"] and "1 restarts used" in j["reason"]
    with server.api() as api:
        events = api.get("/events", params={"limit": 200}).json()
    assert any("own error" in e["reason"] for e in events if e["kind"] == "attempt")


def test_two_worker_gloo_job(server: ServerProc) -> None:
    server.cli("job", "run", "--name", "ddp", "--workers", "2", "--follow", "--timeout", "120",
               "--workdir", str(JOBS), "--", "python", "ddp.py")
    assert job(server, "ddp")["status"] == "SUCCEEDED"
    text = next(iter(logs(server, "ddp").values()))
    assert "rank 0 of world_size=2: all-reduced sum=3" in text and "rank 1 of world_size=2" in text


def test_bad_job_specs_are_4xx(server: ServerProc) -> None:
    with server.api() as api:
        assert api.post("/jobs", json={"name": "Bad Name", "command": ["true"]}).status_code == 422  # the schema refuses the name
        r = api.post("/jobs", json={"name": "x", "command": []})
        assert r.status_code == 400 and "needs a command" in r.json()["error"]["message"]
        r = api.post("/jobs", json={"name": "x", "command": ["true"], "workers": 2})
        assert r.status_code == 400 and "Python command" in r.json()["error"]["message"]
        r = api.post("/jobs", json={"name": "x", "finetune": {"train_data": "/nope.csv"}})
        assert r.status_code == 400 and "not a file" in r.json()["error"]["message"]
        assert api.get("/jobs/nope").status_code == 404


def test_finetune_job_registers_a_model_that_serves(server: ServerProc, tmp_path: Path) -> None:
    rows = list(csv.reader((EXAMPLES / "data/tickets/train.csv").open()))
    train = tmp_path / "train.csv"
    csv.writer(train.open("w", newline="")).writerows(rows[:97])
    server.cli("finetune", "--name", "tickets", "--data", str(train), "--eval-data",
               str(EXAMPLES / "data/tickets/eval.csv"), "--epochs", "2", "--batch-size", "8", "--lr", "3e-3",
               "--timeout", "300")
    j = job(server, "tickets")
    assert j["status"] == "SUCCEEDED", j
    # the data files of the machine the job was sent from went with it, through the stores
    first_log = next(iter(logs(server, "tickets").values()))
    assert re.search(r"code [0-9a-f]{12} \(2 files, \d+ bytes\) fetched from the store of", first_log), first_log
    assert j["result"]["model"] == "tickets:1"
    assert j["result"]["accuracy"] > j["result"]["baseline_accuracy"] + 0.3
    assert len([m for m in j["metrics"] if "eval_accuracy" in m]) == 2
    model = json.loads(server.cli("model", "show", "tickets:1", "--json").stdout)
    # the model is kept in the stores (the job's output went there), never in the server's home
    assert model["artifact_uri"].startswith("store:") and model["lineage"]["stores"], model
    assert not (server.home / "artifacts").exists()
    lineage = model["lineage"]
    assert Path(lineage["base_model"]).name == "model" and len(lineage["train_sha256"]) == 64
    assert lineage["job"] == "tickets" and lineage["attempts"] == 1 and lineage["code_version"].startswith("fermion")
    assert model["metrics"]["final"]["accuracy"] == j["result"]["accuracy"]
    server.cli("model", "promote", "tickets:1", "--stage", "production")
    assert "production" in server.cli("model", "list").stdout
    server.cli("deploy", "--model", "tickets:1", "--name", "tickets", "--public")
    answer = web.post(f"{server.url}/d/tickets/classify", json={"texts": [
        "Dear support, my parcel arrived damaged. Please fix this."]}, timeout=30).json()
    assert answer[0]["label"] in {"account", "billing", "shipping", "technical"}
    assert abs(sum(answer[0]["probabilities"].values()) - 1) < 1e-3
    with server.api() as api:  # the replica fetched the model onto its cloud, through the server
        said = api.get("/deployments/tickets/logs").json()
    digest = model["artifact_uri"].removeprefix("store:")[:12]
    assert any(f"model {digest} (6 files" in text and "fetched from the store of" in text for text in said.values()), said
    refused = server.cli("model", "delete", "tickets:1", check=False)
    assert refused.returncode == 4 and "served by tickets" in refused.stderr

    # a fine-tune from the registered model: its attempt fetches the base from the stores too
    server.cli("finetune", "--name", "tickets-more", "--base", "tickets:1", "--model-name", "tickets", "--data",
               str(train), "--eval-data", str(EXAMPLES / "data/tickets/eval.csv"), "--epochs", "1", "--batch-size", "8",
               "--timeout", "300")
    j2 = job(server, "tickets-more")
    assert j2["status"] == "SUCCEEDED" and j2["result"]["model"] == "tickets:2", j2
    assert f"model {digest} (6 files" in next(iter(logs(server, "tickets-more").values()))
    second = json.loads(server.cli("model", "show", "tickets:2", "--json").stdout)
    assert second["lineage"]["base_model"] == "tickets:1" and second["lineage"]["base_model_digest"].startswith(digest)

    # the dashboard draws it: the data → the job → tickets:1 → served by the deployment, and the
    # fine-tune that started from it → tickets:2
    with dashboard(server.url, server.token, "models") as page:
        data = f"data:{lineage['train_sha256']}"
        for node in (data, "job:tickets", "model:tickets:1", "deployment:tickets", "job:tickets-more", "model:tickets:2"):
            expect(page.locator(f'[data-node="{node}"]')).to_be_visible()
        for edge in (f"{data}>job:tickets", "job:tickets>model:tickets:1", "model:tickets:1>deployment:tickets",
                     "model:tickets:1>job:tickets-more", "job:tickets-more>model:tickets:2"):
            expect(page.locator(f'[data-edge="{edge}"]')).to_have_count(1)


TINY_MODEL = """
import json, os, pathlib
out = pathlib.Path(os.environ["FERMION_JOB_OUTPUT"])
(out / "model").mkdir(parents=True, exist_ok=True)
(out / "model" / "config.json").write_text("{}")
(out / "result.json").write_text(json.dumps({"metrics": {"score": 1}}))
"""


# last in the file: the model it registers would show in the tables the tests above read
def test_a_finetune_from_a_hub_name_is_refused_when_submitted(server: ServerProc, tmp_path: Path) -> None:
    train = str(EXAMPLES / "data/tickets/train.csv")
    with server.api() as api:
        r = api.post("/jobs", json={"name": "hub-base", "finetune": {"train_data": train, "base": "bert-base-uncased"}})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "'bert-base-uncased' is neither a model folder nor a registered model" in message, message
        assert "not downloaded from the Hugging Face Hub" in message, message
        for instead in ("local model folder", "registered model NAME:VERSION", "all-MiniLM-L6-v2"):
            assert instead in message, message
        assert api.get("/jobs/hub-base").status_code == 404  # no job: no attempts retried against the hub
        (tmp_path / "empty").mkdir()
        for base, why in (("/nope/model", "is not a model folder on the server"),
                          (str(tmp_path / "empty"), "is a folder without config.json"),
                          ("code/model", "is not a folder of the code sent with the job"),
                          ("nobody:3", "no model version 'nobody:3'")):
            r = api.post("/jobs", json={"name": "hub-base", "finetune": {"train_data": train, "base": base}})
            assert r.status_code == 400 and why in r.json()["error"]["message"], (base, r.text)
    # the CLI says so in its error (its local data sent first is no job either)
    refused = server.cli("finetune", "--name", "hub-base", "--base", "bert-base-uncased", "--data", train,
                         "--no-follow", check=False)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "Traceback" not in said, said
    assert "not downloaded from the Hugging Face Hub" in said, said
    assert "hub-base" not in {j["name"] for j in json.loads(server.cli("job", "list", "--json").stdout)}

    # a model of the registry given by its name alone is a base: pinned to its version at submit
    with server.api() as api:
        r = api.post("/jobs", json={"name": "tiny-model", "model_name": "tiny",
                                    "command": ["python", "-c", TINY_MODEL]})
        assert r.status_code == 201, r.text
    made = server.wait_for(lambda api: (j := api.get("/jobs/tiny-model").json())["status"] in ("SUCCEEDED", "FAILED")
                           and j)
    assert made["status"] == "SUCCEEDED" and made["result"]["model"] == "tiny:1", (made, logs(server, "tiny-model"))
    with server.api() as api:
        r = api.post("/jobs", json={"name": "from-tiny", "max_restarts": 0,
                                    "finetune": {"train_data": train, "base": "tiny"}})
        assert r.status_code == 201, r.text
        api.post("/jobs/from-tiny/cancel")  # its base is no transformers model: only the submit is under test
        # and so is a model folder of the server's (a transformers model: its config.json)
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "config.json").write_text("{}")
        r = api.post("/jobs", json={"name": "from-folder", "max_restarts": 0,
                                    "finetune": {"train_data": train, "base": str(tmp_path / "mine")}})
        assert r.status_code == 201, r.text
        api.post("/jobs/from-folder/cancel")
    with sqlite3.connect(server.home / "fermion.db") as db:
        specs = dict(db.execute("SELECT name, spec FROM jobs WHERE name IN ('from-tiny', 'from-folder')").fetchall())
    assert json.loads(specs["from-tiny"])["base_model"]["ref"] == "tiny:1", specs
    assert json.loads(specs["from-folder"])["config"]["base"] == str(tmp_path / "mine"), specs
