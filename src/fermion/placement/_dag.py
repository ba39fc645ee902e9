"""Placing a pipeline's steps across clouds: minimise ``alpha * completion time + beta * cost``.

A step runs on one cloud. When it starts (once every step it needs has finished) it fetches
what it reads from other clouds: its datasets from the cheapest cloud whose store holds them,
and the outputs of the steps it needs from where they ran. That stage-in takes
``GB / transfer_gb_per_hour`` and is billed like the run (the machine is up), and each GB that
leaves a cloud costs that cloud's egress price. Its run takes ``hours / speed`` of the cloud.

Completion time is the longest path through the DAG. On a chain it is a sum, so dynamic
programming over (step, cloud) is exact. On a general DAG the max does not decompose; an ILP
does it exactly: a binary per (step, cloud), a continuous start and finish per step, and a
continuous pair variable per edge and pair of clouds that is forced to 1 when both ends are
chosen (``y >= x_j + x_i - 1``; the objective pushes it down otherwise). ``exhaustive`` is the
reference both are tested against.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import UserInputError

ILP_TIME_LIMIT_S = 20.0
MAX_PAIR_VARIABLES = 200_000  # (edge, cloud, cloud) triples the ILP may hold


class DataInput(BaseModel):
    """Data a step reads that exists before the pipeline runs: a dataset version."""

    model_config = ConfigDict(extra="forbid")
    name: str
    size_gb: float = Field(ge=0)
    at: list[str] = Field(min_length=1, description="the clouds whose stores hold it")


class StepNeed(BaseModel):
    """One step as the placement sees it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    hours: float = Field(ge=0, description="run time on a cloud of speed 1")
    after: list[str] = Field(default_factory=list, description="steps whose outputs it reads")
    inputs: list[DataInput] = Field(default_factory=list)
    output_gb: float = Field(0.0, ge=0, description="what it writes, read by the steps after it")
    clouds: list[str] = Field(default_factory=list, description="allowed clouds; empty: any")

    @field_validator("after")
    @classmethod
    def _once_each(cls, after: list[str]) -> list[str]:
        return list(dict.fromkeys(after))  # a step named twice is still one edge


class Site(BaseModel):
    """One cloud as the placement sees it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    price_per_hour: float = Field(ge=0, description="$ per hour of a step's machine")
    speed: float = Field(1.0, gt=0, description="a step's hours divide by it")
    egress_per_gb: float = Field(0.0, ge=0, description="$ per GB leaving this cloud")
    healthy: bool = True


class Move(BaseModel):
    what: str  # dataset NAME, or the step whose output it is
    source: str
    gb: float
    hours: float
    cost: float


class StepPlacement(BaseModel):
    step: str
    cloud: str
    start_h: float
    finish_h: float
    stage_in_h: float
    run_h: float
    cost: float  # machine time (stage-in and run) plus the egress of what it fetched
    moves: list[Move] = Field(default_factory=list)
    alternatives: dict[str, float] = Field(default_factory=dict,
                                           description="the score with only this step moved to each other cloud")


class PipelinePlan(BaseModel):
    feasible: bool
    alpha: float
    beta: float
    assignment: dict[str, str] = Field(default_factory=dict)
    steps: list[StepPlacement] = Field(default_factory=list)
    completion_h: float = 0.0
    cost: float = 0.0
    score: float = 0.0
    method: str = ""
    solve_ms: float = 0.0
    infeasible_reason: str | None = None

    def explain(self) -> str:
        """Each step's cloud with its time, cost and what it fetched, and what moving it would do."""
        if not self.feasible:
            return f"infeasible: {self.infeasible_reason}"
        lines = [f"{len(self.steps)} steps done in {self.completion_h:.3f} h for ${self.cost:.4f}: score "
                 f"{self.score:.4f} = {self.alpha:g} × {self.completion_h:.3f} h + {self.beta:g} × ${self.cost:.4f} "
                 f"({self.method}, {self.solve_ms:.1f} ms)"]
        for p in self.steps:
            fetched = ", ".join(f"{m.what} {m.gb:g} GB from {m.source} (${m.cost:.4f}, {m.hours * 60:.1f} min)"
                                for m in p.moves) or "nothing from other clouds"
            lines.append(f"{p.step} → {p.cloud}: {p.start_h:.3f}–{p.finish_h:.3f} h, ${p.cost:.4f}; fetches {fetched}")
            if p.alternatives:
                cloud, alt = min(p.alternatives.items(), key=lambda kv: kv[1])
                lines.append(f"    next best: {cloud}, score {alt:.4f} (+{alt - self.score:.4f})")
        return "\n".join(lines)


class _Problem:
    """The numbers every method works from, precomputed per (step, cloud) and per edge."""

    def __init__(self, steps: list[StepNeed], sites: list[Site], transfer_gb_per_hour: float) -> None:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise UserInputError(f"a pipeline names a step twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
        known = set(names)
        for s in steps:
            missing = [a for a in s.after if a not in known]
            if missing:
                raise UserInputError(f"step {s.name} runs after {missing[0]!r}, which is not a step of the pipeline")
        self.order = _topological(steps)
        self.steps = {s.name: s for s in steps}
        self.sites = {c.name: c for c in sites}
        self.rate = transfer_gb_per_hour
        self.allowed: dict[str, list[str]] = {}
        for s in self.order:
            ok = [c.name for c in sites if c.healthy and (not s.clouds or c.name in s.clouds)]
            self.allowed[s.name] = ok
        # per (step, cloud): the datasets' stage-in (hours, $ egress) and the run's hours
        self.data: dict[tuple[str, str], tuple[float, float, list[Move]]] = {}
        for s in self.order:
            for c in self.allowed[s.name]:
                hours = cost = 0.0
                moves = []
                for d in s.inputs:
                    if c in d.at or d.size_gb == 0:
                        continue
                    holders = [self.sites[h] for h in d.at if h in self.sites and self.sites[h].healthy]
                    if not holders:
                        raise UserInputError(f"no healthy cloud holds {d.name}, which step {s.name} reads",
                                             hint="sync it to a healthy cloud's store")
                    source = min(holders, key=lambda h: (h.egress_per_gb, h.name))
                    t = d.size_gb / self.rate
                    hours += t
                    cost += d.size_gb * source.egress_per_gb
                    moves.append(Move(what=d.name, source=source.name, gb=d.size_gb, hours=t,
                                      cost=d.size_gb * source.egress_per_gb))
                self.data[s.name, c] = (hours, cost, moves)

    def run_h(self, step: str, cloud: str) -> float:
        return self.steps[step].hours / self.sites[cloud].speed

    def node(self, step: str, cloud: str) -> tuple[float, float]:
        """(hours, $) of a step on a cloud, apart from fetching its predecessors' outputs."""
        stage_h, egress, _ = self.data[step, cloud]
        hours = stage_h + self.run_h(step, cloud)
        return hours, hours * self.sites[cloud].price_per_hour + egress

    def edge(self, before: str, step: str, c_before: str, c_step: str) -> tuple[float, float]:
        """(hours, $) of moving ``before``'s output to ``step``'s cloud."""
        gb = self.steps[before].output_gb
        if c_before == c_step or gb == 0:
            return 0.0, 0.0
        hours = gb / self.rate
        return hours, hours * self.sites[c_step].price_per_hour + gb * self.sites[c_before].egress_per_gb

    def evaluate(self, assignment: dict[str, str], alpha: float, beta: float) -> tuple[float, float, float]:
        """(completion hours, $, score) of an assignment."""
        finish: dict[str, float] = {}
        total = 0.0
        for s in self.order:
            c = assignment[s.name]
            hours, cost = self.node(s.name, c)
            start = max((finish[b] for b in s.after), default=0.0)
            for b in s.after:
                h, k = self.edge(b, s.name, assignment[b], c)
                hours += h
                cost += k
            finish[s.name] = start + hours
            total += cost
        done = max(finish.values(), default=0.0)
        return done, total, alpha * done + beta * total

    def infeasible(self) -> str | None:
        for s in self.order:
            if not self.allowed[s.name]:
                wanted = f" of {', '.join(s.clouds)}" if s.clouds else ""
                return f"step {s.name}: no healthy cloud{wanted} to run on"
        return None

    def is_chain(self) -> bool:
        return all(len(s.after) == (0 if i == 0 else 1) and (i == 0 or s.after[0] == self.order[i - 1].name)
                   for i, s in enumerate(self.order))


def _topological(steps: list[StepNeed]) -> list[StepNeed]:
    """Steps in an order where each comes after those it needs (Kahn's), or a 400 naming a cycle."""
    by_name = {s.name: s for s in steps}
    waiting = {s.name: set(s.after) for s in steps}
    out: list[StepNeed] = []
    ready = [s.name for s in steps if not s.after]
    while ready:
        name = ready.pop(0)
        out.append(by_name[name])
        for s in steps:
            if name in waiting[s.name]:
                waiting[s.name].discard(name)
                if not waiting[s.name]:
                    ready.append(s.name)
    if len(out) != len(steps):
        stuck = sorted(n for n, w in waiting.items() if w)
        raise UserInputError(f"the pipeline's steps wait on each other in a cycle: {', '.join(stuck)}")
    return out


def place_pipeline(steps: list[StepNeed], sites: list[Site], *, alpha: float = 1.0, beta: float = 1.0,
                   transfer_gb_per_hour: float = 360.0, method: str = "auto") -> PipelinePlan:
    """The best cloud for each step by ``alpha * completion hours + beta * $``. ``method``: auto (dp
    on a chain, else ilp), dp, ilp or exhaustive."""
    if alpha < 0 or beta < 0:
        raise UserInputError("alpha and beta must be ≥ 0")
    if transfer_gb_per_hour <= 0:
        raise UserInputError("transfer_gb_per_hour must be > 0")
    start = time.perf_counter()
    problem = _Problem(steps, sites, transfer_gb_per_hour)
    why = problem.infeasible()
    if why is not None:
        return PipelinePlan(feasible=False, alpha=alpha, beta=beta, infeasible_reason=why, method=method)
    if method == "auto":
        method = "dp" if problem.is_chain() else "ilp"
    if method == "dp":
        if not problem.is_chain():
            raise UserInputError("dynamic programming places a chain of steps only", hint="use method ilp")
        assignment = _dp(problem, alpha, beta)
    elif method == "ilp":
        assignment, exact = _ilp(problem, alpha, beta)
        if not exact:
            method = f"ilp, stopped at {ILP_TIME_LIMIT_S:g}s: the best found, not proven optimal"
    elif method == "exhaustive":
        assignment = _exhaustive(problem, alpha, beta)
    else:
        raise UserInputError(f"unknown method {method!r}", hint="auto, dp, ilp or exhaustive")
    plan = _report(problem, assignment, alpha, beta, method)
    plan.solve_ms = (time.perf_counter() - start) * 1000
    return plan


def _dp(p: _Problem, alpha: float, beta: float) -> dict[str, str]:
    """On a chain the score is a sum over steps and edges: best[c] = the chain so far ending on c."""
    def w(hours_cost: tuple[float, float]) -> float:
        return alpha * hours_cost[0] + beta * hours_cost[1]

    first = p.order[0].name
    best = {c: (w(p.node(first, c)), [c]) for c in p.allowed[first]}
    for prev, step in itertools.pairwise(p.order):
        best = {c: min(((score + w(p.edge(prev.name, step.name, cp, c)) + w(p.node(step.name, c)), path + [c])
                        for cp, (score, path) in best.items()), key=lambda t: t[0])
                for c in p.allowed[step.name]}
    _, path = min(best.values(), key=lambda t: t[0])
    return {s.name: c for s, c in zip(p.order, path, strict=True)}


def _ilp(p: _Problem, alpha: float, beta: float) -> tuple[dict[str, str], bool]:
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    index: dict[tuple[str, ...], int] = {}

    def var(*key: str) -> int:
        return index.setdefault(key, len(index))

    for s in p.order:
        for c in p.allowed[s.name]:
            var("x", s.name, c)
        var("start", s.name)
        var("finish", s.name)
    var("done")
    edges = [(b, s.name) for s in p.order for b in s.after]
    pairs = sum(len(p.allowed[b]) * len(p.allowed[s]) for b, s in edges)
    if pairs > MAX_PAIR_VARIABLES:
        raise UserInputError(f"the pipeline is too large to place exactly: {pairs} (step, step, cloud, cloud) pairs",
                             hint="allow fewer clouds per step (clouds: [...])")
    for b, s in edges:
        for cb in p.allowed[b]:
            for cs in p.allowed[s]:
                if p.edge(b, s, cb, cs) != (0.0, 0.0):
                    var("y", b, s, cb, cs)
    n = len(index)
    cost = np.zeros(n)
    cost[index["done",]] = alpha
    rows: list[tuple[dict[int, float], float, float]] = []  # (coefficients, low, high)
    for s in p.order:
        ones = {index["x", s.name, c]: 1.0 for c in p.allowed[s.name]}
        rows.append((ones, 1.0, 1.0))  # one cloud per step
        # finish = start + its own hours + the hours of fetching its predecessors' outputs
        coeffs = {index["finish", s.name]: 1.0, index["start", s.name]: -1.0}
        for c in p.allowed[s.name]:
            hours, dollars = p.node(s.name, c)
            coeffs[index["x", s.name, c]] = -hours
            cost[index["x", s.name, c]] += beta * dollars
        for b in s.after:
            for cb in p.allowed[b]:
                for cs in p.allowed[s.name]:
                    key = ("y", b, s.name, cb, cs)
                    if key in index:
                        hours, dollars = p.edge(b, s.name, cb, cs)
                        coeffs[index[key]] = -hours
                        cost[index[key]] += beta * dollars
            rows.append(({index["start", s.name]: 1.0, index["finish", b]: -1.0}, 0.0, math.inf))
        rows.append((coeffs, 0.0, 0.0))
        rows.append(({index["done",]: 1.0, index["finish", s.name]: -1.0}, 0.0, math.inf))
    for key, i in index.items():
        if key[0] == "y":  # y >= x_before + x_step - 1
            _, b, s, cb, cs = key
            rows.append(({i: 1.0, index["x", b, cb]: -1.0, index["x", s, cs]: -1.0}, -1.0, math.inf))
    from scipy.sparse import coo_array

    # a few entries a row: sparse, or a big DAG's matrix alone would not fit in memory
    entries = [(r, i, v) for r, (coeffs, _, _) in enumerate(rows) for i, v in coeffs.items()]
    matrix = coo_array(([e[2] for e in entries], ([e[0] for e in entries], [e[1] for e in entries])),
                       shape=(len(rows), n)).tocsr()
    keys = sorted(index, key=index.__getitem__)
    integrality = np.array([1 if key[0] == "x" else 0 for key in keys])
    upper = np.array([1.0 if key[0] in ("x", "y") else np.inf for key in keys])
    result = milp(cost, constraints=LinearConstraint(matrix, [r[1] for r in rows], [r[2] for r in rows]),
                  integrality=integrality, bounds=Bounds(np.zeros(n), upper),
                  options={"time_limit": ILP_TIME_LIMIT_S, "mip_rel_gap": 0.0})  # exact, or say it was not
    if result.x is None:  # every step has a cloud, so this is the solver giving up, not infeasibility
        raise UserInputError(f"the pipeline's placement was not solved within {ILP_TIME_LIMIT_S:g}s: {result.message}",
                             hint="allow fewer clouds per step, or place it with alpha 0 (cost only)")
    assignment = {s.name: max(p.allowed[s.name], key=lambda c, s=s: result.x[index["x", s.name, c]]) for s in p.order}
    return assignment, result.status == 0  # 1: the time limit came first; the best found, not proven optimal


def _exhaustive(p: _Problem, alpha: float, beta: float) -> dict[str, str]:
    names = [s.name for s in p.order]
    best: tuple[float, dict[str, str]] | None = None
    for combo in itertools.product(*(p.allowed[n] for n in names)):
        assignment = dict(zip(names, combo, strict=True))
        score = p.evaluate(assignment, alpha, beta)[2]
        if best is None or score < best[0] - 1e-12:
            best = (score, assignment)
    assert best is not None
    return best[1]


def _report(p: _Problem, assignment: dict[str, str], alpha: float, beta: float, method: str) -> PipelinePlan:
    done, total, score = p.evaluate(assignment, alpha, beta)
    finish: dict[str, float] = {}
    placed = []
    for s in p.order:
        c = assignment[s.name]
        stage_h, egress, moves = p.data[s.name, c]
        moves = list(moves)
        edge_cost = 0.0
        for b in s.after:
            h, k = p.edge(b, s.name, assignment[b], c)
            if h:
                gb = p.steps[b].output_gb
                moves.append(Move(what=f"{b}'s output", source=assignment[b], gb=gb, hours=h,
                                  cost=gb * p.sites[assignment[b]].egress_per_gb))
            stage_h += h
            edge_cost += k
        run_h = p.run_h(s.name, c)
        start = max((finish[b] for b in s.after), default=0.0)
        finish[s.name] = start + stage_h + run_h
        alternatives = {other: p.evaluate({**assignment, s.name: other}, alpha, beta)[2]
                        for other in p.allowed[s.name] if other != c}
        placed.append(StepPlacement(step=s.name, cloud=c, start_h=start, finish_h=finish[s.name], stage_in_h=stage_h,
                                    run_h=run_h, cost=p.node(s.name, c)[1] + edge_cost, moves=moves,
                                    alternatives=alternatives))
    return PipelinePlan(feasible=True, alpha=alpha, beta=beta, assignment=assignment, steps=placed, completion_h=done,
                        cost=total, score=score, method=method)


def score_of(steps: Iterable[StepNeed], sites: list[Site], assignment: dict[str, str], *, alpha: float = 1.0,
             beta: float = 1.0, transfer_gb_per_hour: float = 360.0) -> float:
    """The score of a given assignment (for tests and what-ifs)."""
    return _Problem(list(steps), sites, transfer_gb_per_hour).evaluate(assignment, alpha, beta)[2]
