"""Health before and after init, failing init, and draining on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from fermion import Client, ServiceUnavailable
from fermion.testing import fermion_cmd, serve_photon, web

FIXTURES = Path(__file__).with_name("fixture_photons.py")


def test_not_ready_until_init_finishes(tmp_path: Path) -> None:
    with serve_photon(f"{FIXTURES}:SlowInit", tmp_path, env={"SLOW_INIT_S": "2"}, wait_ready=False) as served:
        early = web.get(f"{served.url}/healthz")
        assert early.status_code == 503 and early.json()["status"] == "initializing"
        call = web.post(f"{served.url}/ping")
        assert call.status_code == 503 and "initializing" in call.json()["error"]["message"]
        client = Client(served.url)
        with pytest.raises(ServiceUnavailable):
            client.health()
        assert client.wait_ready(timeout=30)["status"] == "ready"
        assert client.ping() == "pong"


def test_failing_init_exits_non_zero_with_the_error(tmp_path: Path) -> None:
    result = subprocess.run(
        fermion_cmd("photon", "run", f"{FIXTURES}:FailingInit", "--port", "0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "model weights not found at /nowhere" in result.stderr
    assert "init() failed" in result.stderr


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    with serve_photon(f"{FIXTURES}:Slow", tmp_path) as served:
        outcomes: list[object] = []

        def slow_call() -> None:
            try:
                outcomes.append(web.post(f"{served.url}/work", json={"seconds": 1.5}, timeout=10).json())
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                outcomes.append(exc)

        threads = [threading.Thread(target=slow_call) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.4)  # the requests are inside the handler now
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):
            web.post(f"{served.url}/work", json={"seconds": 0}, timeout=2)
        for t in threads:
            t.join(10)
        assert outcomes == [{"slept": 1.5}] * 3
        assert served.proc.wait(timeout=15) == 0  # exits by itself after the drain; stop() would signal again
