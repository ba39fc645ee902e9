"""Gateway processes (`fermion gateway start`) for tests and benchmarks, stopped by pid."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ._http import web
from ._servers import fermion_cmd


@dataclass
class GatewayProc:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def health(self) -> dict:
        return web.get(f"{self.url}/healthz", timeout=5).json()


def start_gateway(workdir: Path, servers: list[str], token: str, *, state: Path | None = None,
                  workers: int = 1, timeout: float = 60) -> GatewayProc:
    """`fermion gateway start` on a free loopback port following ``servers`` (``workers``
    processes on it); returns once it has a routing table (from a server, or from ``state``
    when no server answers)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = time.monotonic_ns()
    port_file, log = workdir / f"gateway-{stamp}.port", workdir / f"gateway-{stamp}.log"
    args = ["gateway", "start", "--port", "0", "--port-file", str(port_file)]
    for server in servers:
        args += ["--server", server]
    if state is not None:
        args += ["--state", str(state)]
    if workers > 1:
        args += ["--workers", str(workers)]
    env = {**os.environ, "FERMION_HOME": str(workdir / "gateway-home"), "FERMION_TOKEN": token,
           "FERMION_URL": servers[0]}
    with log.open("wb") as out:
        proc = subprocess.Popen(fermion_cmd(*args), stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"gateway did not start:\n{log.read_text()}")
        if port_file.exists():
            gateway = GatewayProc(f"http://127.0.0.1:{port_file.read_text()}", proc, log)
            try:
                health = gateway.health()
                if health["version"] or (state is not None and health["routes"]):
                    return gateway
            except httpx.TransportError:
                pass
        time.sleep(0.05)
