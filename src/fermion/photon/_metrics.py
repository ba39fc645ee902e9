"""Prometheus metrics of one photon replica."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class PhotonMetrics:
    """Requests, latency, in-flight, timeouts and batch sizes per handler, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fermion_requests", "Handler requests by outcome.", ["handler", "status"], registry=r
        )
        self.latency = Histogram(
            "fermion_request_latency_seconds",
            "Handler latency in seconds.",
            ["handler"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "fermion_requests_in_flight", "Handler requests being served.", ["handler"], registry=r
        )
        self.timeouts = Counter(
            "fermion_handler_timeouts", "Handler calls that ran past their timeout.", ["handler"], registry=r
        )
        self.batch_size = Histogram(
            "fermion_batch_size", "Items per batched handler call.", ["handler"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_wait = Histogram(
            "fermion_batch_wait_seconds", "How long the oldest call of each batch waited for it to start.",
            ["handler"], buckets=BATCH_WAIT_BUCKETS, registry=r,
        )
        self.batch_seconds = Histogram(
            "fermion_batch_seconds", "How long each batched handler call ran.", ["handler"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_cost = Gauge(
            "fermion_batch_cost_seconds", "The batch cost fit, seconds = per_item * items + fixed, that sets "
            "the wait and max_latency_ms refusals.", ["handler", "term"], registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
