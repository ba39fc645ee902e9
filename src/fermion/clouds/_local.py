"""The local backend: each replica is a real `fermion photon run` subprocess on this machine,
confined (see _sandbox.py) to its own folder under the cloud's root, outside the server's home."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .._files import write_atomic
from ._base import ProvisionError, ReplicaHandle, ReplicaSpec
from ._config import CloudConfig
from ._sandbox import Confinement, Isolation, Mount, read_untrusted, workload_env

SECRET_FILE = ".replica-secret"
LOG_TAIL_BYTES = 2 << 20


class LocalCloud:
    """A named cloud whose replicas are processes in their own session (they outlive the server,
    which re-adopts them on restart)."""

    def __init__(self, config: CloudConfig, workloads_root: Path, *, server_home: Path,
                 isolation: Isolation | None = None) -> None:
        self.name = config.name
        self.config = config
        self.workloads_root = workloads_root
        self.root = workloads_root / config.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.server_home = server_home
        self.isolation = isolation or Isolation(sandbox=False, memory_limits=False)
        self.failed = False  # set by `fail()`: injected outage
        self.unhealthy_until = 0.0  # set by the controller after a failed provisioning
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[int, int] = {}
        self._oom_killed: dict[int, bool] = {}  # learnt once a workload is gone, before its cgroup is removed

    def _confinement(self, workdir: Path, mounts: list[Mount], memory_gb: float | None) -> Confinement:
        # hide the server's home and every workload folder; show this one (and its mounts) again
        return Confinement(workdir=workdir, hidden=[self.server_home, self.workloads_root], mounts=mounts,
                           memory_bytes=int(memory_gb * (1 << 30)) if memory_gb else None)

    def _start(self, name: str, command: list[str], env: dict[str, str], confinement: Confinement,
               log_name: str) -> ReplicaHandle:
        try:
            proc, pid = self.isolation.start(command, env, confinement, confinement.workdir / log_name,
                                             f"{self.name}-{name}")
        except OSError as exc:
            raise ProvisionError(f"cannot start {command[0]!r}: {exc}") from exc
        self._children[pid] = proc
        write_atomic(confinement.workdir / "pid", str(pid))  # never through a link the workload planted
        return ReplicaHandle(pid=pid, workdir=confinement.workdir)

    def _refuse_if_down(self, what: str) -> None:
        if self.failed:
            raise ProvisionError(f"cloud {self.name} is down (injected outage)")
        if self.config.inject.fail_start:
            raise ProvisionError(f"cloud {self.name} refused to start the {what} (injected fail_start)")

    def provision(self, spec: ReplicaSpec) -> ReplicaHandle:
        self._refuse_if_down("replica")
        workdir = self.root / spec.replica_id
        workdir.mkdir(parents=True, exist_ok=True)
        archive = workdir / "photon.photon"  # shipped to the cloud, as a remote one would need it
        shutil.copyfile(spec.archive, archive)
        facts = {"FERMION_REPLICA_ID": spec.replica_id, "FERMION_CLOUD": self.name}
        if self.config.inject.latency_ms:
            facts["FERMION_INJECT_LATENCY_MS"] = str(self.config.inject.latency_ms)
        cmd = [
            sys.executable, "-m", "fermion", "photon", "run", str(archive),
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(workdir / "port"),
            "--log-level", "warning", "--graceful-timeout", "20",
        ]
        if spec.secret:
            secret_file = workdir / SECRET_FILE
            write_atomic(secret_file, spec.secret, 0o600)
            cmd += ["--auth-secret-file", str(secret_file)]
        confinement = self._confinement(workdir, [Mount(m) for m in spec.mounts], spec.memory_gb)
        return self._start(spec.replica_id, cmd, workload_env(spec.env, facts, workdir), confinement, "replica.log")

    def run(self, run_id: str, command: list[str], env: dict[str, str], *, mounts: list[Path] | None = None,
            memory_gb: float | None = None, read_only: list[Path] | None = None) -> ReplicaHandle:
        """Start a job attempt: ``command`` in its own folder and process session; ``mounts`` are
        the folders it writes (its checkpoints and output), ``read_only`` those it only reads."""
        self._refuse_if_down("attempt")
        workdir = self.root / run_id
        workdir.mkdir(parents=True, exist_ok=True)
        facts = {k: v for k, v in env.items() if k.startswith("FERMION_")}
        facts["FERMION_CLOUD"] = self.name
        declared = {k: v for k, v in env.items() if not k.startswith("FERMION_")}
        shown = [Mount(m, writable=True) for m in mounts or []] + [Mount(m) for m in read_only or []]
        confinement = self._confinement(workdir, shown, memory_gb)
        return self._start(run_id, command, workload_env(declared, facts, workdir), confinement, "job.log")

    def _alive(self, handle: ReplicaHandle) -> bool:
        child = self._children.get(handle.pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return True
            self._exit_codes[handle.pid] = code
            del self._children[handle.pid]
            return self._reaped(handle)
        # not our child (started before a server restart): check the pid is still that workload
        try:
            cmdline = Path(f"/proc/{handle.pid}/cmdline").read_bytes()
            status = Path(f"/proc/{handle.pid}/status").read_text()
        except OSError:
            return self._reaped(handle)
        if "\nState:\tZ" in status:
            return self._reaped(handle)
        if str(handle.workdir).encode() in cmdline:  # a replica, or any sandboxed workload
            return True
        try:  # an unsandboxed job attempt: its command line is the user's, so match the pid file it left
            return int(read_untrusted(handle.workdir / "pid", 32)) == handle.pid and Path(f"/proc/{handle.pid}/cwd").resolve() == handle.workdir.resolve()
        except (OSError, ValueError):
            return False

    def _reaped(self, handle: ReplicaHandle) -> bool:
        """Note how a workload that is gone ended, then free its cgroup. Always False (not alive)."""
        if handle.pid not in self._oom_killed:
            name = f"{self.name}-{handle.workdir.name}"
            self._oom_killed[handle.pid] = self.isolation.oom_killed(name)
            self.isolation.release(name)
        return False

    def poll(self, handle: ReplicaHandle) -> tuple[bool, int | None]:
        alive = self._alive(handle)
        port = handle.port
        if port is None:
            try:
                port = int(read_untrusted(handle.workdir / "port", 32))
            except (OSError, ValueError):
                port = None
        return alive, port

    def exit_code(self, handle: ReplicaHandle) -> int | None:
        child = self._children.get(handle.pid)
        return child.returncode if child is not None else self._exit_codes.get(handle.pid)

    def exit_note(self, handle: ReplicaHandle, memory_gb: float | None) -> str:
        """Why the workload ended, where the machine can tell (e.g. its memory limit)."""
        if self._oom_killed.get(handle.pid) or self.isolation.oom_killed(f"{self.name}-{handle.workdir.name}"):
            return f"killed for using more than its memory limit of {memory_gb:g} GB" if memory_gb else \
                "killed for using more than its memory limit"
        return ""

    def stop(self, handle: ReplicaHandle, *, force: bool = False) -> None:
        if not self._alive(handle):
            return
        sig = signal.SIGKILL if force else signal.SIGTERM
        try:  # the whole process group: the sandbox, torchrun and its workers, a shell and its children
            os.killpg(os.getpgid(handle.pid), sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(handle.pid, sig)
            except ProcessLookupError:
                pass

    def logs(self, handle: ReplicaHandle, tail: int = 200) -> str:
        name = "job.log" if (handle.workdir / "job.log").exists() else "replica.log"
        try:  # the log lies in the workload's folder: it may have replaced it with a link
            lines = read_untrusted(handle.workdir / name, LOG_TAIL_BYTES, tail=True).decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def fail(self) -> None:
        """Injected outage: new replicas are refused (the controller kills the running ones)."""
        self.failed = True

    def recover(self) -> None:
        self.failed = False
