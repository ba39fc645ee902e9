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
) -> None:
    """Serve /d/<deployment>/… in the foreground, following the routing table of the servers.

    Needs a server admin's token (FERMION_TOKEN or the CLI's credentials): the table holds replica secrets.

    Serves from the last table it received while the servers are down or restarting.
    """
    import logging

    import uvicorn
    from prometheus_client import CollectorRegistry

    from .._limits import BoundedHttpToolsProtocol
    from ..gateway import UNSENT_ANSWERS, Gateway, LoadReporter, RoutingTable, TableFeed, VersionTraffic, standalone_app
    from ..photon.runtime import DrainingServer, bind_socket, write_port_file
    from ._platform import load_credentials

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    saved_url, token, ca = load_credentials()
    servers = server or [saved_url]
    for url in servers:
        if not url.startswith(("http://", "https://")):
            raise UserInputError(f"--server {url!r} is not an http(s) URL", hint="e.g. --server http://127.0.0.1:8400")
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
        sock = bind_socket(host, port)
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
