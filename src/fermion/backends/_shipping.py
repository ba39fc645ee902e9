"""An attempt's checkpoints, sent to the clouds' stores through the server as they are written,
and fetched back when an attempt resumes elsewhere. Runs in the attempt's wrapper, beside the
job's command; the job only writes files into ``$FERMION_CHECKPOINT_DIR``.

What is sent is a snapshot of that folder: every file but hidden ones (a name starting with a
dot, as a checkpoint being written is: see fermion.train) and ``*.tmp``. A snapshot sends only
the chunks the store lacks, so an unchanged model costs nothing to send again."""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from ..data import FolderPlan, plan_folder, safe_relpath, send_chunks, write_chunks

SHIP_EVERY_S = 0.5
API = "/api/v1/attempts/self/checkpoints"
OUTPUT_API = "/api/v1/attempts/self/output"
METRICS_API = "/api/v1/attempts/self/metrics"


def _say(message: str) -> None:
    print(f"[fermion] {message}", file=sys.stderr, flush=True)


def server_client(server: str, token: str) -> httpx.Client:
    """A client of the server for this attempt: its token, over the server's workload socket where
    its backend handed it one (a workload in its own network namespace has no other way), else to
    ``server`` with the server's certificate where it serves HTTPS with one of its own."""
    import os
    import ssl

    from ._relay import server_ca_context

    socket_file = os.environ.get("FERMION_SERVER_SOCKET")
    if socket_file:
        from .._unix import unix_transport

        return httpx.Client(transport=unix_transport(socket_file), base_url="http://fermion",
                            headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(60))
    verify: ssl.SSLContext | bool = True
    pem = os.environ.get("FERMION_SERVER_CA_PEM")
    if pem:
        verify = server_ca_context(pem)
    return httpx.Client(base_url=server.rstrip("/"), headers={"Authorization": f"Bearer {token}"},
                        timeout=httpx.Timeout(60), verify=verify)


def _visible(rel: str) -> bool:
    return not any(part.startswith(".") for part in rel.split("/")) and not rel.endswith(".tmp")


def fetch_files(http: httpx.Client, files: list[dict], chunks_url: str, dest: Path) -> int:
    """Write a manifest's files under ``dest``, each chunk fetched from ``chunks_url`` and each file
    checked against its sha256. Returns the bytes written."""
    def chunks(entry: dict) -> Iterator[bytes]:
        for sha, _ in entry["chunks"]:
            r = http.get(f"{chunks_url}/{sha}")
            r.raise_for_status()
            yield r.content

    total = 0
    for f in files:
        path = dest / safe_relpath(f["path"])  # a path from the server, still never a way out of dest
        total += write_chunks(path, chunks(f), f["sha256"])
    return total


def fetch_datasets(server: str, token: str, names: list[str], root: Path) -> None:
    """Put each dataset version the job was given under ``root/NAME``, from the nearest store."""
    with server_client(server, token) as http:
        for name in names:
            r = http.get(f"/api/v1/attempts/self/datasets/{name}")
            r.raise_for_status()
            version = r.json()
            started = time.perf_counter()
            size = fetch_files(http, version["files"], f"/api/v1/attempts/self/datasets/{name}/chunks", root / name)
            _say(f"dataset {name} ({version['digest'][:12]}, {len(version['files'])} files, {size} bytes) "
                 f"fetched from the store of {version['cloud']} in {time.perf_counter() - started:.1f}s")


def fetch_version(server: str, token: str, dest: Path, route: str, what: str) -> dict:
    """Put the files ``route`` names (a job's code, a model) in ``dest``, each chunk from the nearest
    store that holds it (``route``/chunks/SHA), each file checked against its sha256."""
    with server_client(server, token) as http:
        r = http.get(route)
        r.raise_for_status()
        found = r.json()
        started = time.perf_counter()
        dest.mkdir(parents=True, exist_ok=True)
        size = fetch_files(http, found["files"], f"{route}/chunks", dest)
        _say(f"{what} {found['digest'][:12]} ({len(found['files'])} files, {size} bytes) fetched from the store of "
             f"{found['cloud']} in {time.perf_counter() - started:.1f}s")
        return found


def fetch_code(server: str, token: str, dest: Path) -> None:
    """Put the job's code in ``dest``, from the nearest store that holds it."""
    fetch_version(server, token, dest, "/api/v1/attempts/self/code", "code")


def fetch_model(server: str, token: str, dest: Path, route: str) -> None:
    """Put a registered model's files in ``dest`` (a fine-tune's base, a replica's model)."""
    fetch_version(server, token, dest, route, "model")


class Shipper:
    """Sends new snapshots of ``folder`` while the job runs; ``restore`` fills it first."""

    def __init__(self, server: str, token: str, folder: Path, api: str = API, what: str = "checkpoint") -> None:
        self.folder = folder
        self.api, self.what = api, what
        self.http = server_client(server, token)
        self._last: tuple | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one snapshot at a time: an older one never lands after a newer
        self._thread: threading.Thread | None = None

    def restore(self) -> None:
        """Fetch the newest snapshot any reachable store holds (none yet: a first attempt)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        r = self.http.get(f"{self.api}/latest")
        if r.status_code == 404:
            return
        r.raise_for_status()
        snap = r.json()
        fetch_files(self.http, snap["files"], f"{self.api}/chunks", self.folder)
        self._last = self._signature()
        _say(f"restored checkpoint {snap['message']!r} from the store of {snap['cloud']} "
             f"({sum(f['size'] for f in snap['files'])} bytes)")

    def _signature(self) -> tuple:
        out = []
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder).as_posix()
            if path.is_file() and not path.is_symlink() and _visible(rel):
                st = path.stat()
                out.append((rel, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def ship(self) -> bool:
        """Send a snapshot if the folder changed since the last one. True if one was sent."""
        signature = self._signature()
        if not signature or signature == self._last:
            return False
        with tempfile.TemporaryDirectory(prefix=".snapshot-", dir=self.folder.parent) as tmp:
            # copies freeze the snapshot: the job may replace or rewrite a file while it is sent (a
            # hard link would share the inode, and chunking maps the file: a truncation would fault)
            frozen = Path(tmp)
            for rel, _, _ in signature:
                (frozen / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(self.folder / rel, frozen / rel)
                except FileNotFoundError:
                    continue  # replaced or removed just now: the next snapshot has it
            plan: FolderPlan = plan_folder(frozen)
            missing = self.http.post(f"{self.api}/missing", json={"chunks": plan.chunks})
            missing.raise_for_status()

            def put(sha: str, data: bytes) -> int:
                r = self.http.put(f"{self.api}/chunks/{sha}", content=data)
                r.raise_for_status()
                return len(data)

            report = send_chunks(plan, missing.json()["missing"], put, workers=4)
            label = f"{len(plan.entries)} files"
            r = self.http.post(self.api, json={"files": [e.model_dump() for e in plan.entries], "label": label})
            r.raise_for_status()
        self._last = signature
        _say(f"{self.what} snapshot of {label} sent ({report.bytes_sent} new bytes), kept in the stores of "
             f"{', '.join(r.json()['stores'])}")
        return True

    def _run(self) -> None:
        delay = SHIP_EVERY_S
        while not self._stop.wait(delay):
            try:
                with self._lock:
                    self.ship()
                delay = SHIP_EVERY_S
            except Exception as exc:  # noqa: BLE001 - sending checkpoints must never stop the job
                delay = min(delay * 2, 30.0)  # a server or store in trouble is not asked twice a second
                _say(f"{self.what} not sent this time ({type(exc).__name__}: {exc}); next try in {delay:g}s")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="checkpoint-shipper", daemon=True)
        self._thread.start()

    def finish(self) -> bool:
        """Stop the loop and send what the job wrote last. False if it could not be sent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with self._lock:
                    self.ship()
                return True
            except Exception as exc:  # noqa: BLE001
                _say(f"last {self.what} not sent yet: {type(exc).__name__}: {exc}")
                time.sleep(1)
        return False


class OutputShipper:
    """The job's output folder ($FERMION_JOB_OUTPUT, on its own cloud): the lines of its
    ``metrics.jsonl`` go to the server as they are written, and once the command succeeds the
    folder goes to the stores, as a snapshot, for the server to take the job's result from."""

    def __init__(self, server: str, token: str, folder: Path) -> None:
        self.folder = folder
        self.http = server_client(server, token)
        self.snapshots = Shipper(server, token, folder, OUTPUT_API, "output")
        self._sent = 0  # bytes of metrics.jsonl sent on
        self._full = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def forward_metrics(self) -> bool:
        """Send the complete lines written since the last call (4 MiB at most). True if there may be more."""
        with self._lock:  # the loop's last call may still be under way when the job ends
            return self._forward()

    def _forward(self) -> bool:
        try:
            with open(self.folder / "metrics.jsonl", "rb") as f:
                f.seek(self._sent)
                data = f.read(4 << 20)
        except FileNotFoundError:
            return False
        end = data.rfind(b"\n") + 1  # complete lines only: the job may be writing the next
        if end == 0:
            if len(data) == 4 << 20:  # one line longer than a read: skipped (the server keeps none that long)
                self._sent += len(data)
                return True
            return False
        lines = data[:end].split(b"\n")[:-1]
        for i in range(0, len(lines), 1000):
            batch = lines[i:i + 1000]
            r = self.http.post(METRICS_API, json={"lines": [x.decode(errors="replace") for x in batch]})
            r.raise_for_status()
            self._sent += sum(len(x) + 1 for x in batch)  # each batch once: a failed one is sent again, not those before
            if r.json().get("full") and not self._full:
                self._full = True
                _say("the server keeps no more of this job's metrics (16 MiB of them)")
        return len(data) == 4 << 20

    def _run(self) -> None:
        delay = SHIP_EVERY_S
        while not self._stop.wait(delay):
            try:
                self.forward_metrics()
                delay = SHIP_EVERY_S
            except Exception as exc:  # noqa: BLE001 - the metrics wait; the job goes on
                if delay == SHIP_EVERY_S:
                    _say(f"metrics not sent this time ({type(exc).__name__}: {exc}); trying again")
                delay = min(delay * 2, 30.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics-forwarder", daemon=True)
        self._thread.start()

    def finish(self, code: int) -> bool:
        """The last metrics, and (the command succeeded) the folder. False if they could not be sent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            while self.forward_metrics():  # to the end of the file
                pass
        except Exception as exc:  # noqa: BLE001
            _say(f"the job's last metrics were not sent: {type(exc).__name__}: {exc}")
        if code != 0 or not any(p.is_file() for p in self.folder.rglob("*")):
            return True
        return self.snapshots.finish()
