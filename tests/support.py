"""Test helpers: photons served in real subprocesses on loopback, stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TEXT_PHOTON = f"{EXAMPLES / 'text' / 'photon.py'}:TextTools"
EMBEDDER_PHOTON = f"{EXAMPLES / 'embedder' / 'photon.py'}:Embedder"


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def fermion_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fermion", *args]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
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
                    if httpx.get(f"{served.url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"photon never became ready:\n{log.read_text()}")
                time.sleep(0.05)
        yield served
    finally:
        stop(proc)
