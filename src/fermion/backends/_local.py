"""The local backend: each workload is a real process on this machine, confined (see _sandbox.py)
to its own folder under the cloud's root, outside the server's home. Workloads run in their own
session: they outlive the server, and a restarted server finds them again from their handles.

Where the sandbox can give each workload a network namespace of its own, it does: a workload
then reaches nothing on this machine but what it is handed. A replica serves on a Unix socket
this backend binds (in a folder no workload sees) and hands it, so it needs no port and no one
can reach it but the gateway (under an agent: a loopback port, bound outside its namespace); a
job attempt (and a replica fetching its model) reaches the server's workload socket (or the
agent's relay), which answers only the workload's own ``/self/`` routes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .._files import write_atomic
from .._unix import listen_unix, unix_url
from ..clouds import CloudConfig
from ._launch import launch_command
from ._protocol import Capabilities, DeclaredCapacity, Handle, ProvisionError, Status, Workload
from ._sandbox import Confinement, Isolation, Mount, read_untrusted, workload_env

SECRET_FILE = ".replica-secret"
LOG_TAIL_BYTES = 2 << 20
SPARE_PREFIX = "spare-"  # the folder of a warm pool's spare
# once a replica took a spare over: <cloud root>/.taken/<spare folder> holds the replica's id, out of
# every workload's sight (a file in its own folder, the replica could rewrite to pass for another)
TAKEN = ".taken"
OWNERS = ".spares"  # <cloud root>/.spares/<spare folder>: the pid and start time of the server that started it
READ_AT_START = ("PYTHON", "LD_", "LC_", "MALLOC_", "GLIBC_")
REPLICAS = ".replicas"  # <cloud root>/.replicas/<replica id>: the spare folder it took (before its handle is stored)
SOCKETS = ".sockets"  # <cloud root>/.sockets/<workload folder>.sock: where a replica serves
API_FOLDER_INSIDE = "/run/fermion"  # where a workload in a sandbox finds the server's workload socket
REFILL_DELAY_S = 2.0  # a new spare's imports would compete with the replica that just took the last one
log = logging.getLogger("fermion.backends.local")


class LocalBackend(DeclaredCapacity):
    """A named cloud of processes on this machine, with the capacity and prices its config declares."""

    kind = "local"

    def __init__(self, config: CloudConfig, workloads_root: Path, *, server_home: Path,
                 isolation: Isolation | None = None, hidden: Sequence[Path] = (), api_socket: Path | None = None,
                 tcp_replicas: bool = False) -> None:
        """``api_socket``: the server's workload socket (see fermion.api), or a relay to it, handed to
        every workload. ``tcp_replicas``: the socket a replica is handed is a TCP port of this
        machine's loopback (bound outside its namespace), not a Unix socket: what an agent reports to
        a server that reaches its replicas over the network."""
        self.name = config.name
        self.config = config
        self.workloads_root = workloads_root
        self.root = workloads_root / config.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.server_home = server_home
        self.hidden = list(hidden)  # e.g. the clouds' folder stores: reached through the server only
        self.isolation = isolation or Isolation(sandbox=False, memory_limits=False)
        self.api_socket = api_socket
        self.on_sockets = config.network == "own"  # replicas serve on sockets this backend binds
        self.tcp_replicas = tcp_replicas
        self.own_network = self.on_sockets and self.isolation.network
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[int, int] = {}  # learnt when a child is reaped; asked for later
        self._oom_killed: dict[int, bool] = {}  # learnt once a workload is gone, before its cgroup is removed
        # the warm pool: spare replica processes with the serving stack imported, ready to be taken over
        self._spares: list[tuple[str, int]] = []  # (folder, pid)
        self._pool_lock = threading.Lock()
        self._refill_timer: threading.Timer | None = None
        self._closed = False
        self._pool_started = False  # by this server's first start of a replica: only a leader starts them

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, workload: Workload) -> Handle:
        if workload.egress and not self.capabilities().egress:
            raise ProvisionError(f"cloud {self.name} keeps its workloads off the network and does not allow egress "
                                 "(an operator allows it with `egress: true` in clouds.yaml)")
        with self._pool_lock:
            first, self._pool_started = not self._pool_started, True
        if first:  # this server leads (only a leader starts workloads): the spares of one gone are ended
            self._end_stale_spares()
            if self.config.warm_pool:
                self._refill_later()
        # a spare's interpreter started with Fermion's environment: a replica that sets what is read once,
        # at a process's start (PYTHONPATH, LD_PRELOAD, the locale, TZ...), needs a process of its own,
        # as one with mounts does
        if workload.kind == "replica" and not workload.read_only and not (workload.egress and self.own_network) and \
                not any(k.startswith(READ_AT_START) or k in ("LANG", "TZ") for k in workload.env):
            taken = self._take_spare(workload)
            if taken is not None:
                return taken
        workdir = self.root / workload.id
        workdir.mkdir(parents=True, exist_ok=True)
        listening = self._listen(workload.id) if workload.kind == "replica" and self.on_sockets else None
        try:
            return self._start_cold(workload, workdir, listening)
        except BaseException:
            self._forget_socket(workload.id)
            raise
        finally:
            if listening is not None:  # the replica holds it now
                listening.close()

    def _start_cold(self, workload: Workload, workdir: Path, listening: socket.socket | None) -> Handle:
        if workload.kind == "replica":
            command, log_name, env, mounts = self._replica(workload, workdir, listening)
        else:
            command, log_name = launch_command(workload.command, workload.workers), "job.log"
            facts = {k: v for k, v in workload.env.items() if k.startswith("FERMION_")}
            facts["FERMION_CLOUD"] = self.name
            facts.update(self._server_socket_env())
            declared = {k: v for k, v in workload.env.items() if not k.startswith("FERMION_")}
            env = workload_env(declared, facts, workdir, workload.cpus)
            mounts = [Mount(m, writable=True) for m in workload.writable] + [Mount(m) for m in workload.read_only]
        # hide the server's home and every workload folder; show this one (and its mounts) again
        confinement = self._confinement(workdir, mounts=mounts, cpus=workload.cpus, listening=listening,
                                        egress=workload.egress,
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

    def capabilities(self) -> Capabilities:
        # workloads in namespaces of their own get the machine's network only where the operator allows it
        return replace(super().capabilities(), egress=not self.on_sockets or self.config.egress)

    def _listen(self, folder: str) -> socket.socket:
        """The socket the replica in ``folder`` will serve on, bound where no workload can see it
        (a socket file in its own folder, a workload could swap for a link to any socket here), or
        a port of the loopback, noted there."""
        (self.root / SOCKETS).mkdir(mode=0o700, exist_ok=True)
        if not self.tcp_replicas:
            return listen_unix(self.root / SOCKETS / f"{folder}.sock")
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(2048)
            write_atomic(self.root / SOCKETS / f"{folder}.port", str(sock.getsockname()[1]))
        except OSError:
            sock.close()
            raise
        return sock

    def _forget_socket(self, folder: str) -> None:
        for suffix in (".sock", ".port"):
            with contextlib.suppress(OSError):
                (self.root / SOCKETS / f"{folder}{suffix}").unlink()

    def _confinement(self, workdir: Path, *, listening: socket.socket | None, mounts: list[Mount] | None = None,
                     cpus: float | None, memory_bytes: int | None, egress: bool = False) -> Confinement:
        """Hide the server's home and every workload folder; show this one (and its mounts) again;
        hand it its listening socket and the server's workload socket."""
        # the socket's folder, not the socket: a restarted server's new socket reaches workloads started before
        shown_at = [(self.api_socket.parent, API_FOLDER_INSIDE)] if self._hands_api_socket() and self.isolation.bwrap \
            else []
        return Confinement(workdir=workdir, hidden=[self.server_home, self.workloads_root, *self.hidden],
                           mounts=mounts or [], cpus=cpus, memory_bytes=memory_bytes,
                           own_network=self.own_network and not egress, shown_at=shown_at,
                           pass_fds=(listening.fileno(),) if listening is not None else ())

    def _hands_api_socket(self) -> bool:
        return self.on_sockets and self.api_socket is not None and self.api_socket.parent.is_dir()

    def _server_socket_env(self) -> dict[str, str]:
        """How the workload reaches the server's workload socket: where it shows inside the sandbox."""
        if not self._hands_api_socket():
            return {}
        assert self.api_socket is not None
        inside = f"{API_FOLDER_INSIDE}/{self.api_socket.name}" if self.isolation.bwrap else str(self.api_socket)
        return {"FERMION_SERVER_SOCKET": inside}

    def _replica(self, w: Workload, workdir: Path,
                 listening: socket.socket | None) -> tuple[list[str], str, dict[str, str], list[Mount]]:
        if w.archive is None:
            raise ProvisionError(f"replica {w.id} has no photon archive")
        archive = workdir / "photon.photon"  # shipped to the cloud, as a remote one would need it
        shutil.copyfile(w.archive, archive)
        if listening is not None:
            where = ["--listen-fd", str(listening.fileno())]
        else:  # a spare on a socket adds the one it holds; elsewhere, a port of this machine's loopback
            where = [] if self.on_sockets else ["--host", "127.0.0.1", "--port", "0"]
        command = [
            sys.executable, "-m", "fermion.photon.replica", str(archive), *where, "--port-file", str(workdir / "port"),
            "--log-level", "warning", "--graceful-timeout", "20",
        ]
        if w.secret:
            write_atomic(workdir / SECRET_FILE, w.secret, 0o600)
            command += ["--auth-secret-file", str(workdir / SECRET_FILE)]
        facts = {"FERMION_REPLICA_ID": w.id, "FERMION_CLOUD": self.name, **self._server_socket_env()}
        facts.update({k: v for k, v in w.env.items() if k.startswith("FERMION_INJECT_")})
        declared = {k: v for k, v in w.env.items() if not k.startswith("FERMION_INJECT_")}
        return command, "replica.log", workload_env(declared, facts, workdir, w.cpus), [Mount(m) for m in w.read_only]

    # -- the warm pool ------------------------------------------------------------------------
    def _start_spare(self) -> None:
        """A replica process in a folder of its own, confined as a replica is, that imports the
        serving stack and waits for a replica to take it over (see fermion.photon.replica)."""
        folder = f"{SPARE_PREFIX}{uuid.uuid4().hex[:12]}"
        workdir = self.root / folder
        workdir.mkdir(parents=True)
        env = workload_env({}, {"FERMION_CLOUD": self.name}, workdir)
        # the whole cloud's memory until a replica takes it and its own limit is set: a cgroup to lower
        memory = int(self.config.capacity.memory_gb * (1 << 30))
        listening = self._listen(folder) if self.on_sockets else None
        try:
            confinement = self._confinement(workdir, listening=listening, memory_bytes=memory,
                                            cpus=self.config.capacity.cpus)
            (self.root / OWNERS).mkdir(exist_ok=True)
            write_atomic(self.root / OWNERS / folder, _this_process())
            # the folder on its command line, as a replica's: a restarted server knows the process by it
            command = [sys.executable, "-m", "fermion.photon.replica", "--standby", str(workdir)]
            if listening is not None:
                command += ["--listen-fd", str(listening.fileno())]
            proc, pid = self.isolation.start(command, env, confinement, workdir / "replica.log",
                                             f"{self.name}-{folder}")
        finally:
            if listening is not None:
                listening.close()
        self._children[pid] = proc
        write_atomic(workdir / "pid", str(pid))
        with self._pool_lock:
            closed = self._closed
            if not closed:
                self._spares.append((folder, pid))
        if closed:  # the server stopped meanwhile
            self.stop({"id": folder, "pid": pid}, force=True)

    def _refill_later(self) -> None:
        with self._pool_lock:
            if self._refill_timer is None and not self._closed:
                self._refill_timer = threading.Timer(REFILL_DELAY_S, self._refill)
                self._refill_timer.daemon = True
                self._refill_timer.start()

    def _refill(self) -> None:
        """Start the spares missing; the timer stays set meanwhile, so no second refill counts short."""
        with self._pool_lock:
            missing = 0 if self._closed else self.config.warm_pool - len(self._spares)
        try:
            for _ in range(max(0, missing)):
                self._start_spare()
        except OSError as exc:  # the pool is a speed-up: a replica still starts cold without it
            log.warning("cloud %s: cannot start a spare replica process: %s", self.name, exc)
        finally:
            with self._pool_lock:
                self._refill_timer = None
                short = not self._closed and len(self._spares) < self.config.warm_pool
        if short and missing > 0:  # taken while it started them
            self._refill_later()

    def _take_spare(self, workload: Workload) -> Handle | None:
        """Hand ``workload`` to a spare, if one is alive: its files in the spare's folder, its memory
        limit on the spare's cgroup, then its argv and environment in ``assign.json``."""
        from ..photon.replica import ASSIGNMENT

        while True:
            with self._pool_lock:
                if not self._spares:
                    return None
                folder, pid = self._spares.pop(0)
            self._refill_later()
            workdir = self.root / folder
            if self._alive(pid, workdir):
                break
        handle: Handle = {"id": workload.id, "pid": pid, "dir": folder}
        try:
            command, _log, env, _mounts = self._replica(workload, workdir, None)
            name = f"{self.name}-{folder}"
            if self.isolation.cgroup_root is not None and workload.memory_gb and \
                    not self.isolation.set_memory_limit(name, int(workload.memory_gb * (1 << 30))):
                raise OSError("its memory limit could not be set")
            if self.isolation.cpu_root is not None and workload.cpus and \
                    not self.isolation.set_cpu_limit(name, workload.cpus):
                raise OSError("its CPU weight could not be set")
            # both ways, before it serves: a start cut short here (the handle not stored yet) is still
            # found, and stopped, by the replica's id alone
            for folder_of, key, value in ((REPLICAS, workload.id, folder), (TAKEN, folder, workload.id)):
                (self.root / folder_of).mkdir(exist_ok=True)
                write_atomic(self.root / folder_of / key, value)
            write_atomic(workdir / ASSIGNMENT, json.dumps({"argv": command[3:], "env": env}), 0o600)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the spare is ended, never left unowned
            log.warning("cloud %s: spare %s could not take replica %s (%s): it starts cold", self.name, folder,
                        workload.id, exc)
            self.stop(handle, force=True)
            return None
        return handle

    def _spare_of(self, workload_id: str) -> str | None:
        """The spare folder a replica took over (a replica that did lives in that folder)."""
        if "/" in workload_id or workload_id in ("", ".", ".."):
            return None
        try:
            return (self.root / REPLICAS / workload_id).read_text() or None
        except OSError:
            return None

    def _end_stale_spares(self) -> None:
        """Spares no replica took, of a server that is gone, are stopped (a live server's are its own)."""
        for workdir in self.root.glob(f"{SPARE_PREFIX}*"):
            if workdir.is_symlink() or not workdir.is_dir() or (self.root / TAKEN / workdir.name).exists():
                continue
            try:
                if (self.root / OWNERS / workdir.name).read_text() == _process(int(
                        (self.root / OWNERS / workdir.name).read_text().split()[0])):
                    continue
            except (OSError, ValueError, IndexError):
                pass
            handle: Handle = {"id": workdir.name}
            pid = self._pid(handle)
            if pid is not None and self._alive(pid, workdir):
                self.stop(handle, force=True)

    def _workdir(self, handle: Handle) -> Path:
        wid = str(handle.get("dir") or self._spare_of(str(handle["id"])) or handle["id"])
        if "/" in wid or wid in ("", ".", ".."):
            raise ValueError(f"not a workload id: {wid!r}")
        return self.root / wid

    def _pid(self, handle: Handle, folders: dict[str, list[int]] | None = None) -> int | None:
        if handle.get("pid"):
            return int(handle["pid"])
        workdir = self._workdir(handle)
        try:  # a start interrupted before its handle was written: the pid file it left
            return int(read_untrusted(workdir / "pid", 32))
        except (OSError, ValueError):
            pass
        # ... or cut short before even that (the sandbox reports its pid up to seconds later): every
        # process of a workload starts in its folder, so the folder alone finds the first of them
        leaders = sessions_in(workdir, folders)
        return min(leaders) if leaders else None

    def status(self, handle: Handle) -> Status:
        workdir, pid = self._workdir(handle), self._pid(handle)
        if pid is None:
            return Status(alive=False)
        alive = self._alive(pid, workdir)
        url = None
        try:  # once it says it serves; where is this backend's to say (the file is the workload's)
            port = int(read_untrusted(workdir / "port", 32))
            sock = self.root / SOCKETS / f"{workdir.name}.sock"
            if self.on_sockets and self.tcp_replicas:
                url = f"http://127.0.0.1:{int((self.root / SOCKETS / f'{workdir.name}.port').read_text())}"
            elif self.on_sockets:
                url = unix_url(sock) if sock.exists() else None
            elif 0 < port < 65536:  # the workload wrote it: nothing else becomes an address
                url = f"http://127.0.0.1:{port}"
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
            if child.pid == pid:
                return self._reaped(pid, workdir)
            # the sandbox's outside ended (a signal that found no workload process yet reaches it): its
            # init, ``pid``, dies with it a moment later; until it has, the workload still runs
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
        try:  # an unsandboxed job attempt: its command line is the user's, but it started in its folder
            return os.readlink(f"/proc/{pid}/cwd") == str(workdir.resolve())
        except OSError:
            return False

    def _reaped(self, pid: int, workdir: Path) -> bool:
        """Note how a workload that is gone ended, then free its cgroup. Always False (not alive)."""
        if pid not in self._oom_killed:
            name = f"{self.name}-{workdir.name}"
            self._oom_killed[pid] = self.isolation.oom_killed(name)
            self.isolation.release(name)
            self._forget_socket(workdir.name)
        return False

    def _exit_note(self, pid: int, workdir: Path) -> str:
        if self._oom_killed.get(pid) or self.isolation.oom_killed(f"{self.name}-{workdir.name}"):
            return "killed for using more than its memory limit"
        return ""

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        workdir, pid = self._workdir(handle), self._pid(handle)
        if workdir.name.startswith(SPARE_PREFIX):  # an assignment a spare never read holds the replica's env
            from ..photon.replica import ASSIGNMENT

            with contextlib.suppress(OSError):
                (workdir / ASSIGNMENT).unlink()
        sig = signal.SIGKILL if force else signal.SIGTERM
        if pid is not None and self._alive(pid, workdir):
            _signal_group(pid, sig)
        if force and not handle.get("pid"):  # a start cut short may have left more than its first process
            for session in sessions_in(workdir):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(session, sig)  # the group its first process made, and all of it

    def list_workloads(self) -> list[Handle]:
        """Every folder of this cloud whose recorded pid is still that workload's process."""
        found = []
        folders = process_folders()
        for workdir in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if workdir.is_symlink() or not workdir.is_dir() or workdir.name.startswith("."):
                continue
            handle: Handle = {"id": workdir.name}
            if workdir.name.startswith(SPARE_PREFIX):
                try:  # a spare a replica took over is that replica; a spare still waiting is no workload
                    handle = {"id": (self.root / TAKEN / workdir.name).read_text(), "dir": workdir.name}
                except OSError:
                    continue
            pid = self._pid(handle, folders)
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
        """Stop the spares no replica took (the replicas themselves outlive the server)."""
        with self._pool_lock:
            self._closed = True
            timer = self._refill_timer
        if timer is not None:
            timer.cancel()
            timer.join(10)  # a refill under way ends before the pool is emptied (it sees _closed)
        with self._pool_lock:
            spares, self._spares = self._spares, []
        for folder, pid in spares:
            with contextlib.suppress(OSError, ValueError):
                self.stop({"id": folder, "pid": pid}, force=True)


def sessions_in(workdir: Path, folders: dict[str, list[int]] | None = None) -> list[int]:
    """The sessions (their leaders' pids) of the processes working in ``workdir``. Each workload's
    processes start there (a sandbox's outside and inside), from the instant its first process
    exists, before any pid is known; that process leads a session of its own. Never this
    process's own session (a child forked here moves into the folder before it leaves it), nor a
    folder that is a link. ``folders``: a `process_folders()` already read, for many lookups."""
    if workdir.is_symlink():
        return []
    try:
        target = str(workdir.parent.resolve() / workdir.name)
    except OSError:
        return []
    own = os.getsid(0)
    leaders = set()
    for pid in (process_folders() if folders is None else folders).get(target, []):
        with contextlib.suppress(OSError):
            sid = os.getsid(pid)
            if sid != own and os.getpgid(pid) == sid:  # in its session's own group: a workload's, not a stray
                leaders.add(sid)
    return sorted(leaders)


def process_folders() -> dict[str, list[int]]:
    """Every process this server may look at, by its working folder."""
    found: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.setdefault(os.readlink(f"/proc/{entry.name}/cwd"), []).append(int(entry.name))
    return found


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the whole process group of ``pid``: the sandbox, torchrun and its workers, a shell and
    its children. A drain of a sandboxed workload (``pid`` its sandbox's init, the group's leader
    the sandbox's outside) spares those two: they end with the workload, passing on its exit code,
    where a SIGTERM of their own would stand in for it; a drain before any process of the workload
    runs is a kill."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return
    if group == os.getpgrp():  # never this process's own group: only the workload's own process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        return
    if sig != signal.SIGKILL and group != pid:
        inside = [p for p in _members(group) if p not in (group, pid)]
        if inside:
            for member in inside:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member, sig)
            return
        # none of the workload's processes runs yet: there is nothing to drain, and a SIGTERM would end
        # only the sandbox's outside (its init, a pid namespace's, ignores a signal it has no handler for),
        # leaving that init to start the workload with nobody watching it
        sig = signal.SIGKILL
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _members(group: int) -> list[int]:
    """The processes of process group ``group``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[2]) == group:
                    found.append(int(entry.name))
    return found


def _process(pid: int) -> str:
    """A process's pid and start time ("" if it is gone): a pid alone may be reused."""
    try:
        return f"{pid} {Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return ""


def _this_process() -> str:
    return _process(os.getpid())
