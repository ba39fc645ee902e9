"""The routing table on the wire: what a server hands its gateways, and the gateway's side that
follows it.

A gateway process (``fermion gateway start``) long-polls ``GET /api/v1/gateway/table`` on one of
its servers. It keeps the last table it received, in memory and (optionally) in a state file, so
that it goes on serving while every server is down or restarting: the replicas outlive the server,
and so do their URLs and secrets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any

import httpx

from .._files import write_atomic
from ._routing import Endpoint, Route, RoutingTable

log = logging.getLogger(__name__)

FEED_PATH = "/api/v1/gateway/table"
LONG_POLL_S = 10.0  # a server answers at once on a change, else after this long
RETRY_PAUSE_S = 0.25  # after a failed poll, before the next server is tried
STATE_FORMAT = 1


def route_to_json(route: Route) -> dict[str, Any]:
    return {
        "deployment": route.deployment, "public": route.public, "idempotent": route.idempotent,
        "token_hash": route.token_hash, "rate_limit": list(route.rate_limit) if route.rate_limit else None,
        "hold": list(route.hold) if route.hold else None,
        "canary": list(route.canary) if route.canary else None,
        "endpoints": [{"replica_id": e.replica_id, "cloud": e.cloud, "url": e.url, "secret": e.secret,
                       "generation": e.generation} for e in route.endpoints],
    }


def route_from_json(doc: dict[str, Any]) -> Route:
    rate, hold, canary = doc.get("rate_limit"), doc.get("hold"), doc.get("canary")
    return Route(
        deployment=str(doc["deployment"]), public=bool(doc["public"]), idempotent=bool(doc["idempotent"]),
        token_hash=doc.get("token_hash"), rate_limit=(float(rate[0]), float(rate[1])) if rate else None,
        hold=(int(hold[0]), float(hold[1])) if hold else None,
        canary=(int(canary[0]), int(canary[1])) if canary else None,
        endpoints=[Endpoint(str(e["replica_id"]), str(e["cloud"]), str(e["url"]), e.get("secret"),
                            generation=int(e.get("generation") or 0)) for e in doc["endpoints"]],
    )


def table_document(table: RoutingTable, admins: dict[str, float | None], version: str, leader: bool,
                   server: str, settled: bool = True) -> dict[str, Any]:
    """The whole table as JSON: every route with its replicas' URLs and secrets, and the admin
    token hashes that may call any deployment. Secret: only a server admin may read it. A server
    not ``settled`` has not built its whole table yet: gateways keep theirs."""
    return {"version": version, "leader": leader, "server": server, "settled": settled,
            "routes": [route_to_json(r) for r in table.routes()], "admins": admins}


class TableFeed:
    """Follows the routing table of one of ``servers`` (tried in turn, preferring a leader) into
    ``table`` and ``on_admins``; keeps the last table it got when none answers."""

    def __init__(self, servers: list[str], token: str, table: RoutingTable,
                 on_admins: Any, state_file: Path | None = None, verify: ssl.SSLContext | bool = True) -> None:
        if not servers:
            raise ValueError("a gateway needs at least one server to follow")
        self.servers = [s.rstrip("/") for s in servers]
        self.token = token
        self.table = table
        self.on_admins = on_admins
        self.state_file = state_file
        self.verify = verify
        self.version = ""
        self.source: str | None = None  # the server the current table came from
        self.received_at: float | None = None  # wall time of the last answer from any server
        self.last_error = ""
        self._next = 0

    def load_state(self) -> bool:
        """The table a previous run of this gateway saved; False if there is none (or it is unreadable)."""
        if self.state_file is None or not self.state_file.exists():
            return False
        try:
            doc = json.loads(self.state_file.read_text())
            if doc.get("format") != STATE_FORMAT:
                return False
            self._apply(doc["table"], save=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the gateway state file %s: %s", self.state_file, exc)
            return False
        self.version = ""  # whatever a server has now is newer
        return True

    def _apply(self, doc: dict[str, Any], save: bool = True) -> None:
        routes = {r["deployment"]: route_from_json(r) for r in doc["routes"]}
        self.table.publish(routes)
        self.on_admins({str(k): (None if v is None else float(v)) for k, v in doc["admins"].items()})
        self.version = str(doc["version"])
        self.source = doc.get("server")
        if save and self.state_file is not None:
            try:  # replica secrets and token hashes: the owner's alone
                write_atomic(self.state_file, json.dumps({"format": STATE_FORMAT, "saved_at": time.time(),
                                                          "table": doc}), 0o600)
            except OSError as exc:  # e.g. a full disk: serving from memory goes on
                log.warning("cannot save the routing table to %s: %s", self.state_file, exc.strerror or exc)

    async def run(self) -> None:
        """Poll until cancelled. A server that answers as a follower is left for the next one, so
        the feed settles on the leader, but its table is taken meanwhile (it is read from the store)."""
        async with httpx.AsyncClient(timeout=LONG_POLL_S + 10, verify=self.verify,
                                     headers={"Authorization": f"Bearer {self.token}"}) as http:
            while True:
                server = self.servers[self._next % len(self.servers)]
                try:
                    response = await http.get(server + FEED_PATH,
                                              params={"after": self.version, "wait": LONG_POLL_S})
                    if response.status_code in (401, 403):
                        # this gateway's token was revoked (or never was an admin's): the admin tokens
                        # it knows may be revoked too, so it stops honouring them
                        self.on_admins({})
                    if response.status_code != 200:
                        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                    doc = response.json()
                    if not doc.get("settled", True):
                        raise RuntimeError("it has not built its routing table yet")
                    if doc["version"] != self.version or doc.get("server") != self.source:
                        self._apply(doc)
                except Exception as exc:  # noqa: BLE001 - whatever a server answers, or a full disk: poll on
                    self._failed(server, exc)
                    await asyncio.sleep(RETRY_PAUSE_S)
                    continue
                self.received_at = time.time()
                self.last_error = ""
                if not doc.get("leader", True) and len(self.servers) > 1:
                    self._next += 1
                    await asyncio.sleep(RETRY_PAUSE_S)

    def _failed(self, server: str, exc: BaseException) -> None:
        message = f"{server}: {exc or type(exc).__name__}"
        if message != self.last_error:
            log.warning("gateway feed: %s; serving the last table (%d routes)", message, len(self.table.routes()))
        self.last_error = message
        self._next += 1

    def health(self) -> dict[str, Any]:
        return {"routes": len(self.table.routes()), "version": self.version, "server": self.source,
                "table_age_s": None if self.received_at is None else round(time.time() - self.received_at, 3),
                "last_error": self.last_error or None, "pid": os.getpid()}
