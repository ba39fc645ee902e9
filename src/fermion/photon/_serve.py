"""Serve a photon with uvicorn on a socket we bind ourselves (so port 0 works and is reported)."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from .._files import write_atomic
from .._limits import GATEWAY_MAX_BODY, BoundedHttpToolsProtocol, limit_bodies
from ._app import build_app
from ._photon import Photon
from ._replica_auth import require_replica_secret


class DrainingServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after draining, so the process dies by the signal; we exit 0
    instead, so that a supervisor can tell a clean stop from a crash."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind_socket(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A TCP socket bound to (host, port); with ``reuse_port``, one of several processes' sockets
    on the same port (SO_REUSEPORT: the kernel spreads the connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def write_port_file(path: str | Path, port: int) -> None:
    write_atomic(Path(path), str(port))


def serve(
    photon_cls: type[Photon],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    port_file: str | Path | None = None,
    log_level: str = "info",
    graceful_timeout_s: float = 30.0,
    auth_secret: str | None = None,
    listen_fd: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (draining in-flight requests). Returns the exit code:
    0 after a clean shutdown, 1 when ``init()`` failed. With ``auth_secret``, every call but
    /healthz must carry it (the platform's gateway does). With ``listen_fd``, serve on that
    inherited listening socket (a Unix socket its backend bound) instead of ``host:port``."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failed: list[str] = []
    server: DrainingServer | None = None

    def on_init_failure(message: str) -> None:
        failed.append(message)
        if server is not None:
            server.should_exit = True

    app = limit_bodies(build_app(photon_cls, on_init_failure=on_init_failure), limit=GATEWAY_MAX_BODY,
                       upload_limit=GATEWAY_MAX_BODY)
    if auth_secret:
        app = require_replica_secret(app, auth_secret)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout_s,
        lifespan="on",
    )
    server = DrainingServer(config)
    if listen_fd is not None:
        sock = socket.socket(fileno=listen_fd)
        name = sock.getsockname()
        actual = name[1] if isinstance(name, tuple) else 0  # a Unix socket has no port
        where = f"port {actual} of the socket its backend gave it" if actual else "the socket its backend gave it"
    else:
        sock = bind_socket(host, port)
        actual = sock.getsockname()[1]
        where = f"http://{host}:{actual}"
    if port_file:
        write_port_file(port_file, actual)
    print(f"fermion: serving photon {photon_cls.photon_name()!r} on {where}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    if failed:
        print(f"fermion: init() failed: {failed[0]}", file=sys.stderr, flush=True)
        return 1
    return 0
