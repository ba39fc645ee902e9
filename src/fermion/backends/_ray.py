"""The Ray backend: each workload (a replica, or one attempt of a job) is one detached, named Ray
actor, placed by Ray on a node of the cloud's node group, that runs the workload as a child process.

- Ray picks the node and holds the workload's CPUs, memory and GPUs for as long as the actor lives.
- The child is confined as the local backend confines its workloads (see _sandbox.py), with the
  node's own bubblewrap and cgroups and the settings the server sends: the server's home, its
  workloads' folders, every other Ray workload's folder on the node and Ray's own sockets and logs
  are hidden; the job's writable folders and the read-only models it names are shown again; its
  declared memory is a hard limit where the node has a writable memory cgroup.
- The child dies with its actor (and with its node): bubblewrap runs with --die-with-parent (or,
  unsandboxed, the child sets PR_SET_PDEATHSIG=SIGKILL) in a session of its own, and a small
  watchdog kills the rest of that session (torchrun's workers, the job wrapper's command) and
  removes the workload's folder when the actor goes.
- Actors are detached: they outlive the server, and a restarted server finds them by name.
- When a workload ends, the first ``status`` that sees it keeps the result (exit code, the tail of
  its log) in the cluster's key-value store and kills the actor, so that its resources are freed
  while later ``status`` and ``logs`` calls still answer.

The server must run on a node of the cluster (e.g. its head): a Ray driver connects through a local
raylet. Every node needs the same Python environment (with Fermion) as the server.

The cluster should require Ray's token authentication (RAY_AUTH_MODE=token): without it, anything
that reaches its ports on loopback, a workload included, can drain its nodes, write its key-value
store or run code as a Ray driver. The server joins with the token of the cloud's
``auth_token_file`` (or ``$RAY_AUTH_TOKEN``), set in its own environment only: each workload gets a
clean one, and its sandbox shows neither the Ray worker's /proc nor the folders a token file lies in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import ray
from ray._private.authentication.authentication_constants import AUTHORIZATION_BEARER_PREFIX, AUTHORIZATION_HEADER_NAME
from ray._raylet import AuthenticationTokenLoader, Config
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
from ray.exceptions import ActorUnavailableError, AuthenticationError, GetTimeoutError, RayActorError
from ray.experimental import internal_kv

from .._files import write_atomic
from ..clouds import CloudConfig
from ..errors import UserInputError, shorten
from ..placement import Offering
from ._launch import launch_command
from ._local import _members
from ._protocol import Capabilities, Handle, ProvisionError, Status, Workload
from ._relay import WorkloadRelay
from ._sandbox import MAX_TASKS, Confinement, Isolation, Mount, host_view, read_untrusted, workload_env

log = logging.getLogger("fermion.ray")

NAMESPACE = "fermion"  # every actor Fermion creates, in every Ray cluster
LOST_NOTE = "ray actor or node died"
START_TIMEOUT_S = 30.0  # how long start() waits for Ray to place the actor and run its constructor
CALL_TIMEOUT_S = 2.0  # one question to a live actor
STOP_TIMEOUT_S = 8.0  # a forced stop waits this long for the actor to kill its child (it waits 5 s)
NODE_SHARE = 0.001  # of the node group's marker resource: where it may run, never how much
SECRET_FILE = ".replica-secret"
LOG_TAIL_BYTES = 2 << 20
KEPT_LOG_BYTES = 32 << 10  # of an ended workload's log, kept in the cluster for logs()
OOM_NOTE = "killed for using more than its memory limit"
# Ray's own settings for token authentication, read from the environment by its C++ core
AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
NO_AUTH_NOTE = "Ray cluster without token authentication: a workload could drain it"
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")  # ids name actors and folders

# Unsandboxed (no bubblewrap on the node), the workload's first process is this, which asks to die
# with its parent, the actor (or dies at once if the actor is already gone), then becomes the
# workload. Sandboxed, bubblewrap's --die-with-parent does the same for the whole sandbox.
_DIE_WITH_THE_ACTOR = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGKILL))  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os.kill(os.getpid(), signal.SIGKILL)
os.execvp(sys.argv[2], sys.argv[2:])
"""
# The watchdog, once the actor is gone, ends the workload's whole session (the job wrapper's
# command, torchrun's workers), not just the first process that PR_SET_PDEATHSIG kills, and removes
# the workload's folder and its cgroups. It must not be a child of the actor: Ray SIGKILLs an
# exiting worker's children, too early for them to clean up. So it forks away and watches the
# actor's pid (with its start time, against pid reuse).
_WATCHDOG = """
import os, shutil, signal, sys, time
group, group_born, actor, folder = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
cgroups = sys.argv[5:]
def birth(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else fields[19]
born = birth(actor)
if os.fork():
    os._exit(0)
while born is not None and birth(actor) == born:
    time.sleep(0.5)
if birth(group) in (None, group_born):  # else the pid is another process's: the session ended long ago
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
shutil.rmtree(folder, ignore_errors=True)
deadline = time.monotonic() + 10  # the kernel removes a cgroup only once its last process is gone
while cgroups and time.monotonic() < deadline:
    for cgroup in list(cgroups):
        try:
            os.rmdir(cgroup)
        except FileNotFoundError:
            pass
        except OSError:
            continue
        cgroups.remove(cgroup)
    time.sleep(0.2)
"""


def _birth(pid: int) -> str | None:
    """When process ``pid`` started (None if gone or a zombie): tells a reused pid from the original."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else fields[19]


def _kill_session(leader: int, born: str | None, sig: int) -> None:
    """Signal the process group that ``leader`` (started at ``born``) led. The kernel never reuses a
    pid while a group bears it, so a pid now held by another process means the group is gone."""
    if _birth(leader) not in (None, born):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, sig)


def _drain_sandbox(leader: int, born: str | None, init: int) -> None:
    """SIGTERM the workload's processes in the sandbox that ``leader`` (bubblewrap's outside, started at
    ``born``) leads, sparing that outside, whose death (--die-with-parent) would SIGKILL the workload at
    once, and ``init``, the sandbox's, which ends with the workload. Before any process of the workload
    runs there is nothing to drain: a kill, or that init (a pid namespace's, deaf to a SIGTERM it has no
    handler for) would start the workload after the drain, to be killed only when it timed out."""
    if _birth(leader) not in (None, born):
        return
    inside = [pid for pid in _members(leader) if pid not in (leader, init)]
    if not inside:
        _kill_session(leader, born, signal.SIGKILL)
        return
    for pid in inside:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)


class _NodeIsolation(Isolation):
    """The node's isolation; bubblewrap also dies with its parent (the actor), and so the sandbox."""

    def _bwrap_args(self, c: Confinement) -> list[str]:
        return [*super()._bwrap_args(c), "--die-with-parent"]


RELAY_SOCKET = ".fermion-api.sock"  # in a workload's folder: its relay to the server (see _relay.py)


def _workloads_root() -> Path:
    """The folder, on this node, of every Ray workload's folder (hidden from each workload but its
    own): private to this user, and refused if someone else planted it first in a shared /tmp."""
    root = Path(tempfile.gettempdir()) / f"fermion-workloads-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise OSError(f"{root} is not a private folder of this user")
    return root


def _ray_private_folders() -> list[str]:
    """Ray's sockets (a workload that reached the raylet's could become a driver and run code,
    unconfined, anywhere in the cluster) and its logs (every worker's output) on this node."""
    try:
        node = ray._private.worker.global_worker.node
        return [node.get_sockets_dir_path(), node.get_logs_dir_path()]
    except Exception:  # noqa: BLE001 - not in a worker, or Ray changed its internals
        return []


def actor_name(workload_id: str) -> str:
    """The name of the actor that hosts workload ``workload_id`` (in namespace ``fermion``)."""
    return f"fermion-{workload_id}"


# -- on the node: the actor that hosts one workload ---------------------------------------------


class WorkloadHost:
    """A workload as a child process of this actor, in a private folder on the actor's node.

    Its methods are short (none waits for the workload), so the actor keeps the default of one
    call at a time: every call runs on the worker's main thread, the thread that started the
    child; PR_SET_PDEATHSIG (which bubblewrap's --die-with-parent sets) fires when that thread
    exits, i.e. when the actor does."""

    def __init__(self, spec: dict[str, Any], archive: bytes | None) -> None:
        self.id: str = spec["id"]
        self.kind: str = spec["kind"]
        self.node_id = ray.get_runtime_context().get_node_id()
        self.ip = ray.util.get_node_ip_address()
        # bubblewrap and cgroups are the node's: probed here, with the server's settings
        self.isolation = _NodeIsolation(**spec.get("isolation", {}))
        self.cloud: str = spec["cloud"]
        self.cgroup = f"{spec['cloud']}-{self.id}"
        root = _workloads_root()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{self.id}-", dir=root))  # mode 0700
        self.log_path = self.folder / ("replica.log" if self.kind == "replica" else "job.log")
        self.child: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the sandbox's init, or the child itself unsandboxed: what stands for the workload
        # a workload in a network namespace of its own: a replica serves on a socket this actor binds on the
        # node's address (in the node's namespace) and hands it, so it is reached and reaches nothing itself;
        # a job (or a replica fetching its model) reaches its server through this actor's relay only
        self.listening: socket.socket | None = None
        self.port = 0
        self.relay: WorkloadRelay | None = None
        self.own_network = self.isolation.network and not spec.get("egress")
        self.note: str | None = None  # how it ended, once it did
        try:
            argv, env = self._replica(spec, archive) if self.kind == "replica" else self._job(spec)
            # what exists of the server's folders on this node, every other workload here, Ray's own
            hidden = [Path(p) for p in dict.fromkeys([*spec.get("hidden", ()), str(root), *_ray_private_folders()])
                      if os.path.isdir(p)]
            if self.own_network and env.get("FERMION_SERVER_URL"):
                # in its own folder: only the workload connects to it, so what it does to the file harms no one
                relay = self.folder / RELAY_SOCKET
                self.relay = WorkloadRelay(relay, env["FERMION_SERVER_URL"], env.get("FERMION_SERVER_CA_PEM"))
                env["FERMION_SERVER_SOCKET"] = str(relay)
            confinement = Confinement(workdir=self.folder, hidden=hidden, mounts=self._mounts(spec),
                                      memory_bytes=spec.get("memory_bytes"), cpus=spec.get("cpus"),
                                      own_network=self.own_network,
                                      pass_fds=(self.listening.fileno(),) if self.listening is not None else ())
            if self.isolation.bwrap is None:
                argv = [sys.executable, "-I", "-S", "-c", _DIE_WITH_THE_ACTOR, str(os.getpid()), *argv]
            self.child, self.pid = self.isolation.start(argv, env, confinement, self.log_path, self.cgroup)
            if self.listening is not None:  # the replica holds it now
                self.listening.close()
            self.child_born = _birth(self.child.pid)
            watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(self.child.pid), str(self.child_born),
                 str(os.getpid()), str(self.folder), *map(str, self._cgroups())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            watchdog.wait(10)  # it forked away at once
        except BaseException:  # the actor fails to start: leave nothing behind on the node
            if self.listening is not None:
                self.listening.close()
            if self.relay is not None:
                self.relay.close()
            if self.child is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.child.pid, signal.SIGKILL)
                self.child.wait()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.isolation.release(self.cgroup)
            raise

    def _cgroups(self) -> list[Path]:
        """The workload's memory and pids cgroups on this node (one folder in cgroup v2), if any."""
        roots = (self.isolation.cgroup_root, self.isolation.pids_root)
        return list(dict.fromkeys(root / self.cgroup for root in roots if root is not None))

    @staticmethod
    def _mounts(spec: dict[str, Any]) -> list[Mount]:
        """The job's writable folders (made here if this node lacks them: the job would have made
        them) and the read-only folders this node has, shown again inside the hidden ones."""
        mounts = []
        for path in map(Path, spec.get("writable", ())):
            with contextlib.suppress(OSError):
                path.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                mounts.append(Mount(path, writable=True))
        mounts += [Mount(Path(p)) for p in spec.get("read_only", ()) if os.path.exists(p)]
        return mounts

    def _replica(self, spec: dict[str, Any], archive: bytes | None) -> tuple[list[str], dict[str, str]]:
        path = self.folder / "photon.photon"  # the bytes came through Ray: nodes share no disk
        path.write_bytes(archive or b"")
        if self.own_network:
            self.listening = socket.socket(socket.AF_INET6 if ":" in self.ip else socket.AF_INET)
            self.listening.bind((self.ip, 0))
            self.listening.listen(2048)
            self.port = self.listening.getsockname()[1]
            where = ["--listen-fd", str(self.listening.fileno())]
        else:
            where = ["--host", self.ip, "--port", "0"]
        argv = [sys.executable, "-m", "fermion.photon.replica", str(path), *where,
                "--port-file", str(self.folder / "port"), "--log-level", "warning", "--graceful-timeout", "20"]
        if spec.get("secret"):
            write_atomic(self.folder / SECRET_FILE, spec["secret"], 0o600)
            argv += ["--auth-secret-file", str(self.folder / SECRET_FILE)]
        env: dict[str, str] = spec["env"]
        facts = {"FERMION_REPLICA_ID": self.id, "FERMION_CLOUD": spec["cloud"]}
        facts.update({k: v for k, v in env.items() if k.startswith("FERMION_INJECT_")})
        declared = {k: v for k, v in env.items() if not k.startswith("FERMION_INJECT_")}
        return argv, workload_env(declared, facts, self.folder, spec.get("cpus"))

    def _job(self, spec: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        env: dict[str, str] = spec["env"]
        facts = {k: v for k, v in env.items() if k.startswith("FERMION_")}
        facts["FERMION_CLOUD"] = spec["cloud"]
        declared = {k: v for k, v in env.items() if not k.startswith("FERMION_")}
        # the wrapper writes exit_code into its working directory, this folder (writable in the sandbox)
        return launch_command(spec["command"], spec["workers"]), workload_env(declared, facts, self.folder,
                                                                             spec.get("cpus"))

    # -- what the backend asks --------------------------------------------------------------
    @property
    def _process(self) -> subprocess.Popen[bytes]:
        assert self.child is not None  # set by the constructor, or there is no actor
        return self.child

    def info(self) -> dict[str, Any]:
        """Where the workload runs: node id and IP, the pid on that node that stands for the workload
        (the sandbox's init, whose end ends everything inside), and how it is confined."""
        return {"node": self.node_id, "ip": self.ip, "pid": self.pid, "folder": str(self.folder),
                "isolation": self.isolation.describe(own_network=self.own_network), "cloud": self.cloud}

    def poll(self) -> dict[str, Any]:
        """Alive? Its URL once it listens; its exit code once it ended."""
        code = self._process.poll()
        url = None
        with contextlib.suppress(OSError, ValueError):
            host = f"[{self.ip}]" if ":" in self.ip else self.ip
            port = int(read_untrusted(self.folder / "port", 32))  # written once it serves
            url = f"http://{host}:{self.port if self.own_network else port}"  # its socket's port is this actor's to say
        if code is not None and self.kind == "job":
            with contextlib.suppress(OSError, ValueError):  # the wrapper's record beats a signal's code
                code = int(read_untrusted(self.folder / "exit_code", 32))
        if code is not None and self.note is None:  # asked once: release() removes the cgroup
            self.note = OOM_NOTE if self.isolation.oom_killed(self.cgroup) else ""
        return {"alive": code is None, "url": url, "exit_code": code, "note": self.note or ""}

    def send_stop(self, force: bool) -> dict[str, Any]:
        """SIGTERM (drain) or SIGKILL the workload's whole session; with ``force``, wait (≤ 5 s) for it."""
        child = self._process
        if child.poll() is None:
            # the whole session: the wrapper and the job, torchrun and its workers (and the sandbox)
            if force:
                _kill_session(child.pid, self.child_born, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(5)
            elif self.isolation.bwrap:
                _drain_sandbox(child.pid, self.child_born, self.pid)
            else:
                _kill_session(child.pid, self.child_born, signal.SIGTERM)
        return self.poll()

    def tail(self, lines: int, max_bytes: int = LOG_TAIL_BYTES) -> str:
        """The last ``lines`` lines of the workload's output."""
        try:  # the workload can write its folder: never follow a link it planted
            text = read_untrusted(self.log_path, max_bytes, tail=True).decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def release(self) -> None:
        """Before the actor is killed: end whatever is left of the session, remove the folder."""
        _kill_session(self._process.pid, self.child_born, signal.SIGKILL)
        if self.relay is not None:
            self.relay.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)
        deadline = time.monotonic() + 2  # a sandbox's last processes may take a moment to be gone
        while True:
            self.isolation.release(self.cgroup)
            if time.monotonic() > deadline or not any(g.exists() for g in self._cgroups()):
                break
            time.sleep(0.05)


_Host = ray.remote(WorkloadHost)


# -- the process's one connection to a cluster ------------------------------------------------

_lock = threading.Lock()
_connected_to: str | None = None
_users = 0
_token: str | None = None  # the token this process joined with (None: Ray's own settings, if any)
_authenticated: bool | None = None  # whether the joined cluster refused a call without a token


def set_ray_auth(env: dict[str, str | None]) -> dict[str, str | None]:
    """Set Ray's authentication variables in this process's environment (None removes one), make
    Ray read them again, and return what they were. Call it only while not joined to a cluster.

    New values are in place before Ray reads them and old ones go only once token mode is off:
    Ray aborts a process that is in token mode and finds no token."""
    before = {k: os.environ.get(k) for k in (AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV)}
    for key, value in env.items():
        if value is not None:
            os.environ[key] = value
    if AUTH_MODE_ENV in env and env[AUTH_MODE_ENV] is None:
        os.environ.pop(AUTH_MODE_ENV, None)
    Config.initialize("")  # the mode is cached in Ray's config, the token in its loader
    AuthenticationTokenLoader.instance().reset_cache()
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
    return before


def read_token_file(path: str | Path, what: str) -> str:
    """The token in ``path``: a regular file of this user's that no one else may read (0600),
    outside every folder a sandbox shows (a workload runs as this user: it could read it there)."""
    path = Path(path).expanduser()
    try:
        with path.open("rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UserInputError(f"{what}: {path} is not a regular file")
            if info.st_uid != os.geteuid() or info.st_mode & 0o077:
                raise UserInputError(f"{what}: {path} must belong to this user and be readable by it alone",
                                     hint=f"chmod 600 {path}")
            token = f.read(4096).decode(errors="replace").strip()
    except OSError as exc:
        raise UserInputError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if not token:
        raise UserInputError(f"{what}: {path} is empty")
    shown = [s.resolve() for s in host_view()[0]]
    if any(path.resolve().is_relative_to(s) for s in shown):
        raise UserInputError(f"{what}: {path} lies in a folder every sandboxed workload can read",
                             hint="keep it outside /usr, /etc and the Python installation, e.g. in the "
                                  "server's home or ~/.ray")
    return token


def _auth_token(config: CloudConfig) -> str | None:
    """The token this server joins ``config``'s cluster with: its ``auth_token_file``, else
    ``$RAY_AUTH_TOKEN``; None: none given (Ray's own settings, if the operator made any, still apply)."""
    if config.auth_token_file:
        return read_token_file(config.auth_token_file, f"cloud {config.name}: auth_token_file")
    return os.environ.get(AUTH_TOKEN_ENV, "").strip() or None


def gcs_answers(address: str, token: str | None = None, timeout_s: float = 5.0) -> bool | None:
    """Whether the GCS at ``address`` answers a call that carries ``token`` (None: no token):
    False if it refuses the call as unauthenticated, None if it gives no answer either way. The
    call only reads a key that does not exist."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        from ray._common.tls_utils import load_certs_from_env

        try:
            chain, key, ca = load_certs_from_env()
        except (OSError, RuntimeError):
            return None
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, chain))
    else:
        channel = grpc.insecure_channel(address)
    # a plain channel: Ray's own would add this process's token to every call
    metadata = [(AUTHORIZATION_HEADER_NAME, AUTHORIZATION_BEARER_PREFIX + token)] if token else []
    try:
        gcs_service_pb2_grpc.InternalKVGcsServiceStub(channel).InternalKVGet(
            gcs_service_pb2.InternalKVGetRequest(key=b"fermion-auth-probe", namespace=NAMESPACE.encode()),
            timeout=timeout_s, metadata=metadata)
    except grpc.RpcError as exc:
        return False if exc.code() == grpc.StatusCode.UNAUTHENTICATED else None
    finally:
        channel.close()
    return True


def _check_auth(cloud: str, address: str, token: str | None) -> bool:
    """Whether the cluster at ``address`` requires a token. Refuse, at once, to join one that
    requires a token with none or a wrong one (ray.init would retry for 20 s, then not say why);
    warn loudly about one that answers without a token."""
    answers = gcs_answers(address)
    if answers is False and token is None and os.environ.get(AUTH_MODE_ENV, "").lower() != "token":
        raise ProvisionError(f"cloud {cloud}: the Ray cluster at {address} requires token authentication and "
                             "this server has no token",
                             hint="name a file that holds it in clouds.yaml (auth_token_file: PATH, mode 0600) or "
                                  f"set ${AUTH_TOKEN_ENV} for the server")
    if answers is False and token is not None and gcs_answers(address, token) is False:
        raise ProvisionError(f"cloud {cloud}: the Ray cluster at {address} refuses this server's token",
                             hint="give the server the token its nodes were started with")
    if answers is not False:
        how = "answers calls that carry no token" if answers else "did not say whether it requires a token"
        log.warning("cloud %s: the Ray cluster at %s %s (no token authentication?): any workload on "
                    "its nodes could drain them, write its key-value store or run code as a Ray driver. Start "
                    "every node with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, and give this server the token "
                    "(auth_token_file in clouds.yaml, or $%s)", cloud, address, how, AUTH_TOKEN_ENV)
    return answers is False


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nothing listens on: ray.init would retry for minutes."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot reach the Ray cluster at {address}: {exc}") from exc


@contextlib.contextmanager
def _loopback_kept(address: str) -> Iterator[None]:
    """Ray rewrites a loopback address to this machine's outward IP (``resolve_ip_for_localhost``),
    where a cluster bound to 127.0.0.1 does not listen: keep the address as given."""
    host = address.rpartition(":")[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        yield
        return
    from ray._private import services

    resolve = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = resolve


def _connect(cloud: str, address: str, token: str | None) -> bool:
    """Join the cluster at ``address`` with ``token``, once per process; refuse a second, different
    cluster or token. Whether the cluster requires a token."""
    global _connected_to, _users, _token, _authenticated
    with _lock:
        if ray.is_initialized():
            current = _connected_to or ray.get_runtime_context().gcs_address
            if address not in ("auto", current):
                raise UserInputError(
                    f"cloud {cloud}: its Ray cluster {address} is not the one this server joined ({current}): "
                    "a process can join only one Ray cluster, so all clouds of kind ray must share one "
                    "(tell them apart with node_resource)")
            if token is not None and token != _token:
                raise UserInputError(f"cloud {cloud}: its auth token is not the one this server joined {current} "
                                     "with: clouds of one Ray cluster share its token")
            if _authenticated is None:
                _authenticated = _check_auth(cloud, current, _token)
            _users += 1
            return _authenticated
        if address != "auto":
            _reachable(address)
        if token is not None:  # in this process only: every workload gets a clean environment
            set_ray_auth({AUTH_MODE_ENV: "token", AUTH_TOKEN_ENV: token, AUTH_TOKEN_PATH_ENV: None})
        authenticated = _check_auth(cloud, address, token) if address != "auto" else None
        # ray.init replaces the SIGTERM handler with sys.exit: the server's own (graceful shutdown) stays
        main = threading.current_thread() is threading.main_thread()
        on_sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            with _loopback_kept(address):
                ray.init(address=address, namespace=NAMESPACE, ignore_reinit_error=True, log_to_driver=False,
                         logging_level=logging.WARNING)
        except (AuthenticationError, ConnectionError, RuntimeError, ValueError) as exc:
            raise ProvisionError(
                f"cloud {cloud}: cannot join the Ray cluster at {address}: {shorten(str(exc), 300)}",
                hint="the server must run on a node of the cluster (e.g. its head), with the cluster's token "
                     "if it requires one") from exc
        finally:
            if main and on_sigterm is not None:
                signal.signal(signal.SIGTERM, on_sigterm)
        _connected_to = address if address != "auto" else ray.get_runtime_context().gcs_address
        _token = token
        _authenticated = authenticated if authenticated is not None else _check_auth(cloud, _connected_to, token)
        _users = 1
        return _authenticated


def _disconnect() -> None:
    global _connected_to, _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0 and _connected_to is not None and ray.is_initialized():
            ray.shutdown()  # detached actors, and so every workload, keep running
        if _users == 0:
            _connected_to = _token = _authenticated = None


# -- results kept in the cluster once an actor is gone ----------------------------------------


def _kv_key(workload_id: str) -> str:
    return f"workload:{workload_id}"


def _keep(workload_id: str, record: dict[str, Any]) -> None:
    internal_kv._internal_kv_put(_kv_key(workload_id), json.dumps(record), namespace=NAMESPACE)


def _kept(workload_id: str) -> dict[str, Any] | None:
    raw = internal_kv._internal_kv_get(_kv_key(workload_id), namespace=NAMESPACE)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


# -- the backend -------------------------------------------------------------------------------


class RayBackend:
    """A named cloud of the nodes of a Ray cluster that carry ``config.node_resource`` (all of its
    nodes if unset). Several such clouds can share one cluster; a process joins only one."""

    kind = "ray"

    def __init__(self, config: CloudConfig, *, hidden: Sequence[Path] = (), isolation: Isolation | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        if config.kind != "ray" or not config.address:
            raise UserInputError(f"cloud {config.name}: a Ray backend needs kind ray and an address")
        self.name = config.name
        self.config = config
        self.start_timeout_s = start_timeout_s
        # folders of the server's a workload must not see (where a node has them: it may be this machine)
        self.hidden = [str(Path(p).absolute()) for p in hidden]
        self.isolation = _isolation_settings(isolation)
        # False: the cluster answers without a token, so a workload could drain it (the cloud says so)
        self.authenticated = _connect(config.name, config.address, _auth_token(config))
        self._closed = False

    # -- what it offers ---------------------------------------------------------------------
    def _nodes(self) -> list[dict[str, Any]]:
        marker = self.config.node_resource
        return [n for n in ray.nodes() if n.get("Alive") and (marker is None or marker in n.get("Resources", {}))]

    def capacity(self) -> dict[str, float]:
        nodes = [n["Resources"] for n in self._nodes()]
        return {"cpus": float(sum(r.get("CPU", 0) for r in nodes)),
                "memory_gb": sum(r.get("memory", 0) for r in nodes) / 2**30,
                "gpus": float(sum(r.get("GPU", 0) for r in nodes))}

    def offerings(self) -> list[Offering]:
        cap = self.capacity()
        return [self.config.offering().model_copy(update={"vcpus": cap["cpus"], "memory_gb": cap["memory_gb"]})]

    def capabilities(self) -> Capabilities:
        return Capabilities(spot=self.config.prices()[1] is not None, gpus=int(self.capacity()["gpus"]),
                            regions=list(self.config.regions), egress=self.config.egress)

    # -- lifecycle --------------------------------------------------------------------------
    def _check_fits(self, w: Workload) -> None:
        """Refuse at once what no node of this cloud can ever hold (Ray would leave it pending)."""
        nodes = self._nodes()
        group = f" carrying {self.config.node_resource}" if self.config.node_resource else ""
        if not nodes:
            raise ProvisionError(f"cloud {self.name}: no alive Ray node{group}")
        need = {"CPU": w.cpus, "memory": w.memory_gb * 2**30, "GPU": float(w.gpus)}
        if not any(all(n["Resources"].get(k, 0) >= v for k, v in need.items() if v) for n in nodes):
            big = max((n["Resources"] for n in nodes), key=lambda r: (r.get("CPU", 0), r.get("memory", 0)))
            raise ProvisionError(
                f"cloud {self.name}: no Ray node{group} holds {w.cpus:g} CPUs, {w.memory_gb:g} GB and {w.gpus} GPUs "
                f"(the largest has {big.get('CPU', 0):g} CPUs, {big.get('memory', 0) / 2**30:.1f} GB, "
                f"{big.get('GPU', 0):g} GPUs)")
        free = ray.available_resources()
        if free.get("CPU", 0) < w.cpus or free.get("GPU", 0) < w.gpus:
            raise ProvisionError(f"cloud {self.name}: the Ray cluster is full ({free.get('CPU', 0):g} CPUs and "
                                 f"{free.get('GPU', 0):g} GPUs free; {w.cpus:g} and {w.gpus} needed)")

    def start(self, workload: Workload) -> Handle:
        w = workload
        if not _ID.match(w.id):
            raise ProvisionError(f"not a workload id: {w.id!r}")
        archive = None
        if w.kind == "replica":
            if w.archive is None:
                raise ProvisionError(f"replica {w.id} has no photon archive")
            try:
                archive = Path(w.archive).read_bytes()
            except OSError as exc:
                raise ProvisionError(f"cannot read the photon archive of {w.id}: {exc}") from exc
        self._check_fits(w)
        name = actor_name(w.id)
        options: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "lifetime": "detached",
                                   "max_restarts": 0, "max_task_retries": 0, "num_cpus": w.cpus, "num_gpus": w.gpus}
        if w.memory_gb:
            options["memory"] = int(w.memory_gb * 2**30)
        if self.config.node_resource:
            options["resources"] = {self.config.node_resource: NODE_SHARE}
        spec = {"id": w.id, "kind": w.kind, "cloud": self.name, "env": dict(w.env), "secret": w.secret,
                "command": list(w.command), "workers": w.workers, "hidden": self.hidden,
                "isolation": self.isolation, "writable": [str(p) for p in w.writable],
                "read_only": [str(p) for p in w.read_only], "egress": w.egress,
                "memory_bytes": int(w.memory_gb * 2**30) if w.memory_gb else None, "cpus": w.cpus}
        try:
            actor = _Host.options(**options).remote(spec, archive)
        except ValueError as exc:  # the name is taken: that workload was started already
            raise ProvisionError(f"cloud {self.name}: workload {w.id} already exists ({exc})") from exc
        try:
            info = ray.get(actor.info.remote(), timeout=self.start_timeout_s)
        except GetTimeoutError:
            ray.kill(actor)  # pending forever otherwise, holding a name and a place in Ray's queue
            raise ProvisionError(f"cloud {self.name}: Ray placed no node for {w.id} within "
                                 f"{self.start_timeout_s:g}s (its nodes are busy)") from None
        except RayActorError as exc:  # the constructor failed: the folder or the process
            with contextlib.suppress(Exception):
                ray.kill(actor)
            raise ProvisionError(f"cloud {self.name}: cannot start {w.id}: {_last_line(exc)}") from exc
        return {"id": w.id, "actor": name, "node": info["node"]}

    def _actor(self, handle: Handle) -> Any | None:
        wid = str(handle["id"])
        name = str(handle.get("actor") or actor_name(wid))  # no name: a start interrupted before its handle
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # no such actor: never started, ended, or died with its node
            return None

    def _node_alive(self, node_id: str | None) -> bool:
        if not node_id:
            return True  # unknown: assume the best, the next status asks again
        return any(n.get("NodeID") == node_id and n.get("Alive") for n in ray.nodes())

    def status(self, handle: Handle) -> Status:
        wid = str(handle["id"])
        actor = self._actor(handle)
        if actor is None:
            return self._gone(wid)
        state = None
        for _ in range(2):
            try:
                state = ray.get(actor.poll.remote(), timeout=CALL_TIMEOUT_S)
                break
            except (ActorUnavailableError, GetTimeoutError):  # busy, restarting, or its node is dying
                if not self._node_alive(handle.get("node")):
                    return Status(alive=False, lost=True, note=LOST_NOTE)
            except RayActorError:
                return self._gone(wid)
        if state is None:
            return Status(alive=True, note="ray actor not answering")
        if state["alive"]:
            return Status(alive=True, url=state["url"])
        return self._reap(actor, wid, state)

    def _gone(self, wid: str) -> Status:
        """A workload whose actor is gone: ended (its result was kept), or lost with its actor or node."""
        record = _kept(wid)
        if record is None:
            return Status(alive=False, lost=True, note=LOST_NOTE)
        return Status(alive=False, url=record.get("url"), exit_code=record.get("exit_code"),
                      note=record.get("note", ""))

    def _reap(self, actor: Any, wid: str, state: dict[str, Any] | None) -> Status:
        """Keep an ended workload's result and log tail in the cluster, then free its actor.
        ``state`` None: the actor did not answer; kill it without asking it anything more."""
        logs = ""
        if state is not None:
            with contextlib.suppress(RayActorError, GetTimeoutError):
                logs = ray.get(actor.tail.remote(200, KEPT_LOG_BYTES), timeout=CALL_TIMEOUT_S)
        record = {"exit_code": (state or {}).get("exit_code"), "url": (state or {}).get("url"),
                  "note": (state or {}).get("note", ""), "logs": logs}
        _keep(wid, record)
        if state is not None:
            with contextlib.suppress(RayActorError, GetTimeoutError):
                ray.get(actor.release.remote(), timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(Exception):  # gone already: nothing to free
            ray.kill(actor)
        return Status(alive=False, url=record["url"], exit_code=record["exit_code"], note=record["note"])

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        actor = self._actor(handle)
        if actor is None:
            return
        state = None
        try:
            state = ray.get(actor.send_stop.remote(force), timeout=STOP_TIMEOUT_S if force else CALL_TIMEOUT_S)
        except (RayActorError, GetTimeoutError):
            if not force:
                return  # a drain of a gone or unanswering actor: nothing to drain
        if force or (state is not None and not state["alive"]):
            # draining ends in status(), which reaps the actor once the workload has exited
            self._reap(actor, str(handle["id"]), state)

    def logs(self, handle: Handle, tail: int = 200) -> str:
        actor = self._actor(handle)
        if actor is not None:
            try:
                return str(ray.get(actor.tail.remote(tail), timeout=CALL_TIMEOUT_S * 2))
            except (RayActorError, GetTimeoutError):
                pass
        record = _kept(str(handle["id"]))
        if record is None:
            return ""
        return "\n".join(str(record.get("logs", "")).splitlines()[-tail:])

    def list_workloads(self) -> list[Handle]:
        """The live actors of namespace ``fermion`` named for a workload of this cloud (several
        clouds may share a cluster: each actor says which cloud started it)."""
        found = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = str(entry.get("name", ""))
            if entry.get("namespace") != NAMESPACE or not name.startswith(actor_name("")):
                continue
            handle: Handle = {"id": name.removeprefix(actor_name("")), "actor": name}
            info = self.where(handle)
            if info is not None and info.get("cloud", self.name) == self.name:
                found.append({**handle, "node": info["node"]})
        return found

    def where(self, handle: Handle) -> dict[str, Any] | None:
        """Where a live workload runs (node id and IP, the child's pid), for diagnostics and tests."""
        actor = self._actor(handle)
        if actor is None:
            return None
        try:
            return dict(ray.get(actor.info.remote(), timeout=CALL_TIMEOUT_S))
        except (RayActorError, GetTimeoutError):
            return None

    def close(self) -> None:
        """Leave the cluster once the process's last Ray backend closes; workloads keep running."""
        if not self._closed:
            self._closed = True
            _disconnect()


def _isolation_settings(isolation: Isolation | None) -> dict[str, Any]:
    """What each node's Isolation is built with: what the server's own does (None: all of it, as a
    default Isolation()). Bubblewrap and cgroups are probed again on the node, which may lack them."""
    if isolation is None:
        return {"sandbox": True, "memory_limits": True, "task_limits": True, "max_tasks": MAX_TASKS}
    return {"sandbox": isolation.bwrap is not None or isolation.refuses,
            "memory_limits": isolation.cgroup_root is not None, "task_limits": isolation.pids_root is not None,
            "max_tasks": isolation.max_tasks, "allow_unsandboxed": isolation.allow_unsandboxed,
            "cpu_limits": isolation.cpu_root is not None, "cpu_quotas": isolation.cpu_quotas}


def _last_line(exc: BaseException) -> str:
    """The gist of a Ray error, whose message carries a whole remote traceback."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return shorten(lines[-1] if lines else type(exc).__name__, 300)
