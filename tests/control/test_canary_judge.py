"""The canary judge, a pure function: which numbers roll a canary back, and when it is promoted."""

from __future__ import annotations

import pytest

from fermion.control._canary import CanaryPolicy, VersionStats, judge, tail_quantile

POLICY = CanaryPolicy(weight=10, window_s=60, min_requests=50, max_error_rate_increase=0.01, max_p99_ratio=1.5)


def answers(requests: int, errors: int, tail_ms: float, base_ms: float = 10.0, tail: int = 50) -> VersionStats:
    """``requests`` answers: the slowest ``tail`` of them take ``tail_ms``, the rest ``base_ms``."""
    return VersionStats(requests, errors, tuple(sorted([base_ms] * (requests - tail) + [tail_ms] * tail)))


STABLE = answers(500, 5, 100.0)  # 1% errors; p99 100 ms


@pytest.mark.parametrize(("canary", "running_s", "verdict", "why"), [
    (answers(49, 49, 900.0, tail=49), 120, "", ""),  # too few answers to judge, however bad
    (answers(500, 15, 100.0), 5, "rollback", "error rate regressed"),  # 3% > 1% + 1 point
    (answers(500, 10, 100.0), 5, "", ""),  # 2%: within one point of the stable's
    (answers(500, 0, 151.0), 5, "rollback", "p99 latency regressed"),  # over 1.5x
    (answers(500, 0, 149.0), 5, "", ""),
    (answers(500, 0, 149.0), 60, "promote", "held for 60s"),  # the whole window
])
def test_the_judge_rolls_back_on_errors_or_tail_latency_and_promotes_after_the_window(
        canary: VersionStats, running_s: float, verdict: str, why: str) -> None:
    got, reason = judge(POLICY, canary, STABLE, running_s)
    assert got == verdict and reason.startswith(why), reason
    if verdict:
        assert f"over {canary.requests} requests" in reason and "stable 1.0% errors, p99 100 ms" in reason


def test_a_tail_within_the_slack_or_against_too_few_stable_answers_is_no_regression() -> None:
    fast = answers(500, 0, 2.0, base_ms=1.0)
    assert judge(POLICY, answers(500, 0, 6.0, base_ms=1.0), fast, 5) == ("", "")  # 3x, but only 4 ms more
    assert judge(POLICY, answers(100, 0, 900.0), answers(10, 0, 100.0, tail=1), 5) == ("", "")


def test_with_few_answers_the_tail_is_a_quantile_five_of_them_lie_beyond() -> None:
    """The p99 of 70 answers is their second slowest: two slow ones (a scheduling hiccup) must not
    roll a sound canary back; a slow tail that five answers or more show still does."""
    assert tail_quantile(500, 5000) == 0.99 and tail_quantile(50, 500) == 0.9 and tail_quantile(5, 500) == 0.5
    stable = answers(70, 0, 17.0, base_ms=10.0, tail=2)
    hiccup = answers(70, 0, 30.0, base_ms=10.0, tail=2)
    assert judge(POLICY, hiccup, stable, 5) == ("", "")
    slow = answers(70, 0, 30.0, base_ms=10.0, tail=7)  # a tenth of its answers slow
    verdict, reason = judge(POLICY, slow, stable, 5)
    assert verdict == "rollback" and reason.startswith("p92.9 latency regressed: canary 0.0% errors, p92.9 30 ms"), reason
