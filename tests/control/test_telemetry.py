"""The dashboard's series from replica counters: parsing a real replica registry's exposition,
rates between two scrapes, merged histograms, restarts."""

from __future__ import annotations

import math

import pytest

from fermion.control._telemetry import Sample, parse_sample, point, quantile
from fermion.photon._metrics import PhotonMetrics


def test_a_replicas_metrics_parse_into_requests_errors_and_latency_buckets() -> None:
    m = PhotonMetrics()
    m.requests.labels("embed", "200").inc(3)
    m.requests.labels("embed", "503").inc(1)
    m.requests.labels("stats", "200").inc(2)
    for seconds in (0.002, 0.002, 0.002, 0.002, 0.2):
        m.latency.labels("embed").observe(seconds)
    m.latency.labels("stats").observe(0.02)
    sample = parse_sample(m.render().decode(), at=100.0)
    assert (sample.requests, sample.errors) == (6, 1)
    assert sample.buckets[0.0025] == 4 and sample.buckets[0.025] == 5 and sample.buckets[math.inf] == 6


def test_quantiles_interpolate_inside_their_bucket() -> None:
    per_bucket = {0.001: 0.0, 0.0025: 10.0, 0.005: 0.0, math.inf: 0.0}
    assert quantile(per_bucket, 0.5) == pytest.approx(0.00175)
    assert quantile({0.01: 0.0, math.inf: 5.0}, 0.99) == 0.01  # past the last bound: that bound
    assert quantile({0.01: 0.0}, 0.5) is None


def test_a_point_adds_replicas_rates_and_a_restart_counts_from_zero() -> None:
    a0 = Sample(0.0, requests=100, errors=0, buckets={0.005: 100, math.inf: 100})
    a1 = Sample(10.0, requests=150, errors=5, buckets={0.005: 140, math.inf: 150})
    restarted0 = Sample(0.0, requests=900, errors=0, buckets={0.005: 900, math.inf: 900})
    restarted1 = Sample(10.0, requests=30, errors=0, buckets={0.005: 30, math.inf: 30})  # its counters began anew
    pt = point([(a0, a1), (restarted0, restarted1)])
    assert pt is not None
    assert pt.qps == 8.0 and pt.errors == 0.5  # (50 + 30) / 10 s; 5 / 10 s
    assert 0 < pt.p50_ms <= 5.0 and pt.p99_ms == 5.0  # 70 of 80 at most 5 ms; the rest past the last finite bound
    assert point([(a1, a1)]) is None  # no time between the two: no rate
