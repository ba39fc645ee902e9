"""``fermion server``: run the API, the controllers and the gateway."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UserInputError

if TYPE_CHECKING:
    import socket

    import uvicorn
    from starlette.types import ASGIApp

server_app = typer.Typer(help="Run the Fermion server (API + controllers + gateway).", no_args_is_help=True)

DB_URL_ENV = "FERMION_DB_URL"
DB_URL_HINT = "use sqlite:///path or postgresql://user@host/db"


def db_url_has_password(db: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(db)
    except (ArgumentError, ValueError):
        return "@" in db
    return parsed.password is not None or "password" in parsed.query


def check_db_url(db: str) -> None:
    """Refuse a database URL the server cannot use (unparseable, another database, a driver missing)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from ..store import display_url, with_driver

    shown = display_url(db)
    try:
        parsed = make_url(with_driver(db))  # postgresql:// means psycopg (3), the driver Fermion ships
    except (ArgumentError, ValueError):
        raise UserInputError(f"invalid database URL {shown!r}", hint=DB_URL_HINT) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UserInputError(f"unsupported database URL {shown!r}", hint=DB_URL_HINT)
    try:
        parsed.get_dialect().import_dbapi()
    except ArgumentError:  # no such dialect or driver in SQLAlchemy
        raise UserInputError(f"unknown database driver in {shown!r}", hint=DB_URL_HINT) from None
    except ImportError as exc:  # SQLAlchemy knows the driver but it is not installed
        if parsed.get_backend_name() == "postgresql":
            raise UserInputError(f"PostgreSQL support needs the {parsed.get_driver_name()} driver, which is not "
                                 "installed", hint="pip install psycopg psycopg-binary") from None
        raise UserInputError(f"the database driver {exc.name!r} is not installed") from None


def opens_without_password(db: str) -> bool:
    """Whether the PostgreSQL server of ``db`` lets a client in with no password (``trust``, or
    ``peer`` for the server's own user), as the URL's role or as ``postgres``: then any process on
    its machine, a workload too, could write Fermion's state. The try uses the very connection
    settings the server will (however the URL spells host and port), with no password and nothing
    the environment offers (PGPASSWORD, ~/.pgpass)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from ..store import with_driver

    url = make_url(with_driver(db))
    if url.get_backend_name() != "postgresql":
        return False
    import psycopg

    engine = create_engine(url)
    try:
        _args, params = engine.dialect.create_connect_args(url)
    finally:
        engine.dispose()
    params.pop("context", None)
    for role in dict.fromkeys([params.get("user") or "", "postgres"]):
        try:
            with psycopg.connect(**{**params, "user": role, "password": "", "passfile": "/dev/null",
                                    "connect_timeout": 5}):
                return True
        except psycopg.OperationalError as exc:
            refused = getattr(exc, "sqlstate", None) in ("28P01", "28000") or "password" in str(exc)
            if not refused:  # down or unreachable: the start says so itself, with the same settings
                return False
    return False


def tls_files(cert: Path | None, key: Path | None, self_signed: bool, home: Path,
              host: str) -> tuple[Path, Path | None] | None:
    """The certificate and key to serve HTTPS with (None: plain HTTP); refuses unusable options or files."""
    import ssl

    if self_signed and (cert or key):
        raise UserInputError("--tls-self-signed cannot be combined with --tls-cert or --tls-key",
                             hint="give either your own certificate and key, or --tls-self-signed")
    if self_signed:
        from ..security import self_signed_certificate

        try:
            return self_signed_certificate(home / "tls", [host])
        except OSError as exc:
            raise UserInputError(f"cannot write a self-signed certificate in {home / 'tls'}: "
                                 f"{exc.strerror or exc}") from None
    if key and not cert:
        raise UserInputError("--tls-key needs --tls-cert")
    if cert is None:
        return None
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None:
            try:
                path.read_bytes()
            except OSError as exc:
                raise UserInputError(f"cannot read {option} {path}: {exc.strerror or exc}") from None
    try:
        # an empty password: an encrypted key fails here instead of prompting on the terminal later
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password="")
    except ssl.SSLError as exc:
        raise UserInputError(f"--tls-cert {cert}{f' with --tls-key {key}' if key else ''} is not a usable "
                             f"PEM certificate and unencrypted key ({exc.reason.lower().replace('_', ' ') if exc.reason else 'unreadable PEM'})") from None
    return cert.resolve(), key.resolve() if key else None


@server_app.command("start")
def start(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind; 0 picks a free one.")] = 8400,
    db: Annotated[str | None, typer.Option(
        envvar=DB_URL_ENV,
        help="SQLAlchemy URL (default: SQLite in $FERMION_HOME). Give one with a password in the environment: "
             "`ps` shows the command line to every user.")] = None,
    clouds: Annotated[Path | None, typer.Option(help="clouds.yaml naming the clouds to manage.")] = None,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here once listening.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
    tls_cert: Annotated[Path | None, typer.Option(help="Serve HTTPS with this PEM certificate (chain).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The certificate's PEM private key.")] = None,
    tls_self_signed: Annotated[bool, typer.Option(
        help="Serve HTTPS with a self-signed certificate kept in $FERMION_HOME/tls (for local use).")] = False,
    new_database: Annotated[bool, typer.Option(
        "--new-database", help="Start anew where a home that was used before has lost its database (missing, "
        "empty or corrupt): the old files and cli.json are kept aside, and workloads no row knows are stopped. "
        "To get the old state back instead: `fermion backup restore`.")] = False,
    allow_unsandboxed: Annotated[bool, typer.Option(
        "--allow-unsandboxed", help="Where bubblewrap cannot run, start workloads unconfined (as the server's user, "
        "seeing its files) instead of refusing them.")] = False,
    cpu_quotas: Annotated[bool, typer.Option(
        "--cpu-quotas", help="Cap each workload's CPU time at its declared cpus (a CFS quota; it throttles a "
        "workload that bursts). Without it, CPUs are shared by weight: each gets its share under contention.")] = False,
    allow_passwordless_db: Annotated[bool, typer.Option(
        "--allow-passwordless-db", help="Use a PostgreSQL database that lets clients in without a password (trust "
        "or peer authentication): only on a machine where nothing else runs.")] = False,
) -> None:
    """Start the server in the foreground. The first start prints the admin token once."""
    import logging

    import uvicorn
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from .._limits import BoundedHttpToolsProtocol
    from ..clouds import load_clouds
    from ..photon.runtime import DrainingServer, bind_socket, write_port_file
    from ..store import default_db_url
    from ..store import display_url, explain_db_error
    from ._platform import save_credentials

    if db is not None:
        # by name: typer bundles its own click, whose ParameterSource is not click's
        from_env = getattr(ctx.get_parameter_source("db"), "name", "") == "ENVIRONMENT"
        if db_url_has_password(db) and not from_env:
            print(f"fermion: warning: the database password in --db is visible to every user in `ps`; "
                  f"set {DB_URL_ENV} instead", file=sys.stderr, flush=True)
        check_db_url(db)
        if not allow_passwordless_db and opens_without_password(db):
            raise UserInputError(f"the database {display_url(db)} lets anyone in without a password: any process on "
                                 "its machine, a workload too, could read and change Fermion's state",
                                 hint="give the role a password and set scram-sha-256 for its lines in pg_hba.conf "
                                      "(see the README), or add --allow-passwordless-db for a machine only you use")
    # read by the isolation the platform probes
    from ..backends import ALLOW_UNSANDBOXED_ENV, CPU_QUOTAS_ENV

    if allow_unsandboxed:
        os.environ[ALLOW_UNSANDBOXED_ENV] = "1"
    if cpu_quotas:
        os.environ[CPU_QUOTAS_ENV] = "1"
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..config import workload_socket, workloads_root
    from ._home import hold_home, keep_credentials_aside, prepare_database, watch_database, writable_home

    home = writable_home()
    tls = tls_files(tls_cert, tls_key, tls_self_signed, home, host)
    ca = str(tls[0]) if tls else None  # the CLI verifies this server against its own certificate
    sock = bind_socket(host, port)
    url = f"{'https' if tls else 'http'}://{host}:{sock.getsockname()[1]}"
    db_url = db or default_db_url(home)
    cloud_configs = load_clouds(clouds)
    try:
        hold_home(home)  # before the database is looked at: no restore may swap it from here on
        for note in prepare_database(home, db_url, workloads_root(home), new_database=new_database):
            print(f"fermion: {note}", file=sys.stderr, flush=True)
        from ..api import Platform, create_asgi  # seconds to import (torch): after the checks that refuse at once

        platform = Platform(home, db_url, cloud_configs, public_url=url, server_ca=ca)
        token = platform.bootstrap_admin_token()
    except DBAPIError as exc:  # cannot connect, or the database refused: one line, never the password
        reason = (str(exc.orig or exc).strip().splitlines() or ["no reason given"])[0]
        password = make_url(db_url).password
        if password:
            reason = reason.replace(str(password), "***")
        known = explain_db_error(exc)  # e.g. a full disk: say so, not "is it running?"
        raise UserInputError(f"cannot use the database {display_url(db_url)}: {reason}",
                             hint=known[1] if known else "check that it is running and the URL is right") from None
    if token:
        if (kept := keep_credentials_aside(home)) is not None:  # a new token never overwrites the old silently
            print(f"fermion: a new admin token was made; the old cli.json is kept as {kept}", file=sys.stderr,
                  flush=True)
        save_credentials(url, token, home, ca=ca)
        print(f"fermion: admin token (shown once, saved for the CLI in {home / 'cli.json'}):\n  {token}",
              file=sys.stderr, flush=True)
    else:
        from ._platform import CREDENTIALS

        creds = home / CREDENTIALS
        if creds.exists():  # keep the CLI pointed at this server's address
            import json

            saved = json.loads(creds.read_text())
            save_credentials(url, saved["token"], home, ca=ca)
    if port_file:
        write_port_file(port_file, sock.getsockname()[1])
    tls_note = ""
    if tls:
        tls_note = f"https, {'self-signed certificate' if tls_self_signed else 'certificate'} at {tls[0]}; "
    print(f"fermion: server on {url} ({tls_note}clouds: {', '.join(platform.clouds)}; "
          f"db: {display_url(platform.store.url)})", file=sys.stderr, flush=True)
    networks = {c.network for c in cloud_configs if c.kind == "local"}
    shown = platform.isolation.describe(own_network=None if len(networks) > 1 else networks == {"own"})
    print(f"fermion: workloads in {platform.workloads_root} ({shown})", file=sys.stderr, flush=True)
    app = create_asgi(platform)
    config = uvicorn.Config(app, loop="uvloop", http=BoundedHttpToolsProtocol, log_level=log_level,
                            access_log=False, timeout_graceful_shutdown=10,
                            ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None)
    server = DrainingServer(config)
    platform.stopping = lambda: server.should_exit  # long polls end at once: a stop does not wait for them
    watch_database(db_url, platform.store.engine)  # a SQLite file deleted or replaced: the process exits
    serve_with_workload_socket(server, sock, app, workload_socket(home), log_level)


def serve_with_workload_socket(server: uvicorn.Server, sock: socket.socket, app: ASGIApp, path: Path,
                               log_level: str) -> None:
    """Serve ``app`` on ``sock`` and, on the same event loop, its workloads' part on the Unix socket
    at ``path`` (plain HTTP: it never leaves this machine). Both stop when the main server does."""
    import asyncio

    import uvicorn

    from .._unix import listen_unix
    from ..api import WorkloadSocketProtocol, workload_asgi

    class Quiet(uvicorn.Server):  # the main server owns the signals
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    path.parent.mkdir(mode=0o700, exist_ok=True)
    inner = Quiet(uvicorn.Config(workload_asgi(app), loop="uvloop", http=WorkloadSocketProtocol, lifespan="off",
                                 log_level=log_level, access_log=False, timeout_graceful_shutdown=5))
    unix = listen_unix(path)

    async def both() -> None:
        task = asyncio.create_task(inner.serve(sockets=[unix]))
        try:
            await server.serve(sockets=[sock])
        finally:
            inner.should_exit = True
            await task
            with contextlib.suppress(OSError):
                path.unlink()

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(both())
