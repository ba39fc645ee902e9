"""The Batcher on its own, in one event loop."""

from __future__ import annotations

import asyncio

import pytest

from fermion.photon._batching import BatchCost, BatchOverloaded, Batcher


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_concurrent_calls_share_batches_and_keep_their_results() -> None:
    seen: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        seen.append(list(items))
        await asyncio.sleep(0.01)
        return [2 * x for x in items]

    async def main() -> list[list[int]]:
        batcher = Batcher(double, max_size=8, max_wait_s=0.05)
        results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(20)))
        await batcher.close()
        return results

    results = run(main())
    assert results == [[2 * i, 2 * (i + 100)] for i in range(20)]
    assert all(len(batch) <= 8 for batch in seen)
    assert len(seen) == 5  # 40 items in batches of 8


def test_an_oversized_call_runs_alone() -> None:
    sizes: list[int] = []

    async def ident(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    async def main() -> None:
        batcher = Batcher(ident, max_size=4, max_wait_s=0.01)
        big, small = await asyncio.gather(batcher.submit(list(range(10))), batcher.submit([1]))
        assert big == list(range(10)) and small == [1]
        await batcher.close()

    run(main())
    assert sizes == [10, 1]


def test_wrong_result_count_fails_the_callers() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> None:
        batcher = Batcher(short, max_size=4, max_wait_s=0)
        with pytest.raises(TypeError, match="returned 1 results for 2 inputs"):
            await batcher.submit([1, 2])
        await batcher.close()

    run(main())


def test_a_lone_call_runs_at_once() -> None:
    """Nobody else is calling, so waiting for company would only add latency."""

    async def ident(items: list[int]) -> list[int]:
        return items

    async def main() -> float:
        batcher = Batcher(ident, max_size=100, max_wait_s=0.5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit([1])
        elapsed = loop.time() - start
        await batcher.close()
        return elapsed

    assert run(main()) < 0.1


def test_steady_calls_are_gathered_and_the_wait_follows_the_batch_cost() -> None:
    """Calls every 2 ms, each batch costs a fixed 10 ms: batches gather several calls, and once
    the fit has seen two sizes a batch waits no longer than that fixed cost, not max_wait (300 ms)."""
    sizes: list[int] = []

    async def fixed_cost(items: list[int]) -> list[int]:
        sizes.append(len(items))
        await asyncio.sleep(0.01)
        return items

    async def main() -> list[float]:
        batcher = Batcher(fixed_cost, max_size=1000, max_wait_s=0.3)
        loop = asyncio.get_running_loop()

        async def timed(i: int) -> float:
            start = loop.time()
            assert await batcher.submit([i]) == [i]
            return loop.time() - start

        tasks = []
        for i in range(400):
            tasks.append(asyncio.ensure_future(timed(i)))
            await asyncio.sleep(0.002)
        latencies = await asyncio.gather(*tasks)
        per_item, fixed = batcher.cost.per_item, batcher.cost.fixed
        await batcher.close()
        assert per_item < 0.001 and 0.005 < fixed < 0.05, (per_item, fixed)
        return latencies

    latencies = run(main())
    assert sum(sizes) == 400 and sum(sizes) / len(sizes) >= 3, sizes
    late = sorted(latencies[len(latencies) // 2:])  # after the fit has settled
    assert late[int(0.95 * len(late))] < 0.1, late[-10:]


def test_the_cost_fit_recovers_a_linear_cost() -> None:
    cost = BatchCost()
    for n in range(1, 33):
        cost.observe(n, 0.002 * n + 0.01)
    assert cost.per_item == pytest.approx(0.002) and cost.fixed == pytest.approx(0.01)
    assert cost.predict(64) == pytest.approx(0.138)
    one_size = BatchCost()
    for _ in range(5):
        one_size.observe(8, 0.04)
    assert one_size.predict(8) == pytest.approx(0.04)  # one size seen: only their sum is known


def test_max_latency_refuses_calls_that_would_answer_late() -> None:
    """Batches of at most 8 cost 20 ms + 1 ms per item; a flood of 100 calls against a 100 ms
    target: the calls that fit are answered in time, the rest are refused at once."""

    async def costly(items: list[int]) -> list[int]:
        await asyncio.sleep(0.02 + 0.001 * len(items))
        return items

    async def main() -> tuple[list[float], list[float]]:
        batcher = Batcher(costly, max_size=8, max_wait_s=0.005, max_latency_s=0.1)
        await batcher.submit([0])  # the fit learns from a batch of 1 and one of 8
        await asyncio.gather(*(batcher.submit([i]) for i in range(8)))
        loop = asyncio.get_running_loop()
        answered: list[float] = []
        refused: list[float] = []

        async def call(i: int) -> None:
            start = loop.time()
            try:
                await batcher.submit([i])
                answered.append(loop.time() - start)
            except BatchOverloaded as exc:
                assert "max_latency_ms of 100" in str(exc)
                refused.append(loop.time() - start)

        await asyncio.gather(*(call(i) for i in range(100)))
        await batcher.close()
        return answered, refused

    answered, refused = run(main())
    assert 8 <= len(answered) <= 40 and len(refused) == 100 - len(answered)
    assert max(answered) < 0.13, sorted(answered)[-5:]
    assert max(refused) < 0.01
