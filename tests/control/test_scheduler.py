"""The scheduler's capacity ledger, health and ranking, over instant-start backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from fermion.backends import FaultInjector
from fermion.control import Need, Scheduler
from fermion.store import CloudRow, Store
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


def test_a_sync_from_a_read_before_an_outage_does_not_undo_it(scheduler: Scheduler) -> None:
    """The loop reads the store's outages, then an API call fails a cloud, then the loop syncs what
    it read: the cloud stays down (its killed workloads read as lost, not as their own failures),
    and the next sync, from a fresh read, agrees. Another server's outage still reaches this one."""
    def read() -> tuple[dict[str, bool], int]:
        changes = scheduler.outage_changes()
        with scheduler.store.session() as s:
            return {row.name: bool(row.outage) for row in s.scalars(select(CloudRow))}, changes

    with scheduler.store.session() as s:  # the rows a server writes for its clouds
        s.add_all([CloudRow(name=name, kind="local", config={}) for name in ("cheap", "dear")])
    stale, changes = read()
    scheduler.fail("cheap", "injected outage")
    scheduler.sync_outages(stale, changes)
    assert scheduler.backends["cheap"].down and scheduler.rank(["cheap", "dear"], Need())[0] == ["dear"]
    scheduler.sync_outages(*read())
    assert scheduler.backends["cheap"].down
    with scheduler.store.session() as s:  # as another server sharing the database records one
        s.get(CloudRow, "dear").outage = True
    scheduler.sync_outages(*read())
    assert scheduler.backends["dear"].down


def test_the_outage_count_is_not_read_while_an_outage_is_being_written(scheduler: Scheduler) -> None:
    """A count read between a fail's count and its row's commit, then the store read (still without
    the outage), made a sync that recovered the cloud: a second server's test saw a replacement
    replica placed on the failed cloud."""
    with scheduler.store.session() as s:
        s.add_all([CloudRow(name=name, kind="local", config={}) for name in ("cheap", "dear")])
    writing, release = threading.Event(), threading.Event()
    write = scheduler._write_health

    def slow_write(*args: object, **kwargs: object) -> None:
        writing.set()
        release.wait(30)
        write(*args, **kwargs)

    scheduler._write_health = slow_write  # type: ignore[method-assign]
    failing = threading.Thread(target=scheduler.fail, args=("cheap", "injected outage"))
    failing.start()
    assert writing.wait(30)
    seen: list[tuple[int, bool]] = []

    def sync_read() -> None:
        changes = scheduler.outage_changes()
        with scheduler.store.session() as s:
            seen.append((changes, bool(s.get(CloudRow, "cheap").outage)))

    reader = threading.Thread(target=sync_read)
    reader.start()
    reader.join(2)  # a count read without waiting for the write ends here, with the row not yet written
    release.set()
    failing.join(30)
    reader.join(30)
    (changes, outage), = seen
    scheduler.sync_outages({"cheap": outage, "dear": False}, changes)
    assert scheduler.backends["cheap"].down, "a sync undid the outage it was read during"


def test_clouds_within_the_spread_cap_come_before_cheaper_ones_over_it(scheduler: Scheduler) -> None:
    choice = scheduler.choose("w1", Need(1, 1), ["cheap", "dear"], caps={"cheap": 0, "dear": 1})
    assert choice.cloud == "dear"
    assert scheduler.choose("w2", Need(1, 1), ["cheap", "dear"], caps={"cheap": 0, "dear": 0}).cloud == "cheap"


def test_a_rebuild_keeps_reservations_whose_intent_is_being_written(scheduler: Scheduler) -> None:
    assert scheduler.choose("w1", Need(2, 1), ["cheap"]).cloud == "cheap"
    scheduler.rebuild()  # the store has no row for w1 yet: it is kept (for a grace period)
    assert scheduler.holds("w1") and scheduler.free()["cheap"]["cpus"] == 0


def test_the_spread_caps_put_three_replicas_on_three_healthy_clouds_one_each(tmp_path: Path) -> None:
    """As the controller places a deployment's replicas: one by one, within the spread caps. Three
    healthy clouds take one each, however cheap one is; with one down, the two left take 2 and 1."""
    store = Store(f"sqlite:///{tmp_path / 'fermion.db'}")
    backends = {n: InstantBackend(n, cpus=8, memory_gb=8, price=price)
                for n, price in (("cheap", 0.05), ("mid", 0.3), ("dear", 0.9))}
    scheduler = Scheduler(store, {n: FaultInjector(b) for n, b in backends.items()})
    allowed = sorted(backends)

    def place(deployment: str, replicas: int) -> dict[str, int]:
        per_cloud: dict[str, int] = {}
        for i in range(replicas):
            caps = scheduler.spread_caps(allowed, replicas, per_cloud)
            cloud = scheduler.choose(f"{deployment}-{i}", Need(1, 1), allowed, caps=caps).cloud
            assert cloud is not None
            per_cloud[cloud] = per_cloud.get(cloud, 0) + 1
        return per_cloud

    try:
        assert place("three", 3) == {"cheap": 1, "mid": 1, "dear": 1}
        assert place("four", 4) == {"cheap": 2, "mid": 2}  # half of four: two
        scheduler.fail("dear", "injected outage")
        assert place("after", 3) == {"cheap": 2, "mid": 1}  # two clouds left: as even as they allow
    finally:
        for b in backends.values():
            b.close()
        store.close()
