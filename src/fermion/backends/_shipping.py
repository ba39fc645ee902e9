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


def _say(message: str) -> None:
    print(f"[fermion] {message}", file=sys.stderr, flush=True)


def server_client(server: str, token: str) -> httpx.Client:
    """A client of the server for this attempt: its token, and the server's certificate where it
    serves HTTPS with one of its own (given in the environment)."""
    import os
    import ssl

    verify: ssl.SSLContext | bool = True
    pem = os.environ.get("FERMION_SERVER_CA_PEM")
    if pem:
        verify = ssl.create_default_context(cadata=pem)
        verify.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the server's own (leaf) certificate as the anchor
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


def fetch_code(server: str, token: str, dest: Path) -> None:
    """Put the job's code in ``dest``, from the nearest store that holds it."""
    with server_client(server, token) as http:
        r = http.get("/api/v1/attempts/self/code")
        r.raise_for_status()
        code = r.json()
        started = time.perf_counter()
        dest.mkdir(parents=True, exist_ok=True)
        size = fetch_files(http, code["files"], "/api/v1/attempts/self/code/chunks", dest)
        _say(f"code {code['digest'][:12]} ({len(code['files'])} files, {size} bytes) fetched from the store of "
             f"{code['cloud']} in {time.perf_counter() - started:.1f}s")


class Shipper:
    """Sends new snapshots of ``folder`` while the job runs; ``restore`` fills it first."""

    def __init__(self, server: str, token: str, folder: Path) -> None:
        self.folder = folder
        self.http = server_client(server, token)
        self._last: tuple | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one snapshot at a time: an older one never lands after a newer
        self._thread: threading.Thread | None = None

    def restore(self) -> None:
        """Fetch the newest snapshot any reachable store holds (none yet: a first attempt)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        r = self.http.get(f"{API}/latest")
        if r.status_code == 404:
            return
        r.raise_for_status()
        snap = r.json()
        fetch_files(self.http, snap["files"], f"{API}/chunks", self.folder)
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
            missing = self.http.post(f"{API}/missing", json={"chunks": plan.chunks})
            missing.raise_for_status()

            def put(sha: str, data: bytes) -> int:
                r = self.http.put(f"{API}/chunks/{sha}", content=data)
                r.raise_for_status()
                return len(data)

            report = send_chunks(plan, missing.json()["missing"], put, workers=4)
            label = f"{len(plan.entries)} files"
            r = self.http.post(API, json={"files": [e.model_dump() for e in plan.entries], "label": label})
            r.raise_for_status()
        self._last = signature
        _say(f"checkpoint snapshot of {label} sent ({report.bytes_sent} new bytes), kept in the stores of "
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
                _say(f"checkpoint not sent this time ({type(exc).__name__}: {exc}); next try in {delay:g}s")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="checkpoint-shipper", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Stop the loop and send what the job wrote last."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with self._lock:
                    self.ship()
                return
            except Exception as exc:  # noqa: BLE001
                _say(f"last checkpoint not sent yet: {type(exc).__name__}: {exc}")
                time.sleep(1)
