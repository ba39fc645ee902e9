"""A backend whose workloads start instantly, for measuring the control plane alone (not a cloud
users run): every replica is served by one shared loopback HTTP server that answers /healthz."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..backends import Capabilities, Handle, ProvisionError, Status, Workload
from ..clouds import CloudConfig
from ..placement import Offering


class _Echo(BaseHTTPRequestHandler):
    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        self._answer(b'{"status": "ready"}')

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")

    def log_message(self, *args: object) -> None:
        pass


class InstantBackend:
    """Starts in zero time and reports readiness itself; ``fail_after`` makes every later start fail."""

    kind = "instant"

    def __init__(self, name: str, cpus: float = 10_000, memory_gb: float = 10_000, price: float = 1.0,
                 config: CloudConfig | None = None) -> None:
        """A cloud of ``cpus`` and ``memory_gb`` at ``price`` an hour, or the one ``config`` declares."""
        self.name = name
        self.config = config or CloudConfig(name=name, capacity={"cpus": cpus, "memory_gb": memory_gb},
                                            pricing={"price_per_hour": price})
        self.workloads: dict[str, dict[str, object]] = {}
        self.starts = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def offerings(self) -> list[Offering]:
        return [self.config.offering()]

    def capacity(self) -> dict[str, float]:
        return {"cpus": self.config.capacity.cpus, "memory_gb": self.config.capacity.memory_gb, "gpus": 0}

    def capabilities(self) -> Capabilities:
        return Capabilities(regions=list(self.config.regions))

    def start(self, workload: Workload) -> Handle:
        if workload.id in self.workloads and self.workloads[workload.id]["alive"]:
            raise ProvisionError(f"{workload.id} already runs")
        self.starts += 1
        self.workloads[workload.id] = {"alive": True, "at": time.time(), "exit_code": None}
        return {"id": workload.id}

    def status(self, handle: Handle) -> Status:
        w = self.workloads.get(handle["id"])
        if w is None or not w["alive"]:
            return Status(alive=False, exit_code=None if w is None else w["exit_code"])  # type: ignore[arg-type]
        return Status(alive=True, url=self.url, ready=True)

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        w = self.workloads.get(handle["id"])
        if w is not None and w["alive"]:
            w["alive"], w["exit_code"] = False, -9 if force else 0

    def logs(self, handle: Handle, tail: int = 200) -> str:
        return json.dumps(self.workloads.get(handle["id"]))

    def list_workloads(self) -> list[Handle]:
        return [{"id": wid} for wid, w in list(self.workloads.items()) if w["alive"]]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
