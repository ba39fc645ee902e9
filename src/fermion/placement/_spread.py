"""The default spread rule for a deployment's replicas over clouds."""

from __future__ import annotations

import math


def spread_cap(replicas: int, clouds: int) -> int:
    """The most replicas of ``replicas`` one cloud may hold when ``clouds`` clouds can take them:
    at most half, rounded down (3 replicas over 3 clouds: one each), so that losing a cloud
    never loses most of a deployment. Where too few clouds make that impossible, as even a spread
    as they allow (3 over 2: two and one; all of them on a single cloud). Never below one."""
    if clouds <= 1:
        return max(1, replicas)
    return max(1, replicas // 2, math.ceil(replicas / clouds))
