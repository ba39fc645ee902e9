"""Fixtures shared by the whole suite."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

# workers of pytest-xdist share the machine's cores: torch and BLAS in each take their share of
# them, not a thread per core each, which meet at barriers and wait on one another
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, str(_share))

import pytest

from fermion.testing import Served, serve_photon
from tests.pg import db_url, pg_url, postgres  # noqa: F401 - fixtures: one PostgreSQL server per session
from tests.support import TEXT_PHOTON


@pytest.fixture(scope="module")
def text_photon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_photon(TEXT_PHOTON, tmp_path_factory.mktemp("text")) as served:
        yield served


# the files that take a minute or more, handed out first so that two workers (make test) end together
LONGEST_FIRST = ("tests/api/test_compress.py", "tests/api/test_jobs.py", "tests/train/test_finetune.py",
                 "tests/chaos/test_leader.py", "tests/api/test_fuzz.py", "tests/chaos/test_data_plane.py",
                 "tests/api/test_autoscale.py", "tests/data/test_job_storage.py", "tests/compress/test_methods.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: a file keeps its order


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a worker: hand its chaos rows to the controller, which prints the table."""
    from tests.support import CHAOS_RESULTS

    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["chaos"] = json.dumps(CHAOS_RESULTS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ANN001 - xdist's worker node
    from tests.support import CHAOS_RESULTS

    CHAOS_RESULTS.extend(tuple(row) for row in json.loads(node.workeroutput.get("chaos", "[]")))


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's reporter
    """The chaos table: each fault injected under load, with the requests sent and failed."""
    from tests.support import CHAOS_RESULTS

    if CHAOS_RESULTS:
        terminalreporter.section("faults under load")
        terminalreporter.write_line(f"{'fault':66} {'sent':>7} {'failed':>7}  promise")
        for fault, sent, failed, promise in CHAOS_RESULTS:
            terminalreporter.write_line(f"{fault:66} {sent:>7} {failed:>7}  {promise}")
