"""The optimizer: exact on small cases (checked against exhaustive search), constraints, reasons."""

from __future__ import annotations

import random

import pytest

from fermion.placement import (
    CloudState,
    Constraints,
    Objective,
    Offering,
    PlacementRequest,
    brute_force,
    builtin_catalogs,
    list_offerings,
    optimize,
    spread_cap,
)


def offering(cloud: str, price: float, spot: float | None = None, itype: str = "std", cpus: float = 4,
             latency: float = 0.0, gpu: str | None = None) -> Offering:
    return Offering(cloud=cloud, region="r1", instance_type=itype, vcpus=cpus, memory_gb=16, price=price,
                    spot_price=spot, latency_ms=latency, accelerator=gpu, accelerator_count=1 if gpu else 0)


@pytest.mark.parametrize("seed", range(40))
def test_exact_against_exhaustive_search(seed: int) -> None:
    rng = random.Random(seed)
    clouds = ["a", "b", "c", "d"][: rng.randint(2, 4)]
    offers = [
        offering(cl, round(rng.uniform(0.1, 2), 3), round(rng.uniform(0.05, 1), 3) if rng.random() < 0.6 else None,
                 itype=f"t{i}", cpus=rng.choice([2, 4, 8]), latency=rng.choice([0, 5, 40]))
        for cl in clouds for i in range(rng.randint(1, 3))
    ]
    states = {cl: CloudState(max_replicas=rng.choice([None, 1, 2, 3]), healthy=rng.random() > 0.1,
                             observed_latency_ms=rng.choice([None, None, 80.0])) for cl in clouds}
    req = PlacementRequest(
        cpus=rng.choice([1, 4]), replicas=rng.randint(1, 4),
        constraints=Constraints(min_clouds=rng.randint(1, 3), max_per_cloud=rng.choice([None, 1, 2]),
                                spot_share=rng.choice([0, 0.5, 1])),
        objective=Objective(alpha=rng.choice([0, 1, 5]), beta=rng.choice([0.5, 1])),
    )
    plan = optimize(req, offers, states)
    expected = brute_force(req, offers, states)
    if expected is None:
        assert not plan.feasible and plan.infeasible_reason
    else:
        assert plan.feasible, plan.infeasible_reason
        assert sum(p.count for p in plan.placements) == req.replicas
        assert plan.score == pytest.approx(expected, abs=1e-6)


def test_cheapest_cloud_wins_and_rejections_are_explained() -> None:
    offers = [offering("cheap", 0.10), offering("pricey", 0.50), offering("down", 0.01)]
    plan = optimize(PlacementRequest(replicas=2), offers, {"down": CloudState(healthy=False)})
    assert plan.clouds() == {"cheap": 2}
    assert plan.cost_per_hour == pytest.approx(0.20)
    reasons = {r.cloud: r.reason for r in plan.rejected}
    assert reasons["down"] == "unhealthy"
    assert "worse than the worst chosen" in reasons["pricey"] and "$0.5000/h" in reasons["pricey"]


def test_spread_quota_and_deny_lists() -> None:
    offers = [offering("a", 0.1), offering("b", 0.2), offering("c", 0.3)]
    spread = optimize(PlacementRequest(replicas=4, constraints=Constraints(min_clouds=3)), offers)
    assert set(spread.clouds()) == {"a", "b", "c"} and spread.clouds()["a"] == 2
    capped = optimize(PlacementRequest(replicas=4, constraints=Constraints(max_per_cloud=2)), offers)
    assert capped.clouds() == {"a": 2, "b": 2}
    quota = optimize(PlacementRequest(replicas=3), offers, {"a": CloudState(max_replicas=1)})
    assert quota.clouds() == {"a": 1, "b": 2}
    denied = optimize(PlacementRequest(replicas=1, constraints=Constraints(denied_clouds=["a"])), offers)
    assert denied.clouds() == {"b": 1}
    assert {r.cloud: r.reason for r in denied.rejected}["a"] == "denied by the constraints"


def test_spot_share_is_respected() -> None:
    offers = [offering("a", 1.0, spot=0.2), offering("b", 1.1, spot=0.25)]
    plan = optimize(PlacementRequest(replicas=4, constraints=Constraints(spot_share=0.5)), offers)
    assert sum(p.count for p in plan.placements if p.spot) == 2
    assert sum(p.count for p in plan.placements) == 4
    none = optimize(PlacementRequest(replicas=2), offers)
    assert not any(p.spot for p in none.placements)  # spot_share defaults to 0


@pytest.mark.parametrize(
    ("request_", "states", "reason"),
    [
        (PlacementRequest(accelerator="B200"), {}, "no healthy, allowed offering fits"),
        (PlacementRequest(replicas=5), {"a": CloudState(max_replicas=1), "b": CloudState(max_replicas=2)},
         "capacity: only 3 of 5 replicas fit"),
        (PlacementRequest(replicas=2, constraints=Constraints(min_clouds=3)), {}, "spread: needs at least 3 clouds"),
        (PlacementRequest(replicas=3, constraints=Constraints(max_per_cloud=1)), {}, "capacity: only 2 of 3"),
    ],
)
def test_infeasible_names_the_constraint(request_: PlacementRequest, states: dict, reason: str) -> None:
    plan = optimize(request_, [offering("a", 0.1), offering("b", 0.2)], states)
    assert not plan.feasible
    assert reason in (plan.infeasible_reason or "")


def test_measured_performance_changes_the_choice() -> None:
    offers = [offering("a", 0.10), offering("b", 0.12)]
    req = PlacementRequest(replicas=1, objective=Objective(alpha=1, beta=1))
    assert optimize(req, offers).clouds() == {"a": 1}
    slow_a = {"a": CloudState(observed_latency_ms=50.0), "b": CloudState(observed_latency_ms=5.0)}
    assert optimize(req, offers, slow_a).clouds() == {"b": 1}  # 0.5 + 0.10 > 0.05 + 0.12
    cost_only = PlacementRequest(replicas=1, objective=Objective(alpha=0, beta=1))
    assert optimize(cost_only, offers, slow_a).clouds() == {"a": 1}


def test_shipped_catalogs_have_dates_sources_and_gpus() -> None:
    catalogs = builtin_catalogs()
    assert {"aws", "gcp", "azure", "lambda"} <= set(catalogs)
    for info in catalogs.values():
        assert info.taken and info.source and info.offerings
    a100 = list_offerings(gpu="A100")
    assert {o.cloud for o in a100} == {"aws", "gcp", "azure", "lambda"}
    assert [o.price for o in a100] == sorted(o.price for o in a100)
    assert all(o.spot_price is not None for o in list_offerings(spot=True))


def test_the_egress_of_a_jobs_data_counts_once_spread_over_its_hours() -> None:
    """50 GB in aws's store: a cheaper gcp offering must pay 50 GB of aws egress (the catalog's
    $0.09/GB, $4.50) to run there; worth it for a long run only, and the plan says why."""
    aws_gb = builtin_catalogs()["aws"].egress_per_gb
    assert aws_gb == 0.09
    offers = [offering("aws", 0.192), offering("gcp", 0.15)]
    states = {"gcp": CloudState(one_time_cost=50 * aws_gb, one_time_note="bring 50 GB of corpus from aws's store")}
    short = optimize(PlacementRequest(objective=Objective(hours=1)), offers, states)
    assert short.clouds() == {"aws": 1}
    why = {r.cloud: r.reason for r in short.rejected}["gcp"]
    assert "$0.1500/h + $4.5000 once to bring 50 GB of corpus from aws's store vs $0.1920/h" in why, why
    long = optimize(PlacementRequest(objective=Objective(hours=200)), offers, states)
    assert long.clouds() == {"gcp": 1}  # 0.15 + 4.5/200 = 0.1725 < 0.192
    assert long.placements[0].one_time_cost == 4.5 and long.placements[0].note.startswith("bring 50 GB")


@pytest.mark.parametrize(("replicas", "clouds", "most"), [
    (3, 3, 1), (3, 4, 1), (2, 2, 1), (4, 3, 2), (5, 3, 2), (6, 4, 3), (1, 3, 1),
    (3, 2, 2), (5, 2, 3),  # too few clouds for half: as even as they allow
    (4, 1, 4), (1, 1, 1), (0, 3, 1),
])
def test_the_default_spread_rule_is_at_most_half_the_replicas_per_cloud(replicas: int, clouds: int, most: int) -> None:
    """The README: "at most half the replicas on one cloud by default" (rounded down), or, where
    too few clouds make that impossible, as even a spread as they allow."""
    assert spread_cap(replicas, clouds) == most
    assert most * clouds >= replicas  # the clouds can always hold the whole deployment


def test_three_replicas_over_three_healthy_clouds_put_no_two_on_one() -> None:
    """The trap: with ceil(replicas / 2) the cheapest cloud took two of three. Under the rule each of
    three healthy clouds takes one, whatever one costs; with one down, the other two take 2 and 1."""
    offers = [offering("cheap", 0.05), offering("mid", 0.30), offering("dear", 0.90)]
    capped = PlacementRequest(replicas=3, constraints=Constraints(max_per_cloud=spread_cap(3, 3)))
    assert optimize(capped, offers).clouds() == {"cheap": 1, "mid": 1, "dear": 1}
    down = {"dear": CloudState(healthy=False)}
    over_two = PlacementRequest(replicas=3, constraints=Constraints(max_per_cloud=spread_cap(3, 2)))
    assert optimize(over_two, offers, down).clouds() == {"cheap": 2, "mid": 1}

