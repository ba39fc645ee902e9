"""``fermion server``: run the API, the controllers and the gateway."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserInputError

server_app = typer.Typer(help="Run the Fermion server (API + controllers + gateway).", no_args_is_help=True)


@server_app.command("start")
def start(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind; 0 picks a free one.")] = 8400,
    db: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in $FERMION_HOME).")] = None,
    clouds: Annotated[Path | None, typer.Option(help="clouds.yaml naming the clouds to manage.")] = None,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here once listening.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
) -> None:
    """Start the server in the foreground. The first start prints the admin token once."""
    import logging

    import uvicorn

    from ..api import Platform, create_asgi
    from ..clouds import load_clouds
    from ..config import fermion_home
    from ..photon._serve import DrainingServer, bind_socket, write_port_file
    from ..store import default_db_url
    from ._platform import save_credentials

    if db is not None and not db.startswith(("sqlite", "postgresql")):
        raise UserInputError(f"unsupported database URL {db!r}", hint="use sqlite:///path or postgresql://…")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = fermion_home()
    sock = bind_socket(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    platform = Platform(home, db or default_db_url(home), load_clouds(clouds), public_url=url)
    token = platform.bootstrap_admin_token()
    if token:
        save_credentials(url, token, home)
        print(f"fermion: admin token (shown once, saved for the CLI in {home / 'cli.json'}):\n  {token}",
              file=sys.stderr, flush=True)
    else:
        from ._platform import CREDENTIALS

        creds = home / CREDENTIALS
        if creds.exists():  # keep the CLI pointed at this server's address
            import json

            saved = json.loads(creds.read_text())
            save_credentials(url, saved["token"], home)
    if port_file:
        write_port_file(port_file, sock.getsockname()[1])
    print(f"fermion: server on {url} (clouds: {', '.join(platform.clouds)}; db: {platform.store.url})",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(create_asgi(platform), loop="uvloop", http="httptools", log_level=log_level,
                            access_log=False, timeout_graceful_shutdown=10)
    DrainingServer(config).run(sockets=[sock])
