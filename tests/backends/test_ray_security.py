"""A workload on a Ray cloud cannot take the cluster down (security issue, item 2): the cluster
requires Ray's token authentication, the server joins with the token, and a replica or a job that
attacks the GCS on loopback (KV writes, DrainNode, a driver, an actor, a dashboard job) is refused,
finds the token nowhere it can read, and the cloud keeps serving.

One real local Ray cluster and one real server for the whole file: starting either is slow."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import pytest

pytest.importorskip("ray")

import grpc  # noqa: E402
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc  # noqa: E402

from fermion.backends import Isolation, ProvisionError  # noqa: E402
from fermion.backends import _ray  # noqa: E402
from fermion.errors import UserInputError  # noqa: E402
from fermion.testing import LocalRayCluster, ServerProc, local_ray_cluster, running_server  # noqa: E402
from tests.photon.fixture_photons import RAY_ATTACKS  # noqa: E402
from tests.support import FIXTURE_PHOTONS, TEXT_PHOTON  # noqa: E402

pytestmark = pytest.mark.timeout(400)
ISOLATION = Isolation(memory_limits=False, task_limits=False)
NETWORKED = ISOLATION.network  # a workload then has no path to the cluster at all
sandboxed = pytest.mark.skipif(ISOLATION.bwrap is None,
                               reason="bubblewrap cannot run on this machine: Ray nodes refuse workloads")
DASHBOARD_PORT = 8265  # Ray's default; a LocalRayCluster starts no dashboard
ATTACKS = ("kv_put", "drain_nodes", "autoscaler_drain_node", "gcs_client_drain_nodes", "ray_init", "kv_put_driver",
           "actor", "dashboard_job")
NO_TOKEN_NOTE = "Ray cluster without token authentication"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    with local_ray_cluster({"ray-a": 2}) as c:
        print(f"local Ray cluster started in {c.started_in_s:.1f}s")
        yield c


@pytest.fixture(scope="module")
def server(cluster: LocalRayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    clouds = (f'clouds:\n  - name: ray-a\n    kind: ray\n    address: "{cluster.address}"\n'
              f'    node_resource: fermion-node-ray-a\n    auth_token_file: "{cluster.token_file}"\n')
    # the server starts with Ray's authentication off and no token in its environment: it joins with
    # the token of auth_token_file alone
    with running_server(tmp_path_factory.mktemp("ray-security") / "home", clouds,
                        env={"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": ""}) as s:
        s.cli("deploy", TEXT_PHOTON, "--name", "target", "--public", "--cloud", "ray-a", "--timeout", "180")
        s.cli("deploy", f"{FIXTURE_PHOTONS}:RayAttacker", "--name", "attacker", "--public", "--cloud", "ray-a",
              "--timeout", "180")
        yield s


def attack_args(cluster: LocalRayCluster) -> tuple[list[str], str, list[str]]:
    """What a workload is given: node ids and the token's digest (never the token), folders to skip."""
    skip = sorted({sys.prefix, sys.base_prefix, "/usr"})  # installed code: read-only, large, never written by Fermion
    return [cluster.node_id("ray-a")], hashlib.sha256(cluster.token.encode()).hexdigest(), skip


def assert_refused(result: dict, where: str, *, no_path: bool = False) -> None:
    """Every attack failed: for want of a token, or (``no_path``: a workload in a network namespace of its
    own) because nothing of the cluster can be reached at all."""
    attacks = result["attacks"]
    assert set(attacks) == set(ATTACKS), result
    succeeded = {name: outcome for name, outcome in attacks.items() if not outcome.startswith("refused")}
    assert succeeded == {}, f"from {where}, attacks on the Ray cluster succeeded: {succeeded}"
    for name in ("kv_put", "drain_nodes", "autoscaler_drain_node"):  # refused for a reason, not by chance
        assert ("UNAVAILABLE" if no_path else "UNAUTHENTICATED") in attacks[name], attacks[name]
    if not no_path:
        assert "AuthenticationError" in attacks["gcs_client_drain_nodes"], attacks["gcs_client_drain_nodes"]
    assert "ConnectionRefusedError" in attacks["dashboard_job"] or "Connection refused" in attacks["dashboard_job"]
    # and the token is nowhere it can read: environment, files, /proc
    assert result["read"] > 0 and result["found"] == [], f"from {where}, the token was found in {result['found']}"
    assert not {"home", "var", "opt", "run", "srv", "mnt"} & set(result["top"]), result["top"]


def assert_cloud_serves(server: ServerProc, cluster: LocalRayCluster) -> None:
    with server.api() as api:
        answers = [api.post(f"{server.url}/d/target/upper", json={"texts": [f"t{i}"]}) for i in range(20)]
        clouds = {c["name"]: c for c in api.get("/clouds").json()}
    assert [a.status_code for a in answers] == [200] * 20 and answers[-1].json() == ["T19"]
    assert clouds["ray-a"]["health"] == "healthy" and clouds["ray-a"]["capacity"]["cpus"] == 2  # no node drained
    assert gcs_kv(cluster, b"workload:planted") is None


def gcs_kv(cluster: LocalRayCluster, key: bytes) -> bytes | None:
    """A key of namespace ``fermion`` in the cluster's KV store, read with the token."""
    metadata = [("authorization", f"Bearer {cluster.token}")]
    with grpc.insecure_channel(cluster.address) as channel:
        reply = gcs_service_pb2_grpc.InternalKVGcsServiceStub(channel).InternalKVGet(
            gcs_service_pb2.InternalKVGetRequest(namespace=b"fermion", key=key), timeout=10, metadata=metadata)
    return reply.value if reply.status.code == 0 else None


# -- the cluster and the server --------------------------------------------------------------------


def test_the_cluster_requires_its_token_and_the_server_joined_with_it(server: ServerProc,
                                                                      cluster: LocalRayCluster) -> None:
    assert _ray.gcs_answers(cluster.address) is False  # no token: refused
    assert _ray.gcs_answers(cluster.address, "0" * 64) is False  # a wrong one too
    assert _ray.gcs_answers(cluster.address, cluster.token) is True
    assert cluster.token_file.stat().st_mode & 0o777 == 0o600 and cluster.token_file.is_relative_to("/tmp")
    clouds = {c["name"]: c for c in json.loads(server.cli("cloud", "list", "--json").stdout)}
    assert clouds["ray-a"]["capacity"]["cpus"] == 2 and NO_TOKEN_NOTE not in clouds["ray-a"]["isolation"]
    assert "no token authentication" not in server.log.read_text()
    # no dashboard, so no job submission over HTTP: nothing listens on its port
    assert not cluster.cluster.webui_url
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", DASHBOARD_PORT)) != 0


def test_the_attacks_work_with_the_token(cluster: LocalRayCluster) -> None:
    """The control: from a process that holds the token, the same calls get through (drains of a
    node that does not exist), so the refusals below are the token's doing."""
    bogus = os.urandom(28).hex()
    done = subprocess.run([sys.executable, "-c", RAY_ATTACKS, cluster.address, bogus, "", "[]"], capture_output=True,
                          text=True, timeout=180, env={**os.environ, **cluster.auth_env})
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RAY-ATTACKS ")), None)
    assert line is not None, done.stderr[-3000:]
    attacks = json.loads(line.removeprefix("RAY-ATTACKS "))["attacks"]
    assert all(attacks[name].startswith("succeeded") for name in ATTACKS if name != "dashboard_job"), attacks
    assert gcs_kv(cluster, b"workload:planted") == b"{}"
    # what the control planted goes, before the workloads try
    metadata = [("authorization", f"Bearer {cluster.token}")]
    with grpc.insecure_channel(cluster.address) as channel:
        gcs_service_pb2_grpc.InternalKVGcsServiceStub(channel).InternalKVDel(
            gcs_service_pb2.InternalKVDelRequest(namespace=b"fermion", key=b"workload:planted"), timeout=10,
            metadata=metadata)
    assert gcs_kv(cluster, b"workload:planted") is None


# -- from the inside -------------------------------------------------------------------------------


@sandboxed
def test_a_replica_cannot_attack_the_ray_cluster_nor_find_its_token(server: ServerProc,
                                                                     cluster: LocalRayCluster) -> None:
    node_ids, digest, skip = attack_args(cluster)
    with server.api() as api:
        answer = api.post(f"{server.url}/d/attacker/attack", timeout=300,
                          json={"gcs": cluster.address, "node_ids": node_ids, "digest": digest, "skip": skip})
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert "error" not in result, result["error"]
        assert_refused(result, "a replica", no_path=NETWORKED)
        env = api.post(f"{server.url}/d/attacker/environ", json={}).json()
    assert cluster.token not in json.dumps(env) and not {"RAY_AUTH_TOKEN", "RAY_AUTH_MODE"} & set(env)
    assert_cloud_serves(server, cluster)


@sandboxed
def test_a_job_cannot_attack_the_ray_cluster_nor_find_its_token(server: ServerProc, cluster: LocalRayCluster) -> None:
    node_ids, digest, skip = attack_args(cluster)
    command = ["python", "-c", RAY_ATTACKS, cluster.address, ",".join(node_ids), digest, json.dumps(skip)]
    with server.api() as api:
        created = api.post("/jobs", json={"name": "ray-attack", "command": command, "clouds": ["ray-a"],
                                          "resources": {"cpus": 0.5, "memory_gb": 1}})
        assert created.status_code == 201, created.text
    job = server.wait_for(lambda api: (j := api.get("/jobs/ray-attack").json())["status"] in ("SUCCEEDED", "FAILED")
                          and j, timeout=300)
    with server.api() as api:
        logs = "\n".join(api.get("/jobs/ray-attack/logs").json().values())
    assert job["status"] == "SUCCEEDED" and job["attempts"][0]["cloud"] == "ray-a", logs[-3000:]
    line = next((ln for ln in logs.splitlines() if "RAY-ATTACKS " in ln), None)
    assert line is not None, logs[-3000:]
    assert_refused(json.loads(line.split("RAY-ATTACKS ", 1)[1]), "a job", no_path=NETWORKED)
    assert cluster.token not in logs
    assert_cloud_serves(server, cluster)


# -- how the server joins: a fake GCS, with or without token checks -------------------------------


class FakeGcs(gcs_service_pb2_grpc.InternalKVGcsServiceServicer):
    """Answers InternalKVGet; with a ``token``, only calls that carry it (as Ray's GCS does)."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def InternalKVGet(self, request: gcs_service_pb2.InternalKVGetRequest,  # noqa: N802 - gRPC's name
                      context: grpc.ServicerContext) -> gcs_service_pb2.InternalKVGetReply:
        if self.token is not None and dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken: Authentication token is missing")
        return gcs_service_pb2.InternalKVGetReply()


@pytest.fixture
def fake_gcs() -> Iterator[Callable[[str | None], str]]:
    servers: list[grpc.Server] = []

    def start(token: str | None) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        gcs_service_pb2_grpc.add_InternalKVGcsServiceServicer_to_server(FakeGcs(token), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def test_joining_a_cluster_without_token_authentication_warns(fake_gcs: Callable[[str | None], str],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    address = fake_gcs(None)
    with caplog.at_level(logging.WARNING, logger="fermion.ray"):
        assert _ray._check_auth("open", address, None) is False
        assert _ray._check_auth("open", address, "a-token-it-ignores") is False
    warnings = [r.getMessage() for r in caplog.records if r.name == "fermion.ray"]
    assert len(warnings) == 2 and all("answers calls that carry no token" in w and "drain" in w for w in warnings)


def test_a_cluster_that_requires_a_token_is_refused_at_once_without_the_right_one(
        fake_gcs: Callable[[str | None], str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # no token of Ray's own settings either
    address = fake_gcs("the-token")
    began = time.monotonic()
    with pytest.raises(ProvisionError, match="requires token authentication and this server has no token"):
        _ray._check_auth("closed", address, None)
    with pytest.raises(ProvisionError, match="refuses this server's token"):
        _ray._check_auth("closed", address, "not-the-token")
    assert time.monotonic() - began < 10  # not ray.init's 20 s of retries
    with caplog.at_level(logging.WARNING, logger="fermion.ray"):
        assert _ray._check_auth("closed", address, "the-token") is True
    assert not [r for r in caplog.records if r.name == "fermion.ray"]


def test_an_auth_token_file_must_be_the_servers_alone_and_out_of_the_sandboxes_view(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "ray-token"
    token_file.write_text("tok-123\n")
    token_file.chmod(0o644)
    with pytest.raises(UserInputError, match="readable by it alone"):
        _ray.read_token_file(token_file, "cloud x")
    token_file.chmod(0o600)
    assert _ray.read_token_file(token_file, "cloud x") == "tok-123"
    (tmp_path / "empty").touch(mode=0o600)
    with pytest.raises(UserInputError, match="is empty"):
        _ray.read_token_file(tmp_path / "empty", "cloud x")
    with pytest.raises(UserInputError, match="cannot read"):
        _ray.read_token_file(tmp_path / "missing", "cloud x")
    # kept in a folder every sandbox shows (say, inside the Python installation): refused
    monkeypatch.setattr(_ray, "host_view", lambda: ([tmp_path], []))
    with pytest.raises(UserInputError, match="every sandboxed workload can read"):
        _ray.read_token_file(token_file, "cloud x")
