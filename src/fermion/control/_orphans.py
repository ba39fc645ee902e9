"""Workloads no database row knows: what a lost, replaced or restored-from-an-older-backup
database leaves running. Nothing would ever stop them, route to them or count their capacity, so
they are stopped, each named in the log and recorded as an event."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy import select

from ..backends import Backend, Handle
from ..store import AttemptRow, ReplicaRow, Store

log = logging.getLogger("fermion.controller")


def known_workloads(store: Store) -> set[str]:
    """The ids of every replica and job attempt a row knows, in any state."""
    with store.session() as s:
        return set(s.scalars(select(ReplicaRow.id))) | set(s.scalars(select(AttemptRow.id)))


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
