"""A workload's way to its server where the server is not on the workload's machine (a Ray node, an
agent's machine): a Unix socket, shown in the workload's sandbox as the server's workload socket is
on a local cloud, whose requests this relay, outside the sandbox, sends on to the server. A
workload in a network namespace of its own reaches the server this way and no other; and only its
own routes (``/api/v1/attempts/self/…``, ``/api/v1/replicas/self/…``): anything else is answered
404 here and never sent. One request per connection; the body by its Content-Length. A relay
several workloads share (an agent's) caps each one's connections, told apart by their cgroups."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import httpx

from .._limits import API_MAX_UPLOAD
from .._unix import Shares, listen_unix, peer_group

PREFIXES = ("/api/v1/attempts/self/", "/api/v1/replicas/self/")
FORWARDED = (b"authorization", b"content-type", b"accept")
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0  # a body may pause this long, as on the server


def server_ca_context(pem: str) -> ssl.SSLContext:
    """A client context that trusts the server's own certificate ``pem`` (a leaf, as its anchor)."""
    context = ssl.create_default_context(cadata=pem)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class WorkloadRelay:
    """Listens at ``path``; sends each allowed request to ``server`` (a URL, or what gives the
    current one: an agent follows its leader) verified with ``ca_pem`` (or ``verify``) where the
    server serves HTTPS with a certificate of its own, and answers with its answer."""

    def __init__(self, path: Path, server: str | Callable[[], str], ca_pem: str | None = None, *,
                 verify: ssl.SSLContext | bool = True) -> None:
        if ca_pem:
            verify = server_ca_context(ca_pem)
        self._server = server if callable(server) else (lambda: server)
        self._http = httpx.Client(verify=verify, timeout=httpx.Timeout(60))
        self._listening = listen_unix(path)
        self._shares = Shares()  # a hostile workload's threads here are bounded too
        self._closed = False
        threading.Thread(target=self._accept, name="fermion-relay", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listening.shutdown(socket.SHUT_RDWR)
        self._listening.close()
        self._http.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listening.accept()
            except OSError:
                return
            who = peer_group(conn)
            if not self._shares.take(who):  # its share is taken: it tries again later
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn, who), daemon=True).start()

    def _serve(self, conn: socket.socket, who: str) -> None:
        try:
            with conn:
                conn.settimeout(HEAD_TIMEOUT_S)
                head, rest = self._head(conn)
                if head is None:
                    return
                lines = head.split(b"\r\n")
                parts = lines[0].split(b" ")
                if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                    return self._answer(conn, 400, b"not an HTTP/1.1 request")
                method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
                path = unquote(target.split("?", 1)[0])
                if not path.startswith(PREFIXES) or ".." in path or "\\" in path:
                    return self._answer(conn, 404, f"{path[:200]} is not served to workloads".encode())
                headers: dict[str, str] = {}
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    key = name.strip().lower()
                    if key == b"transfer-encoding":
                        return self._answer(conn, 411, b"send the body with a Content-Length")
                    if key == b"content-length":
                        length = int(value.strip())
                    elif key in FORWARDED:
                        headers[key.decode()] = value.strip().decode("latin-1")
                if not 0 <= length <= API_MAX_UPLOAD:
                    return self._answer(conn, 413, b"body too large")
                conn.settimeout(IDLE_TIMEOUT_S)
                body = self._body(conn, rest, length)
                if body is None:
                    return
                try:
                    r = self._http.request(method, self._server().rstrip("/") + target, headers=headers, content=body)
                except httpx.HTTPError as exc:
                    return self._answer(conn, 502, f"the server did not answer: {type(exc).__name__}".encode())
                except (httpx.InvalidURL, UnicodeError):  # control characters in the target, say
                    return self._answer(conn, 400, b"not a request the server could be sent")
                out = [f"HTTP/1.1 {r.status_code} {r.reason_phrase}".encode()]
                if "content-type" in r.headers:
                    out.append(f"content-type: {r.headers['content-type']}".encode())
                out += [f"content-length: {len(r.content)}".encode(), b"connection: close", b"", b""]
                conn.sendall(b"\r\n".join(out) + r.content)
        except (OSError, ValueError):
            pass  # the workload hung up, or sent nonsense: nothing more is owed to it
        finally:
            self._shares.give_back(who)

    @staticmethod
    def _head(conn: socket.socket) -> tuple[bytes | None, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk or len(data) + len(chunk) > MAX_HEAD:
                return None, b""
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    @staticmethod
    def _body(conn: socket.socket, rest: bytes, length: int) -> bytes | None:
        parts, have = [rest[:length]], len(rest[:length])
        while have < length:
            chunk = conn.recv(min(1 << 20, length - have))
            if not chunk:
                return None
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    @staticmethod
    def _answer(conn: socket.socket, status: int, message: bytes) -> None:
        reason = {400: "Bad Request", 404: "Not Found", 411: "Length Required", 413: "Payload Too Large",
                  502: "Bad Gateway"}[status]
        conn.sendall(f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {len(message)}\r\n"
                     f"connection: close\r\n\r\n".encode() + message)
