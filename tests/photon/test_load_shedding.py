"""A batched handler's max_latency_ms over real HTTP: calls that would answer late are refused
at once with a 503 the gateway can retry elsewhere, and the rest answer in time."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from fermion.testing import serve_photon

FIXTURES = Path(__file__).with_name("fixture_photons.py")


def test_calls_past_max_latency_are_refused_with_503(tmp_path: Path) -> None:
    with serve_photon(f"{FIXTURES}:LatencyBound", tmp_path) as served, httpx.Client(timeout=10) as http:
        assert http.post(f"{served.url}/work", json={"items": [1.0]}).json() == [1.0]  # the cost fit's first batch

        def call(i: int) -> tuple[int, float, dict]:
            start = time.perf_counter()
            r = http.post(f"{served.url}/work", json={"items": [float(i)]})
            return r.status_code, time.perf_counter() - start, r.json()

        with ThreadPoolExecutor(24) as pool:
            outcomes = list(pool.map(call, range(24)))
    answered = [(s, body) for status, s, body in outcomes if status == 200]
    refused = [(s, body) for status, s, body in outcomes if status == 503]
    assert len(answered) + len(refused) == 24, outcomes
    assert answered and refused, outcomes  # 24 calls of 100 ms batches of 4 cannot all make 300 ms
    assert all(body == [float(i)] for i, (status, _, body) in enumerate(outcomes) if status == 200)
    error = refused[0][1]["error"]
    assert error["type"] == "BatchOverloaded" and "max_latency_ms of 300" in error["message"]
    assert max(s for s, _ in refused) < max(s for s, _ in answered)  # refused up front, not after waiting
