"""One conformance suite for every backend: what the control plane may rely on, whatever runs the
workloads. Each test runs against the local backend (processes on this machine), the Ray
backend (actors on a real two-node Ray cluster on 127.0.0.1) and an agent cloud (a real agent
process dialling in to the server's routes over HTTP), with real replicas and job attempts."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from fermion.backends import (
    Backend,
    FaultInjector,
    Handle,
    Isolation,
    LocalBackend,
    ProvisionError,
    Status,
    Workload,
)
from fermion.clouds import CloudConfig, Injected
from fermion.errors import UserInputError
from fermion.testing import replica as replica_http
from fermion.testing import socket_path
from fermion.photon._package import build_archive
from tests.support import TEXT_PHOTON

if TYPE_CHECKING:
    from fermion.backends import LocalRayCluster

T = TypeVar("T")
SECRET = "conformance-secret"
AUTH = "x-fermion-replica-auth"
SMALL = {"cpus": 0.25, "memory_gb": 0.25}
SLEEPER = ["python", "-c", "import time; time.sleep(60)"]
# a job whose own child would outlive it unless the backend ends the whole session
SPAWNER = ["python", "-c", "import subprocess, sys, time; "
           "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
           "print('grandchild', p.pid, flush=True); time.sleep(60)"]


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def new_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def host_pid(printed: int, root: int) -> int:
    """The pid on this machine of the process that printed its pid as ``printed``, under the
    workload's first process ``root``: in a sandbox (its own pid namespace) the two differ."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            nspid = (entry / "status").read_text().split("NSpid:")[1].split("\n")[0].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        if nspid and int(nspid[-1]) == printed and root in (pid, *_ancestors(pid)):
            return pid
    raise AssertionError(f"no process {printed} under {root}")


@dataclass
class Harness:
    """A backend under test, and how to do to its workloads what the world outside might."""

    backend: Backend
    kill_from_outside: Callable[[Handle], None]  # the process (local) or actor (ray) dies, not by stop()
    pid_of: Callable[[Handle], int | None]  # the workload's first process, on this machine
    folder_of: Callable[[Handle], Path | None]  # a folder the backend removes once the workload is gone
    lost_when_killed: bool  # a backend that cannot tell a crash from a lost node says "lost"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("photon") / "text.photon"
    build_archive(TEXT_PHOTON, out)
    return out


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    pytest.importorskip("ray")
    from fermion.backends import local_ray_cluster

    # node "a" runs the conformance workloads; node "b" is pinned to, then killed, by its own test
    with local_ray_cluster({"a": 4, "b": 2}) as cluster:
        print(f"local Ray cluster started in {cluster.started_in_s:.1f}s")
        yield cluster


def _local_harness(tmp: pytest.TempPathFactory) -> Harness:
    backend = LocalBackend(CloudConfig(name="loc"), tmp.mktemp("workloads"), server_home=tmp.mktemp("home"),
                           isolation=Isolation(sandbox=False, memory_limits=False))

    def kill(handle: Handle) -> None:  # the whole group: nothing of it is left running after the test
        os.killpg(int(handle["pid"]), signal.SIGKILL)

    # the local backend keeps a workload's folder (its log and exit code) after it ended
    return Harness(backend, kill, lambda h: int(h["pid"]), lambda h: None, lost_when_killed=False)


def _ray_harness(cluster: LocalRayCluster) -> Harness:
    import ray

    from fermion.backends import RayBackend

    # the node's default isolation, as a server asks for: sandboxed where bubblewrap runs (so this
    # suite checks drains, exit codes, logs and deaths through the sandbox), with memory limits
    backend = RayBackend(CloudConfig(name="ray-a", kind="ray", address=cluster.address,
                                     node_resource="fermion-node-a"))

    def kill(handle: Handle) -> None:
        ray.kill(ray.get_actor(handle["actor"], namespace="fermion"))

    def pid_of(handle: Handle) -> int | None:
        where = backend.where(handle)
        return int(where["pid"]) if where else None

    def folder_of(handle: Handle) -> Path | None:
        where = backend.where(handle)
        return Path(where["folder"]) if where else None

    return Harness(backend, kill, pid_of, folder_of, lost_when_killed=True)


@contextmanager
def _agent_harness(tmp: pytest.TempPathFactory) -> Iterator[Harness]:
    """The server's side of an agent cloud, in this process, behind the agent routes on real HTTP;
    the agent is a real `fermion agent start` process that dials in to them."""
    from fermion.testing import agent_cloud

    with agent_cloud(tmp.mktemp("agent")) as backend:

        def kill(handle: Handle) -> None:  # sandboxed: the pid is the sandbox's init, in its outside's group
            os.killpg(os.getpgid(int(handle["pid"])), signal.SIGKILL)

        yield Harness(backend, kill, lambda h: int(h["pid"]), lambda h: None, lost_when_killed=False)


@pytest.fixture(scope="module", params=["local", "ray", "agent"])
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    if request.param == "agent":
        with _agent_harness(tmp_path_factory) as h:
            yield h
        return
    h = _local_harness(tmp_path_factory) if request.param == "local" else _ray_harness(
        request.getfixturevalue("ray_cluster"))
    yield h
    h.backend.close()


@pytest.fixture
def start(harness: Harness) -> Iterator[Callable[..., Handle]]:
    """Start a workload on the backend under test; every one is force-stopped after the test."""
    handles: list[Handle] = []

    def run(kind: str = "job", *, backend: Backend | None = None, **fields: Any) -> Handle:
        workload = Workload(id=new_id(), kind=kind, **{**SMALL, **fields})  # type: ignore[arg-type]
        handle = (backend or harness.backend).start(workload)
        handles.append(handle)
        return handle

    yield run
    for handle in handles:
        harness.backend.stop(handle, force=True)


def wait_ended(backend: Backend, handle: Handle, timeout: float = 30.0) -> Status:
    return wait_for("the workload to end", lambda: (s := backend.status(handle)) and not s.alive and s, timeout)


def wait_ready(backend: Backend, handle: Handle, timeout: float = 60.0) -> str:
    """The replica's URL, once it answers /healthz with ready."""

    def ready() -> str | None:
        status = backend.status(handle)
        assert status.alive, f"the replica ended: {status}\n{backend.logs(handle)}"
        if status.url:
            try:
                if replica_http.get(f"{status.url}/healthz", timeout=2).json().get("status") == "ready":
                    return status.url
            except (httpx.HTTPError, ValueError):
                pass
        return None

    return wait_for("the replica to be ready", ready, timeout)


# -- the suite -----------------------------------------------------------------------------------


def test_a_replica_serves_at_its_url_answers_only_with_its_secret_and_drains(
        harness: Harness, start: Callable[..., Handle], archive: Path) -> None:
    backend = harness.backend
    handle = start("replica", archive=archive, secret=SECRET)
    assert handle["id"]
    url = wait_ready(backend, handle)
    # a port of the loopback, or (a local cloud's) a Unix socket in a folder of the backend's, not the replica's
    assert url.startswith("http://127.0.0.1:") or "/.sockets/" in (socket_path(url) or ""), url
    ok = replica_http.post(f"{url}/stats", json={"text": "a bb ccc"}, headers={AUTH: SECRET}, timeout=10)
    assert ok.status_code == 200 and ok.json()["words"] == 3
    assert replica_http.post(f"{url}/stats", json={"text": "a"}, timeout=10).status_code == 401
    assert replica_http.post(f"{url}/stats", json={"text": "a"}, headers={AUTH: "wrong"}, timeout=10).status_code == 401

    # drain: a request in flight when stop() comes still gets its whole answer
    answer: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: answer.setdefault("r", replica_http.post(
        f"{url}/count", json={"n": 6, "delay_s": 0.25}, headers={AUTH: SECRET}, timeout=30)))
    slow.start()
    time.sleep(0.5)
    backend.stop(handle)
    slow.join(30)
    assert answer["r"].status_code == 200 and answer["r"].text.count("square") == 6
    status = wait_ended(backend, handle)
    assert not status.lost and status.exit_code == 0


def test_a_job_attempt_reports_its_exit_code_and_logs_in_a_clean_environment(
        harness: Harness, start: Callable[..., Handle]) -> None:
    backend = harness.backend
    code = ("import os, sys; print('hello', os.environ['FERMION_CLOUD'], os.environ['DECLARED'], "
            "os.environ['FERMION_JOB'], 'PYTEST_CURRENT_TEST' in os.environ, flush=True); sys.exit(3)")
    handle = start(command=["python", "-c", code], env={"DECLARED": "yes", "FERMION_JOB": "j1"})
    status = wait_ended(backend, handle)
    assert status.exit_code == 3 and not status.lost
    # the server's own environment (here pytest's) does not leak into the workload
    assert f"hello {backend.name} yes j1 False" in backend.logs(handle)
    assert backend.status(handle).exit_code == 3  # asked again: the same answer
    assert "hello" in backend.logs(handle, tail=5)


def test_stop_force_kills_at_once_and_stop_is_idempotent(harness: Harness, start: Callable[..., Handle]) -> None:
    backend = harness.backend
    handle = start(command=SPAWNER)
    wait_for("the job to start", lambda: "grandchild" in backend.logs(handle))
    pid, folder = harness.pid_of(handle), harness.folder_of(handle)
    assert pid and backend.status(handle).alive
    grandchild = host_pid(int(backend.logs(handle).split("grandchild")[1].split()[0]), pid)
    began = time.monotonic()
    backend.stop(handle, force=True)
    status = wait_ended(backend, handle, timeout=10)
    assert time.monotonic() - began < 10 and not status.lost
    wait_for("the job's processes to exit", lambda: gone(pid) and gone(grandchild), timeout=10)
    assert "grandchild" in backend.logs(handle)  # what it wrote outlives it
    if folder is not None:
        assert not folder.exists()
    backend.stop(handle, force=True)  # again, and a drain of what has ended: no error
    backend.stop(handle)
    backend.stop({"id": "never-started"}, force=True)
    assert not backend.status({"id": "never-started"}).alive


def test_a_job_drained_with_stop_ends(harness: Harness, start: Callable[..., Handle]) -> None:
    handle = start(command=SLEEPER)
    wait_for("the job to start", lambda: harness.pid_of(handle))
    harness.backend.stop(handle)
    status = wait_ended(harness.backend, handle, timeout=20)
    assert not status.lost


def test_a_workload_killed_from_outside_reads_as_ended(harness: Harness, start: Callable[..., Handle]) -> None:
    backend = harness.backend
    handle = start(command=SPAWNER)
    wait_for("the job to start", lambda: "grandchild" in backend.logs(handle))
    pid, folder = harness.pid_of(handle), harness.folder_of(handle)
    assert pid
    grandchild = host_pid(int(backend.logs(handle).split("grandchild")[1].split()[0]), pid)
    harness.kill_from_outside(handle)
    status = wait_ended(backend, handle, timeout=20)
    assert status.lost == harness.lost_when_killed
    if status.lost:
        assert status.note == "ray actor or node died"
    # nothing of it runs on: not its first process, nor the process that one started
    wait_for("the job's processes to exit", lambda: gone(pid) and gone(grandchild), timeout=10)
    if folder is not None:
        wait_for("its folder to be removed", lambda: not folder.exists(), timeout=10)


def test_stop_by_id_alone_ends_a_workload_whose_handle_was_lost(
        harness: Harness, start: Callable[..., Handle]) -> None:
    backend = harness.backend
    handle = start(command=SLEEPER)
    pid = wait_for("the job to start", lambda: harness.pid_of(handle))
    # what a server that lost its database finds: the workload listed, with a handle that works
    listed = {h["id"]: h for h in backend.list_workloads()}
    assert handle["id"] in listed and backend.status(listed[handle["id"]]).alive
    backend.stop({"id": handle["id"]}, force=True)  # all a crash between "started" and "handle written" leaves
    assert not wait_ended(backend, {"id": handle["id"]}, timeout=10).alive
    wait_for("the job to exit", lambda: gone(pid), timeout=10)
    wait_for("it to leave the listing", lambda: handle["id"] not in {h["id"] for h in backend.list_workloads()})


def test_capacity_offerings_and_capabilities(harness: Harness) -> None:
    backend = harness.backend
    capacity = backend.capacity()
    assert capacity["cpus"] > 0 and capacity["memory_gb"] > 0
    offering = backend.offerings()[0]
    assert offering.cloud == backend.name and offering.vcpus > 0 and offering.memory_gb > 0
    capabilities = backend.capabilities()
    assert capabilities.regions and capabilities.gpus == 0 and capabilities.spot is False


def test_an_injected_outage_refuses_starts_until_it_recovers(
        harness: Harness, start: Callable[..., Handle]) -> None:
    faulty = FaultInjector(harness.backend)
    faulty.fail()
    with pytest.raises(ProvisionError, match="down"):
        start(command=["python", "-c", "pass"], backend=faulty)
    faulty.recover()
    handle = start(command=["python", "-c", "pass"], backend=faulty)
    assert wait_ended(faulty, handle).exit_code == 0


def test_a_spot_job_is_reclaimed_when_its_capacity_is(harness: Harness, start: Callable[..., Handle]) -> None:
    faulty = FaultInjector(harness.backend, Injected(spot_preempt_after_s=1))
    handle = start(command=SLEEPER, spot=True, backend=faulty)
    pid = wait_for("the job to start", lambda: harness.pid_of(handle))
    status = wait_ended(faulty, handle, timeout=20)
    assert status.lost and "spot capacity reclaimed" in status.note
    wait_for("the job to exit", lambda: gone(pid), timeout=10)


# -- confinement, with sandboxing on (where bubblewrap runs) ---------------------------------------

TOKEN = "admin-token-that-no-workload-may-read"
PROBE = """
import json, os
def attempt(do):
    try:
        return do()
    except OSError as exc:
        return type(exc).__name__
def write(path, text):
    with open(path, "w") as f:
        return f.write(text)
rw, ro = os.environ["RW"], os.environ["RO"]
seen = {
    "token": attempt(lambda: open(os.environ["TOKEN_FILE"]).read()),
    "home": attempt(lambda: sorted(os.listdir(os.environ["SERVER_HOME"]))),
    "other": attempt(lambda: sorted(os.listdir(os.environ["OTHER"]))),
    "private": [attempt(lambda p=p: sorted(os.listdir(p))) for p in json.loads(os.environ["PRIVATE"])],
    "seed": attempt(lambda: open(rw + "/seed.txt").read()),
    "wrote": attempt(lambda: write(rw + "/out.txt", "from the job")),
    "model": attempt(lambda: open(ro + "/weights.txt").read()),
    "model_written": attempt(lambda: write(ro + "/planted.txt", "x")),
}
print("PROBE", json.dumps(seen), flush=True)
"""


@dataclass
class Confined:
    """A backend that confines its workloads, and the server's folders it was told to hide."""

    backend: Backend
    home: Path  # the server's home: cli.json, and the job's folders inside it
    workloads: Path  # the local backend's workload folders
    folder_of: Callable[[Handle], Path]  # a running workload's own folder
    private: list[Path]  # more folders of the host's that no workload may list


@pytest.fixture(scope="module", params=["local", "ray"])
def confined(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Confined]:
    isolation = Isolation()
    if isolation.bwrap is None:
        pytest.skip("bubblewrap cannot run on this machine")
    home, workloads = tmp_path_factory.mktemp("server-home"), tmp_path_factory.mktemp("server-workloads")
    (home / "cli.json").write_text(json.dumps({"token": TOKEN}))
    backend: Backend
    if request.param == "local":
        backend = LocalBackend(CloudConfig(name="loc-sbx"), workloads, server_home=home, isolation=isolation)
        c = Confined(backend, home, workloads, lambda h: workloads / "loc-sbx" / h["id"], [])
    else:
        from fermion.backends import RayBackend

        cluster = request.getfixturevalue("ray_cluster")
        ray_backend = RayBackend(CloudConfig(name="ray-sbx", kind="ray", address=cluster.address,
                                             node_resource="fermion-node-a"),
                                 hidden=[home, workloads], isolation=isolation)

        def folder_of(handle: Handle) -> Path:
            where = ray_backend.where(handle)
            assert where is not None and where["isolation"].startswith("sandbox: bubblewrap"), where
            return Path(where["folder"])

        # Ray's sockets (a way into the cluster) and logs (every worker's output) on the node
        session = Path(cluster.temp_dir) / "session_latest"
        c = Confined(ray_backend, home, workloads, folder_of, [session / "sockets", session / "logs"])
    yield c
    c.backend.close()


def test_a_sandboxed_workload_sees_its_mounts_but_not_the_servers_files_nor_other_workloads(
        confined: Confined) -> None:
    backend, home = confined.backend, confined.home
    rw, ro = home / "checkpoints" / new_id(), home / "models" / new_id()
    rw.mkdir(parents=True)
    ro.mkdir(parents=True)
    (rw / "seed.txt").write_text("resume here")
    (ro / "weights.txt").write_text("weights")
    assert all(p.is_dir() for p in confined.private)
    handles = []
    try:
        other = backend.start(Workload(id=new_id(), kind="job", command=SLEEPER, **SMALL))  # type: ignore[arg-type]
        handles.append(other)
        other_folder = wait_for("the other workload's folder", lambda: (f := confined.folder_of(other)).is_dir() and f)
        env = {"TOKEN_FILE": str(home / "cli.json"), "SERVER_HOME": str(home), "OTHER": str(other_folder),
               "PRIVATE": json.dumps([str(p) for p in confined.private]), "RW": str(rw), "RO": str(ro)}
        probe = backend.start(Workload(id=new_id(), kind="job", command=["python", "-c", PROBE], env=env,
                                       writable=[rw], read_only=[ro], **SMALL))  # type: ignore[arg-type]
        handles.append(probe)
        status = wait_ended(backend, probe)
        logs = backend.logs(probe)
        assert status.exit_code == 0, logs
        seen = json.loads(logs.split("PROBE ", 1)[1].splitlines()[0])
        assert TOKEN not in logs
        # the server's home is an empty folder but for the mounts shown again inside it
        assert seen["token"] == "FileNotFoundError" and seen["home"] == ["checkpoints", "models"]
        assert seen["other"] == "FileNotFoundError"  # another workload's folder, on the same machine
        assert all(p in ([], "FileNotFoundError") for p in seen["private"]), seen["private"]
        # its declared folders: the writable one read and written, the read-only one only read
        assert seen["seed"] == "resume here" and seen["wrote"] == len("from the job")
        assert (rw / "out.txt").read_text() == "from the job"
        assert seen["model"] == "weights" and seen["model_written"] in ("OSError", "PermissionError")
        assert not (ro / "planted.txt").exists()
    finally:
        for handle in handles:
            backend.stop(handle, force=True)


def test_a_sandboxed_workload_over_its_memory_is_killed_and_says_why(confined: Confined) -> None:
    if Isolation(sandbox=False, task_limits=False).cgroup_root is None:
        pytest.skip("no writable memory cgroup on this machine")
    backend = confined.backend
    hog = ["python", "-c", "import time; x = bytearray(600 << 20); time.sleep(30)"]
    handle = backend.start(Workload(id=new_id(), kind="job", command=hog, **SMALL))  # type: ignore[arg-type]
    try:
        status = wait_ended(backend, handle)
        assert status.exit_code not in (None, 0) and not status.lost
        assert status.note == "killed for using more than its memory limit"
        assert backend.status(handle).note == status.note  # asked again (Ray: from what it kept)
    finally:
        backend.stop(handle, force=True)


# -- Ray only --------------------------------------------------------------------------------------


def _raylet_pid(cluster: LocalRayCluster, node: str) -> int:
    from ray._private import ray_constants

    return int(cluster.nodes[node].all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1 and len(chain) < 10:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        chain.append(pid)
    return chain


def test_ray_refuses_a_second_cluster_and_what_no_node_can_hold(ray_cluster: LocalRayCluster) -> None:
    import ray

    from fermion.backends import RayBackend

    backend = RayBackend(CloudConfig(name="ray-x", kind="ray", address=ray_cluster.address,
                                     node_resource="fermion-node-a"))
    try:
        with pytest.raises(UserInputError, match="one Ray cluster"):
            RayBackend(CloudConfig(name="ray-y", kind="ray", address="127.0.0.1:1"))
        too_big = Workload(id=new_id(), kind="job", command=SLEEPER, cpus=64)
        began = time.monotonic()
        with pytest.raises(ProvisionError, match="no Ray node"):
            backend.start(too_big)
        assert time.monotonic() - began < 5
        with pytest.raises(ValueError):  # nothing was left pending
            ray.get_actor(f"fermion-{too_big.id}", namespace="fermion")
    finally:
        backend.close()


def test_ray_replica_lands_on_its_node_group_and_is_lost_with_its_node(ray_cluster: LocalRayCluster,
                                                                       archive: Path) -> None:
    from fermion.backends import RayBackend

    backend = RayBackend(CloudConfig(name="ray-b", kind="ray", address=ray_cluster.address,
                                     node_resource="fermion-node-b"))
    handle = None
    try:
        assert backend.capacity()["cpus"] == 2
        handle = backend.start(Workload(id=new_id(), kind="replica", archive=archive, secret=SECRET, **SMALL))
        assert handle["node"] == ray_cluster.node_id("b")
        url = wait_ready(backend, handle)
        where = backend.where(handle)
        assert where is not None and where["node"] == ray_cluster.node_id("b")
        # the process that serves the URL is a child of a worker of node b's raylet
        assert _raylet_pid(ray_cluster, "b") in _ancestors(where["pid"])
        assert replica_http.get(f"{url}/healthz", timeout=5).json()["status"] == "ready"

        ray_cluster.kill_node("b")
        status = wait_for("the replica to be lost", lambda: (s := backend.status(handle)) and s.lost and s, 30)
        assert not status.alive and status.note == "ray actor or node died"
        wait_for("the replica's process to exit", lambda: gone(where["pid"]), timeout=10)
        assert backend.capacity()["cpus"] == 0
        with pytest.raises(ProvisionError, match="no alive Ray node"):
            backend.start(Workload(id=new_id(), kind="job", command=SLEEPER, **SMALL))
    finally:
        if handle is not None:
            backend.stop(handle, force=True)
        backend.close()


if sys.platform != "linux":  # PR_SET_PDEATHSIG, /proc and process groups as used here
    pytestmark = pytest.mark.skip(reason="Linux only")
