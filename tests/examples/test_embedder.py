"""The MiniLM embedder example, served for real with the model shipped offline."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from fermion import Client
from fermion.testing import serve_photon
from tests.support import EMBEDDER_PHOTON


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Client:
    with serve_photon(EMBEDDER_PHOTON, tmp_path_factory.mktemp("emb"), timeout=180) as served:
        yield Client(served.url, timeout=60)


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_unit_vectors_that_capture_meaning(embedder: Client) -> None:
    cat, kitten, stocks = embedder.embed(
        texts=["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]
    )
    assert len(cat) == 384
    assert abs(_dot(cat, cat) - 1) < 1e-4
    assert _dot(cat, kitten) > _dot(cat, stocks) + 0.3
    assert embedder.similarity(a="How do I bake bread?", b="Recipe for baking bread") > 0.6


def test_concurrent_callers_get_their_own_embeddings(embedder: Client) -> None:
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(24)]
    expected = embedder.embed(texts=texts)
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda t: embedder.embed(texts=[t])[0], texts))
    for e, g in zip(expected, got, strict=True):
        assert _dot(e, g) > 0.9999  # same vector, whichever batch it rode in

