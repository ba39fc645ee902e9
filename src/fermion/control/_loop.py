"""A reconcile loop: ``tick()`` every interval on a thread of its own."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("fermion.controller")


class ReconcileLoop:
    interval_s: float = 0.25

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one tick at a time (the loop, or an API-triggered action)
        self._nudged = threading.Event()

    def nudge(self) -> None:
        """Run the next tick now rather than after the interval (e.g. a request waits for a replica)."""
        self._nudged.set()

    def next_interval(self) -> float:
        """Seconds until the next tick; a loop may go faster while something it watches is changing."""
        return self.interval_s

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        # a fresh event per start: a loop thread of an earlier start that outlived its stop's join
        # still sees its own event set, and ends after its tick
        self._stop = threading.Event()
        self.tick()  # settle (re-adopt, publish) before the first request arrives
        self._thread = threading.Thread(target=self._loop, args=(self._stop,), name=f"fermion-{type(self).__name__}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._nudged.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self, stop: threading.Event) -> None:
        while True:
            self._nudged.wait(self.next_interval())
            self._nudged.clear()
            if stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # a bad tick must not kill the control loop
                log.exception("%s tick failed", type(self).__name__)
