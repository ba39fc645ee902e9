"""Traps a newcomer hit on the command line, each against a real `fermion server start` on
loopback: a failed login, a gateway given only --server and FERMION_TOKEN, a job whose command is
a long -c script, the README's distributed job, and a clouds.yaml naming an unknown kind."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar, get_args

import httpx
import pytest

from fermion.clouds import CloudConfig, load_clouds
from fermion.errors import UserInputError
from fermion.testing import ServerProc, fermion_cmd, running_server, stop, web
from tests.support import ROOT

T = TypeVar("T")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("traps") / "home", "clouds:\n  - name: east\n") as srv:
        yield srv


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """A CLI's environment with its own home and no server or token from the outer one."""
    env = {k: v for k, v in os.environ.items() if k not in ("FERMION_URL", "FERMION_TOKEN", "FERMION_CA")}
    return {**env, "FERMION_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "400", **extra}


def fermion(env: dict[str, str], *args: str, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fermion_cmd(*args), capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def said(result: subprocess.CompletedProcess[str]) -> str:
    """What a command printed, on one line (Rich wraps long lines)."""
    return " ".join((result.stdout + result.stderr).split())


def wait_until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy (its value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def job_done(server: ServerProc, name: str, timeout: float = 120) -> dict:
    return server.wait_for(lambda api: (j := api.get(f"/jobs/{name}").json())["status"] in ("SUCCEEDED", "FAILED")
                           and j, timeout=timeout)


def job_log(server: ServerProc, name: str) -> str:
    with server.api() as api:
        return "\n".join(api.get(f"/jobs/{name}/logs").json().values())


class _NotFermion(http.server.BaseHTTPRequestHandler):
    """A web server that is not Fermion: 200 and a page for every request."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def not_fermion() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFermion)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once it is closed


# -- 1. a failed login leaves the saved credentials as they were ---------------------------------
def test_a_failed_login_saves_nothing(server: ServerProc, tmp_path: Path, not_fermion: str) -> None:
    env = client_env(tmp_path)
    saved = tmp_path / "cli.json"
    first = fermion(env, "login", server.url, "--token", "not-a-token")
    assert first.returncode == 5 and not saved.exists(), said(first)  # refused: nothing written, not even once
    assert "login to" in said(first) and "failed, nothing saved" in said(first) and "Traceback" not in said(first)

    good = fermion(env, "login", server.url + "/", "--token", server.token)
    assert good.returncode == 0 and "saved to" in said(good), said(good)
    before = saved.read_bytes()
    assert json.loads(before) == {"url": server.url, "token": server.token}

    # a wrong token, a server that is not there, a web server that is not Fermion, not a URL
    for url, token, code, why in ((server.url, "wrong-token", 5, "failed, nothing saved"),
                                  (closed_port_url(), server.token, 6, "cannot reach"),
                                  (not_fermion, server.token, None, "does not answer as a Fermion server"),
                                  ("127.0.0.1:8400", server.token, 2, "is not an http(s) URL")):
        bad = fermion(env, "login", url, "--token", token)
        assert bad.returncode != 0 and (code is None or bad.returncode == code), said(bad)
        assert why in said(bad) and "Traceback" not in said(bad), said(bad)
        assert saved.read_bytes() == before, url  # the working login stands
    # and it still works
    me = fermion(env, "whoami", "--json")
    assert me.returncode == 0 and json.loads(me.stdout)["server_admin"] is True, said(me)


# -- 2. a gateway given --server and FERMION_TOKEN, with no cli.json ---------------------------
def test_gateway_follows_server_url_with_only_fermion_token(server: ServerProc, tmp_path: Path) -> None:
    home = tmp_path / "gateway-home"
    port_file = tmp_path / "gateway.port"
    args = ("gateway", "start", "--server", server.url, "--port", "0", "--port-file", str(port_file))

    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(fermion_cmd(*args), stdout=out, stderr=subprocess.STDOUT,
                                env=client_env(home, FERMION_TOKEN=server.token))
    try:
        def health() -> dict | None:
            assert proc.poll() is None, log.read_text()
            if not port_file.exists() or not port_file.read_text():
                return None
            try:
                body = web.get(f"http://127.0.0.1:{port_file.read_text()}/healthz", timeout=5).json()
            except httpx.TransportError:
                return None
            return body if body.get("version") else None  # a routing table came: the token was taken

        body = wait_until(health, 60, "the gateway's first routing table")
        assert body["server"] == server.url and body["last_error"] is None, body
        assert not (home / "cli.json").exists()
    finally:
        stop(proc)

    # no token at all: a clear error at once, naming what to set
    port_file.unlink(missing_ok=True)
    refused = fermion(client_env(home), *args, timeout=60)
    assert refused.returncode == 5 and "FERMION_TOKEN" in said(refused) and "Traceback" not in said(refused), \
        said(refused)
    assert not port_file.exists()


# -- 3. a job whose command is a long script: no "is it a local file?" traceback --------------
def test_job_run_with_a_long_inline_script(server: ServerProc, tmp_path: Path) -> None:
    lines = [f"value_{i} = {i}  # padding the script past what a file name may be" for i in range(120)]
    script = "\n".join([*lines, "print('long script ran', value_119)"])
    assert len(script) > 4096  # past PATH_MAX: stat() says ENAMETOOLONG
    result = fermion(server.env, "job", "run", "--name", "long-script", "--", "python3", "-c", script, cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in said(result), said(result)
    done = job_done(server, "long-script")
    assert done["status"] == "SUCCEEDED", job_log(server, "long-script")
    assert "long script ran 119" in job_log(server, "long-script")


# -- 4. the README's distributed job ----------------------------------------------------------
def test_readme_ddp_command_says_how_to_send_the_script_and_that_runs(server: ServerProc) -> None:
    readme = ["job", "run", "--name", "ddp", "--workers", "2", "--", "python", "examples/jobs/ddp.py"]
    refused = fermion(server.env, *readme, cwd=ROOT)  # from the checkout's root, as the README is read
    text = said(refused)
    assert refused.returncode == 2 and "Traceback" not in text, text
    assert "names examples/jobs/ddp.py, a file of this folder" in text and "--workdir ." in text, text
    hint = re.search(r"--workdir (\S+) -- (.+?)\)$", text)
    assert hint and hint.group(1) == "examples/jobs", text
    # the command the hint gives, as it gives it: the script's folder goes with the job
    sent = ["job", "run", "--name", "ddp", "--workers", "2", "--follow", "--timeout", "180",
            "--workdir", hint.group(1), "--", *shlex.split(hint.group(2))]
    ran = fermion(server.env, *sent, cwd=ROOT)
    assert ran.returncode == 0, said(ran)
    assert job_done(server, "ddp")["status"] == "SUCCEEDED"
    log = job_log(server, "ddp")
    assert "rank 0 of world_size=2: all-reduced sum=3" in log and "rank 1 of world_size=2" in log, log


# -- 5. an unknown cloud kind in clouds.yaml ----------------------------------------------------
BAD_KIND = "clouds:\n  - name: east\n  - name: aws1\n    kind: ec2\n"
KINDS = ", ".join(get_args(CloudConfig.model_fields["kind"].annotation))  # every kind there is, named in the error


def test_unknown_cloud_kind_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "clouds.yaml"
    path.write_text(BAD_KIND)
    with pytest.raises(UserInputError) as err:
        load_clouds(path)
    assert {"local", "ray"} <= set(KINDS.split(", "))
    assert err.value.message == f"invalid clouds file {path}: cloud aws1: unknown kind 'ec2' (allowed kinds: {KINDS})"
    # other mistakes read as plainly: by cloud, by field, one line
    for text, expected in (
            ("clouds:\n  - kind: ec2\n", "cloud #1: name: Field required; cloud #1: unknown kind 'ec2'"),
            ("clouds:\n  - name: a\n    capacity: {cpus: -1}\n    zone: x\n",
             "cloud a: capacity.cpus: Input should be greater than 0; cloud a: unknown field 'zone'"),
            ("clouds:\n  - name: r\n    kind: ray\n", "cloud r: kind ray needs `address`"),
            ("- east\n", "it must be a mapping with a list of clouds")):
        path.write_text(text)
        with pytest.raises(UserInputError) as err:
            load_clouds(path)
        assert expected in err.value.message and "\n" not in err.value.message, err.value.message
    with pytest.raises(UserInputError, match="cannot read clouds file"):
        load_clouds(tmp_path)  # a folder


def test_server_start_with_an_unknown_cloud_kind_refuses_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "clouds.yaml"
    path.write_text(BAD_KIND)
    home = tmp_path / "home"
    result = fermion(client_env(home), "server", "start", "--port", "0", "--port-file", str(home / "port"),
                     "--clouds", str(path), timeout=120)
    assert result.returncode == 2, said(result)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    expected = f"error: invalid clouds file {path}: cloud aws1: unknown kind 'ec2' (allowed kinds: {KINDS})"
    assert errors == [expected], result.stderr
    assert not (home / "port").exists()  # it never served
