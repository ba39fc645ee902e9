"""What replicas serve, over time: the server scrapes each READY replica's ``/metrics`` every
``SCRAPE_S`` and keeps, per deployment, a bounded series (24 h at 10 s) of requests per second,
errors per second and p50/p99 latency, overall and per (cloud, version). The dashboard draws it,
and the server's own ``/metrics`` re-exports the latest point with deployment, cloud and version
labels, so one Prometheus target covers every replica.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .._unix import ReplicaHTTP
from ..gateway import RoutingTable
from ..photon import REPLICA_AUTH_HEADER

log = logging.getLogger(__name__)

SCRAPE_S = float(os.environ.get("FERMION_SCRAPE_S", "10"))
KEEP_POINTS = 8640  # 24 h at 10 s
SCRAPE_TIMEOUT_S = 3.0
MAX_METRICS_BYTES = 4 << 20


@dataclass
class Sample:
    """One replica's cumulative counters at one scrape."""

    at: float
    requests: float = 0.0
    errors: float = 0.0  # answers of 5xx
    buckets: dict[float, float] = field(default_factory=dict)  # latency upper bound -> cumulative count


def parse_sample(text: str, at: float) -> Sample:
    """The request counters and latency buckets of a photon replica's /metrics, over its handlers."""
    sample = Sample(at)
    for family in text_string_to_metric_families(text):
        if family.name == "fermion_requests":
            for s in family.samples:
                if s.name == "fermion_requests_total":
                    sample.requests += s.value
                    if s.labels.get("status", "").startswith("5"):
                        sample.errors += s.value
        elif family.name == "fermion_request_latency_seconds":
            for s in family.samples:
                if s.name == "fermion_request_latency_seconds_bucket":
                    bound = float(s.labels["le"])
                    sample.buckets[bound] = sample.buckets.get(bound, 0.0) + s.value
    return sample


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of a histogram's (non-cumulative counts of) buckets, interpolated
    linearly inside its bucket as Prometheus's histogram_quantile does; None with no data."""
    bounds = sorted(buckets)
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank, seen, lower = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if seen + count >= rank and count > 0:
            if math.isinf(bound):
                return lower  # past the last finite bound: the most that can be said
            return lower + (bound - lower) * (rank - seen) / count
        seen += count
        lower = bound if not math.isinf(bound) else lower
    return lower


@dataclass
class Point:
    at: float
    qps: float
    errors: float  # per second
    p50_ms: float | None
    p99_ms: float | None


def point(samples: Iterable[tuple[Sample, Sample]]) -> Point | None:
    """One point from (previous, current) samples of some replicas: their rates added, their
    latency buckets merged. A counter that went down (a restarted replica) counts from zero."""
    requests = errors = 0.0
    seconds = 0.0
    buckets: dict[float, float] = {}
    at = 0.0
    for before, now in samples:
        reset = now.requests < before.requests
        base = Sample(before.at) if reset else before
        span = now.at - base.at
        if span <= 0:
            continue
        seconds = max(seconds, span)
        at = max(at, now.at)
        requests += now.requests - base.requests
        errors += now.errors - base.errors
        for bound, count in now.buckets.items():
            buckets[bound] = buckets.get(bound, 0.0) + count - base.buckets.get(bound, 0.0)
    if seconds <= 0:
        return None
    # cumulative to per-bucket counts
    per_bucket, previous = {}, 0.0
    for bound in sorted(buckets):
        per_bucket[bound] = max(buckets[bound] - previous, 0.0)
        previous = max(buckets[bound], previous)
    p50, p99 = quantile(per_bucket, 0.5), quantile(per_bucket, 0.99)
    return Point(at, round(requests / seconds, 3), round(errors / seconds, 3),
                 round(p50 * 1000, 2) if p50 is not None else None, round(p99 * 1000, 2) if p99 is not None else None)


class Telemetry:
    """Scrapes the replicas of ``table`` and keeps each deployment's series."""

    def __init__(self, table: RoutingTable, interval_s: float = SCRAPE_S, keep: int = KEEP_POINTS) -> None:
        self.table = table
        self.interval_s = interval_s
        self.keep = keep
        self._last: dict[str, tuple[str, str, int, Sample]] = {}  # replica -> (deployment, cloud, generation, sample)
        self._series: dict[str, deque[dict[str, Any]]] = {}
        self._latest: dict[tuple[str, str, int], Point] = {}  # (deployment, cloud, generation) -> its last point
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        http = ReplicaHTTP(SCRAPE_TIMEOUT_S)
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    self.scrape(http)
                except Exception:  # noqa: BLE001 - one failed round must not end the series
                    log.exception("scraping the replicas' metrics failed")
        finally:
            http.close()

    def scrape(self, http: ReplicaHTTP) -> None:
        """One round: every READY replica's counters, and a point per deployment."""
        now_samples: dict[str, tuple[str, str, int, Sample]] = {}
        for route in self.table.routes():
            for e in route.endpoints:
                headers = {REPLICA_AUTH_HEADER.decode(): e.secret} if e.secret else {}
                try:
                    r = http.get(f"{e.url}/metrics", headers=headers)
                    r.raise_for_status()
                    if len(r.content) > MAX_METRICS_BYTES:
                        continue
                    # a replica runs its user's code: what it answers is parsed as untrusted
                    sample = parse_sample(r.text, time.time())
                except (httpx.HTTPError, ValueError, KeyError):
                    continue  # stopping, not answering or answering nonsense: its requests show in a later round
                now_samples[e.replica_id] = (route.deployment, e.cloud, e.generation, sample)
        pairs: dict[tuple[str, str, int], list[tuple[Sample, Sample]]] = {}
        for replica, (deployment, cloud, generation, sample) in now_samples.items():
            before = self._last.get(replica)
            if before is not None:
                pairs.setdefault((deployment, cloud, generation), []).append((before[3], sample))
        with self._lock:
            self._last = now_samples
            latest: dict[tuple[str, str, int], Point] = {}
            for deployment in {k[0] for k in pairs}:
                groups = {k: v for k, v in pairs.items() if k[0] == deployment}
                overall = point(p for v in groups.values() for p in v)
                if overall is None:
                    continue
                by_version = {}
                for key, group in groups.items():
                    pt = point(group)
                    if pt is not None:
                        latest[key] = pt
                        by_version[f"{key[1]}/v{key[2]}"] = pt.__dict__
                series = self._series.setdefault(deployment, deque(maxlen=self.keep))
                series.append({**overall.__dict__, "by_version": by_version})
            self._latest = latest
            for gone in set(self._series) - {r.deployment for r in self.table.routes()}:
                del self._series[gone]  # a deleted deployment's history goes with it

    def series(self, deployment: str, since_s: float | None = None) -> list[dict[str, Any]]:
        cutoff = time.time() - since_s if since_s is not None else 0.0
        with self._lock:
            return [p for p in self._series.get(deployment, ()) if p["at"] >= cutoff]

    def collector(self) -> Collector:
        """The latest point of each (deployment, cloud, version), for the server's /metrics."""
        telemetry = self

        class Latest(Collector):
            def collect(self) -> Iterator[GaugeMetricFamily]:
                labels = ["deployment", "cloud", "version"]
                families = {
                    "qps": GaugeMetricFamily("fermion_deployment_requests_per_second",
                                             "Requests per second the replicas served, at the last scrape.", labels=labels),
                    "errors": GaugeMetricFamily("fermion_deployment_errors_per_second",
                                                "5xx answers per second of the replicas, at the last scrape.", labels=labels),
                    "p50_ms": GaugeMetricFamily("fermion_deployment_latency_p50_seconds",
                                                "Median handler latency over the last scrape interval.", labels=labels),
                    "p99_ms": GaugeMetricFamily("fermion_deployment_latency_p99_seconds",
                                                "99th percentile handler latency over the last scrape interval.",
                                                labels=labels),
                }
                with telemetry._lock:
                    latest = dict(telemetry._latest)
                for (deployment, cloud, generation), pt in sorted(latest.items()):
                    values = [deployment, cloud, str(generation)]
                    families["qps"].add_metric(values, pt.qps)
                    families["errors"].add_metric(values, pt.errors)
                    if pt.p50_ms is not None:
                        families["p50_ms"].add_metric(values, pt.p50_ms / 1000)
                    if pt.p99_ms is not None:
                        families["p99_ms"].add_metric(values, pt.p99_ms / 1000)
                yield from families.values()

        return Latest()
