"""The local backend: each workload is a real process on this machine, confined (see _sandbox.py)
to its own folder under the cloud's root, outside the server's home. Workloads run in their own
session: they outlive the server, and a restarted server finds them again from their handles."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .._files import write_atomic
from ..clouds import CloudConfig
from ..placement import Offering
from ._launch import launch_command
from ._protocol import Capabilities, Handle, ProvisionError, Status, Workload
from ._sandbox import Confinement, Isolation, Mount, read_untrusted, workload_env

SECRET_FILE = ".replica-secret"
LOG_TAIL_BYTES = 2 << 20


class LocalBackend:
    """A named cloud of processes on this machine, with the capacity and prices its config declares."""

    kind = "local"

    def __init__(self, config: CloudConfig, workloads_root: Path, *, server_home: Path,
                 isolation: Isolation | None = None, hidden: Sequence[Path] = ()) -> None:
        self.name = config.name
        self.config = config
        self.workloads_root = workloads_root
        self.root = workloads_root / config.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.server_home = server_home
        self.hidden = list(hidden)  # e.g. the clouds' folder stores: reached through the server only
        self.isolation = isolation or Isolation(sandbox=False, memory_limits=False)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[int, int] = {}  # learnt when a child is reaped; asked for later
        self._oom_killed: dict[int, bool] = {}  # learnt once a workload is gone, before its cgroup is removed

    # -- what it offers ---------------------------------------------------------------------
    def offerings(self) -> list[Offering]:
        return [self.config.offering()]

    def capacity(self) -> dict[str, float]:
        return {"cpus": self.config.capacity.cpus, "memory_gb": self.config.capacity.memory_gb, "gpus": 0}

    def capabilities(self) -> Capabilities:
        return Capabilities(spot=self.config.prices()[1] is not None, gpus=0, regions=list(self.config.regions))

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, workload: Workload) -> Handle:
        workdir = self.root / workload.id
        workdir.mkdir(parents=True, exist_ok=True)
        if workload.kind == "replica":
            command, log_name, env, mounts = self._replica(workload, workdir)
        else:
            command, log_name = launch_command(workload.command, workload.workers), "job.log"
            facts = {k: v for k, v in workload.env.items() if k.startswith("FERMION_")}
            facts["FERMION_CLOUD"] = self.name
            declared = {k: v for k, v in workload.env.items() if not k.startswith("FERMION_")}
            env = workload_env(declared, facts, workdir)
            mounts = [Mount(m, writable=True) for m in workload.writable] + [Mount(m) for m in workload.read_only]
        # hide the server's home and every workload folder; show this one (and its mounts) again
        confinement = Confinement(workdir=workdir, hidden=[self.server_home, self.workloads_root, *self.hidden],
                                  mounts=mounts,
                                  memory_bytes=int(workload.memory_gb * (1 << 30)) if workload.memory_gb else None)
        try:
            proc, pid = self.isolation.start(command, env, confinement, workdir / log_name,
                                             f"{self.name}-{workload.id}")
        except OSError as exc:
            raise ProvisionError(f"cannot start {command[0]!r}: {exc}") from exc
        self._children[pid] = proc
        try:
            write_atomic(workdir / "pid", str(pid))  # never through a link the workload planted
        except OSError as exc:  # without its pid file nobody could find it again: do not leave it running
            self.stop({"id": workload.id, "pid": pid}, force=True)
            raise ProvisionError(f"cannot record the workload's pid: {exc}") from exc
        return {"id": workload.id, "pid": pid}

    def _replica(self, w: Workload, workdir: Path) -> tuple[list[str], str, dict[str, str], list[Mount]]:
        if w.archive is None:
            raise ProvisionError(f"replica {w.id} has no photon archive")
        archive = workdir / "photon.photon"  # shipped to the cloud, as a remote one would need it
        shutil.copyfile(w.archive, archive)
        command = [
            sys.executable, "-m", "fermion", "photon", "run", str(archive),
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(workdir / "port"),
            "--log-level", "warning", "--graceful-timeout", "20",
        ]
        if w.secret:
            write_atomic(workdir / SECRET_FILE, w.secret, 0o600)
            command += ["--auth-secret-file", str(workdir / SECRET_FILE)]
        facts = {"FERMION_REPLICA_ID": w.id, "FERMION_CLOUD": self.name}
        facts.update({k: v for k, v in w.env.items() if k.startswith("FERMION_INJECT_")})
        declared = {k: v for k, v in w.env.items() if not k.startswith("FERMION_INJECT_")}
        return command, "replica.log", workload_env(declared, facts, workdir), [Mount(m) for m in w.read_only]

    def _workdir(self, handle: Handle) -> Path:
        wid = str(handle["id"])
        if "/" in wid or wid in ("", ".", ".."):
            raise ValueError(f"not a workload id: {wid!r}")
        return self.root / wid

    def _pid(self, handle: Handle) -> int | None:
        if handle.get("pid"):
            return int(handle["pid"])
        try:  # a start interrupted before its handle was written: the pid file it left
            return int(read_untrusted(self._workdir(handle) / "pid", 32))
        except (OSError, ValueError):
            return None

    def status(self, handle: Handle) -> Status:
        workdir, pid = self._workdir(handle), self._pid(handle)
        if pid is None:
            return Status(alive=False)
        alive = self._alive(pid, workdir)
        url = None
        try:
            url = f"http://127.0.0.1:{int(read_untrusted(workdir / 'port', 32))}"
        except (OSError, ValueError):
            pass
        if alive:
            return Status(alive=True, url=url)
        code = self._exit_codes.get(pid)
        try:  # a job attempt's wrapper records its code, also when the server was not its parent
            code = int(read_untrusted(workdir / "exit_code", 32))
        except (OSError, ValueError):
            pass
        return Status(alive=False, url=url, exit_code=code, note=self._exit_note(pid, workdir))

    def _alive(self, pid: int, workdir: Path) -> bool:
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return True
            self._exit_codes[pid] = code
            self._children.pop(pid, None)  # observer threads and an API stop may both get here
            return self._reaped(pid, workdir)
        # not our child (started before a server restart): check the pid is still that workload
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return self._reaped(pid, workdir)
        if "\nState:\tZ" in status:
            return self._reaped(pid, workdir)
        if str(workdir).encode() in cmdline:  # a replica, or any sandboxed workload
            return True
        try:  # an unsandboxed job attempt: its command line is the user's, so match the pid file it left
            return int(read_untrusted(workdir / "pid", 32)) == pid and Path(f"/proc/{pid}/cwd").resolve() == workdir.resolve()
        except (OSError, ValueError):
            return False

    def _reaped(self, pid: int, workdir: Path) -> bool:
        """Note how a workload that is gone ended, then free its cgroup. Always False (not alive)."""
        if pid not in self._oom_killed:
            name = f"{self.name}-{workdir.name}"
            self._oom_killed[pid] = self.isolation.oom_killed(name)
            self.isolation.release(name)
        return False

    def _exit_note(self, pid: int, workdir: Path) -> str:
        if self._oom_killed.get(pid) or self.isolation.oom_killed(f"{self.name}-{workdir.name}"):
            return "killed for using more than its memory limit"
        return ""

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        workdir, pid = self._workdir(handle), self._pid(handle)
        if pid is None or not self._alive(pid, workdir):
            return
        sig = signal.SIGKILL if force else signal.SIGTERM
        try:  # the whole process group: the sandbox, torchrun and its workers, a shell and its children
            os.killpg(os.getpgid(pid), sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def list_workloads(self) -> list[Handle]:
        """Every folder of this cloud whose recorded pid is still that workload's process."""
        found = []
        for workdir in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if workdir.is_symlink() or not workdir.is_dir():
                continue
            handle: Handle = {"id": workdir.name}
            pid = self._pid(handle)
            if pid is not None and self._alive(pid, workdir):
                found.append({**handle, "pid": pid})
        return found

    def logs(self, handle: Handle, tail: int = 200) -> str:
        workdir = self._workdir(handle)
        name = "job.log" if (workdir / "job.log").exists() else "replica.log"
        try:  # the log lies in the workload's folder: it may have replaced it with a link
            lines = read_untrusted(workdir / name, LOG_TAIL_BYTES, tail=True).decode(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def close(self) -> None:
        pass
