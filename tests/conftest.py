"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fermion.testing import Served, serve_photon
from tests.pg import db_url, pg_url, postgres  # noqa: F401 - fixtures: one PostgreSQL server per session
from tests.support import TEXT_PHOTON


@pytest.fixture(scope="module")
def text_photon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_photon(TEXT_PHOTON, tmp_path_factory.mktemp("text")) as served:
        yield served


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's reporter
    """The chaos table: each fault injected under load, with the requests sent and failed."""
    from tests.support import CHAOS_RESULTS

    if CHAOS_RESULTS:
        terminalreporter.section("faults under load")
        terminalreporter.write_line(f"{'fault':66} {'sent':>7} {'failed':>7}  promise")
        for fault, sent, failed, promise in CHAOS_RESULTS:
            terminalreporter.write_line(f"{fault:66} {sent:>7} {failed:>7}  {promise}")
