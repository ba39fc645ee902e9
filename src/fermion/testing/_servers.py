"""Real processes on loopback for tests, examples and benchmarks: a photon served by `fermion photon
run`, a `fermion server start`, and background load through a gateway. Each is stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ._http import TLS, web


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def fermion_cmd(*args: str) -> list[str]:
    """The `fermion` command line run by this Python."""
    return [sys.executable, "-m", "fermion", *args]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    """Signal ``proc`` (SIGTERM drains), wait, kill it if it lingers; its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


@contextmanager
def serve_photon(
    ref: str, tmp_path: Path, *, env: dict[str, str] | None = None, wait_ready: bool = True, timeout: float = 90
) -> Iterator[Served]:
    """Run ``fermion photon run ref`` on a free loopback port; yield once it listens (and is ready)."""
    port_file = tmp_path / f"port-{time.monotonic_ns()}"
    log = tmp_path / f"photon-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "FERMION_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            fermion_cmd("photon", "run", ref, "--port", "0", "--port-file", str(port_file), "--log-level", "warning"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    served = None
    try:
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"photon did not start:\n{log.read_text()}")
            time.sleep(0.05)
        served = Served(f"http://127.0.0.1:{port_file.read_text()}", proc, log)
        if wait_ready:
            while True:
                try:
                    if web.get(f"{served.url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"photon never became ready:\n{log.read_text()}")
                time.sleep(0.05)
        yield served
    finally:
        stop(proc)


@dataclass
class ServerProc:
    """A `fermion server start` subprocess and what the CLI needs to talk to it."""

    home: Path
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "FERMION_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {self.token}"},
                            timeout=30, verify=TLS)

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(fermion_cmd(*args), capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"fermion {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def wait_for(self, predicate, timeout: float = 60, interval: float = 0.2):  # noqa: ANN001, ANN201
        """Poll ``predicate(api)`` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        with self.api() as api:
            while True:
                value = predicate(api)
                if value:
                    return value
                if time.monotonic() > deadline:
                    raise AssertionError(f"condition not met within {timeout}s; server log:\n{self.log.read_text()[-3000:]}")
                time.sleep(interval)

    def pid(self, workload_id: str) -> int:
        """The pid of a local-backend workload of this server (from its handle in the store)."""
        return workload_pids(self.home)[workload_id]

    def replica_url(self, replica_id: str) -> str:
        """Where a replica serves, as its backend reported it (the API keeps it to the gateway)."""
        import sqlite3

        with sqlite3.connect(self.home / "fermion.db") as db:
            (url,) = db.execute("SELECT url FROM replicas WHERE id = ?", (replica_id,)).fetchone()
        return url

    def workdir(self, cloud: str, workload_id: str) -> Path:
        """A local-backend workload's folder (beside the home, as the server's default puts it)."""
        folder = workload_handles(self.home).get(workload_id, {}).get("dir") or workload_id  # a spare's, if it took one
        return self.home.parent / f"{self.home.name}-workloads" / cloud / folder

    def deployment(self, name: str) -> dict:
        with self.api() as api:
            return api.get(f"/deployments/{name}").json()


def start_server(home: Path, clouds_yaml: str | None = None, *, port: int = 0, db_url: str | None = None,
                 env: dict[str, str] | None = None) -> ServerProc:
    """`fermion server start` on loopback (``port``, by default a free one) with its home at
    ``home``, on ``db_url`` (default: SQLite in the home); returns once it listens."""
    home.mkdir(parents=True, exist_ok=True)
    args = ["server", "start", "--port", str(port), "--port-file", str(home / "port")]
    if db_url is not None:
        args += ["--db", db_url]
    if clouds_yaml is not None:
        (home / "clouds.yaml").write_text(clouds_yaml)
        args += ["--clouds", str(home / "clouds.yaml")]
    (home / "port").unlink(missing_ok=True)
    log = home / f"server-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "FERMION_HOME": str(home), "HF_HUB_OFFLINE": "1", **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(fermion_cmd(*args), stdout=out, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + 60
    while not (home / "port").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.05)
    import json

    creds = json.loads((home / "cli.json").read_text())
    return ServerProc(home, f"http://127.0.0.1:{(home / 'port').read_text()}", creds["token"], proc, log)


def workload_handles(home: Path) -> dict[str, dict]:
    """Workload id -> backend handle of every replica and live job attempt a test server recorded
    (read from the store: a test may know what the API keeps opaque)."""
    import json
    import sqlite3

    db = home / "fermion.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, handle FROM replicas WHERE handle IS NOT NULL").fetchall()
        rows += conn.execute("SELECT id, handle FROM attempts WHERE handle IS NOT NULL "
                             "AND state IN ('STARTING', 'RUNNING')").fetchall()
    return {wid: h for wid, raw in rows if (h := json.loads(raw))}


def workload_pids(home: Path) -> dict[str, int]:
    """Workload id -> pid of every local-backend replica and live job attempt a test server recorded."""
    return {wid: h["pid"] for wid, h in workload_handles(home).items() if "pid" in h}


def kill_replicas(home: Path) -> None:
    """Stop, by pid, every replica and job attempt a test server started (they outlive the server)."""
    for wid, handle in workload_handles(home).items():
        folder, pid = str(handle.get("dir") or wid), handle.get("pid")  # a warm pool's spare keeps its folder
        try:  # still that workload (its folder is named after it), not a recycled pid
            if pid and (folder.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
                        or Path(f"/proc/{pid}/cwd").resolve().name == folder):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def workload_processes(root: Path) -> dict[int, str]:
    """pid -> workload id of every process working in a folder ``<root>/<cloud>/<id>`` of a
    workloads root ("" for one that names ``root`` only on its command line: a sandbox's)."""
    root, found = root.resolve(), {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = Path(proc / "cwd").resolve()
            if cwd.is_relative_to(root):
                parts = cwd.relative_to(root).parts
                found[int(proc.name)] = parts[1] if len(parts) > 1 else ""
            elif str(root).encode() in (proc / "cmdline").read_bytes():
                found[int(proc.name)] = ""
        except OSError:
            pass
    return found


def kill_workloads(root: Path) -> int:
    """SIGKILL every process working under ``root`` (a workloads root): what a test uses when the
    store is not the home's SQLite file. How many it killed."""
    killed = 0
    for pid in workload_processes(root):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


@contextmanager
def running_server(home: Path, clouds_yaml: str | None = None, *, env: dict[str, str] | None = None) -> Iterator[ServerProc]:
    """A server for the ``with`` block (``env`` added to its environment); afterwards it is stopped
    and every workload it started killed."""
    server = start_server(home, clouds_yaml, env=env)
    try:
        yield server
    finally:
        stop(server.proc)
        kill_replicas(home)


class Load:
    """Background clients calling a gateway route until stopped; records every failure."""

    def __init__(self, url: str, body: dict, workers: int = 6, headers: dict | None = None) -> None:
        self.url, self.body, self.headers = url, body, headers or {}
        self.ok = 0
        self.failures: list[str] = []
        self.answers: list[dict] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        with httpx.Client(timeout=30, headers=self.headers) as http:
            while not self._stop.is_set():
                try:
                    r = http.post(self.url, json=self.body)
                    if r.status_code == 200:
                        self.ok += 1
                        self.answers.append(r.json())
                    else:
                        self.failures.append(f"{time.strftime('%X')} {r.status_code}: {r.text}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{time.strftime('%X')} {exc!r}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
