"""The local backend: each replica is a real `fermion photon run` subprocess on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ._base import ProvisionError, ReplicaHandle, ReplicaSpec
from ._config import CloudConfig


class LocalCloud:
    """A named cloud whose replicas are processes in their own session (they outlive the server,
    which re-adopts them on restart)."""

    def __init__(self, config: CloudConfig, root: Path) -> None:
        self.name = config.name
        self.config = config
        self.root = root / "clouds" / config.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.failed = False  # set by `fail()`: injected outage
        self.unhealthy_until = 0.0  # set by the controller after a failed provisioning
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def provision(self, spec: ReplicaSpec) -> ReplicaHandle:
        if self.failed:
            raise ProvisionError(f"cloud {self.name} is down (injected outage)")
        if self.config.inject.fail_start:
            raise ProvisionError(f"cloud {self.name} refused to start the replica (injected fail_start)")
        workdir = self.root / spec.replica_id
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env, "FERMION_REPLICA_ID": spec.replica_id, "FERMION_CLOUD": self.name}
        if self.config.inject.latency_ms:
            env["FERMION_INJECT_LATENCY_MS"] = str(self.config.inject.latency_ms)
        cmd = [
            sys.executable, "-m", "fermion", "photon", "run", str(spec.archive),
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(workdir / "port"),
            "--log-level", "warning", "--graceful-timeout", "20",
        ]
        with (workdir / "replica.log").open("ab") as log:
            try:
                proc = subprocess.Popen(
                    cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            except OSError as exc:
                raise ProvisionError(f"cannot start replica process: {exc}") from exc
        self._children[proc.pid] = proc
        return ReplicaHandle(pid=proc.pid, workdir=workdir)

    def run(self, run_id: str, command: list[str], env: dict[str, str]) -> ReplicaHandle:
        """Start a job attempt: ``command`` in its own working directory and process session."""
        if self.failed:
            raise ProvisionError(f"cloud {self.name} is down (injected outage)")
        if self.config.inject.fail_start:
            raise ProvisionError(f"cloud {self.name} refused to start the attempt (injected fail_start)")
        workdir = self.root / run_id
        workdir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **env, "FERMION_CLOUD": self.name, "PYTHONUNBUFFERED": "1"}
        with (workdir / "job.log").open("ab") as log:
            try:
                proc = subprocess.Popen(command, cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                raise ProvisionError(f"cannot start {command[0]!r}: {exc}") from exc
        self._children[proc.pid] = proc
        (workdir / "pid").write_text(str(proc.pid))
        return ReplicaHandle(pid=proc.pid, workdir=workdir)

    def _alive(self, handle: ReplicaHandle) -> bool:
        child = self._children.get(handle.pid)
        if child is not None:
            if child.poll() is None:
                return True
            del self._children[handle.pid]
            return False
        # not our child (started before a server restart): check the pid is still that replica
        try:
            cmdline = Path(f"/proc/{handle.pid}/cmdline").read_bytes()
            status = Path(f"/proc/{handle.pid}/status").read_text()
        except OSError:
            return False
        if "\nState:\tZ" in status:
            return False
        if str(handle.workdir).encode() in cmdline:
            return True
        try:  # a job attempt: its command line is the user's, so match the pid file it left
            return int((handle.workdir / "pid").read_text()) == handle.pid and Path(f"/proc/{handle.pid}/cwd").resolve() == handle.workdir.resolve()
        except (OSError, ValueError):
            return False

    def poll(self, handle: ReplicaHandle) -> tuple[bool, int | None]:
        alive = self._alive(handle)
        port = handle.port
        if port is None:
            try:
                port = int((handle.workdir / "port").read_text())
            except (OSError, ValueError):
                port = None
        return alive, port

    def exit_code(self, handle: ReplicaHandle) -> int | None:
        child = self._children.get(handle.pid)
        return child.returncode if child is not None else None

    def stop(self, handle: ReplicaHandle, *, force: bool = False) -> None:
        if not self._alive(handle):
            return
        try:  # the whole process group: torchrun and its workers, a shell and its children
            os.killpg(handle.pid, signal.SIGKILL if force else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(handle.pid, signal.SIGKILL if force else signal.SIGTERM)
            except ProcessLookupError:
                pass

    def logs(self, handle: ReplicaHandle, tail: int = 200) -> str:
        name = "job.log" if (handle.workdir / "job.log").exists() else "replica.log"
        try:
            lines = (handle.workdir / name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def fail(self) -> None:
        """Injected outage: new replicas are refused (the controller kills the running ones)."""
        self.failed = True

    def recover(self) -> None:
        self.failed = False
