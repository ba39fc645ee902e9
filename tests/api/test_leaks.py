"""Small leaks found in a security attack: an unauthenticated API schema, a database password printed,
user input echoed back at any length, a model version that overflowed into a 500."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fermion.store._store import display_url
from fermion.testing import ServerProc, fermion_cmd, running_server, web


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("server")) as srv:
        yield srv


def test_the_api_schema_needs_a_token_and_docs_are_gone(server: ServerProc) -> None:
    assert web.get(f"{server.url}/openapi.json").status_code == 401
    bad = web.get(f"{server.url}/openapi.json", headers={"Authorization": "Bearer fma_wrong"})
    assert bad.status_code == 401
    with server.api() as api:
        schema = api.get(f"{server.url}/openapi.json")
        assert schema.status_code == 200 and "/api/v1/deployments/{name}" in schema.json()["paths"]
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert api.get(f"{server.url}{path}").status_code == 404, path
    assert web.get(f"{server.url}/healthz").status_code == 200  # still the one open route


def test_a_huge_name_is_not_echoed_back(server: ServerProc) -> None:
    name = "a" * 10_000
    with server.api() as api:
        for path in (f"/deployments/{name}", f"/jobs/{name}", f"/models/{name}"):
            r = api.get(path)
            assert r.status_code == 404, path
            assert len(r.content) < 1024, path
            assert r.json()["error"]["message"].startswith("no "), r.text  # still says what was not found
        r = api.get(f"/deployments/{name}")
        assert "no deployment named 'aaaa" in r.json()["error"]["message"]


def test_a_huge_invalid_value_is_not_echoed_back(server: ServerProc) -> None:
    with server.api() as api:
        r = api.put("/deployments/echo", json={"photon": "0" * 64, "replicas": "x" * 100_000, "public": ["y" * 10_000]})
    assert r.status_code == 422
    assert len(r.content) < 4096
    body = r.json()
    assert "replicas" in body["error"]["message"]
    for error in body["detail"]:
        assert len(json.dumps(error.get("input"))) <= 210, error


@pytest.mark.parametrize("ref", ["x:99999999999999999999999", "x:2147483648", "x:0", "x:-1", "x:abc", "x:v"])
def test_bad_model_versions_are_a_400_not_a_500(server: ServerProc, ref: str) -> None:
    with server.api() as api:
        r = api.get(f"/models/{ref}")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "UserInputError" and "invalid model version" in error["message"]
    assert "1 to 2147483647" in error["message"]  # the hint says what is valid


def test_display_url_masks_passwords() -> None:
    shown = display_url("postgresql://u:hunter2@db.internal:5432/fermion")
    assert shown == "postgresql://u:***@db.internal:5432/fermion"
    assert "hunter2" not in display_url("postgresql+psycopg://u:hun%40ter2@h/x?sslmode=require")
    assert "hunter2" not in display_url("postgresql://h/x?password=hunter2")
    assert "hunter2" not in display_url("postgresql://u:hunter2@h:notaport/x")  # unparseable: masked by hand
    assert display_url("sqlite:////var/lib/fermion.db") == "sqlite:////var/lib/fermion.db"


def _start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "FERMION_DB_URL"}
    # a wide console, so that rich does not wrap the error line
    full_env |= {"FERMION_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "COLUMNS": "1000", **(env or {})}
    return subprocess.run(fermion_cmd("server", "start", "--port", "0", *args), capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_an_unreachable_postgresql_fails_cleanly_without_the_password(tmp_path: Path) -> None:
    # nothing listens on port 1: psycopg (which a driverless URL means) fails to connect
    url = "postgresql://u:hunter2@127.0.0.1:1/x"
    on_cli = _start(tmp_path, "--db", url)
    from_env = _start(tmp_path, env={"FERMION_DB_URL": url})
    for result in (on_cli, from_env):
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert "hunter2" not in out and "Traceback" not in out, out
        assert "error:" in result.stderr and "cannot use the database postgresql://u:***@127.0.0.1:1/x" in out, out
    assert "visible to every user in `ps`" in on_cli.stderr and "FERMION_DB_URL" in on_cli.stderr
    assert "ps`" not in from_env.stderr


def test_a_database_that_cannot_be_opened_is_one_error_line(tmp_path: Path) -> None:
    result = _start(tmp_path, "--db", f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "cannot use the database sqlite:///" in result.stderr
