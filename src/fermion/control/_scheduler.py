"""The scheduler: one capacity ledger for replicas and job attempts together, cloud health kept in
one place, and ranking through the placement optimizer. Both controllers place through it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..backends import Capabilities, FaultInjector
from ..placement import CloudState, Constraints, Offering, PlacementRequest, optimize, spread_cap
from ..store import LIVE_ATTEMPT_STATES, TERMINAL_STATES, AttemptRow, CloudRow, ReplicaRow, Store

log = logging.getLogger("fermion.controller")
CLOUD_RETRY_S = 30.0  # a cloud that failed to start a workload is tried again after this
CAPACITY_TTL_S = 5.0
NOTED_FAILURE_RATE = 0.05  # a cloud failing this share of its requests is named in a placement's why
UNRECORDED_GRACE_S = 60.0  # longer than any write of a start's intent
RANK_TTL_S = 1.0  # observed latencies move slowly; health changes clear the cache at once
Moves = dict[str, tuple[float, str]]  # cloud -> ($ once to bring a workload's data there, what moves)


@dataclass(frozen=True)
class Need:
    cpus: float = 1.0
    memory_gb: float = 1.0
    egress: bool = False  # the workload asks for the network: only clouds that allow it

    @classmethod
    def of(cls, resources: dict[str, Any] | None) -> Need:
        r = resources or {}
        return cls(float(r.get("cpus", 1)), float(r.get("memory_gb", 1)), bool(r.get("egress", False)))

    def describe(self) -> str:
        return f"cpus={self.cpus:g}, memory_gb={self.memory_gb:g}"


@dataclass
class Choice:
    """Where a workload goes (its capacity is reserved there), why, and why not elsewhere."""

    cloud: str | None
    why: str = ""
    why_not: list[str] | None = None


class Scheduler:
    def __init__(self, store: Store, backends: dict[str, FaultInjector],
                 observed_latency: Callable[[], dict[str, float]] = dict,
                 observed_failure_rate: Callable[[], dict[str, float]] = dict) -> None:
        self.store = store
        self.backends = backends
        self.observed_latency = observed_latency  # mean gateway-measured latency per cloud
        self.observed_failure_rate = observed_failure_rate  # share of failed requests per cloud, ditto
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, Need]] = {}  # workload id -> (cloud, what it holds)
        self._used: dict[str, tuple[float, float]] = {}  # cloud -> (cpus, memory_gb) held, the sum of the above
        self._unhealthy_until: dict[str, float] = {}
        self._reserved_at: dict[str, float] = {}  # when each reservation of this process was made
        self._rebuilt_at = 0.0
        self._offered: dict[str, tuple[float, tuple[dict[str, float], list[Offering], Capabilities]]] = {}
        self._ranked: dict[tuple, tuple[float, list[str], str]] = {}
        self._local = threading.local()  # the reservations of a tentative() block on this thread
        # injected outages: a fail or recover here counts one change, so that a sync from a read of
        # the store made before it cannot undo it (a recover from a stale read let a failed cloud's
        # attempt, killed by the outage, read as its job's own failure)
        self._outage_lock = threading.Lock()
        self._outage_changes = 0

    # -- the capacity ledger ----------------------------------------------------------------
    def rebuild(self) -> None:
        """The ledger from the store: every live replica and attempt that has a cloud, whoever
        placed it (another server on the same database too). A reservation the store does not
        show yet (its intent is being written) is kept for a grace period, then dropped."""
        started = time.monotonic()
        with self.store.session() as s:
            held = {r.id: (r.cloud, Need.of(r.resources)) for r in s.scalars(select(ReplicaRow).where(
                ReplicaRow.state.not_in(TERMINAL_STATES), ReplicaRow.cloud.is_not(None))).all()}
            held.update({a.id: (a.cloud, Need.of(a.resources)) for a in s.scalars(select(AttemptRow).where(
                AttemptRow.state.in_(LIVE_ATTEMPT_STATES))).all()})
        with self._lock:
            recent = {wid: (self._held[wid], at) for wid, at in self._reserved_at.items()
                      if wid not in held and wid in self._held and at > started - UNRECORDED_GRACE_S}
            self._held, self._used, self._reserved_at = {}, {}, {}
            for wid, (cloud, need) in held.items():
                self._hold(wid, cloud, need)
            for wid, ((cloud, need), at) in recent.items():
                self._hold(wid, cloud, need)
                self._reserved_at[wid] = at  # the grace period runs from the reservation, not the rebuild
            self._rebuilt_at = time.monotonic()

    def rebuild_every(self, seconds: float) -> None:
        """``rebuild`` if the last one is older than ``seconds`` (the loops call this each pass)."""
        if time.monotonic() - self._rebuilt_at > seconds:
            self.rebuild()

    def refresh(self) -> None:
        """Ask every backend what it offers now, outside any lock or transaction (a remote one may
        be slow): placement then reads only these answers."""
        for name, backend in self.backends.items():
            if time.monotonic() - self._offered.get(name, (-1e9, None))[0] <= CAPACITY_TTL_S:
                continue
            try:
                offered = (backend.capacity(), backend.offerings()[:1], backend.capabilities())
            except Exception as exc:  # noqa: BLE001 - one backend's trouble must not stop the others
                log.warning("cloud %s did not say what it offers: %s", name, exc)
                if name in self._offered:  # keep the last answer, asked again at the next refresh
                    continue
                config = backend.inner.config if hasattr(backend.inner, "config") else None
                offered = ({"cpus": 0.0, "memory_gb": 0.0}, [config.offering()] if config else [], Capabilities())
                self._offered[name] = (-1e9, offered)
                continue
            self._offered[name] = (time.monotonic(), offered)

    def _facts(self, name: str) -> tuple[dict[str, float], list[Offering], Capabilities]:
        if name not in self._offered:
            self.refresh()
        return self._offered[name][1]

    def free(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return self._free_locked()

    def _free_locked(self) -> dict[str, dict[str, float]]:
        return {name: self._free_on(name) for name in self.backends}

    def _free_on(self, cloud: str) -> dict[str, float]:
        cap, used = self.capacity(cloud), self._used.get(cloud, (0.0, 0.0))
        return {"cpus": cap["cpus"] - used[0], "memory_gb": cap["memory_gb"] - used[1]}

    def _hold(self, workload_id: str, cloud: str, need: Need) -> None:
        self._drop(workload_id)
        self._held[workload_id] = (cloud, need)
        cpus, mem = self._used.get(cloud, (0.0, 0.0))
        self._used[cloud] = (cpus + need.cpus, mem + need.memory_gb)

    def _drop(self, workload_id: str) -> None:
        self._reserved_at.pop(workload_id, None)
        old = self._held.pop(workload_id, None)
        if old is not None:
            cpus, mem = self._used[old[0]]
            self._used[old[0]] = (cpus - old[1].cpus, mem - old[1].memory_gb)

    def capacity(self, name: str) -> dict[str, float]:
        """A cloud's total capacity, as its backend said at the last refresh."""
        return self._facts(name)[0]

    def offering(self, name: str) -> Offering:
        return self._facts(name)[1][0]

    def capabilities(self, name: str) -> Capabilities:
        return self._facts(name)[2]

    @contextmanager
    def tentative(self) -> Iterator[None]:
        """Reservations made in this block are undone if it raises (e.g. the transaction that
        writes their intent fails to commit): the ledger never holds what no row records."""
        made: list[str] = []
        self._local.made = made
        try:
            yield
        except BaseException:
            for wid in made:
                self.release(wid)
            raise
        finally:
            self._local.made = None

    def reserve(self, workload_id: str, cloud: str, need: Need) -> str | None:
        """Hold ``need`` on ``cloud`` for ``workload_id``; None if it fits, else why not."""
        with self._lock:
            short = shortfall(cloud, self._free_on(cloud), need)
            if short is None:
                self._hold(workload_id, cloud, need)
                self._reserved_at[workload_id] = time.monotonic()
                if getattr(self._local, "made", None) is not None:
                    self._local.made.append(workload_id)
            return short

    def release(self, workload_id: str) -> None:
        with self._lock:
            self._drop(workload_id)

    def holds(self, workload_id: str) -> bool:
        with self._lock:
            return workload_id in self._held

    # -- cloud health -----------------------------------------------------------------------
    def healthy(self, name: str) -> bool:
        b = self.backends.get(name)
        return b is not None and not b.down and self._unhealthy_until.get(name, 0.0) <= time.time() and b.reachable()

    def healthy_clouds(self) -> frozenset[str]:
        return frozenset(n for n in self.backends if self.healthy(n))

    def mark(self, s: Session, name: str, *, healthy: bool, reason: str) -> None:
        """A cloud that fails to start a workload is unhealthy for a while, then tried again.
        Written through ``s``: the caller's transaction (SQLite has one writer at a time)."""
        if healthy and self._unhealthy_until.get(name, 0.0) == 0.0:
            return  # already healthy: no write
        self._unhealthy_until[name] = 0.0 if healthy else time.time() + CLOUD_RETRY_S
        self._ranked.clear()
        self._write_health(s, name, "healthy" if healthy else "unhealthy", "" if healthy else reason, reason)

    def _write_health(self, s: Session, name: str, state: str, shown: str, reason: str,
                      outage: bool | None = None) -> None:
        row = s.get(CloudRow, name)
        if row is None:
            return
        if outage is not None:
            row.outage = outage
        if row.health != state and (outage is not None or not self.backends[name].down):
            self.store.record(s, "cloud", name, row.health, state, reason)
            row.health, row.health_reason = state, shown

    def fail(self, name: str, reason: str) -> None:
        """An injected outage: starts are refused; the caller kills what runs there."""
        with self._outage_lock:
            self._outage_changes += 1
            self.backends[name].fail()
            self._ranked.clear()
            with self.store.session() as s:
                self._write_health(s, name, "unhealthy", reason, reason, outage=True)

    def outage_changes(self) -> int:
        """Taken before reading the store's outages, for ``sync_outages``. Under the lock: a count
        taken while a fail or recover is still writing its row would pair with a read from before
        that write, and the sync would undo the change."""
        with self._outage_lock:
            return self._outage_changes

    def sync_outages(self, outages: dict[str, bool], changes: int) -> None:
        """Injected outages as the store records them (another server may have failed or
        recovered a cloud): each backend's fault injector follows, unless this server failed or
        recovered one since ``changes`` was taken (the read may predate it: the next sync reads it)."""
        with self._outage_lock:
            if self._outage_changes != changes:
                return
            for name, down in outages.items():
                backend = self.backends.get(name)
                if backend is not None and backend.down != down:
                    backend.fail() if down else backend.recover()
                    self._ranked.clear()

    def recover(self, name: str) -> None:
        with self._outage_lock:
            self._outage_changes += 1
            self.backends[name].recover()
            self._unhealthy_until[name] = 0.0
            self._ranked.clear()
            with self.store.session() as s:
                self._write_health(s, name, "healthy", "", "recovered", outage=False)

    # -- ranking ----------------------------------------------------------------------------
    def rank(self, names: Iterable[str], need: Need, *, spot: bool = False,
             caps: dict[str, int] | None = None, moves: Moves | None = None) -> tuple[list[str], str]:
        """Healthy clouds among ``names``, best first by the optimizer's score (price, latency,
        and the one-time cost of ``moves``: what bringing the workload's data to a cloud costs,
        with what it is), with at most ``caps[cloud]`` more replicas where given; and the
        optimizer's explanation. Remembered for a moment: a pass places many alike replicas, and
        health changes forget it."""
        healthy = [n for n in sorted(set(names)) if self.healthy(n)]
        if not healthy:
            return [], ""
        key = (tuple(healthy), need, spot, tuple(sorted(caps.items())) if caps is not None else None,
               tuple(sorted((moves or {}).items())))
        now = time.monotonic()
        cached = self._ranked.get(key)
        if cached is not None and now - cached[0] < RANK_TTL_S:
            return list(cached[1]), cached[2]
        order, why = self._rank(healthy, need, spot, caps, moves or {})
        if len(self._ranked) > 1000:
            self._ranked.clear()
        self._ranked[key] = (now, order, why)
        return list(order), why

    def _rank(self, healthy: list[str], need: Need, spot: bool, caps: dict[str, int] | None,
              moves: Moves) -> tuple[list[str], str]:
        observed, failing = self.observed_latency(), self.observed_failure_rate()
        offerings = [self.offering(n) for n in healthy]
        request = PlacementRequest(cpus=need.cpus, memory_gb=need.memory_gb, replicas=1,
                                   constraints=Constraints(spot_share=1.0 if spot else 0.0))

        def state(n: str, most: int | None) -> CloudState:
            dollars, note = moves.get(n, (0.0, ""))
            return CloudState(max_replicas=most, observed_latency_ms=observed.get(n), one_time_cost=dollars,
                              one_time_note=note, failure_rate=failing.get(n, 0.0))

        states = {n: state(n, None if caps is None else max(0, caps.get(n, 0))) for n in healthy}
        plan = optimize(request, offerings, states)
        if not plan.feasible and caps is not None:  # the spread cap is full everywhere: any healthy cloud
            plan = optimize(request, offerings, {k: v.model_copy(update={"max_replicas": None}) for k, v in states.items()})
        chosen = [p.cloud for p in plan.placements]
        rest = optimize(PlacementRequest(cpus=need.cpus, memory_gb=need.memory_gb, replicas=len(healthy),
                                         constraints=Constraints(spot_share=1.0 if spot else 0.0)),
                        offerings, {n: state(n, 1) for n in healthy})
        ranked = [p.cloud for p in sorted(rest.placements, key=lambda p: (p.score, p.cloud))]
        order = chosen + [n for n in ranked + healthy if n not in chosen]
        order = list(dict.fromkeys(order))
        why = ""
        if plan.placements:
            p = plan.placements[0]
            why = f"${p.price_per_hour:.4f}/h, score {p.score:.4f}"
            if p.one_time_cost > 0 or p.note:
                why += f", ${p.one_time_cost:.4f} once to {p.note}"
            alt = next((x for x in plan.rejected if x.cloud in healthy), None)
            if alt is not None:
                why += f"; next best {alt.cloud}: {alt.reason}"
            bad = sorted((n, r) for n, r in failing.items() if n in healthy and r >= NOTED_FAILURE_RATE)
            if bad:
                why += "; failing requests: " + ", ".join(f"{n} {r:.0%}" for n, r in bad)
        return order, why

    def choose(self, workload_id: str, need: Need, allowed: Iterable[str], *, spot: bool = False,
               caps: dict[str, int] | None = None, only: str | None = None, last: str | None = None,
               moves: Moves | None = None, prefer: str | None = None) -> Choice:
        """The best cloud with room for ``need``, its capacity reserved for ``workload_id``.
        ``last`` (the cloud that just lost this workload) goes to the back of the line; ``prefer``
        (healthy and allowed) to the front."""
        allowed = list(allowed)
        why_not = []
        if need.egress:
            closed = sorted(n for n in allowed if n in self.backends and not self.capabilities(n).egress)
            why_not += [f"{n}: allows no egress (clouds.yaml `egress: true`)" for n in closed]
            allowed = [n for n in allowed if n not in closed]
        why_not += [f"{n}: unhealthy" for n in sorted(allowed) if n in self.backends and not self.healthy(n)]
        order, why = self.rank(allowed, need, spot=spot, caps=caps, moves=moves)
        if caps is not None:  # within the spread cap first: over it only where nothing else has room
            order = [n for n in order if caps.get(n, 0) > 0] + [n for n in order if caps.get(n, 0) <= 0]
        if only is not None and only in order:
            order = [only]
        if prefer is not None and prefer in order:
            order = [prefer] + [n for n in order if n != prefer]
        if last is not None and last in order and len(order) > 1:
            order = [n for n in order if n != last] + [last]
        for name in order:
            short = self.reserve(workload_id, name, need)
            if short is None:
                return Choice(name, why if name == order[0] else "", why_not)
            why_not.append(short)
        return Choice(None, "", why_not or ["no cloud allowed"])

    def spot_ok(self, name: str) -> bool:
        """Whether ``name`` sells spot capacity and has some now (a reclaim may have taken it)."""
        backend = self.backends.get(name)
        return backend is not None and self.healthy(name) and self._facts(name)[2].spot and backend.spot_available()

    def spread_caps(self, allowed: list[str], replicas: int, per_cloud: dict[str, int]) -> dict[str, int]:
        """How many more replicas each allowed cloud may take under the spread rule, counted over
        the healthy ones (a cloud that is down takes none)."""
        most = max_per_cloud([n for n in allowed if self.healthy(n)] or allowed, replicas)
        return {n: most - per_cloud.get(n, 0) for n in allowed}


def max_per_cloud(clouds: list[str], replicas: int) -> int:
    """The spread rule over ``clouds`` (see fermion.placement.spread_cap): at most half of a
    deployment's replicas on one cloud, or as even a spread as too few clouds allow."""
    return spread_cap(replicas, len(clouds))


def shortfall(cloud: str, free: dict[str, float], need: Need) -> str | None:
    """Why ``need`` does not fit in ``free`` on ``cloud``, or None if it fits."""
    if free["cpus"] + 1e-9 < need.cpus or free["memory_gb"] + 1e-9 < need.memory_gb:
        return f"{cloud}: {max(free['cpus'], 0):g} cpus / {max(free['memory_gb'], 0):g} GB free"
    return None

