"""Canaries: a new version takes a share of the traffic beside the stable one; its judge compares
the two from the gateway's answers and promotes or rolls back. The judge is pure; ``promote`` and
``roll_back`` change the desired state (from the API by hand, or the controller by verdict)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from ..store import DeploymentRow, Store

P99_SLACK_MS = 5.0  # a canary's tail latency this close to the stable's never counts as a regression
# a tail quantile is compared only where this many answers of each version lie beyond it: the p99
# of 70 answers is their second slowest, one scheduling hiccup, and rolled back sound versions
TAIL_ANSWERS = 5


@dataclass(frozen=True)
class CanaryPolicy:
    weight: int  # percent of the traffic
    replicas: int = 1
    window_s: float = 60.0  # it must hold this long (and see min_requests) to be promoted
    min_requests: int = 50
    max_error_rate_increase: float = 0.01  # over the stable version's, as a fraction (0.01: one point)
    max_p99_ratio: float = 1.5  # of the tail latency: the p99 once each version has 500 answers
    auto: bool = True  # False: only `fermion deployment promote|rollback` end it

    @classmethod
    def of(cls, spec: dict[str, Any]) -> CanaryPolicy:
        return cls(**{k: v for k, v in spec.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class VersionStats:
    requests: int
    errors: int
    latencies_ms: tuple[float, ...] = ()  # sorted

    @classmethod
    def of(cls, answers: list[tuple[float, bool]]) -> VersionStats:
        """From (seconds, error) per answer."""
        return cls(len(answers), sum(e for _, e in answers), tuple(sorted(1000 * s for s, _ in answers)))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile_ms(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        return self.latencies_ms[int(q * (len(self.latencies_ms) - 1))]

    def describe(self, q: float) -> str:
        return (f"{100 * self.error_rate:.1f}% errors, {_name(q)} {self.quantile_ms(q):.0f} ms "
                f"over {self.requests} requests")


def tail_quantile(*answers: int) -> float:
    """The highest quantile, up to the p99, beyond which ``TAIL_ANSWERS`` of the fewest answers lie."""
    fewest = min(answers)
    return max(0.5, min(0.99, 1 - TAIL_ANSWERS / fewest)) if fewest else 0.99


def _name(q: float) -> str:
    return f"p{100 * q:.3g}"


def judge(policy: CanaryPolicy, canary: VersionStats, stable: VersionStats, running_s: float) -> tuple[str, str]:
    """("rollback" | "promote" | "", the numbers that decided). A regression is acted on as soon
    as the canary has seen ``min_requests``; a promotion waits for the whole window. Tail latency
    is compared at ``tail_quantile`` of the two versions' answers: the p99 from 500 answers each."""
    if canary.requests < policy.min_requests:
        return "", ""
    q = tail_quantile(canary.requests, stable.requests)
    numbers = f"canary {canary.describe(q)}; stable {stable.describe(q)}"
    allowed = stable.error_rate + policy.max_error_rate_increase
    if canary.error_rate > allowed:
        return "rollback", (f"error rate regressed: {numbers} (allowed up to {100 * allowed:.1f}%)")
    tail, stable_tail = canary.quantile_ms(q), stable.quantile_ms(q)
    if stable.requests >= policy.min_requests and tail > stable_tail * policy.max_p99_ratio \
            and tail - stable_tail > P99_SLACK_MS:
        return "rollback", (f"{_name(q)} latency regressed: {numbers} "
                            f"(allowed up to {policy.max_p99_ratio:g}x the stable {_name(q)})")
    if running_s >= policy.window_s:
        return "promote", f"held for {running_s:.0f}s: {numbers}"
    return "", ""


def start_canary(store: Store, s: Session, d: DeploymentRow, version: dict[str, Any], policy: dict[str, Any],
                 generation: int) -> None:
    """Desired state: run ``version`` (photon_sha256, resources, sealed env) as a canary of ``d``,
    as ``generation`` (a number none of its replicas ever had)."""
    d.canary = {**policy, **version, "generation": generation, "started_at": time.time()}
    store.record(s, "deployment", d.name, d.status, "CANARY",
                 f"canary of generation {generation}: {policy['weight']}% of the traffic on "
                 f"{policy['replicas']} replica(s), beside generation {d.generation}")


def promote(store: Store, s: Session, d: DeploymentRow, reason: str) -> None:
    """The canary becomes the deployment's version; its stable replicas roll over to it."""
    c = d.canary
    assert c is not None
    d.photon_sha256, d.resources, d.env = c["photon_sha256"], c["resources"], c["env"]
    d.generation, d.canary = int(c["generation"]), None
    d.crash_count, d.next_start_at, d.last_error = 0, 0.0, ""
    store.record(s, "deployment", d.name, "CANARY", "PROMOTED", f"canary generation {d.generation} promoted: {reason}")
    d.status, d.updated_at = "DEPLOYING", time.time()


def roll_back(store: Store, s: Session, d: DeploymentRow, reason: str) -> None:
    """The canary's replicas drain; the stable version takes all the traffic again."""
    c = d.canary
    assert c is not None
    d.canary = None
    store.record(s, "deployment", d.name, "CANARY", "ROLLED_BACK",
                 f"canary generation {c['generation']} rolled back: {reason}")
    d.updated_at = time.time()
