"""One active controller among the servers on one store.

Every server serves the API and a gateway; one of them, the holder of the controller lease, runs
the reconcile loops. It renews the lease every second; when it dies, the lease expires and another
server takes it within ``LEASE_S`` plus one interval. A follower publishes the routing table from
the store instead, so its gateway (and the gateways that follow it) route like the leader's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..store import CONTROLLER_LEASE, ControllerLeaseRow, Store

log = logging.getLogger("fermion.leader")

LEASE_S = 6.0  # a leader that has not renewed for this long is gone: takeover within LEASE_S + INTERVAL_S
INTERVAL_S = 1.0


class Leadership:
    """Hold or follow the controller lease; ``on_lead`` / ``on_follow`` run on each change,
    ``follow_tick`` on every interval while following, and ``every_step`` on every interval."""

    def __init__(self, store: Store, owner: str, url: str, *, on_lead: Callable[[], None],
                 on_follow: Callable[[], None], follow_tick: Callable[[], None],
                 every_step: Callable[[], None] = lambda: None,
                 lease_s: float = LEASE_S, interval_s: float = INTERVAL_S) -> None:
        self.store, self.owner, self.url = store, owner, url
        self.on_lead, self.on_follow, self.follow_tick, self.every_step = on_lead, on_follow, follow_tick, every_step
        self.lease_s, self.interval_s = lease_s, interval_s
        self.leading = False
        self.settled = False  # whether its routing table is whole yet (a gateway ignores it until then)
        self._renewed_at = 0.0  # monotonic time of the last renewal this server saw succeed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """One step now (a lone server leads before it serves), then one per interval."""
        try:
            with self.store.session() as s:
                if s.get(ControllerLeaseRow, CONTROLLER_LEASE) is None:
                    s.add(ControllerLeaseRow(name=CONTROLLER_LEASE))
        except IntegrityError:
            pass  # another server added it first
        self.step()
        self._thread = threading.Thread(target=self._loop, name="fermion-leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop; a leader stops its loops and frees the lease, so a follower takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        if self.leading:
            self.leading = False
            self._follow_safely()
            self._free_lease()

    def _free_lease(self) -> None:
        try:
            with self.store.session() as s:
                row = s.get(ControllerLeaseRow, CONTROLLER_LEASE)
                if row is not None and row.lease_owner == self.owner:
                    row.lease_owner, row.lease_until = None, 0.0
        except SQLAlchemyError:
            log.warning("could not free the controller lease; it expires in %.0f s", self.lease_s)

    def leader_url(self) -> str:
        """Where the leader's API answers ('' if no server holds the lease now)."""
        with self.store.session() as s:
            row = s.get(ControllerLeaseRow, CONTROLLER_LEASE)
            return row.url if row is not None and row.lease_until > time.time() else ""

    def step(self) -> None:
        try:
            held = self._claim()
        except SQLAlchemyError as exc:
            # the store is unreachable: keep leading only while the lease is surely still ours
            held = self.leading and time.monotonic() - self._renewed_at < self.lease_s - self.interval_s
            log.warning("cannot renew the controller lease (%s)%s", type(exc).__name__,
                        "" if held or not self.leading else "; stepping down")
        if held and not self.leading:
            log.warning("this server leads: it runs the controllers")
            try:
                self.on_lead()
            except Exception:  # noqa: BLE001 - e.g. the store failed mid-start: follow, and try again
                log.exception("starting the controllers failed; this server follows")
                self._follow_safely()
                self._free_lease()
            else:
                self.leading = self.settled = True
        elif not held and self.leading:
            log.warning("this server lost the controller lease: it follows")
            self.leading = False
            self._follow_safely()
        try:
            self.every_step()
            if not self.leading:
                self.follow_tick()
                self.settled = True
        except SQLAlchemyError as exc:
            log.warning("cannot read the routing table from the store (%s)", type(exc).__name__)

    def _follow_safely(self) -> None:
        try:
            self.on_follow()
        except Exception:  # noqa: BLE001 - the loops are stopped first; only releasing leases may fail
            log.exception("stopping the controllers did not finish cleanly")

    def _claim(self) -> bool:
        asked = time.monotonic()
        was = self.leading
        claimed = self.store.claim(ControllerLeaseRow, self.owner, self.lease_s,
                                   ControllerLeaseRow.name == CONTROLLER_LEASE) == 1
        if claimed:
            self._renewed_at = asked
            if not was:
                with self.store.session() as s:
                    row = s.get(ControllerLeaseRow, CONTROLLER_LEASE)
                    if row is not None and row.lease_owner == self.owner:
                        row.url, row.since = self.url, time.time()
        return claimed

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except Exception:  # noqa: BLE001 - a bad step must not end the election
                log.exception("leadership step failed")
