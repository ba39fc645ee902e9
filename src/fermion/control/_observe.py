"""Observing workloads: every backend status and health probe of a pass, concurrently, with no
database session open."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import httpx

from .._unix import ReplicaHTTP

from ..backends import Backend, Handle
from ._planner import Observation

log = logging.getLogger("fermion.controller")
PROBE_TIMEOUT_S = 1.0


class Observer:
    """Asks backends about workloads and probes replicas' /healthz, many at a time."""

    def __init__(self, workers: int = 16) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fermion-observe")
        self._closed = False
        self._http = ReplicaHTTP(PROBE_TIMEOUT_S, max_connections=workers * 2)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def observe_all(self, items: list[tuple[str, Backend | None, Handle]], *,
                    probe: bool) -> dict[str, Observation]:
        """``(workload id, its backend, its handle)`` → what each is doing now."""
        if not items:
            return {}
        futures = {wid: self._pool.submit(self.observe, backend, handle, probe=probe) for wid, backend, handle in items}
        out = {}
        for wid, future in futures.items():
            try:
                out[wid] = future.result()
            except Exception:  # noqa: BLE001 - one backend's bug must not blind the pass to the others
                log.exception("observing %s failed", wid)
        return out

    def observe(self, backend: Backend | None, handle: Handle, *, probe: bool) -> Observation:
        if backend is None:  # its cloud left clouds.yaml: nobody can reach it any more
            return Observation(alive=False, lost=True, note="its cloud is no longer configured")
        status = backend.status(handle)
        if not status.alive:
            last = "" if status.lost else last_telling_line(backend.logs(handle, tail=40))
            return Observation(alive=False, url=status.url, exit_code=status.exit_code, note=status.note,
                               lost=status.lost, last_line=last)
        health = None
        if status.ready is not None:
            health = "ready" if status.ready else None
        elif probe and status.url:
            try:
                health = self._http.get(f"{status.url}/healthz").json().get("status")
            except (httpx.HTTPError, ValueError, AttributeError):
                health = None
        return Observation(alive=True, url=status.url, health=health)


def last_telling_line(text: str) -> str:
    """The line of a log that most likely says why the workload ended."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower() or "cannot" in ln.lower()]
    return (errors or lines or [""])[-1]

