"""A photon served in a real subprocess, called through fermion.Client over loopback."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from fermion import Client, HandlerTimeout, RemoteError, UserInputError, ValidationFailed
from fermion.testing import Served, web


@pytest.fixture()
def client(text_photon: Served) -> Client:
    with Client(text_photon.url, timeout=10) as c:
        yield c


def test_typed_calls_json_get_and_bytes(client: Client) -> None:
    assert client.upper(texts=["a", "b"]) == ["A", "B"]
    assert client.upper(["positional"]) == ["POSITIONAL"]
    assert client.stats(text="the quick brown fox", min_length=4) == {"words": 2, "chars": 19, "longest": "quick"}
    assert client.repeat(text="ab", times=3) == "ababab"
    assert client.reverse_bytes(data=b"\x00\x01binary", label="L") == b"Lyranib\x01\x00"


def test_openapi_describes_each_handler(text_photon: Served) -> None:
    spec = web.get(f"{text_photon.url}/openapi.json").json()
    upper = spec["paths"]["/upper"]["post"]
    assert upper["operationId"] == "upper"
    assert upper["x-fermion-batch"] == {"max_size": 16, "max_wait_ms": 20.0}  # unset options are left out
    assert spec["paths"]["/repeat"]["get"]["parameters"][0]["name"] == "text"
    assert spec["paths"]["/count"]["post"]["x-fermion-stream"] is True
    schema_ref = upper["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert spec["components"]["schemas"][schema_ref]["properties"]["texts"]["type"] == "array"
    assert web.get(f"{text_photon.url}/docs").status_code == 200


def test_invalid_input_is_422_naming_the_field(client: Client, text_photon: Served) -> None:
    with pytest.raises(ValidationFailed) as err:
        client.stats(text=["not", "a", "string"])
    assert err.value.status == 422
    assert "text" in err.value.server_message
    raw = web.post(f"{text_photon.url}/stats", json={"text": "x", "bogus": 1})
    assert raw.status_code == 422
    assert "bogus" in raw.json()["error"]["message"]
    missing = web.post(f"{text_photon.url}/upper", json={})
    assert missing.status_code == 422 and "texts" in missing.json()["error"]["message"]


def test_handler_errors_carry_the_server_message(client: Client) -> None:
    with pytest.raises(RemoteError) as err:
        client.upper(["boom"])
    assert err.value.status == 400
    assert "'boom' is not allowed" in str(err.value)
    with pytest.raises(UserInputError):
        client.upper(["a"], texts=["b"])
    with pytest.raises(AttributeError, match="has no handler 'nope'"):
        client.nope()


def test_sync_and_async_generators_stream(client: Client, text_photon: Served) -> None:
    assert list(client.count(n=4)) == [{"i": i, "square": i * i} for i in range(4)]
    assert list(client.tokens(text="to be or not")) == ["to", "be", "or", "not"]
    with web.stream("POST", f"{text_photon.url}/count", json={"n": 3, "delay_s": 0.05}) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [item["i"] for item in lines] == [0, 1, 2]


def test_stream_items_arrive_before_the_handler_finishes(client: Client) -> None:
    import time

    start = time.perf_counter()
    stream = client.count(n=5, delay_s=0.3)
    first = next(stream)
    first_at = time.perf_counter() - start
    rest = list(stream)
    assert first == {"i": 0, "square": 0} and len(rest) == 4
    assert first_at < 1.0  # the whole stream takes 1.5 s


def test_batching_merges_concurrent_calls_and_answers_each_caller(client: Client) -> None:
    before = len(client.batch_log())
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda i: client.upper([f"w{i}", f"x{i}"]), range(64)))
    assert results == [[f"W{i}", f"X{i}"] for i in range(64)]
    batches = client.batch_log()[before:]
    assert sum(batches) == 128
    assert len(batches) < 64, batches  # merged
    assert max(batches) <= 16  # max_size respected
    assert max(batches) >= 4


def test_batch_error_reaches_only_the_bad_caller(client: Client) -> None:
    def call(i: int) -> object:
        try:
            return client.upper(["boom" if i == 7 else f"ok{i}"])
        except RemoteError as exc:
            return exc

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(16)))
    assert isinstance(results[7], RemoteError) and results[7].status == 400
    assert [r for i, r in enumerate(results) if i != 7] == [[f"OK{i}"] for i in range(16) if i != 7]


def test_handler_timeout_is_504_and_counted(client: Client, text_photon: Served) -> None:
    assert client.sleep(seconds=0.01) == 0.01
    with pytest.raises(HandlerTimeout) as err:
        client.sleep(seconds=3)
    assert err.value.status == 504 and "0.5s timeout" in str(err.value)
    metrics = web.get(f"{text_photon.url}/metrics").text
    assert 'fermion_handler_timeouts_total{handler="sleep"} 1.0' in metrics


def test_metrics_report_requests_latency_in_flight_and_batches(client: Client, text_photon: Served) -> None:
    for _ in range(3):
        client.stats(text="a b")
    client.upper(["a"])
    metrics = web.get(f"{text_photon.url}/metrics").text
    assert 'fermion_requests_total{handler="stats",status="200"}' in metrics
    count_line = next(
        line for line in metrics.splitlines() if line.startswith('fermion_request_latency_seconds_count{handler="stats"}')
    )
    assert float(count_line.split()[-1]) >= 3
    assert 'fermion_requests_in_flight{handler="stats"} 0.0' in metrics
    assert 'fermion_batch_size_bucket{handler="upper",le="16.0"}' in metrics
    # each batch's wait and run time, and the cost fit its waits follow (upper has run by now)
    assert 'fermion_batch_wait_seconds_count{handler="upper"}' in metrics
    assert 'fermion_batch_seconds_count{handler="upper"}' in metrics
    fit = {term: float(line.split()[-1]) for line in metrics.splitlines() for term in ("per_item", "fixed")
           if line.startswith(f'fermion_batch_cost_seconds{{handler="upper",term="{term}"}}')}
    assert len(fit) == 2 and sum(fit.values()) > 0, fit


def test_health_reports_ready(client: Client) -> None:
    assert client.health() == {"status": "ready", "photon": "text-tools"}
