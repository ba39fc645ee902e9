"""Placing a pipeline's steps across clouds: dynamic programming on chains and the ILP on DAGs
find the same optimum as exhaustive search, on random small cases and on hand-checked ones."""

from __future__ import annotations

import random

import pytest

from fermion.errors import UserInputError
from fermion.placement import DataInput, Site, StepNeed, place_pipeline, score_of

CLOUD_NAMES = ["aws", "gcp", "azure", "lambda"]


def random_sites(rng: random.Random, count: int) -> list[Site]:
    return [Site(name=CLOUD_NAMES[i], price_per_hour=rng.choice([0.05, 0.1, 0.2, 0.4, 0.8]),
                 speed=rng.choice([0.5, 1.0, 1.0, 2.0, 4.0]), egress_per_gb=rng.choice([0.0, 0.02, 0.09, 0.12]))
            for i in range(count)]


def random_data(rng: random.Random, sites: list[Site], k: int) -> list[DataInput]:
    return [DataInput(name=f"d{k}-{j}", size_gb=rng.choice([0.5, 5.0, 50.0]),
                      at=rng.sample([s.name for s in sites], rng.randint(1, len(sites))))
            for j in range(rng.randint(0, 2))]


def random_chain(rng: random.Random, sites: list[Site]) -> list[StepNeed]:
    n = rng.randint(1, 5)
    return [StepNeed(name=f"s{i}", hours=rng.choice([0.1, 0.5, 1.0, 3.0]), after=[f"s{i - 1}"] if i else [],
                     inputs=random_data(rng, sites, i), output_gb=rng.choice([0.0, 1.0, 20.0, 100.0]),
                     clouds=rng.sample([s.name for s in sites], rng.randint(1, len(sites))) if rng.random() < 0.3 else [])
            for i in range(n)]


def random_dag(rng: random.Random, sites: list[Site]) -> list[StepNeed]:
    n = rng.randint(2, 6)
    steps = []
    for i in range(n):
        before = [f"s{j}" for j in range(i) if rng.random() < 0.45]
        steps.append(StepNeed(name=f"s{i}", hours=rng.choice([0.1, 0.5, 1.0, 3.0]), after=before,
                              inputs=random_data(rng, sites, i), output_gb=rng.choice([0.0, 1.0, 20.0, 100.0]),
                              clouds=rng.sample([s.name for s in sites], rng.randint(1, len(sites)))
                              if rng.random() < 0.25 else []))
    rng.shuffle(steps)  # given in any order: the placement sorts them
    return steps


@pytest.mark.parametrize("seed", range(60))
def test_dynamic_programming_on_a_chain_matches_exhaustive_search(seed: int) -> None:
    rng = random.Random(seed)
    sites = random_sites(rng, rng.randint(1, 4))
    steps = random_chain(rng, sites)
    alpha, beta = rng.choice([0.0, 0.1, 1.0, 10.0]), rng.choice([0.0, 1.0, 5.0])
    dp = place_pipeline(steps, sites, alpha=alpha, beta=beta, method="dp")
    best = place_pipeline(steps, sites, alpha=alpha, beta=beta, method="exhaustive")
    assert dp.feasible and dp.method == "dp"
    assert dp.score == pytest.approx(best.score, rel=1e-9, abs=1e-9)
    assert dp.score == pytest.approx(score_of(steps, sites, dp.assignment, alpha=alpha, beta=beta), rel=1e-9, abs=1e-12)
    for step in steps:
        assert not step.clouds or dp.assignment[step.name] in step.clouds


@pytest.mark.parametrize("seed", range(60))
def test_the_ilp_on_a_dag_matches_exhaustive_search(seed: int) -> None:
    rng = random.Random(1000 + seed)
    sites = random_sites(rng, rng.randint(1, 4))
    steps = random_dag(rng, sites)
    alpha, beta = rng.choice([0.0, 0.1, 1.0, 10.0]), rng.choice([0.0, 1.0, 5.0])
    ilp = place_pipeline(steps, sites, alpha=alpha, beta=beta, method="ilp")
    best = place_pipeline(steps, sites, alpha=alpha, beta=beta, method="exhaustive")
    assert ilp.feasible
    assert ilp.score == pytest.approx(best.score, rel=1e-6, abs=1e-6)
    assert ilp.completion_h == pytest.approx(max(p.finish_h for p in ilp.steps))


def test_a_chain_follows_its_data_and_the_weights() -> None:
    """Training reads 100 GB that only gcp holds. With time and cost weighed evenly it trains
    there; cost alone moves it to the cheaper cloud only when egress is cheaper than the saving."""
    sites = [Site(name="aws", price_per_hour=0.10, egress_per_gb=0.09),
             Site(name="gcp", price_per_hour=0.40, egress_per_gb=0.12, speed=2.0)]
    steps = [StepNeed(name="prepare", hours=0.5, inputs=[DataInput(name="logs", size_gb=100, at=["gcp"])],
                      output_gb=2),
             StepNeed(name="train", hours=4, after=["prepare"], output_gb=0.5),
             StepNeed(name="evaluate", hours=0.25, after=["train"])]
    plan = place_pipeline(steps, sites, alpha=1, beta=1)
    assert plan.method == "dp"
    assert plan.assignment == {"prepare": "gcp", "train": "gcp", "evaluate": "gcp"}
    # gcp runs twice as fast: 0.25 + 2 + 0.125 hours; $0.40 an hour
    assert plan.completion_h == pytest.approx(2.375)
    assert plan.cost == pytest.approx(2.375 * 0.40)
    cheap = place_pipeline(steps, sites, alpha=0, beta=1)
    # cost only: preparing on aws would pay 100 GB × $0.12 of egress; training there saves more than
    # the 2 GB it fetches (2 × 0.12 + a little time)
    assert cheap.assignment["prepare"] == "gcp" and cheap.assignment["train"] == "aws"
    text = cheap.explain()
    assert "train → aws" in text and "prepare's output 2 GB from gcp" in text and "next best" in text


def test_a_dag_runs_branches_in_parallel_on_the_clouds_that_hold_their_data() -> None:
    sites = [Site(name="aws", price_per_hour=0.2, egress_per_gb=0.09),
             Site(name="azure", price_per_hour=0.2, egress_per_gb=0.087)]
    steps = [StepNeed(name="clicks", hours=1, inputs=[DataInput(name="clicks", size_gb=200, at=["aws"])],
                      output_gb=1),
             StepNeed(name="views", hours=1, inputs=[DataInput(name="views", size_gb=200, at=["azure"])],
                      output_gb=1),
             StepNeed(name="join", hours=0.5, after=["clicks", "views"])]
    plan = place_pipeline(steps, sites, alpha=1, beta=1)
    assert plan.method == "ilp"
    assert plan.assignment["clicks"] == "aws" and plan.assignment["views"] == "azure"
    by_step = {p.step: p for p in plan.steps}
    assert by_step["clicks"].start_h == by_step["views"].start_h == 0  # the branches overlap
    assert by_step["join"].start_h == pytest.approx(1.0)
    assert plan.completion_h == pytest.approx(1.0 + 1 / 360 + 0.5)  # join fetches one branch's 1 GB


def test_bad_pipelines_get_clear_errors() -> None:
    sites = [Site(name="aws", price_per_hour=0.1), Site(name="gcp", price_per_hour=0.1, healthy=False)]
    with pytest.raises(UserInputError, match="cycle: a, b"):
        place_pipeline([StepNeed(name="a", hours=1, after=["b"]), StepNeed(name="b", hours=1, after=["a"])], sites)
    with pytest.raises(UserInputError, match="not a step"):
        place_pipeline([StepNeed(name="a", hours=1, after=["ghost"])], sites)
    with pytest.raises(UserInputError, match="names a step twice"):
        place_pipeline([StepNeed(name="a", hours=1), StepNeed(name="a", hours=2)], sites)
    with pytest.raises(UserInputError, match="no healthy cloud holds logs"):
        place_pipeline([StepNeed(name="a", hours=1, inputs=[DataInput(name="logs", size_gb=1, at=["gcp"])])], sites)
    with pytest.raises(UserInputError, match="places a chain"):
        place_pipeline([StepNeed(name="a", hours=1), StepNeed(name="b", hours=1)], sites, method="dp")
    stuck = place_pipeline([StepNeed(name="a", hours=1, clouds=["gcp"])], sites)
    assert not stuck.feasible and "step a: no healthy cloud of gcp" in stuck.infeasible_reason
