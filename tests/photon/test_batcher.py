"""The Batcher on its own, in one event loop."""

from __future__ import annotations

import asyncio

import pytest

from fermion.photon._batching import Batcher


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


def test_waits_at_most_max_wait_for_a_lone_call() -> None:
    async def ident(items: list[int]) -> list[int]:
        return items

    async def main() -> float:
        batcher = Batcher(ident, max_size=100, max_wait_s=0.05)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit([1])
        elapsed = loop.time() - start
        await batcher.close()
        return elapsed

    assert 0.04 <= run(main()) < 0.5
