"""Small text utilities: a torch-free photon that shows every kind of handler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

from pydantic import BaseModel

from fermion import Photon, UserInputError, handler


class WordStats(BaseModel):
    words: int
    chars: int
    longest: str


class TextTools(Photon):
    """Text utilities: batched, streaming, GET, bytes, async and slow handlers."""

    resources = {"cpus": 0.25, "memory_gb": 0.25}

    def init(self) -> None:
        self.batches: list[int] = []

    @handler(batch={"max_size": 16, "max_wait_ms": 20})
    def upper(self, texts: list[str]) -> list[str]:
        """Upper-cases each text; concurrent calls are merged into one batch."""
        self.batches.append(len(texts))
        if any(t == "boom" for t in texts):
            raise UserInputError("'boom' is not allowed")
        time.sleep(0.01)
        return [t.upper() for t in texts]

    @handler
    def stats(self, text: str, min_length: int = 1) -> WordStats:
        """Counts words of at least ``min_length`` characters."""
        words = [w for w in text.split() if len(w) >= min_length]
        return WordStats(words=len(words), chars=len(text), longest=max(words, key=len, default=""))

    @handler(method="GET")
    def repeat(self, text: str, times: int = 2) -> str:
        return text * times

    @handler
    def count(self, n: int, delay_s: float = 0.0) -> Iterator[dict[str, int]]:
        """Streams n items, one at a time."""
        for i in range(n):
            if delay_s:
                time.sleep(delay_s)
            yield {"i": i, "square": i * i}

    @handler
    async def tokens(self, text: str) -> AsyncIterator[str]:
        """Streams the words of ``text`` (an async generator)."""
        for word in text.split():
            await asyncio.sleep(0)
            yield word

    @handler
    def reverse_bytes(self, data: bytes, label: str = "") -> bytes:
        """Takes an uploaded file and returns its bytes reversed (a label is prepended)."""
        return label.encode() + data[::-1]

    @handler(timeout=0.5)
    async def sleep(self, seconds: float) -> float:
        """Sleeps; runs past its 0.5 s timeout when asked to."""
        await asyncio.sleep(seconds)
        return seconds

    @handler
    def batch_log(self) -> list[int]:
        """Sizes of the batches `upper` has seen (to observe batching)."""
        return list(self.batches)
