"""Claim: adaptive batching multiplies the MiniLM embedder's throughput under concurrent load
(goal >= 4x) at no worse p99. Baseline: the same photon with the handler unbatched, same load,
same run. Usage: python benchmarks/batching.py [--concurrency 64] [--duration 15]"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.testing import LoadResult, closed_loop, serve_photon  # noqa: E402

UNBATCHED = '''
from fermion import handler
from photon import Embedder


class UnbatchedEmbedder(Embedder):
    @handler
    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts)
'''

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Fermion places replicas on the cheapest healthy cloud.",
    "A photon is a plain Python class served over HTTP.",
    "Gradient accumulation trades memory for steps.",
]


def measure(ref: str, workdir: Path, concurrency: int, duration: float) -> LoadResult:
    with serve_photon(ref, workdir, timeout=180) as served:
        return closed_loop(
            f"{served.url}/embed",
            lambda i: {"texts": [f"{SENTENCES[i % 4]} (request {i})"]},
            concurrency=concurrency,
            duration_s=duration,
            warmup_s=2.0,
        )


def model_ceiling(max_size: int) -> tuple[float, float]:
    """Texts/s of the bare model at batch 1 and at ``max_size``: the most batching can give."""
    import time

    sys.path.insert(0, str(ROOT / "examples" / "embedder"))
    from photon import Embedder

    emb = Embedder()
    emb.init()
    rates = []
    for n in (1, max_size):
        texts = [f"{SENTENCES[i % 4]} (request {i})" for i in range(n)]
        emb.encode(texts)
        start = time.perf_counter()
        rounds = max(3, 64 // n)
        for _ in range(rounds):
            emb.encode(texts)
        rates.append(n * rounds / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the baseline lives beside the example so `from photon import Embedder` resolves
        unbatched = ROOT / "examples" / "embedder" / "_bench_unbatched.py"
        unbatched.write_text(UNBATCHED)
        try:
            base = measure(f"{unbatched}:UnbatchedEmbedder", work, args.concurrency, args.duration)
        finally:
            unbatched.unlink()
        batched = measure(f"{ROOT / 'examples/embedder/photon.py'}:Embedder", work, args.concurrency, args.duration)
    single, batched_rate = model_ceiling(32)
    print(f"MiniLM embedder, {args.concurrency} concurrent clients, 1 text per request, {args.duration:g}s each")
    print(f"{'':12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, r in (("unbatched", base), ("batched", batched)):
        print(f"{name:12}{r.throughput:>10.1f}{r.p50:>10.1f}{r.p99:>10.1f}{r.errors:>8}")
    print(f"throughput ratio batched/unbatched: {batched.throughput / base.throughput:.2f}x (goal >= 4x)")
    print(f"bare model, same machine: {single:.1f} texts/s at batch 1, {batched_rate:.1f} at batch 32 "
          f"-> ceiling {batched_rate / single:.2f}x; batched serving reaches "
          f"{batched.throughput / batched_rate:.0%} of the batch-32 rate")
    print(f"p99 ratio batched/unbatched:        {batched.p99 / base.p99:.2f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
