"""Unix sockets by path: where a local replica serves (``http+unix://`` URLs) and where workloads
reach the server's workload API. A workload in its own network namespace has no path to the
host's loopback; a socket file it is handed is its only way in or out.

A socket's path may be longer than the kernel's 107 bytes (a home deep in a test's temporary
folder): such a path is bound and connected through ``/proc/self/fd/<its folder>/<name>``."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import httpx

SCHEME = "http+unix"
MAX_CLIENTS = 256  # pooled clients of replicas on Unix sockets, per ReplicaHTTP
MAX_PATH = 100  # sun_path holds 108 bytes with its NUL; leave room
_folders: dict[str, int] = {}  # folder -> an O_PATH descriptor of it, held for the process's life
_folders_lock = threading.Lock()


def unix_url(path: str | Path) -> str:
    """The URL of an HTTP server on the Unix socket at ``path``."""
    return f"{SCHEME}://{quote(str(path), safe='')}"


def socket_path(url: str) -> str | None:
    """The socket path of an ``http+unix://`` URL (its path part is left out), else None."""
    if not url.startswith(SCHEME + "://"):
        return None
    return unquote(urlsplit(url).netloc)


def reachable(path: str) -> str:
    """``path``, or the same socket named through a held descriptor of its folder where ``path``
    is too long for the kernel."""
    if len(os.fsencode(path)) <= MAX_PATH:
        return path
    folder, name = os.path.split(path)
    with _folders_lock:
        fd = _folders.get(folder)
        if fd is None:
            fd = _folders[folder] = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{name}"


def listen_unix(path: str | Path, *, backlog: int = 2048) -> socket.socket:
    """A listening socket at ``path`` (a stale file there is replaced), its file only for this user.
    Its folder should be this user's alone (0700): between bind and chmod, the folder keeps others out."""
    path = str(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(reachable(path))
        os.chmod(reachable(path), 0o600)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def peer_group(sock: socket.socket) -> str:
    """Who is at the other end of a Unix socket: the cgroups of the connecting process (a
    workload's own, which it cannot leave, where Fermion made one), else its session; "" when the
    kernel does not say."""
    try:
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        with open(f"/proc/{pid}/cgroup") as f:
            groups = f.read()
        return groups if "fermion" in groups else f"session {os.getsid(pid)}"
    except (OSError, struct.error):
        return ""


class Shares:
    """The connections each peer group (see ``peer_group``) holds to a socket workloads share: at
    most ``per_peer`` each and ``in_all`` together, so that no workload can take the socket over."""

    def __init__(self, per_peer: int = 16, in_all: int = 1024) -> None:
        self.per_peer, self.in_all = per_peer, in_all  # 16: a job's shippers hold three at most
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, who: str) -> bool:
        """One more connection for ``who``; False (and nothing taken) past either bound."""
        with self._lock:
            if self._open[who] >= self.per_peer or sum(self._open.values()) >= self.in_all:
                return False
            self._open[who] += 1
            return True

    def give_back(self, who: str) -> None:
        with self._lock:
            self._open[who] -= 1
            if self._open[who] <= 0:
                del self._open[who]


def unix_transport(path: str) -> httpx.HTTPTransport:
    """An httpx transport to the HTTP server on the Unix socket at ``path``."""
    return httpx.HTTPTransport(uds=reachable(path))


class ReplicaHTTP:
    """GETs and POSTs to replicas by their URLs, TCP or ``http+unix://``, with pooled clients."""

    def __init__(self, timeout_s: float, max_connections: int = 32) -> None:
        self._timeout = timeout_s
        self._tcp = httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=max_connections))
        self._unix: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def _client(self, url: str) -> tuple[httpx.Client, str]:
        path = socket_path(url)
        if path is None:
            return self._tcp, url
        stale: list[httpx.Client] = []
        with self._lock:
            client = self._unix.get(path)
            if client is None:
                if len(self._unix) >= MAX_CLIENTS:  # replicas come and go: keep the newest only
                    stale = list(self._unix.values())[: MAX_CLIENTS // 2]
                    self._unix = dict(list(self._unix.items())[MAX_CLIENTS // 2:])
                client = self._unix[path] = httpx.Client(transport=unix_transport(path), timeout=self._timeout)
        for c in stale:
            c.close()
        parts = urlsplit(url)
        return client, "http://localhost" + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:  # noqa: ANN003 - httpx's own
        client, target = self._client(url)
        return client.request(method, target, **kwargs)

    def get(self, url: str, **kwargs) -> httpx.Response:  # noqa: ANN003
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:  # noqa: ANN003
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._tcp.close()
        with self._lock:
            clients, self._unix = list(self._unix.values()), {}
        for c in clients:
            c.close()
