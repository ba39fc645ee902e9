"""The canary judge, a pure function: which numbers roll a canary back, and when it is promoted."""

from __future__ import annotations

import pytest

from fermion.control._canary import CanaryPolicy, VersionStats, judge

POLICY = CanaryPolicy(weight=10, window_s=60, min_requests=50, max_error_rate_increase=0.01, max_p99_ratio=1.5)
STABLE = VersionStats(requests=500, errors=5, p99_ms=100.0)  # 1% errors


@pytest.mark.parametrize(("canary", "running_s", "verdict", "why"), [
    (VersionStats(49, 49, 900.0), 120, "", ""),  # too few answers to judge, however bad
    (VersionStats(100, 3, 100.0), 5, "rollback", "error rate regressed"),  # 3% > 1% + 1 point
    (VersionStats(100, 2, 100.0), 5, "", ""),  # 2%: within one point of the stable's
    (VersionStats(100, 0, 151.0), 5, "rollback", "p99 regressed"),  # over 1.5x
    (VersionStats(100, 0, 149.0), 5, "", ""),
    (VersionStats(100, 0, 149.0), 60, "promote", "held for 60s"),  # the whole window
])
def test_the_judge_rolls_back_on_errors_or_p99_and_promotes_after_the_window(
        canary: VersionStats, running_s: float, verdict: str, why: str) -> None:
    got, reason = judge(POLICY, canary, STABLE, running_s)
    assert got == verdict and reason.startswith(why), reason
    if verdict:
        assert f"over {canary.requests} requests" in reason and "stable 1.0% errors" in reason


def test_a_p99_within_the_slack_or_against_too_few_stable_answers_is_no_regression() -> None:
    fast = VersionStats(500, 0, 2.0)
    assert judge(POLICY, VersionStats(100, 0, 6.0), fast, 5) == ("", "")  # 3x, but only 4 ms more
    assert judge(POLICY, VersionStats(100, 0, 900.0), VersionStats(10, 0, 100.0), 5) == ("", "")
