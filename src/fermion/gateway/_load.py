"""The load gateway processes see, sent to their server: the autoscaler must count the traffic of
every gateway, not only the server's own, or it would scale to zero a deployment they keep busy.

A gateway process posts ``/api/v1/gateway/load`` every ``REPORT_S`` (and at once when a request
starts waiting for a replica); the server keeps each gateway's last report for ``LOAD_STALE_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import ssl

    from ._feed import TableFeed
    from ._proxy import Gateway

log = logging.getLogger(__name__)
LOAD_PATH = "/api/v1/gateway/load"
REPORT_S = 1.0
LOAD_STALE_S = 5.0  # a gateway that has not reported for this long no longer counts
UNSENT_ANSWERS = 5_000  # per version and report: a canary's answers a gateway process sends its server


def add_loads(a: tuple[int, int, float], b: tuple[int, int, float]) -> tuple[int, int, float]:
    """Two gateways' (in flight, held, last request's wall time) of one deployment, as one."""
    return a[0] + b[0], a[1] + b[1], max(a[2], b[2])


class LoadBoard:
    """The server's side: the latest report of each gateway process."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict[str, tuple[int, int, float]]]] = {}
        self._lock = threading.Lock()

    def report(self, gateway: str, loads: dict[str, tuple[int, int, float]]) -> None:
        """``loads``: deployment -> (in flight, held, seconds since its last request), as the gateway saw."""
        now = time.time()
        with self._lock:
            self._reports[gateway] = (now, {name: (n, q, now - idle) for name, (n, q, idle) in loads.items()})
            for old in [g for g, (at, _) in self._reports.items() if now - at > LOAD_STALE_S]:
                del self._reports[old]

    def total(self, deployment: str) -> tuple[int, int, float]:
        """(in flight, held, wall time of the last request) over the gateways that reported lately."""
        now, total = time.time(), (0, 0, 0.0)
        with self._lock:
            for at, loads in self._reports.values():
                if now - at <= LOAD_STALE_S and deployment in loads:
                    total = add_loads(total, loads[deployment])
        return total


class LoadReporter:
    """The gateway process's side: posts its load to the server its feed follows."""

    def __init__(self, gateway: Gateway, feed: TableFeed, token: str, verify: ssl.SSLContext | bool = True) -> None:
        self.gateway, self.feed, self.token, self.verify = gateway, feed, token, verify
        self.id = f"gw-{uuid.uuid4().hex[:10]}"
        self._now: asyncio.Event | None = None

    def now(self, _deployment: str = "") -> None:
        """Report at once (a request waits for a replica: the server should wake the deployment)."""
        if self._now is not None:
            self._now.set()

    async def run(self) -> None:
        self._now = asyncio.Event()
        async with httpx.AsyncClient(timeout=REPORT_S * 3, verify=self.verify,
                                     headers={"Authorization": f"Bearer {self.token}"}) as http:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._now.wait(), REPORT_S)
                self._now.clear()
                server = self.feed.source or self.feed.servers[0]
                body: dict[str, Any] = {"gateway": self.id, "deployments": self.gateway.loads(),
                                        "answers": self.gateway.traffic.take_unsent()}  # a canary's judge reads them
                try:
                    (await http.post(server + LOAD_PATH, json=body)).raise_for_status()
                except Exception as exc:  # noqa: BLE001 - the next report tries again; serving goes on
                    log.debug("gateway load report to %s failed: %s", server, exc)
