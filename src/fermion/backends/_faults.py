"""Fault injection as a wrapper that any backend gets for free: an outage, refused starts, added
latency and spot reclaims, declared in clouds.yaml (``inject:``) or switched on by `fermion cloud fail`."""

from __future__ import annotations

import time

from ..clouds import Injected
from ..placement import Offering
from ._protocol import Backend, Capabilities, Handle, NoSpotCapacity, ProvisionError, Status, Workload

RECLAIM_KEY = "fault_reclaim_at"  # kept in the handle, so a restarted server still reclaims on time


class FaultInjector:
    """``inner`` with the faults of ``inject``; ``fail()`` takes the whole cloud down."""

    def __init__(self, inner: Backend, inject: Injected | None = None, *, down: bool = False) -> None:
        self.inner = inner
        self.inject = inject or Injected()
        self.name, self.kind = inner.name, inner.kind
        self.down = down
        self._reclaimed: set[str] = set()
        self._no_spot_until = 0.0  # a reclaim takes the cloud's spot capacity away for a while

    def offerings(self) -> list[Offering]:
        return self.inner.offerings()

    def capacity(self) -> dict[str, float]:
        return self.inner.capacity()

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    def spot_available(self) -> bool:
        """Whether a spot start would be accepted now (the inner backend sells spot at all, and no
        reclaim has taken the capacity away)."""
        return not self.down and time.time() >= self._no_spot_until

    def reachable(self) -> bool:
        """Whether what runs the cloud can be reached now: an agent cloud's agent has dialled in
        lately (any other kind: always, until it fails a start)."""
        connected = getattr(self.inner, "connected", None)
        return bool(connected()) if callable(connected) else True

    def fail(self) -> None:
        """An outage: starts are refused and every workload reads as lost (the caller stops them)."""
        self.down = True

    def recover(self) -> None:
        self.down = False

    def start(self, workload: Workload) -> Handle:
        if self.down:
            raise ProvisionError(f"cloud {self.name} is down (injected outage)")
        if workload.spot and not self.spot_available():
            raise NoSpotCapacity(f"cloud {self.name} has no spot capacity now (reclaimed; injected)")
        if self.inject.fail_start:
            raise ProvisionError(f"cloud {self.name} refused to start the {'replica' if workload.kind == 'replica' else 'attempt'} "
                                 "(injected fail_start)")
        if self.inject.latency_ms and workload.kind == "replica":
            workload.env = {**workload.env, "FERMION_INJECT_LATENCY_MS": f"{self.inject.latency_ms:g}"}
        handle = self.inner.start(workload)
        if workload.spot and self.inject.spot_preempt_after_s is not None:
            handle = {**handle, RECLAIM_KEY: time.time() + self.inject.spot_preempt_after_s}
        return handle

    def status(self, handle: Handle) -> Status:
        status = self.inner.status(handle)
        if self.down and not status.alive:
            return Status(alive=False, url=status.url, lost=True, note=f"cloud {self.name} failed")
        reclaim_at = handle.get(RECLAIM_KEY)
        if reclaim_at is None or time.time() < float(reclaim_at):
            return status
        if status.alive:
            self.inner.stop(handle, force=True)
            self._reclaimed.add(str(handle["id"]))
            if self.inject.spot_unavailable_s:
                self._no_spot_until = max(self._no_spot_until, time.time() + self.inject.spot_unavailable_s)
            return Status(alive=False, lost=True, note=f"spot capacity reclaimed on {self.name}")
        if str(handle["id"]) in self._reclaimed or status.exit_code is None or status.exit_code < 0:
            # killed by the reclaim (also as seen by a restarted server: no code, or a signal's)
            return Status(alive=False, lost=True, note=f"spot capacity reclaimed on {self.name}")
        return status

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        self.inner.stop(handle, force=force)

    def logs(self, handle: Handle, tail: int = 200) -> str:
        return self.inner.logs(handle, tail)

    def list_workloads(self) -> list[Handle]:
        return self.inner.list_workloads()  # also in an outage: its processes may still run

    def close(self) -> None:
        self.inner.close()
