"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fermion.testing import Served, serve_photon
from tests.support import TEXT_PHOTON


@pytest.fixture(scope="module")
def text_photon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_photon(TEXT_PHOTON, tmp_path_factory.mktemp("text")) as served:
        yield served
