"""Adaptive batching: concurrent calls of one handler are merged into one call."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FermionError

BatchCall = Callable[[list[Any]], Awaitable[list[Any]]]
COST_WINDOW = 64  # recent batches the cost fit looks at
RATE_WINDOW_S = 1.0  # arrivals this recent set the arrival rate


class BatchOverloaded(FermionError):
    """A call would finish past the handler's ``max_latency_ms``: refused before it runs."""

    http_status = 503


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future[list[Any]] = field(repr=False)
    since: float = 0.0


class BatchCost:
    """What a batch of ``n`` items costs, fitted as ``seconds = per_item * n + fixed`` by least
    squares over the last batches (BentoML's model of a batch); refitted at each batch."""

    def __init__(self, window: int = COST_WINDOW) -> None:
        self._seen: deque[tuple[int, float]] = deque(maxlen=window)
        self.per_item = 0.0
        self.fixed = 0.0

    @property
    def known(self) -> bool:
        return bool(self._seen)

    def observe(self, n: int, seconds: float) -> None:
        self._seen.append((n, seconds))
        count = len(self._seen)
        mean_n = sum(n for n, _ in self._seen) / count
        mean_s = sum(s for _, s in self._seen) / count
        var_n = sum((n - mean_n) ** 2 for n, _ in self._seen)
        if var_n == 0:  # batches all of one size tell the sum only: take it as fixed, so that
            # a larger batch is not judged too slow (and its calls refused) before one has run
            self.per_item, self.fixed = 0.0, mean_s
            return
        slope = sum((n - mean_n) * (s - mean_s) for n, s in self._seen) / var_n
        self.per_item = max(slope, 0.0)
        self.fixed = max(mean_s - self.per_item * mean_n, 0.0)

    def predict(self, n: int) -> float:
        return self.per_item * n + self.fixed


class Batcher:
    """Gathers calls into batches of at most ``max_size`` items, waiting at most ``max_wait_s``.

    One batch runs at a time (the model is the bottleneck); calls arriving meanwhile queue up
    and form the next batch, so batches grow with load. The wait adapts: a batch goes at once
    when no further call is expected before its deadline (from the recent arrival rate), and
    never waits longer than a batch's fitted fixed cost, the most a wait can save. With
    ``max_latency_s``, a call that would finish later than that (from the fitted cost of the
    batches ahead of it) is refused with ``BatchOverloaded`` instead of queued (never when the
    batcher is idle), and a batch leaves early enough for its oldest call to make it. A call larger than ``max_size`` runs
    as a batch of its own. When a merged batch fails, each call in it is retried alone so an
    error reaches only the caller whose input caused it.
    """

    def __init__(
        self,
        call: BatchCall,
        *,
        max_size: int,
        max_wait_s: float,
        max_latency_s: float | None = None,
        on_batch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        self._call = call
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._max_latency_s = max_latency_s
        self._on_batch = on_batch  # (items, seconds its oldest call waited, seconds it ran)
        self.cost = BatchCost()
        self._arrivals: deque[float] = deque(maxlen=4 * max_size)
        self._pending: deque[_Pending] = deque()
        self._queued_items = 0
        self._busy_until = 0.0  # when the running batch should end, by the fit
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: list[Any]) -> list[Any]:
        """Queue ``items`` for the next batch and wait for their results."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        now = loop.time()
        # with nothing queued or running a call always goes: refusing it would also stop the fit
        # from learning that batches got cheaper again (one slow batch would refuse all for ever)
        idle = not self._pending and self._busy_until == 0.0
        if self._max_latency_s is not None and not idle:
            expected = self._expected_finish(len(items), now)
            if expected > self._max_latency_s:
                raise BatchOverloaded(
                    f"over capacity: this call would be answered in about {expected * 1000:.0f} ms, past the "
                    f"handler's max_latency_ms of {self._max_latency_s * 1000:g}; retry shortly")
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        pending = _Pending(list(items), loop.create_future(), now)
        self._arrivals.append(now)
        self._pending.append(pending)
        self._queued_items += len(pending.items)
        self._wakeup.set()
        return await pending.future

    def _expected_finish(self, n: int, now: float) -> float:
        """Seconds until a call of ``n`` items queued now would be answered, by the fit."""
        if not self.cost.known:
            return 0.0
        ahead = self._queued_items + n
        full, rest = divmod(ahead, self._max_size)
        batches = full * self.cost.predict(self._max_size) + (self.cost.predict(rest) if rest else 0.0)
        return max(self._busy_until - now, 0.0) + batches

    def arrival_rate(self, now: float) -> float:
        """Calls per second over the last ``RATE_WINDOW_S`` (0 with fewer than two)."""
        recent = [t for t in self._arrivals if now - t <= RATE_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def _deadline(self, oldest: float, now: float) -> float:
        """When the batch being gathered must leave at the latest."""
        wait = self._max_wait_s
        if self.cost.fixed > 0:
            wait = min(wait, self.cost.fixed)  # waiting longer than a batch's fixed cost cannot pay for itself
        deadline = oldest + wait
        if self._max_latency_s is not None and self.cost.known:
            # leave while the oldest call can still be answered in time
            deadline = min(deadline, oldest + self._max_latency_s - self.cost.predict(self._queued_items + 1))
        rate = self.arrival_rate(now)
        if rate * (deadline - now) < 1:
            return now  # nobody else is likely to come in time: go
        return deadline

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for p in self._pending:
            if not p.future.done():
                p.future.cancel()

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            while self._queued_items < self._max_size and self._pending:
                remaining = self._deadline(self._pending[0].since, loop.time()) - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if batch:
                waited = loop.time() - batch[0].since
                size = sum(len(p.items) for p in batch)
                started = loop.time()
                self._busy_until = started + self.cost.predict(size)
                merged = await self._execute(batch)
                ran = loop.time() - started
                if merged:  # a failed batch retried call by call says nothing of a batch's cost
                    self.cost.observe(size, ran)
                self._busy_until = 0.0
                if self._on_batch is not None:
                    self._on_batch(size, waited, ran)

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        total = 0
        while self._pending:
            nxt = self._pending[0]
            if batch and total + len(nxt.items) > self._max_size:
                break
            self._pending.popleft()
            self._queued_items -= len(nxt.items)
            if nxt.future.done():  # the caller gave up (timeout, disconnect)
                continue
            batch.append(nxt)
            total += len(nxt.items)
        return batch

    async def _execute(self, batch: list[_Pending]) -> bool:
        """Run ``batch`` and settle its calls; whether it ran as one call."""
        flat = [item for p in batch for item in p.items]
        try:
            results = await self._call_checked(flat)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc=exc)
                return False
            for p in batch:  # isolate the failing caller
                await self._execute([p])
            return False
        offset = 0
        for p in batch:
            _settle(p, result=results[offset : offset + len(p.items)])
            offset += len(p.items)
        return True

    async def _call_checked(self, flat: list[Any]) -> list[Any]:
        results = await self._call(flat)
        if not isinstance(results, list | tuple) or len(results) != len(flat):
            got = len(results) if isinstance(results, list | tuple) else type(results).__name__
            raise TypeError(f"batched handler returned {got} results for {len(flat)} inputs")
        return list(results)


def _settle(p: _Pending, *, result: list[Any] | None = None, exc: BaseException | None = None) -> None:
    if p.future.done():
        return
    if exc is not None:
        p.future.set_exception(exc)
    else:
        p.future.set_result(result or [])
