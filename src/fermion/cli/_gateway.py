"""``fermion gateway``: run a gateway process that outlives the server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserInputError

gateway_app = typer.Typer(help="Run gateways: the data plane, apart from the server.", no_args_is_help=True)


@gateway_app.command("start")
def start(
    server: Annotated[list[str] | None, typer.Option(
        "--server", help="A server to follow (repeat for several; the leader is preferred). "
                         "Default: the server in the CLI's credentials.")] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind; 0 picks a free one.")] = 8500,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here once listening.")] = None,
    state: Annotated[Path | None, typer.Option(
        help="Keep the last routing table in this file (mode 0600: it holds replica secrets), so that a "
             "gateway restarted while every server is down still serves.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
    workers: Annotated[int, typer.Option(
        min=1, max=256, help="Gateway processes sharing the port (SO_REUSEPORT), each following the table; "
                             "one Python process proxies on one core. A dead one is restarted.")] = 1,
    reuse_port: Annotated[bool, typer.Option(
        help="Share the port with other gateway processes started with it (SO_REUSEPORT).")] = False,
) -> None:
    """Serve /d/<deployment>/… in the foreground, following the routing table of the servers.

    Needs a server admin's token (FERMION_TOKEN or the CLI's credentials): the table holds replica secrets.

    Serves from the last table it received while the servers are down or restarting.
    """
    if workers > 1:
        raise typer.Exit(_supervise(workers, server, host, port, port_file, state, log_level))
    import logging

    import uvicorn
    from prometheus_client import CollectorRegistry

    from .._limits import BoundedHttpToolsProtocol
    from ..gateway import UNSENT_ANSWERS, Gateway, LoadReporter, RoutingTable, TableFeed, VersionTraffic, standalone_app
    from ..photon.runtime import DrainingServer, bind_socket, write_port_file

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for url in server or []:
        if not url.startswith(("http://", "https://")):
            raise UserInputError(f"--server {url!r} is not an http(s) URL", hint="e.g. --server http://127.0.0.1:8400")
    servers, token, ca = gateway_credentials(server or [])
    verify: object = True
    if ca:
        from ..security import ssl_context_from

        verify = ssl_context_from(ca)
    registry = CollectorRegistry()
    table = RoutingTable()
    gateway = Gateway(table, registry, {}, traffic=VersionTraffic(unsent=UNSENT_ANSWERS))

    def set_admins(admins: dict[str, float | None]) -> None:
        gateway.admin_token_hashes = admins

    feed = TableFeed(servers, token, table, set_admins, state_file=state, verify=verify)  # type: ignore[arg-type]
    if state is not None:
        try:
            state.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserInputError(f"cannot use --state {state}: {exc.strerror or exc}") from None
        if feed.load_state():
            print(f"fermion: gateway: {len(table.routes())} routes from {state}", file=sys.stderr, flush=True)
    try:
        sock = bind_socket(host, port, reuse_port=reuse_port)
    except OSError as exc:
        raise UserInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                             hint="pick another --port, or 0 for a free one") from None
    if port_file:
        write_port_file(port_file, sock.getsockname()[1])
    print(f"fermion: gateway on http://{host}:{sock.getsockname()[1]} following {', '.join(servers)}",
          file=sys.stderr, flush=True)
    reporter = LoadReporter(gateway, feed, token, verify=verify)  # type: ignore[arg-type]
    gateway.on_queue = reporter.now  # a request waits for a replica: the server hears of it at once
    config = uvicorn.Config(standalone_app(gateway, feed, registry, reporter), loop="uvloop", http=BoundedHttpToolsProtocol,
                            log_level=log_level, access_log=False, timeout_graceful_shutdown=10)
    DrainingServer(config).run(sockets=[sock])


def gateway_credentials(servers: list[str]) -> tuple[list[str], str, str | None]:
    """The servers a gateway follows, its token and the CA to verify them with: the CLI's credentials
    (FERMION_URL/FERMION_TOKEN, else cli.json), whose server is followed when ``servers`` is empty;
    ``servers`` given, FERMION_TOKEN alone is enough (no cli.json needed)."""
    import os

    from ..errors import AuthError
    from ._platform import load_credentials

    try:
        saved_url, token, ca = load_credentials()
    except AuthError:
        if not servers:
            raise
        env_token = os.environ.get("FERMION_TOKEN")
        if not env_token:
            raise AuthError(f"no token to follow {', '.join(servers)} with",
                            hint="set FERMION_TOKEN to a server admin's token, or run "
                                 f"`fermion login {servers[0]} --token TOKEN`") from None
        return servers, env_token, os.environ.get("FERMION_CA") or None
    return servers or [saved_url], token, ca


def _supervise(workers: int, servers: list[str] | None, host: str, port: int, port_file: Path | None,
               state: Path | None, log_level: str) -> int:
    """Run ``workers`` gateway processes on one port and keep them running until SIGTERM/SIGINT."""
    import signal
    import subprocess
    import tempfile
    import time

    from ..photon.runtime import bind_socket, write_port_file

    try:  # held, never listening, for the life of the group: the port stays ours while workers restart
        holder = bind_socket(host, port, reuse_port=True, listen=False)
    except OSError as exc:
        raise UserInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                             hint="pick another --port, or 0 for a free one") from None
    port = holder.getsockname()[1]
    ready_dir = Path(tempfile.mkdtemp(prefix="fermion-gateway-"))
    base = [sys.executable, "-m", "fermion", "gateway", "start", "--host", host, "--port", str(port),
            "--reuse-port", "--log-level", log_level]
    for url in servers or []:
        base += ["--server", url]
    if state is not None:
        base += ["--state", str(state)]
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def spawn(i: int) -> subprocess.Popen[bytes]:
        ready = ready_dir / f"worker-{i}"
        ready.unlink(missing_ok=True)
        started[i] = time.monotonic()
        return subprocess.Popen([*base, "--port-file", str(ready)], preexec_fn=_die_with_parent)

    started: dict[int, float] = {}

    procs = [spawn(i) for i in range(workers)]
    try:
        deadline = time.monotonic() + 120
        while not all((ready_dir / f"worker-{i}").exists() for i in range(workers)):
            if stopping or any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                print("fermion: gateway: a worker did not start", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.05)
        if port_file:
            write_port_file(port_file, port)
        print(f"fermion: {workers} gateway workers on http://{host}:{port}", file=sys.stderr, flush=True)
        while not stopping:
            for i, proc in enumerate(procs):
                # a worker that keeps dying is started again at most every 2 s
                if proc.poll() is not None and not stopping and time.monotonic() - started[i] > 2.0:
                    print(f"fermion: gateway worker {proc.pid} exited ({proc.returncode}); starting another",
                          file=sys.stderr, flush=True)
                    procs[i] = spawn(i)
            time.sleep(0.2)
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        holder.close()
        for ready in ready_dir.iterdir():
            ready.unlink()
        ready_dir.rmdir()


def _die_with_parent() -> None:
    """In a worker, before it runs: SIGTERM when its supervisor dies, even by SIGKILL (Linux)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
