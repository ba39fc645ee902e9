"""Photons that misbehave on purpose, for tests."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

from fermion import Photon, handler
from fermion.errors import RemoteError


class SlowInit(Photon):
    def init(self) -> None:
        time.sleep(float(os.environ.get("SLOW_INIT_S", "2")))

    @handler
    def ping(self) -> str:
        return "pong"


class FailingInit(Photon):
    def init(self) -> None:
        raise RuntimeError("model weights not found at /nowhere")

    @handler
    def ping(self) -> str:
        return "pong"


class Slow(Photon):
    @handler
    def work(self, seconds: float) -> dict[str, float]:
        time.sleep(seconds)
        return {"slept": seconds}


class Versioned(Photon):
    """Answers with the VERSION its replica was deployed with."""

    resources = {"cpus": 0.25, "memory_gb": 0.25}

    @handler
    def version(self) -> dict[str, str]:
        time.sleep(0.005)
        return {"version": os.environ.get("VERSION", "?"), "replica": os.environ.get("FERMION_REPLICA_ID", "?")}


class Flaky(Photon):
    """Answers with its VERSION; fails a FAIL_SHARE of its calls: a bad release (500), or with
    FAIL_STATUS=502 a replica whose backing service is failing it."""

    resources = {"cpus": 0.25, "memory_gb": 0.25}

    @handler
    def version(self) -> dict[str, str]:
        time.sleep(0.002)
        if random.random() < float(os.environ.get("FAIL_SHARE", "0")):
            status = int(os.environ.get("FAIL_STATUS", "500"))
            if status != 500:
                raise RemoteError(status, "the service behind this replica failed (on purpose)")
            raise RuntimeError("this release is broken (on purpose)")
        return {"version": os.environ.get("VERSION", "?")}


class CrashOnInit(Photon):
    resources = {"cpus": 0.25, "memory_gb": 0.25}

    def init(self) -> None:
        raise RuntimeError("CUDA driver missing (on purpose)")

    @handler
    def ping(self) -> str:
        return "pong"


class Snoop(Photon):
    """Tries what a workload must not be able to do: read the server's files, see its environment,
    use more memory than it declared."""

    resources = {"cpus": 0.25, "memory_gb": 0.25}

    @handler
    def read(self, path: str) -> dict[str, str]:
        try:
            with open(path, "rb") as f:
                return {"content": f.read(4096).decode(errors="replace")}
        except OSError as exc:
            return {"error": type(exc).__name__}

    @handler
    def environ(self) -> dict[str, str]:
        return dict(os.environ)

    @handler
    def hunt(self, needles: list[str], skip: list[str]) -> dict[str, object]:
        """Every regular file it can read (but under ``skip``) that holds one of ``needles``."""
        wanted = [n.encode() for n in needles]
        found, read = [], 0
        for root, dirs, names in os.walk("/"):
            if root in ("/proc", "/sys", "/dev") or any(root == s or root.startswith(s + "/") for s in skip):
                dirs[:] = []
                continue
            for name in names:
                path = os.path.join(root, name)
                try:
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode) or info.st_size > 4 << 20:
                        continue
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                read += 1
                if any(n in data for n in wanted):
                    found.append(path)
        return {"found": found, "read": read, "top": sorted(os.listdir("/"))}

    @handler
    def call(self, url: str, headers: dict[str, str]) -> int:
        """The status of a direct call to ``url`` (another replica, say)."""
        request = urllib.request.Request(url, data=b"{}", headers={"content-type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code

    @handler
    def reach(self, tcp: list[list], unix: list[str], routes: list[str], token: str) -> dict[str, object]:
        """What it can connect to: TCP addresses and Unix sockets (each "connected" or the error),
        and the server's workload socket (the status of a GET of each route, with ``token``)."""
        import http.client
        import socket

        out: dict[str, object] = {}
        for host, port in tcp:
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
                out[f"{host}:{port}"] = "connected"
            except OSError as exc:
                out[f"{host}:{port}"] = type(exc).__name__
        for path in unix:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                out[path] = "connected"
            except OSError as exc:
                out[path] = type(exc).__name__
            finally:
                s.close()
        api = os.environ.get("FERMION_SERVER_SOCKET", "")
        out["api_socket"] = api
        for route in routes if api else []:
            conn = http.client.HTTPConnection("fermion")
            conn.sock = socket.socket(socket.AF_UNIX)
            conn.sock.connect(api)
            conn.request("GET", route, headers={"Authorization": f"Bearer {token}"})
            out[route] = conn.getresponse().status
            conn.close()
        return out

    @handler
    def hog(self, mb: int) -> int:
        block = bytearray(mb << 20)
        for i in range(0, len(block), 4096):  # touch every page so it is really resident
            block[i] = 1
        return len(block)


class LatencyBound(Photon):
    """A batched handler whose batches cost 100 ms, with a 300 ms latency target."""

    @handler(batch={"max_size": 4, "max_wait_ms": 1, "max_latency_ms": 300})
    def work(self, items: list[float]) -> list[float]:
        time.sleep(0.1)
        return items


# What a workload on a Ray cloud tries against the cluster it runs on, with no token: argv is the
# GCS address, the hex ids of the nodes to drain, the sha256 of a secret to look for (never the
# secret itself; "" looks for nothing) and a JSON list of folders to skip. It prints one line,
# RAY-ATTACKS {json}: each attack's outcome ("succeeded: ..." or "refused: ..."), and under "found"
# every place it can read (its environment, a file, a process's environ or cmdline) holding the secret.
RAY_ATTACKS = r'''
import hashlib, json, os, re, stat, sys, urllib.request
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "2")  # a refused ray.init gives up in seconds
gcs, node_ids, digest, skip = sys.argv[1], sys.argv[2].split(","), sys.argv[3], json.loads(sys.argv[4])
out, found = {}, []

def attempt(name, call):
    try:
        out[name] = "succeeded: " + repr(call())[:300]
        return True
    except BaseException as exc:  # noqa: BLE001 - every way of failing is an answer
        out[name] = f"refused: {type(exc).__name__}: {exc}"[:500]
        return False

import grpc
from ray.core.generated import autoscaler_pb2, autoscaler_pb2_grpc, gcs_service_pb2, gcs_service_pb2_grpc
channel = grpc.insecure_channel(gcs)
# a token only where one was given (a control run from outside): a workload has none
auth = [("authorization", "Bearer " + os.environ["RAY_AUTH_TOKEN"])] if os.environ.get("RAY_AUTH_TOKEN") else []
attempt("kv_put", lambda: gcs_service_pb2_grpc.InternalKVGcsServiceStub(channel).InternalKVPut(
    gcs_service_pb2.InternalKVPutRequest(namespace=b"fermion", key=b"workload:planted", value=b"{}", overwrite=True),
    timeout=10, metadata=auth).added)
attempt("drain_nodes", lambda: gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).DrainNode(
    gcs_service_pb2.DrainNodeRequest(drain_node_data=[gcs_service_pb2.DrainNodeData(node_id=bytes.fromhex(n))
                                                      for n in node_ids]), timeout=10, metadata=auth).status)
attempt("autoscaler_drain_node", lambda: autoscaler_pb2_grpc.AutoscalerStateServiceStub(channel).DrainNode(
    autoscaler_pb2.DrainNodeRequest(node_id=bytes.fromhex(node_ids[0]), reason=1, reason_message="gone"),
    timeout=10, metadata=auth).is_accepted)

import ray
from ray._private import services
services.resolve_ip_for_localhost = lambda host: host  # the cluster listens on loopback only
if all("UNAVAILABLE" in out[k] for k in ("kv_put", "drain_nodes", "autoscaler_drain_node")):
    # no path to the GCS at all (a namespace of its own): Ray's own clients would retry for a minute, then fail
    out["gcs_client_drain_nodes"] = out["ray_init"] = "refused: no path to the GCS (every gRPC call above found none)"
    joined = False
else:
    attempt("gcs_client_drain_nodes",
            lambda: ray._raylet.GcsClient(address=gcs).drain_nodes([bytes.fromhex(n) for n in node_ids], timeout=10))
    joined = attempt("ray_init", lambda: ray.init(address=gcs, namespace="fermion", log_to_driver=False))
if joined:
    from ray.experimental import internal_kv
    attempt("kv_put_driver", lambda: internal_kv._internal_kv_put("workload:planted", "{}", namespace="fermion"))
    attempt("actor", lambda: ray.get(ray.remote(num_cpus=0)(type("Probe", (), {"ping": lambda self: "pong"}))
                                     .remote().ping.remote(), timeout=30))
else:  # what needs a driver cannot be tried: ray.init would start a cluster of its own
    out["kv_put_driver"] = out["actor"] = "refused: ray.init failed: " + out["ray_init"]
attempt("dashboard_job", lambda: urllib.request.urlopen(urllib.request.Request(
    "http://127.0.0.1:8265/api/jobs/", data=json.dumps({"entrypoint": "ray stop --force"}).encode(),
    headers={"content-type": "application/json"}), timeout=10).status)

# where the secret could be: hex runs at least as long as a token, each window of that length hashed
def holds(data):
    for run in re.findall(rb"[0-9a-fA-F]{64,}", data):
        if any(hashlib.sha256(run[i:i + 64]).hexdigest() == digest for i in range(len(run) - 63)):
            return True
    return False

read = 0
if digest and holds("\n".join(f"{k}={v}" for k, v in os.environ.items()).encode()):
    found.append("environment")
for pid in [p for p in os.listdir("/proc") if p.isdigit()] if digest else []:
    for what in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{what}", "rb") as f:
                data = f.read()
        except OSError:
            continue
        read += 1
        if holds(data):
            found.append(f"/proc/{pid}/{what}")
for root, dirs, names in os.walk("/") if digest else []:
    if root in ("/proc", "/sys", "/dev") or any(root == s or root.startswith(s + "/") for s in skip):
        dirs[:] = []
        continue
    for name in names:
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_size > 4 << 20:
                continue
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        read += 1
        if holds(data):
            found.append(path)
print("RAY-ATTACKS " + json.dumps({"attacks": out, "found": found, "read": read, "top": sorted(os.listdir("/"))}),
      flush=True)
'''


class RayAttacker(Snoop):
    """A Snoop that also attacks the Ray cluster its replica runs on (see RAY_ATTACKS)."""

    resources = {"cpus": 0.25, "memory_gb": 1.0}  # the attacks import Ray

    @handler
    def attack(self, gcs: str, node_ids: list[str], digest: str, skip: list[str]) -> dict[str, object]:
        done = subprocess.run([sys.executable, "-c", RAY_ATTACKS, gcs, ",".join(node_ids), digest, json.dumps(skip)],
                              capture_output=True, text=True, timeout=240)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RAY-ATTACKS ")), None)
        if line is None:
            return {"error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
        return json.loads(line.removeprefix("RAY-ATTACKS "))
