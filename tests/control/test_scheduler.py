"""The scheduler's capacity ledger, health and ranking, over instant-start backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fermion.backends import FaultInjector
from fermion.control import Need, Scheduler
from fermion.store import Store
from fermion.testing import InstantBackend


@pytest.fixture
def scheduler(db_url: str) -> Iterator[Scheduler]:
    store = Store(db_url)  # on SQLite and on PostgreSQL
    backends = {"cheap": InstantBackend("cheap", cpus=2, memory_gb=4, price=0.1),
                "dear": InstantBackend("dear", cpus=2, memory_gb=4, price=0.9)}
    yield Scheduler(store, {n: FaultInjector(b) for n, b in backends.items()})
    for b in backends.values():
        b.close()
    store.close()


def test_the_ledger_never_holds_more_than_a_cloud_has(scheduler: Scheduler) -> None:
    one = Need(1, 1)
    assert [scheduler.choose(f"w{i}", one, ["cheap", "dear"]).cloud for i in range(5)] == \
        ["cheap", "cheap", "dear", "dear", None]
    full = scheduler.choose("w9", one, ["cheap", "dear"])
    assert full.cloud is None and any("0 cpus" in w for w in full.why_not or [])
    scheduler.release("w0")
    assert scheduler.choose("w9", one, ["cheap", "dear"]).cloud == "cheap"
    assert scheduler.free()["cheap"] == {"cpus": 0, "memory_gb": 2}


def test_reservations_of_a_failed_write_are_undone(scheduler: Scheduler) -> None:
    with pytest.raises(RuntimeError), scheduler.tentative():
        assert scheduler.choose("w1", Need(2, 1), ["cheap"]).cloud == "cheap"
        raise RuntimeError("the intent's transaction did not commit")
    assert not scheduler.holds("w1") and scheduler.free()["cheap"]["cpus"] == 2


def test_an_outage_takes_a_cloud_out_of_the_ranking_until_it_recovers(scheduler: Scheduler) -> None:
    assert scheduler.rank(["cheap", "dear"], Need())[0] == ["cheap", "dear"]
    scheduler.fail("cheap", "injected outage")
    assert scheduler.rank(["cheap", "dear"], Need())[0] == ["dear"]
    scheduler.recover("cheap")
    assert scheduler.rank(["cheap", "dear"], Need())[0] == ["cheap", "dear"]


def test_clouds_within_the_spread_cap_come_before_cheaper_ones_over_it(scheduler: Scheduler) -> None:
    choice = scheduler.choose("w1", Need(1, 1), ["cheap", "dear"], caps={"cheap": 0, "dear": 1})
    assert choice.cloud == "dear"
    assert scheduler.choose("w2", Need(1, 1), ["cheap", "dear"], caps={"cheap": 0, "dear": 0}).cloud == "cheap"


def test_a_rebuild_keeps_reservations_whose_intent_is_being_written(scheduler: Scheduler) -> None:
    assert scheduler.choose("w1", Need(2, 1), ["cheap"]).cloud == "cheap"
    scheduler.rebuild()  # the store has no row for w1 yet: it is kept (for a grace period)
    assert scheduler.holds("w1") and scheduler.free()["cheap"]["cpus"] == 0
