"""`make demo`: what Fermion does, end to end, on this machine.

Serves the MiniLM embedder photon (a real model, offline), calls it through fermion.Client,
shows batching at work under concurrent load, and packages it as a .photon archive.
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion import Client  # noqa: E402
from fermion.photon._package import build_archive  # noqa: E402
from tests.support import serve_photon  # noqa: E402

console = Console()
EMBEDDER = f"{ROOT / 'examples/embedder/photon.py'}:Embedder"


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        step("1. package the embedder photon")
        manifest = build_archive(EMBEDDER, work / "embedder.photon")
        console.print(f"embedder.photon: entry {manifest.entry}, sha256 {manifest.sha256[:16]}…, "
                      f"handlers {', '.join(manifest.handlers)}")

        step("2. serve it from the archive (fermion photon run embedder.photon)")
        start = time.perf_counter()
        with serve_photon(str(work / "embedder.photon"), work, timeout=180) as served:
            console.print(f"ready at {served.url} in {time.perf_counter() - start:.1f}s (model loaded in init())")
            client = Client(served.url)

            step("3. call it: semantic similarity with real embeddings")
            query = "How do I move my service to another cloud?"
            docs = [
                "Fermion re-places replicas when a cloud fails.",
                "Bake the bread at 220 degrees for half an hour.",
                "Deployments can be migrated between providers.",
                "The cat slept on the warm windowsill.",
            ]
            vectors = client.embed(texts=[query, *docs])
            q = vectors[0]
            table = Table("document", "cosine similarity to the query", title=f"query: {query!r}")
            for doc, vec in sorted(zip(docs, vectors[1:]), key=lambda p: -sum(a * b for a, b in zip(q, p[1]))):
                table.add_row(doc, f"{sum(a * b for a, b in zip(q, vec)):.3f}")
            console.print(table)

            step("4. 64 concurrent callers, one text each: adaptive batching")
            texts = [f"request {i}: {docs[i % 4]}" for i in range(256)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(64) as pool:
                list(pool.map(lambda t: client.embed(texts=[t]), texts))
            elapsed = time.perf_counter() - t0
            metrics = client._http.get("/metrics").text
            sizes = [ln for ln in metrics.splitlines() if ln.startswith("fermion_batch_size_")]
            count = float(next(ln for ln in sizes if "_count" in ln).split()[-1])
            total = float(next(ln for ln in sizes if "_sum" in ln).split()[-1])
            console.print(f"256 requests in {elapsed:.2f}s ({256 / elapsed:.0f} req/s); "
                          f"{count:.0f} model calls, {total / count:.1f} texts per call on average")
        console.print("[green]done.[/] Try: fermion photon run examples/embedder/photon.py:Embedder --port 8080")


if __name__ == "__main__":
    main()
