"""The autoscaler, pure: from a deployment's policy, the load its gateway sees and what it wished
before, how many replicas it should have now.

The signal is the gateway's: requests in flight at the deployment's replicas plus requests the
gateway holds while no replica is up, smoothed over time (an exponential moving average with
time constant ``SMOOTHING_UP_S`` for scaling up, ``SMOOTHING_S`` for scaling down). Then

    desired = ceil(smoothed / target_ongoing_requests - 0.05), clamped to [max(min, 1), max]

and the count moves to ``desired`` once the wish has lasted ``upscale_delay_s`` (up) or
``downscale_delay_s`` (down; to the largest count wished for during that wait, so a short lull
never cuts below what the load needed). Two exceptions skip the delays: a deployment at zero
replicas with a request waiting wakes at once, and one with ``min: 0`` that has had no request
for ``scale_to_zero_delay_s`` goes to zero.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

SMOOTHING_S = 2.0  # time constant of the moving average of the load that scaling down follows
SMOOTHING_UP_S = 0.5  # ... and of the one scaling up follows: a spike is seen sooner than a lull
SLACK = 0.05  # a load within 5% above a multiple of the target rounds down: a decaying average settles


@dataclass(frozen=True)
class AutoscalePolicy:
    min: int
    max: int
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    scale_to_zero_delay_s: float = 300.0
    queue_limit: int = 100  # requests the gateway holds while the deployment wakes; past it, 429
    queue_timeout_s: float = 60.0  # how long a held request waits for a replica; past it, 503

    @classmethod
    def of(cls, spec: dict[str, Any]) -> AutoscalePolicy:
        return cls(**{k: v for k, v in spec.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Load:
    """What the gateway saw of one deployment now."""

    in_flight: int  # requests sent to its replicas, not answered yet
    queued: int  # requests held while no replica is up
    idle_s: float  # seconds since the last request arrived


@dataclass
class ScalerState:
    """What one deployment's autoscaler remembers between passes (in memory: a new leader starts afresh)."""

    smoothed: float | None = None
    fast: float = 0.0
    at: float = 0.0
    direction: int = 0  # +1 waiting to scale up, -1 waiting to scale down
    since: float = 0.0  # when the current wish began
    peak: int = 0  # the largest count wished for while waiting to scale down
    born: float = field(default_factory=time.time)  # idle time counts from here at the earliest


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str = ""  # with the numbers that decided it; "" when nothing changes
    smoothed: float = 0.0
    desired: int = 0


def decide(policy: AutoscalePolicy, current: int, load: Load, state: ScalerState, now: float) -> Decision:
    """The replica count for now (``current`` when nothing should change yet); updates ``state``."""
    raw = float(load.in_flight + load.queued)
    if state.smoothed is None:
        state.smoothed = state.fast = raw
    else:
        dt = max(0.0, now - state.at)
        state.smoothed += (1.0 - math.exp(-dt / SMOOTHING_S)) * (raw - state.smoothed)
        state.fast += (1.0 - math.exp(-dt / SMOOTHING_UP_S)) * (raw - state.fast)
    state.at = now
    target, floor = policy.target_ongoing_requests, max(policy.min, 1)

    def wanted(level: float) -> int:
        return min(policy.max, max(floor, math.ceil(level / target - SLACK)))

    up, down = wanted(state.fast), wanted(state.smoothed)  # a rise is seen sooner than a fall
    idle = raw == 0 and load.idle_s >= policy.scale_to_zero_delay_s
    if policy.min == 0 and idle:
        up = down = 0
    desired = up if up > current else down if down < current else current  # up on the fast one, down on the slow

    def change(to: int, reason: str) -> Decision:
        state.direction, state.peak = 0, 0
        return Decision(to, reason, state.smoothed, desired)

    def numbers(level: float) -> str:
        return f"{level / current if current else level:.1f} in flight per replica, target {target:g}"

    if current < policy.min or current > policy.max:
        bound = min(max(current, policy.min), policy.max)
        return change(bound, f"{current} → {bound}: outside the bounds [{policy.min}, {policy.max}]")
    if current == 0 and policy.min == 0:  # asleep: only a request wakes it, and at once (the callers wait)
        if raw == 0:
            state.direction, state.peak = 0, 0
            return Decision(0, "", state.smoothed, 0)
        to = wanted(raw)
        return change(to, f"0 → {to}: woken by {load.queued} waiting request(s)")
    if desired == 0 and current > 0:
        return change(0, f"{current} → 0: no request for {load.idle_s:.0f}s "
                         f"(scale to zero after {policy.scale_to_zero_delay_s:g}s)")
    if desired == current:
        state.direction, state.peak = 0, 0
        return Decision(current, "", state.smoothed, desired)
    direction = 1 if desired > current else -1
    if state.direction != direction:
        state.direction, state.since, state.peak = direction, now, desired
    state.peak = max(state.peak, desired)
    waited = now - state.since
    if direction > 0 and waited >= policy.upscale_delay_s:
        return change(desired, f"{current} → {desired}: {numbers(state.fast)} for {waited:.1f}s")
    if direction < 0 and waited >= policy.downscale_delay_s and state.peak < current:
        return change(state.peak, f"{current} → {state.peak}: {numbers(state.smoothed)} for {waited:.1f}s")
    return Decision(current, "", state.smoothed, desired)
