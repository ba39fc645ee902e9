"""``fermion agent``: run a cloud's agent inside that cloud; it dials out to the server."""

from __future__ import annotations

import os
import signal
import ssl
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserInputError

agent_app = typer.Typer(help="Run the agent of an agent cloud, inside that cloud.", no_args_is_help=True)
TOKEN_ENV = "FERMION_AGENT_TOKEN"


@agent_app.command("start")
def start(
    server: Annotated[list[str], typer.Option(
        help="The server's URL, as this machine reaches it (repeat for servers sharing one database: the "
             "agent dials in to the one that leads).")],
    cloud: Annotated[str, typer.Option(help="The agent cloud this agent serves (kind: agent in clouds.yaml).")],
    root: Annotated[Path, typer.Option(help="This cloud's folder on this machine: workloads, logs, archives.")],
    token_file: Annotated[Path | None, typer.Option(
        help=f"A file holding the agent token (default: ${TOKEN_ENV}); `fermion cloud agent NAME` issues one.")] = None,
    ca: Annotated[Path | None, typer.Option(help="The server's CA certificate (PEM), when it serves HTTPS "
                                                 "with a certificate of its own.")] = None,
    allow_unsandboxed: Annotated[bool, typer.Option(
        help="Run workloads unconfined where bubblewrap cannot run (else they are refused).")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the cloud's workloads for the server, in the foreground: the agent long-polls the server
    for what to start and stop (no inbound port is needed) and reports their state each second.

    Workloads run in sessions of their own: stopping or restarting the agent leaves them running,
    and the next agent started on the same --root adopts them.
    """
    import logging

    from ..agent import Agent
    from ..backends import Isolation

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll and report otherwise
    for url in server:
        if not url.startswith(("http://", "https://")):
            raise UserInputError(f"--server {url!r} is not an http(s) URL", hint="e.g. --server https://fermion.example.com")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise UserInputError(f"cannot read the agent token file {token_file}: {exc.strerror or exc}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UserInputError("no agent token", hint=f"set ${TOKEN_ENV} or --token-file; `fermion cloud agent {cloud}` "
                                                    "issues one (on a machine logged in to the server as an admin)")
    verify: ssl.SSLContext | bool = True
    if ca is not None:
        from ..security import ssl_context_from

        verify = ssl_context_from(ca)
    agent = Agent(server, cloud, token, root.resolve(), verify=verify,
                  isolation=Isolation(allow_unsandboxed=allow_unsandboxed or None))

    def stopping(*_: object) -> None:  # out of the poll at once, not at its end (up to 20 s later)
        agent.stop()
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopping)
    try:
        agent.run()
    finally:
        agent.close()
