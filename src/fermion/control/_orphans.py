"""Workloads nothing manages: those no database row knows (what a lost, replaced or restored-from-
an-older-backup database leaves running), and those on a cloud dropped from clouds.yaml. Nothing
would ever stop them, route to them or count their capacity, so they are stopped, each named in
the log (and, for the first kind, recorded as an event)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping

from sqlalchemy import select

from ..backends import Backend, Handle
from ..clouds import CloudConfig
from ..store import LIVE_ATTEMPT_STATES, TERMINAL_STATES, AttemptRow, CloudRow, ReplicaRow, Store

log = logging.getLogger("fermion.controller")


def known_workloads(store: Store) -> set[str]:
    """The ids of every replica and job attempt a row knows, in any state."""
    with store.session() as s:
        return set(s.scalars(select(ReplicaRow.id))) | set(s.scalars(select(AttemptRow.id)))


def wanted_workloads(store: Store, ids: Iterable[str], cloud: str) -> set[str]:
    """Of ``ids``, running on ``cloud``, the workloads the server still wants there: replicas whose
    row is not terminal and attempts whose row is live, on that cloud. Any other one is a leftover
    (replaced while its cloud was out of reach, stopped then, or a start given up on and placed
    elsewhere since) and is to be stopped."""
    ids, wanted = sorted(set(ids)), set()
    with store.session() as s:
        for start in range(0, len(ids), 500):  # a bounded IN list: databases cap their parameters
            batch = ids[start:start + 500]
            wanted |= set(s.scalars(select(ReplicaRow.id).where(
                ReplicaRow.id.in_(batch), ReplicaRow.cloud == cloud, ReplicaRow.state.not_in(TERMINAL_STATES))))
            wanted |= set(s.scalars(select(AttemptRow.id).where(
                AttemptRow.id.in_(batch), AttemptRow.cloud == cloud, AttemptRow.state.in_(LIVE_ATTEMPT_STATES))))
    return wanted


def stop_orphans(store: Store, backends: Mapping[str, Backend]) -> list[tuple[str, str]]:
    """Stop every workload a backend runs that no replica or attempt row knows; the (cloud, id)
    pairs stopped. One backend's error is logged and does not stop the others, nor the server."""
    try:
        return _stop_orphans(store, backends)
    except Exception:  # noqa: BLE001 - a failed sweep must not keep the controllers from running
        log.exception("looking for workloads no database row knows failed")
        return []


def _stop_orphans(store: Store, backends: Mapping[str, Backend]) -> list[tuple[str, str]]:
    # the rows before and after the listing: a row written since (intent comes before a start) or
    # deleted since (a deployment removed once its replicas ended) is known either way
    before = known_workloads(store)
    running: dict[str, list[Handle]] = {}
    for cloud, backend in backends.items():
        try:
            running[cloud] = backend.list_workloads()
        except Exception as exc:  # noqa: BLE001 - a cloud that cannot list now is looked at next start
            log.warning("cannot list the workloads of cloud %s to find orphans: %s", cloud, exc)
    known = before | known_workloads(store)
    stopped = []
    for cloud, handles in running.items():
        for handle in handles:
            wid = str(handle["id"])
            if wid in known:
                continue
            try:
                backends[cloud].stop(handle, force=True)
            except Exception as exc:  # noqa: BLE001
                log.error("workload %s on cloud %s runs with no database row, and stopping it failed: %s",
                          wid, cloud, exc)
                continue
            reason = (f"on cloud {cloud}: no database row knows it (the database was lost, replaced or restored "
                      "from an older backup), so nothing would manage it; stopped")
            log.warning("stopped workload %s %s", wid, reason)
            with store.session() as s:
                store.record(s, "orphan", wid, "running", "stopped", reason)
            stopped.append((cloud, wid))
    return stopped


def stop_on_retired_clouds(store: Store, configured: Collection[str],
                           open_backend: Callable[[CloudConfig], Backend]) -> list[tuple[str, str]]:
    """Stop the live workloads of clouds dropped from (or renamed in) clouds.yaml, through a backend
    opened from the configuration their cloud's row kept: the controllers replace them on a cloud
    that is configured, and without this the old processes would run on, unmanaged. The (cloud,
    id) pairs stopped."""
    try:
        with store.session() as s:
            rows = [(r.cloud, r.id, r.handle) for r in s.scalars(select(ReplicaRow).where(
                ReplicaRow.cloud.not_in(list(configured)), ReplicaRow.state.not_in(TERMINAL_STATES)))]
            rows += [(a.cloud, a.id, a.handle) for a in s.scalars(select(AttemptRow).where(
                AttemptRow.cloud.not_in(list(configured)), AttemptRow.state.in_(LIVE_ATTEMPT_STATES)))]
            configs = {c.name: c.config for c in s.scalars(select(CloudRow).where(
                CloudRow.name.in_({cloud for cloud, _, _ in rows if cloud})))}
    except Exception:  # noqa: BLE001 - a failed sweep must not keep the controllers from running
        log.exception("looking for workloads on clouds no longer configured failed")
        return []
    stopped = []
    for cloud in sorted({c for c, _, _ in rows if c in configs}):
        try:
            backend = open_backend(CloudConfig.model_validate(configs[cloud]))
        except Exception as exc:  # noqa: BLE001 - e.g. a Ray cluster gone with its cloud
            log.warning("cannot reach cloud %s, dropped from clouds.yaml, to stop its workloads: %s", cloud, exc)
            continue
        try:
            for _, wid, handle in (r for r in rows if r[0] == cloud):
                try:
                    backend.stop(handle or {"id": wid}, force=True)
                except Exception as exc:  # noqa: BLE001
                    log.error("stopping workload %s on cloud %s (no longer configured) failed: %s", wid, cloud, exc)
                    continue
                log.warning("stopped workload %s: its cloud %s is no longer configured", wid, cloud)
                stopped.append((cloud, wid))
        finally:
            backend.close()
    return stopped
