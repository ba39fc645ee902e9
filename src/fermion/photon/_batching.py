"""Adaptive batching: concurrent calls of one handler are merged into one call."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

BatchCall = Callable[[list[Any]], Awaitable[list[Any]]]


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future[list[Any]] = field(repr=False)


class Batcher:
    """Gathers calls into batches of at most ``max_size`` items, waiting at most ``max_wait_s``.

    One batch runs at a time (the model is the bottleneck); calls arriving meanwhile queue up
    and form the next batch, so batches grow with load. A call larger than ``max_size`` runs
    as a batch of its own. When a merged batch fails, each call in it is retried alone so an
    error reaches only the caller whose input caused it.
    """

    def __init__(
        self,
        call: BatchCall,
        *,
        max_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._call = call
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._queued_items = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: list[Any]) -> list[Any]:
        """Queue ``items`` for the next batch and wait for their results."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        pending = _Pending(list(items), loop.create_future())
        self._pending.append(pending)
        self._queued_items += len(pending.items)
        self._wakeup.set()
        return await pending.future

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
            deadline = loop.time() + self._max_wait_s
            while self._queued_items < self._max_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            await self._execute(self._take_batch())

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

    async def _execute(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        flat = [item for p in batch for item in p.items]
        try:
            results = await self._call_checked(flat)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc=exc)
                return
            for p in batch:  # isolate the failing caller
                await self._execute([p])
            return
        offset = 0
        for p in batch:
            _settle(p, result=results[offset : offset + len(p.items)])
            offset += len(p.items)

    async def _call_checked(self, flat: list[Any]) -> list[Any]:
        if self._on_batch is not None:
            self._on_batch(len(flat))
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
