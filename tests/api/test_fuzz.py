"""Schemathesis against the running server's own OpenAPI schema, with a bounded budget: no server
error, and every answer conforms to the schema (statuses, bodies, headers, the bearer scheme).
On SQLite every phase runs; on PostgreSQL the coverage phase, whose boundary values (lengths, NULs,
extreme numbers) are where the two databases differ."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fermion.testing import ServerProc, kill_workloads, running_server, start_server, stop

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CLOUDS = "clouds:\n  - name: alpha\n    capacity: {cpus: 2, memory_gb: 2}\n"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A server on SQLite, and one on PostgreSQL: what one database keeps and the other refuses
    (a length, a NUL) must not be a 500 on either."""
    home = tmp_path_factory.mktemp("fuzz") / "home"
    if request.param == "sqlite":
        with running_server(home, CLOUDS) as s:
            yield s
        return
    postgres = request.getfixturevalue("postgres")
    url = postgres.create_database()
    workloads = home.parent / "workloads"
    s = start_server(home, CLOUDS, db_url=url, env={"FERMION_WORKLOADS": str(workloads)})
    try:
        yield s
    finally:
        stop(s.proc)
        kill_workloads(workloads)
        postgres.drop_database(url)


def test_fuzzing_the_api_finds_no_server_error_and_no_schema_violation(server: ServerProc, tmp_path: Path,
                                                                       request: pytest.FixtureRequest) -> None:
    report = tmp_path / "report.json"
    database = request.node.callspec.params["server"]
    phases = "coverage" if database == "postgresql" else "examples,coverage,fuzzing,stateful"
    out = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {server.token}",
         "--max-examples", "12", "--generation-deterministic", "--request-timeout", "20", "--workers", "1",
         # the API checks more than the schema can say (a cloud must exist, a secret must be
         # defined): a schema-valid request may rightly get a 400
         "--exclude-checks", "positive_data_acceptance", "--phases", phases,
         "--report", "ndjson", "--report-ndjson-path", str(report)],
        capture_output=True, text=True, timeout=600, env={**server.env, "NO_COLOR": "1"},
    )
    summary = out.stdout[-4000:]
    assert out.returncode == 0, summary
    selected = re.search(r"Selected: (\d+)/(\d+)", out.stdout)
    tested = re.search(r"Tested: (\d+)", out.stdout)
    assert selected and tested and int(tested[1]) == int(selected[2]) >= 40, summary  # every operation was exercised
    assert "Server error" not in out.stdout, summary
