"""Ray clusters as clouds, end to end: a real local Ray cluster with a node per cloud, a real
server, real replicas serving through the gateway, real node deaths."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")

from fermion.testing import LocalRayCluster, local_ray_cluster  # noqa: E402
from fermion.testing import Load, ServerProc, running_server  # noqa: E402
from tests.support import EXAMPLES, TEXT_PHOTON  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def clouds_yaml(address: str) -> str:
    ray_cloud = """
  - name: {name}
    kind: ray
    address: "{address}"
    node_resource: fermion-node-{name}
    pricing: {{price_per_hour: {price}}}"""
    return "clouds:\n  - name: local\n    pricing: {price_per_hour: 0.5}" + "".join(
        ray_cloud.format(name=n, address=address, price=p) for n, p in (("ray-a", 0.1), ("ray-b", 0.2), ("ray-c", 0.3)))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    with local_ray_cluster({"ray-a": 2, "ray-b": 2, "ray-c": 2}) as c:
        yield c


@pytest.fixture(scope="module")
def server(cluster: LocalRayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("ray") / "home", clouds_yaml(cluster.address)) as s:
        yield s


def ready(server: ServerProc, name: str) -> list[dict]:
    return [r for r in server.deployment(name)["replica_list"] if r["state"] == "READY"]


def test_ray_clouds_are_listed_with_their_nodes_capacity(server: ServerProc) -> None:
    clouds = {c["name"]: c for c in json.loads(server.cli("cloud", "list", "--json").stdout)}
    assert clouds["ray-a"]["kind"] == "ray" and clouds["ray-a"]["capacity"]["cpus"] == 2
    assert clouds["local"]["kind"] == "local"


def test_a_deployment_spans_a_ray_cloud_and_a_local_one(server: ServerProc) -> None:
    server.cli("deploy", TEXT_PHOTON, "--name", "mixed", "--replicas", "2", "--public",
               "--cloud", "ray-a", "--cloud", "local", "--timeout", "120")
    assert {r["cloud"] for r in ready(server, "mixed")} == {"ray-a", "local"}
    with server.api() as api:
        for _ in range(20):
            assert api.post(f"{server.url}/d/mixed/upper", json={"texts": ["ray"]}).json() == ["RAY"]
        logs = api.get("/deployments/mixed/logs").json()
    assert len(logs) == 2  # the Ray replica's log came back through its backend
    server.cli("deployment", "delete", "mixed")


def test_distributed_training_runs_on_a_ray_node(server: ServerProc) -> None:
    server.cli("job", "run", "--name", "ddp-ray", "--workers", "2", "--cloud", "ray-a", "--follow", "--timeout", "120",
               "--workdir", str(EXAMPLES / "jobs"), "--", "python", "ddp.py")
    with server.api() as api:
        job = api.get("/jobs/ddp-ray").json()
        text = "\n".join(api.get("/jobs/ddp-ray/logs").json().values())
    assert job["status"] == "SUCCEEDED" and job["attempts"][0]["cloud"] == "ray-a"
    assert "rank 0 of world_size=2: all-reduced sum=3" in text and "rank 1 of world_size=2" in text


def test_a_killed_actor_then_a_dead_node_are_replaced_with_no_failed_call(server: ServerProc,
                                                                           cluster: LocalRayCluster) -> None:
    server.cli("deploy", TEXT_PHOTON, "--name", "onray", "--replicas", "2", "--public",
               "--cloud", "ray-b", "--cloud", "ray-c", "--timeout", "120")
    assert {r["cloud"] for r in ready(server, "onray")} == {"ray-b", "ray-c"}
    with Load(f"{server.url}/d/onray/upper", {"texts": ["x"]}, workers=4) as load:
        time.sleep(1)
        on_c = next(r for r in ready(server, "onray") if r["cloud"] == "ray-c")
        cluster.kill_actor(f"fermion-{on_c['id']}")
        server.wait_for(lambda api: len([r for r in api.get("/deployments/onray").json()["replica_list"]
                                         if r["state"] == "READY" and r["id"] != on_c["id"]]) == 2, timeout=90)
        on_b = next(r for r in ready(server, "onray") if r["cloud"] == "ray-b")
        cluster.kill_node("ray-b")  # the other replica's whole node
        server.wait_for(lambda api: len([r for r in api.get("/deployments/onray").json()["replica_list"]
                                         if r["state"] == "READY" and r["id"] != on_b["id"]]) == 2, timeout=90)
        time.sleep(0.5)
    assert load.failures == [] and load.ok > 50
    events = server.cli("events", "--object", on_b["id"], "--json").stdout
    assert "lost" in events  # its node died: not counted as the photon's crash
    assert all(r["cloud"] == "ray-c" for r in ready(server, "onray"))  # ray-b has no node left
    server.cli("deployment", "delete", "onray")


CHECKPOINTING = """
import json, os, pathlib, time
ckpt = pathlib.Path(os.environ["FERMION_CHECKPOINT_DIR"]) / "step.json"
step = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
print(f"attempt {os.environ['FERMION_ATTEMPT']} on {os.environ['FERMION_CLOUD']} resumes at step {step}", flush=True)
while step < 80:  # 8 s: time for a checkpoint to reach the stores before the node dies
    step += 1
    time.sleep(0.1)
    tmp = ckpt.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step}))
    os.replace(tmp, ckpt)
print("done at step", step, flush=True)
"""


def test_a_checkpointing_job_resumes_after_its_ray_node_dies(server: ServerProc, cluster: LocalRayCluster,
                                                             tmp_path: Path) -> None:
    with server.api() as api:
        assert api.post("/jobs", json={"name": "steps", "command": ["python", "-c", CHECKPOINTING],
                                       "clouds": ["ray-a", "ray-c"], "resources": {"cpus": 0.5, "memory_gb": 0.5}},
                        ).status_code == 201
    first = server.wait_for(lambda api: (j := api.get("/jobs/steps").json())["status"] == "RUNNING" and j)
    assert first["attempts"][0]["cloud"] == "ray-a"  # the cheapest
    # a checkpoint reached the stores (a loaded machine may take seconds to get there): then the node dies
    server.wait_for(lambda api: "checkpoint snapshot of" in "".join(api.get("/jobs/steps/logs").json().values()),
                    timeout=120)
    cluster.kill_node("ray-a")
    done = server.wait_for(lambda api: (j := api.get("/jobs/steps").json())["status"] in ("SUCCEEDED", "FAILED") and j,
                           timeout=120)
    assert done["status"] == "SUCCEEDED", done
    assert [a["state"] for a in done["attempts"]] == ["PREEMPTED", "SUCCEEDED"]
    assert done["attempts"][1]["cloud"] == "ray-c"
    logs = server.cli("job", "logs", "steps").stdout
    resumed_at = int(logs.split("attempt 2 on ray-c resumes at step ")[1].split()[0])
    assert resumed_at > 0  # from the checkpoint the dead node's attempt wrote, not from scratch
