"""Canaries: a new version takes a share of the traffic beside the stable one; its judge compares
the two from the gateway's answers and promotes or rolls back. The judge is pure; ``promote`` and
``roll_back`` change the desired state (from the API by hand, or the controller by verdict)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from ..store import DeploymentRow, Store

P99_SLACK_MS = 5.0  # a canary's p99 this close to the stable's never counts as a regression


@dataclass(frozen=True)
class CanaryPolicy:
    weight: int  # percent of the traffic
    replicas: int = 1
    window_s: float = 60.0  # it must hold this long (and see min_requests) to be promoted
    min_requests: int = 50
    max_error_rate_increase: float = 0.01  # over the stable version's, as a fraction (0.01: one point)
    max_p99_ratio: float = 1.5
    auto: bool = True  # False: only `fermion deployment promote|rollback` end it

    @classmethod
    def of(cls, spec: dict[str, Any]) -> CanaryPolicy:
        return cls(**{k: v for k, v in spec.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class VersionStats:
    requests: int
    errors: int
    p99_ms: float

    @classmethod
    def of(cls, answers: list[tuple[float, bool]]) -> VersionStats:
        """From (seconds, error) per answer."""
        if not answers:
            return cls(0, 0, 0.0)
        latencies = sorted(s for s, _ in answers)
        return cls(len(answers), sum(e for _, e in answers), 1000 * latencies[int(0.99 * (len(latencies) - 1))])

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def describe(self) -> str:
        return f"{100 * self.error_rate:.1f}% errors, p99 {self.p99_ms:.0f} ms over {self.requests} requests"


def judge(policy: CanaryPolicy, canary: VersionStats, stable: VersionStats, running_s: float) -> tuple[str, str]:
    """("rollback" | "promote" | "", the numbers that decided). A regression is acted on as soon
    as the canary has seen ``min_requests``; a promotion waits for the whole window."""
    if canary.requests < policy.min_requests:
        return "", ""
    numbers = f"canary {canary.describe()}; stable {stable.describe()}"
    allowed = stable.error_rate + policy.max_error_rate_increase
    if canary.error_rate > allowed:
        return "rollback", (f"error rate regressed: {numbers} (allowed up to {100 * allowed:.1f}%)")
    if stable.requests >= policy.min_requests and canary.p99_ms > stable.p99_ms * policy.max_p99_ratio \
            and canary.p99_ms - stable.p99_ms > P99_SLACK_MS:
        return "rollback", f"p99 regressed: {numbers} (allowed up to {policy.max_p99_ratio:g}x the stable p99)"
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
