"""The routing table gateway processes follow: only a server admin reads it (it holds replica
secrets), a change answers a waiting poll at once, and a gateway refuses what it does not serve."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx

from fermion.testing import running_server, start_gateway, stop
from tests.support import FIXTURE_PHOTONS


def test_the_table_is_for_admins_and_a_change_ends_the_long_poll(tmp_path: Path) -> None:
    with running_server(tmp_path / "home") as server:
        viewer = json.loads(server.cli("token", "create", "peek", "--role", "viewer", "--json").stdout)["token"]
        for token, status in ((None, 401), (viewer, 403)):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            assert httpx.get(f"{server.url}/api/v1/gateway/table", headers=headers).status_code == status
        with server.api() as api:
            first = api.get("/gateway/table").json()
            assert first["leader"] is True and first["routes"] == [] and first["admins"]
            # no replica: its route is published once, and then nothing changes
            deployed = threading.Timer(1.0, server.cli, ("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "fresh",
                                                         "--public", "--replicas", "0"))
            deployed.start()
            asked = time.monotonic()
            changed = api.get("/gateway/table", params={"after": first["version"], "wait": 20}).json()
            waited = time.monotonic() - asked
            deployed.join()
            assert changed["version"] != first["version"] and 0.5 < waited < 15
            # nothing changes: the poll ends after ``wait`` with the same version
            same = api.get("/gateway/table", params={"after": changed["version"], "wait": 0.3}).json()
            assert same["version"] == changed["version"]
            assert api.get("/gateway/table", params={"wait": 31}).status_code == 422

        gateway = start_gateway(tmp_path / "gw", [server.url], server.token)
        try:
            assert httpx.get(f"{gateway.url}/api/v1/deployments").status_code == 404  # no API here
            assert httpx.get(f"{gateway.url}/metrics").status_code == 401
            metrics = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {server.token}"})
            assert metrics.status_code == 200 and "fermion_gateway_requests" in metrics.text
            assert httpx.post(f"{gateway.url}/d/nope/x").status_code == 404
        finally:
            stop(gateway.proc)
