"""Workloads cannot reach the server's secrets or each other (issue 8, must-fix 5, 6, 7): real
replicas and job attempts started by a real server, probed from the inside and from outside."""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fermion.backends import Isolation
from fermion.testing import ServerProc, running_server, socket_path, start_gateway, stop, web
from fermion.testing import replica as replica_http
from tests.support import FIXTURE_PHOTONS, TEXT_PHOTON

CLOUDS = "clouds:\n  - name: alpha\n  - name: beta\n    egress: true\n"  # beta lets a workload ask for the network
ISOLATION = Isolation()
sandboxed = pytest.mark.skipif(ISOLATION.bwrap is None, reason="bubblewrap cannot run on this machine")
PER_WORKLOAD = 16  # a workload's share of the server's workload socket (fermion._unix.Shares)
networked = pytest.mark.skipif(not ISOLATION.network, reason="bubblewrap cannot make network namespaces here")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    # CPU quotas on (as `fermion server start --cpu-quotas` sets): what the CPU test checks
    with running_server(tmp_path_factory.mktemp("sandbox") / "home", CLOUDS, env={"FERMION_CPU_QUOTAS": "1"}) as s:
        s.cli("deploy", f"{FIXTURE_PHOTONS}:Snoop", "--name", "snoop", "--replicas", "2", "--public",
              "--env", "DECLARED=yes")
        yield s


def call(server: ServerProc, handler: str, **body: object) -> httpx.Response:
    return web.post(f"{server.url}/d/snoop/{handler}", json=body, timeout=30)


def test_a_replica_sees_only_its_own_environment(server: ServerProc) -> None:
    env = call(server, "environ").json()
    assert env["DECLARED"] == "yes" and env["FERMION_CLOUD"] in ("alpha", "beta")
    assert not Path(env["FERMION_HOME"]).is_relative_to(server.home) and not Path(env["HOME"]).is_relative_to(server.home)
    assert server.token not in json.dumps(env)
    allowed = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
               "HF_DATASETS_OFFLINE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM",
               "CUDA_VISIBLE_DEVICES", "HOME", "TMPDIR", "PYTHONUNBUFFERED", "DECLARED", "PWD", "OPENBLAS_NUM_THREADS"}
    assert {k for k in env if not k.startswith("FERMION_")} <= allowed
    assert env["OMP_NUM_THREADS"] == "1"  # the replica's one CPU


@sandboxed
def test_a_replica_cannot_read_the_servers_home_or_other_workloads(server: ServerProc) -> None:
    replicas = server.deployment("snoop")["replica_list"]
    server_pid = server.proc.pid
    for path in [server.home / "cli.json", server.home / "fermion.db", f"/proc/{server_pid}/environ",
                 f"/proc/{server_pid}/root{server.home}/cli.json"]:
        answer = call(server, "read", path=str(path)).json()
        assert "content" not in answer, f"a replica read {path}"
    # each replica is on its own cloud: neither sees the other's folder
    logs = [next(server.home.parent.glob(f"*-workloads/{r['cloud']}/{r['id']}/replica.log")) for r in replicas]
    seen = [call(server, "read", path=str(log)).json() for log in logs for _ in range(6)]
    assert any("content" in s for s in seen), "a replica could not read its own log"
    assert any("error" in s for s in seen), "a replica read another replica's folder"


def test_replicas_answer_only_the_gateway(server: ServerProc) -> None:
    replicas = server.deployment("snoop")["replica_list"]
    for r in replicas:
        direct = server.replica_url(r["id"])
        assert replica_http.get(f"{direct}/healthz").status_code == 200  # the controller's probe needs no secret
        refused = replica_http.post(f"{direct}/environ", json={})
        assert refused.status_code == 401 and "gateway" in refused.text
        forged = replica_http.post(f"{direct}/environ", json={}, headers={"x-fermion-replica-auth": "guess"})
        assert forged.status_code == 401
        assert replica_http.get(f"{direct}/metrics").status_code == 401
        assert not list(server.home.parent.glob(f"*-workloads/{r['cloud']}/{r['id']}/.replica-secret"))
    assert call(server, "environ").status_code == 200


def replica_secrets(state: Path) -> dict[str, str]:
    """A gateway state file's replica addresses and the secrets they take."""
    found: dict[str, str] = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("secret"), str) and isinstance(node.get("url"), str):
                found[node["url"]] = node["secret"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(state.read_text()))
    return found


@sandboxed
def test_no_file_a_replica_can_read_holds_another_deployments_credential(server: ServerProc, tmp_path: Path) -> None:
    """A gateway's --state file holds every replica's secret; kept where the README puts one (outside the
    server's home: /var/lib, or /tmp), a workload that searches all it can see still finds none."""
    server.cli("project", "create", "victims")
    server.cli("deploy", TEXT_PHOTON, "--name", "victim", "--project", "victims")
    victim_url = server.replica_url(server.deployment("victim")["replica_list"][0]["id"])
    states = [Path(tempfile.mkdtemp(prefix="fermion-gw-", dir="/var/tmp")) / "gw.json", tmp_path / "gw" / "gw.json"]
    gateways = [start_gateway(state.parent, [server.url], server.token, state=state) for state in states]
    try:
        deadline = time.monotonic() + 60
        while not all(s.exists() and victim_url in replica_secrets(s) for s in states):
            assert time.monotonic() < deadline, "the gateways never saved the victim's route"
            time.sleep(0.1)
        victim_secret = replica_secrets(states[0])[victim_url]  # the credential is really there
        skip = sorted({sys.prefix, sys.base_prefix, "/usr"})  # installed code: read-only, large
        hunted = call(server, "hunt", needles=[victim_secret, server.token], skip=skip).json()
        assert hunted["read"] > 0 and hunted["found"] == [], f"a workload found credentials in {hunted['found']}"
        # (/run shows the server's workload socket alone: the test below calls it)
        assert not {"home", "var", "opt", "srv", "mnt"} & set(hunted["top"]), hunted["top"]
        for state in states:
            assert "content" not in call(server, "read", path=str(state)).json()
        # nor can it call the victim at all: its socket is nowhere in the workload's sight
        victim_socket = socket_path(victim_url)
        assert victim_socket is not None
        assert call(server, "reach", tcp=[], unix=[victim_socket], routes=[], token="").json()[victim_socket] \
            == "FileNotFoundError"
        opened = replica_http.post(f"{victim_url}/stats", json={"text": "a b"}, timeout=30,
                                   headers={"x-fermion-replica-auth": victim_secret})
        assert opened.status_code == 200  # the secret the gateway holds does open it, from the host
    finally:
        for gateway in gateways:
            stop(gateway.proc)
        shutil.rmtree(states[0].parent, ignore_errors=True)
        server.cli("deployment", "delete", "victim", "--project", "victims", check=False)


@pytest.fixture
def host_service() -> Iterator[int]:
    """A service on the host's loopback (a database, a store's endpoint): its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@networked
def test_a_replica_has_no_network_path_to_the_host(server: ServerProc, host_service: int) -> None:
    """In a namespace of its own, a replica reaches neither the server's port nor any other service on
    the host's loopback; the server's workload socket answers it only a workload's own routes."""
    server_port = int(server.url.rsplit(":", 1)[1])
    tried = [["127.0.0.1", server_port], ["127.0.0.1", host_service], ["localhost", host_service]]
    routes = ["/api/v1/deployments", "/healthz", "/d/snoop/environ", "/api/v1/attempts/self/../../deployments",
              "/api/v1/replicas/self/model"]
    for _ in range(4):  # both replicas, most likely
        seen = call(server, "reach", tcp=tried, unix=[str(server.home / "workload-api" / "api.sock")],
                    routes=routes, token=server.token).json()
        assert not [k for k, v in seen.items() if v == "connected"], seen
        assert seen["api_socket"] == "/run/fermion/api.sock"
        assert [seen[r] for r in routes[:4]] == [404, 404, 404, 404], seen
        assert seen["/api/v1/replicas/self/model"] == 401, seen  # a user's token is no workload's


@networked
def test_a_job_reaches_the_server_only_for_its_own_routes(server: ServerProc, host_service: int) -> None:
    server_port = int(server.url.rsplit(":", 1)[1])
    probe = ("import os, socket\n"
             f"for port in ({server_port}, {host_service}):\n"
             "    try:\n        socket.create_connection(('127.0.0.1', port), timeout=3); print('REACHED', port)\n"
             "    except OSError as exc:\n        print('NO-PATH', port, type(exc).__name__)\n"
             "print('SOCKET', os.environ.get('FERMION_SERVER_SOCKET'))\n")
    server.cli("job", "run", "--name", "netjob", "--follow", "--timeout", "60", "--", "python", "-c", probe)
    with server.api() as api:
        logs = "\n".join(api.get("/jobs/netjob/logs").json().values())
    assert "REACHED" not in logs and logs.count("NO-PATH") == 2, logs
    assert "SOCKET /run/fermion/api.sock" in logs
    # egress is the operator's to allow: on a cloud that does not, a job asking for it waits, and says why
    server.cli("job", "run", "--name", "netjob-closed", "--egress", "--cloud", "alpha", "--", "python", "-c", probe)
    pending = server.wait_for(lambda api: (j := api.get("/jobs/netjob-closed").json())["reason"] and j)
    assert pending["status"] == "PENDING" and "alpha: allows no egress" in pending["reason"], pending
    server.cli("job", "cancel", "netjob-closed")
    # where it is allowed, a spec that asks for egress gets the machine's network: the service is reached
    server.cli("job", "run", "--name", "netjob-egress", "--egress", "--follow", "--timeout", "60", "--", "python", "-c",
               probe)
    with server.api() as api:
        logs = "\n".join(api.get("/jobs/netjob-egress/logs").json().values())
        done = api.get("/jobs/netjob-egress").json()
    assert done["resources"]["egress"] is True and done["attempts"][0]["cloud"] == "beta", done
    assert f"REACHED {host_service}" in logs, logs


@networked
def test_no_workload_can_hold_the_servers_workload_socket(server: ServerProc) -> None:
    """Idle connections to the socket every workload shares: past its share a workload's are closed at
    once, and the ones it holds close at the head deadline; the server serves everyone meanwhile."""
    probe = ("import os, socket, time\n"
             "def closed(s):\n"
             "    s.setblocking(False)\n"
             "    try:\n        s.recv(1)\n        return True\n"
             "    except BlockingIOError:\n        return False\n"
             "    except OSError:\n        return True\n"
             "socks = []\n"
             "for _ in range(64):\n"
             "    s = socket.socket(socket.AF_UNIX); s.connect(os.environ['FERMION_SERVER_SOCKET']); socks.append(s)\n"
             "time.sleep(1)\n"
             "print('HELD', sum(not closed(s) for s in socks), flush=True)\n"
             "start = time.monotonic()\n"
             "while any(not closed(s) for s in socks) and time.monotonic() - start < 30:\n"
             "    time.sleep(0.2)\n"
             "print('ALL CLOSED AFTER', round(time.monotonic() - start), flush=True)\n")
    server.cli("job", "run", "--name", "hold-socket", "--", "python", "-c", probe)
    with server.api() as api:
        server.wait_for(lambda _: "HELD" in "".join(api.get("/jobs/hold-socket/logs").json().values()))
        assert call(server, "environ").status_code == 200  # the server serves the rest meanwhile
    done = server.wait_for(lambda api: (j := api.get("/jobs/hold-socket").json())["status"] in ("SUCCEEDED", "FAILED")
                           and j, timeout=60)
    with server.api() as api:
        logs = "".join(api.get("/jobs/hold-socket/logs").json().values())
    held = int(re.search(r"HELD (\d+)", logs).group(1))
    assert done["status"] == "SUCCEEDED" and 0 < held <= PER_WORKLOAD, logs
    assert int(re.search(r"ALL CLOSED AFTER (\d+)", logs).group(1)) <= 12, logs  # the head deadline, 10 s


@sandboxed
def test_a_job_cannot_read_the_admin_token(server: ServerProc) -> None:
    probe = ("import os, glob\n"
             f"for p in ['{server.home}/cli.json', os.path.expanduser('~/cli.json'), "
             f"'/proc/{server.proc.pid}/environ'] + glob.glob('/proc/*/environ'):\n"
             "    try:\n        print('READ', p, open(p, errors='replace').read()[:300])\n"
             "    except OSError as exc:\n        print('DENIED', p, type(exc).__name__)\n")
    server.cli("job", "run", "--name", "snoopjob", "--follow", "--timeout", "60", "--", "python", "-c", probe)
    with server.api() as api:
        logs = "\n".join(api.get("/jobs/snoopjob/logs").json().values())
    assert f"DENIED {server.home}/cli.json" in logs
    assert server.token not in logs


@pytest.mark.skipif(ISOLATION.cgroup_root is None, reason="no writable memory cgroup on this machine")
def test_declared_memory_is_a_hard_limit(server: ServerProc) -> None:
    server.cli("deploy", f"{FIXTURE_PHOTONS}:Snoop", "--name", "hog", "--public", "--memory-gb", "0.25",
               "--cpus", "0.25")
    assert web.post(f"{server.url}/d/hog/hog", json={"mb": 16}, timeout=30).json() == 16 << 20
    r = web.post(f"{server.url}/d/hog/hog", json={"mb": 600}, timeout=60)
    assert r.status_code == 502
    deadline = time.monotonic() + 30
    with server.api() as api:
        while time.monotonic() < deadline:
            failed = [x for x in api.get("/replicas", params={"deployment": "hog", "all": True}).json()
                      if x["state"] == "FAILED"]
            if failed:
                break
            time.sleep(0.3)
    assert failed and "memory limit of 0.25 GB" in failed[0]["reason"]


class NoBubblewrap(Isolation):
    """The isolation of a machine where bubblewrap cannot run (no user namespaces)."""

    @staticmethod
    def _working_bwrap() -> str | None:
        return None


def test_without_a_sandbox_workloads_are_refused_unless_the_operator_allows_them(tmp_path: Path) -> None:
    from fermion.backends import LocalBackend, ProvisionError, Workload
    from fermion.clouds import CloudConfig

    refusing = NoBubblewrap(memory_limits=False, task_limits=False, allow_unsandboxed=False)
    assert "workloads are refused" in refusing.describe()
    backend = LocalBackend(CloudConfig(name="bare"), tmp_path / "workloads", server_home=tmp_path / "home",
                           isolation=refusing)
    job = Workload(id="a-1", kind="job", command=["sh", "-c", "echo ran > out"], cpus=0.25, memory_gb=0.25)
    with pytest.raises(ProvisionError, match="cannot sandbox workloads .* --allow-unsandboxed"):
        backend.start(job)
    assert not (tmp_path / "workloads" / "bare" / "a-1" / "out").exists()

    allowed = NoBubblewrap(memory_limits=False, task_limits=False, allow_unsandboxed=True)
    assert allowed.describe().startswith("sandbox: none (clean environment only)")
    backend = LocalBackend(CloudConfig(name="bare"), tmp_path / "workloads", server_home=tmp_path / "home",
                           isolation=allowed)
    handle = backend.start(job)
    out = tmp_path / "workloads" / "bare" / "a-1" / "out"
    deadline = time.monotonic() + 30
    while not out.exists():
        assert time.monotonic() < deadline, "the allowed workload never ran"
        time.sleep(0.05)
    backend.stop(handle)


def test_cloud_list_shows_how_each_clouds_workloads_are_confined(server: ServerProc) -> None:
    listed = json.loads(server.cli("cloud", "list", "--json").stdout)
    assert {c["name"] for c in listed} == {"alpha", "beta"}
    expected = "sandbox: bubblewrap" if ISOLATION.bwrap else "sandbox: none"
    assert all(c["isolation"].startswith(expected) for c in listed), listed


CPU_HOG = """
import time
cgroup = next(line.strip().split(":")[2] for line in open("/proc/self/cgroup")
              if "cpu" in line.split(":")[1].split(",") or line.startswith("0::"))
for name in ("cpu.cfs_quota_us", "cpu.max", "cpu.shares", "cpu.weight"):
    for root in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup"):
        try:
            print("QUOTA", name, open(f"{root}{cgroup}/{name}").read().strip())
        except OSError:
            pass
start, used = time.monotonic(), time.process_time()
while time.monotonic() - start < 3:
    pass
print("SHARE", round((time.process_time() - used) / (time.monotonic() - start), 3))
"""


@pytest.mark.skipif(ISOLATION.cpu_root is None, reason="no writable cpu cgroup on this machine")
def test_a_workload_gets_no_more_cpu_than_it_declared(server: ServerProc) -> None:
    """Its weight is its share under contention; with quotas on, a busy loop alone gets no more."""
    server.cli("job", "run", "--name", "cpuhog", "--cpus", "0.25", "--memory-gb", "0.25", "--follow", "--timeout",
               "120", "--", "python", "-c", CPU_HOG)
    with server.api() as api:
        text = "".join(api.get("/jobs/cpuhog/logs").json().values())
    seen = {line.split()[1]: line.split()[2:] for line in text.splitlines() if line.startswith("QUOTA")}
    assert seen.get("cpu.cfs_quota_us", seen.get("cpu.max")) in (["25000"], ["25000", "100000"]), text  # ¼ of 100 ms
    assert seen.get("cpu.shares", seen.get("cpu.weight")) in (["256"], ["25"]), text  # a quarter of a CPU's weight
    share = float(next(line.split()[1] for line in text.splitlines() if line.startswith("SHARE")))
    assert share <= 0.3, f"a workload of 0.25 cpus used {share} of a core"  # a busy loop alone would take 1.0


THREADS = """
import os, torch
print("THREADS", torch.get_num_threads(), os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"])
"""


def test_a_workloads_math_libraries_use_a_thread_per_whole_cpu_it_declared(server: ServerProc) -> None:
    """Not one per core of the machine: threads beyond the quota wait out each other's throttling.
    What the workload declares itself wins."""
    for name, cpus, env, expected in (("threads-half", "0.5", [], ["1", "1", "1"]),
                                      ("threads-three", "3", ["--env", "OMP_NUM_THREADS=2"], ["2", "2", "3"])):
        server.cli("job", "run", "--name", name, "--cpus", cpus, "--memory-gb", "1", *env, "--follow", "--timeout",
                   "120", "--", "python", "-c", THREADS)
        with server.api() as api:
            text = "".join(api.get(f"/jobs/{name}/logs").json().values())
        assert next(line.split()[1:] for line in text.splitlines() if line.startswith("THREADS")) == expected, text


@pytest.mark.skipif(ISOLATION.cpu_root is None, reason="no writable cpu cgroup on this machine")
def test_without_quotas_a_workloads_cpu_weight_still_follows_its_cpus() -> None:
    shared = Isolation(cpu_quotas=False)
    name = f"test-weight-{time.monotonic_ns()}"
    cgroup = shared._cpu_cgroup_for(name, 0.5)
    try:
        assert cgroup is not None
        if shared.cpu_version == "v1":
            assert (cgroup / "cpu.shares").read_text().strip() == "512"
            assert (cgroup / "cpu.cfs_quota_us").read_text().strip() == "-1"  # no cap: it may burst
        else:
            assert (cgroup / "cpu.weight").read_text().strip() == "50"
            assert (cgroup / "cpu.max").read_text().split()[0] == "max"
        assert "cpu weights" in shared.describe() and "quotas" not in shared.describe()
    finally:
        shared.release(name)


def test_a_folder_on_sys_path_shows_only_what_python_imports_from_it(tmp_path: Path) -> None:
    """An editable install of a flat project puts its root on sys.path: its .env and state files must
    not come along with its code."""
    from fermion.backends._sandbox import _importable, host_view

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "module.py").write_text("")
    (tmp_path / "proj-0.1.dist-info").mkdir()
    for secret in (".env", "gw.json", "secrets.yaml"):
        (tmp_path / secret).write_text("OPENAI_API_KEY=sk-operator")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.csv").write_text("a")
    assert [p.name for p in _importable(tmp_path)] == ["module.py", "pkg", "proj-0.1.dist-info"]

    _shown, args = host_view()
    bound = {args[i + 1] for i, a in enumerate(args) if a == "--ro-bind"}
    assert not any(b == "/etc/ssl" or b.startswith("/etc/ssl/private") for b in bound)  # TLS keys live there
    if Path("/usr/local/etc").is_dir():
        assert args[args.index("/usr/local/etc") - 1] == "--tmpfs"


@sandboxed
def test_a_python_installed_under_tmp_stays_visible(tmp_path: Path) -> None:
    """A checkout under /tmp (a CI's clone) has its interpreter there: the sandbox's empty /tmp must not cover it."""
    from fermion.backends._sandbox import Confinement

    isolation = Isolation(memory_limits=False, task_limits=False, cpu_limits=False)
    installed = tmp_path / "installed"
    installed.mkdir()
    (installed / "marker").write_text("here")
    isolation.view += ["--ro-bind", str(installed), str(installed)]  # as host_view() binds a Python under /tmp
    work = tmp_path / "work"
    work.mkdir()
    proc, _pid = isolation.start(["/bin/cat", str(installed / "marker")], {"PATH": "/usr/bin:/bin"},
                                 Confinement(workdir=work), work / "out.log", f"tmp-test-{time.monotonic_ns()}")
    proc.wait(30)
    assert "here" in (work / "out.log").read_text()
