"""Object-store emulators on loopback for tests, the demo and benchmarks: moto for S3,
gcp-storage-emulator for GCS, and Azurite for Azure Blob (from npm, where Node is present).

Each binds 127.0.0.1 on a free port, logs to a file, runs in a session of its own, and is stopped
by pid. On Linux a parent-death signal stops it too if the process that started it is killed.
That signal follows the *thread* that started the emulator, so start emulators from a thread that
lives as long as they should (the main thread; never a short-lived pool thread)."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data import StoreConfig

# Azurite's well-known development account (public, documented by Microsoft; emulator only)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_SCHEMES = {"s3": "s3", "gcs": "gs", "azure": "az"}
_STOP_WAIT = {"s3": 5.0, "gcs": 5.0, "azure": 5.0}  # seconds from SIGTERM to SIGKILL
_TIMEOUT = {"s3": 30.0, "gcs": 30.0, "azure": 60.0}  # to answer HTTP once started


@dataclass
class Emulator:
    """A running emulator: its process, loopback port and HTTP endpoint."""

    kind: str  # "s3" | "gcs" | "azure"
    proc: subprocess.Popen[bytes]
    port: int
    endpoint: str  # http://127.0.0.1:PORT
    log: Path | None = field(default=None, repr=False)

    def store(self, bucket: str, prefix: str = "") -> StoreConfig:
        """A store config for ``bucket`` (a container on Azure), under ``prefix`` if given, on this
        emulator, with the emulator's credentials in ``options``."""
        from ..data import StoreConfig

        url = f"{_SCHEMES[self.kind]}://{bucket}"
        if prefix.strip("/"):
            url += "/" + prefix.strip("/")
        if self.kind == "s3":
            # no region_name: s3fs would send it as the new bucket's LocationConstraint, and
            # "us-east-1" is not a valid one (botocore signs for us-east-1 without it anyway)
            return StoreConfig(url=url, endpoint=self.endpoint, options={"key": "testing", "secret": "testing"})
        if self.kind == "gcs":
            return StoreConfig(url=url, endpoint=self.endpoint, options={"token": "anon", "project": "test"})
        return StoreConfig(url=url, options={"connection_string": azurite_connection_string(self.port)})

    def output(self) -> str:
        """What the emulator logged so far."""
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM by pid, wait, SIGKILL if it lingers. Safe to call more than once."""
        _stop(self.proc, _STOP_WAIT[self.kind])


def azurite_connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")


def _azurite_binary() -> Path | None:
    """``$FERMION_AZURITE`` if set, else the npm install under the virtualenv (``make install`` puts it there)."""
    env = os.environ.get("FERMION_AZURITE")
    candidates = [Path(env)] if env else []
    candidates.append(Path(sys.prefix) / "azurite" / "node_modules" / ".bin" / "azurite-blob")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def azurite_available() -> bool:
    """Whether Azurite (and Node to run it) is installed."""
    return _azurite_binary() is not None and _node_present()


def _node_present() -> bool:
    return shutil.which("node") is not None


def start_s3_emulator(tmp: Path | None = None, *, timeout: float = 30) -> Emulator:
    """moto in server mode; any key and secret are accepted. It logs under ``tmp`` (else under a new
    temporary folder, which stays)."""
    return _start("s3", tmp, timeout)


def start_gcs_emulator(tmp: Path | None = None, *, timeout: float = 30) -> Emulator:
    """gcp-storage-emulator, in memory (its multipart uploads made binary-safe, see ``_GCS_MAIN``).
    It ignores ``ifGenerationMatch``: a create-only put overwrites there, unlike on GCS."""
    return _start("gcs", tmp, timeout)


def start_azurite(tmp: Path, *, timeout: float = 60) -> Emulator:
    """Azurite's blob service, keeping its data under ``tmp``; RuntimeError if it is not installed."""
    if _azurite_binary() is None:
        raise RuntimeError("Azurite is not installed: `make install` installs it with npm under the virtualenv "
                           "(npm install --prefix .venv/azurite azurite@3.37.0), or set FERMION_AZURITE to "
                           "an azurite-blob binary")
    if not _node_present():
        raise RuntimeError("Azurite needs Node.js (`node` on PATH)")
    return _start("azure", tmp, timeout)


@contextmanager
def emulators(tmp: Path, kinds: tuple[str, ...] | list[str] = ("s3", "gcs", "azure")) -> Iterator[dict[str, Emulator]]:
    """Start the emulators of ``kinds`` that are installed (Azurite may not be); stop them all at exit.
    They start side by side, so the slowest (Azurite, ~2 s) sets the wait."""
    unknown = set(kinds) - set(_SCHEMES)
    if unknown:
        raise ValueError(f"unknown emulator kinds {sorted(unknown)}; use s3, gcs, azure")
    pending: dict[str, Launched] = {}
    started: dict[str, Emulator] = {}
    try:
        for kind in kinds:
            if kind != "azure" or azurite_available():
                pending[kind] = _launch(kind, tmp)
        for kind, launched in pending.items():
            started[kind] = _ready_or_retry(kind, tmp, launched, _TIMEOUT[kind])
        yield started
    finally:
        procs = [(launched[0], launched[3]) for launched in pending.values()]
        procs += [(emu.proc, emu.kind) for emu in started.values()]
        for proc, _kind in procs:  # all at once: each may take a while to close
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc, kind in procs:
            _stop(proc, _STOP_WAIT[kind])


# -- process plumbing -----------------------------------------------------------------------------


# gcp-storage-emulator, with one fix: it parses a multipart upload (gcsfs's put of an object under
# 50 MB) with the email package, which takes a "\r" that ends the content for part of the line break
# before the closing boundary, so 1 in 256 random objects lost its last byte. This parses the two
# parts by their boundaries instead, with the line breaks the client used (gcsfs: "\n").
_GCS_MAIN = r"""
import json, sys
from email.message import Message
from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main

_read_data = server._read_data

def _related(raw, boundary):
    delim = b"--" + boundary
    first = raw.index(delim)
    nl = b"\r\n" if raw.startswith(b"\r\n", first + len(delim)) else b"\n"
    second = raw.index(nl + delim + nl, first)
    close = raw.rindex(nl + delim + b"--")
    parts = [raw[first + len(delim) + len(nl):second], raw[second + len(nl) + len(delim) + len(nl):close]]
    out = []
    for part in parts:
        head, _, body = part.partition(nl + nl)
        headers = Message()
        for line in head.decode("latin-1").split(nl.decode()):
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip()] = value.strip()
        if (headers.get("Content-Transfer-Encoding") or "").lower() == "base64":
            import base64
            body = base64.b64decode(body)
        out.append((headers, body))
    return {"meta": json.loads(out[0][1]), "content": out[1][1], "content-type": out[1][0].get_content_type()}

def read_data(request_handler, query):
    ctype = request_handler.headers.get("Content-Type") or ""
    if not ctype.startswith("multipart/related"):
        return _read_data(request_handler, query)
    header = Message()
    header["Content-Type"] = ctype
    raw = server._decode_raw_data(server._read_raw_data(request_handler), request_handler)
    if not raw:
        return None
    return _related(raw, header.get_param("boundary").encode())

server._read_data = read_data
sys.argv = sys.argv[1:]  # argv[1] names the process: gcp-storage-emulator
sys.exit(main(sys.argv[1:]))
"""


def _argv(kind: str, port: int, folder: Path) -> list[str]:
    if kind == "s3":
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    if kind == "gcs":
        return [sys.executable, "-c", _GCS_MAIN, "gcp-storage-emulator", "start", "--host", "127.0.0.1", "--port",
                str(port), "--in-memory", "--quiet"]
    return [str(_azurite_binary()), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder),
            "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGKILL))  # PR_SET_PDEATHSIG


Launched = tuple[subprocess.Popen[bytes], int, Path, str]  # process, port, log, kind


def _launch(kind: str, tmp: Path | None) -> Launched:
    root = Path(tmp) if tmp is not None else Path(tempfile.mkdtemp(prefix=f"fermion-{kind}-"))
    folder = root / f"{kind}-emulator-{time.monotonic_ns()}"
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = folder / "emulator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(_argv(kind, port, folder), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=folder, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    return proc, port, log, kind


def _answers(port: int) -> bool:
    """Whether an HTTP server answers on the port (any status: the emulators differ on what ``/`` is)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _ready_or_retry(kind: str, tmp: Path | None, launched: Launched, timeout: float, attempts: int = 3) -> Emulator:
    """The emulator once it answers HTTP. One that exits first (its port taken between choosing and
    binding it) is started again on another port; one that never answers is stopped, with its log in the error."""
    deadline = time.monotonic() + timeout
    while True:
        proc, port, log, _ = launched
        if proc.poll() is not None:
            attempts -= 1
            if attempts <= 0:
                raise RuntimeError(f"{kind} emulator exited with code {proc.returncode} before answering; "
                                   f"its log ({log}):\n{_tail(log)}")
            launched = _launch(kind, tmp)
            continue
        if _answers(port):
            return Emulator(kind, proc, port, f"http://127.0.0.1:{port}", log)
        if time.monotonic() > deadline:
            _stop(proc, _STOP_WAIT[kind])
            raise RuntimeError(f"{kind} emulator did not answer on 127.0.0.1:{port} within {timeout:.0f} s; "
                               f"its log ({log}):\n{_tail(log)}")
        time.sleep(0.05)


def _start(kind: str, tmp: Path | None, timeout: float) -> Emulator:
    return _ready_or_retry(kind, tmp, _launch(kind, tmp), timeout)


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:] or "(empty)"
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], wait: float) -> None:
    """SIGTERM by pid, wait, SIGKILL if it lingers; nothing if it has already exited."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
