"""A Ray workload's relay to its server (its only way there from a network namespace of its own):
it carries the workload's own routes to a real server, and nothing else."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fermion.backends import WorkloadRelay
from fermion.testing import ServerProc, running_server, unix_transport


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("relay") / "home") as s:
        yield s


def raw(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(request)
        return b"".join(iter(lambda: s.recv(65536), b""))


def test_the_relay_carries_only_the_workloads_own_routes(server: ServerProc, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    relay = WorkloadRelay(path, server.url)
    try:
        with httpx.Client(transport=unix_transport(str(path)), base_url="http://fermion",
                          headers={"Authorization": f"Bearer {server.token}"}, timeout=30) as http:
            # the admin's token would open these on the server's port: through the relay, they do not exist
            for route in ("/api/v1/deployments", "/healthz", "/api/v1/attempts/self/../../deployments",
                          "/api/v1/attempts/self/%2e%2e/%2e%2e/deployments", "/d/x/y"):
                answer = http.get(route)
                assert answer.status_code == 404 and "not served to workloads" in answer.text, (route, answer.text)
            # the workload's own routes reach the server, which judges the token (a user's is no attempt's)
            forwarded = http.get("/api/v1/attempts/self/code")
            assert forwarded.status_code == 401 and forwarded.json()["error"]["type"], forwarded.text
            assert http.post("/api/v1/attempts/self/metrics", json=[{"step": 1}]).status_code == 401
        chunked = raw(path, b"POST /api/v1/attempts/self/metrics HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                            b"0\r\n\r\n")
        assert chunked.startswith(b"HTTP/1.1 411 ")
        assert raw(path, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    finally:
        relay.close()
