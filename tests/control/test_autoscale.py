"""The autoscaler's decisions, as a table of load over time (pure: no server)."""

from __future__ import annotations

from fermion.control._autoscale import AutoscalePolicy, Load, ScalerState, decide

POLICY = AutoscalePolicy(min=0, max=4, target_ongoing_requests=2, upscale_delay_s=3, downscale_delay_s=10,
                         scale_to_zero_delay_s=20)


def run(policy: AutoscalePolicy, current: int, trace: list[tuple[float, Load]]) -> list[tuple[float, int, str]]:
    """Feed (time, load) samples; return each change (time, new count, reason)."""
    state, changes = ScalerState(), []
    for now, load in trace:
        d = decide(policy, current, load, state, now)
        if d.replicas != current:
            changes.append((now, d.replicas, d.reason))
            current = d.replicas
    return changes


def steady(start: float, end: float, load: Load, step: float = 0.25) -> list[tuple[float, Load]]:
    n = int((end - start) / step)
    return [(start + i * step, load) for i in range(n)]


def test_load_above_target_scales_up_once_the_delay_has_passed_with_the_numbers() -> None:
    changes = run(POLICY, 1, steady(0, 10, Load(in_flight=7, queued=0, idle_s=0)))
    assert len(changes) == 1
    at, to, reason = changes[0]
    assert 3 <= at < 3.5 and to == 4
    assert reason.startswith("1 → 4: 7.0 in flight per replica, target 2 for 3.")


def test_a_short_burst_shorter_than_the_delay_changes_nothing() -> None:
    # smoothed, the burst outlasts itself by ~1.5s: still under the delay
    trace = steady(0, 2, Load(1, 0, 0)) + steady(2, 3, Load(8, 0, 0)) + steady(3, 12, Load(1, 0, 0))
    assert run(POLICY, 1, trace) == []


def test_scale_down_waits_its_delay_and_keeps_the_peak_of_the_wait() -> None:
    # 4 replicas; the load drops to ~2 in flight (1 replica's worth), with a rise to 7 for 2s (3 replicas, smoothed) mid-wait
    trace = steady(0, 4, Load(2, 0, 0)) + steady(4, 6, Load(7, 0, 0)) + steady(6, 45, Load(2, 0, 0))
    changes = run(POLICY, 4, trace)
    assert changes[0][1] == 3 and changes[0][0] >= 10  # the peak of the wait, after the delay
    assert [to for _, to, _ in changes] == [3, 2, 1]  # one step per wait, each to the peak of its wait
    assert all(b[0] - a[0] >= 10 for a, b in zip(changes, changes[1:], strict=False))


def test_idle_for_the_delay_goes_to_zero_and_a_waiting_request_wakes_it_at_once() -> None:
    policy = AutoscalePolicy(min=0, max=4, scale_to_zero_delay_s=20)
    state = ScalerState()
    assert decide(policy, 1, Load(0, 0, idle_s=19), state, 0).replicas == 1
    down = decide(policy, 1, Load(0, 0, idle_s=20.5), state, 1)
    assert down.replicas == 0 and "no request for 20s" in down.reason
    up = decide(policy, 0, Load(0, 3, idle_s=0), state, 2)
    assert up.replicas == 2 and up.reason == "0 → 2: woken by 3 waiting request(s)"  # 3 waiting / target 2


def test_min_above_zero_never_goes_to_zero_and_bounds_are_enforced() -> None:
    policy = AutoscalePolicy(min=2, max=3, scale_to_zero_delay_s=0, downscale_delay_s=0)
    state = ScalerState()
    assert decide(policy, 2, Load(0, 0, idle_s=1e9), state, 0).replicas == 2
    assert decide(policy, 5, Load(0, 0, 0), state, 1).replicas == 3
    assert decide(policy, 0, Load(0, 0, 0), state, 2).replicas == 2
    assert decide(policy, 3, Load(100, 0, 0), state, 3).replicas == 3  # max holds under any load


def test_at_zero_it_stays_at_zero_until_a_request_comes() -> None:
    policy = AutoscalePolicy(min=0, max=4, upscale_delay_s=1, scale_to_zero_delay_s=10)
    quiet = [(t, Load(0, 0, idle_s=t)) for t in range(0, 300, 1)]  # however long: recently idle or not
    assert run(policy, 0, quiet) == []
    woken = run(policy, 0, quiet[:5] + [(5, Load(0, 1, idle_s=0))])
    assert woken == [(5, 1, "0 → 1: woken by 1 waiting request(s)")]
