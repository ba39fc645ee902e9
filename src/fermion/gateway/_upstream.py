"""A lean HTTP/1.1 client for the gateway: pooled keep-alive connections to replicas, parsed by
httptools. httpx's async pool costs several times more CPU per request, and on the gateway's
hot path that CPU is the added latency."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from dataclasses import dataclass, field

import httptools

from .._unix import reachable

IDLE_REUSE_S = 4.0
UNIX = 0  # the port of an address whose host is a Unix socket's path
# CR, LF or NUL anywhere in a request head would let one caller write a second request onto a
# pooled connection, whose answer the next caller would then read as its own
_UNSAFE_HEAD = re.compile(rb"[\x00\r\n]")


class UpstreamConnectError(ConnectionError):
    """The replica refused or did not accept the connection: the request never left."""


class UpstreamBrokenError(ConnectionError):
    """The connection broke after the request was sent: the replica may have run it."""


class UnsafeRequestError(ValueError):
    """A request target or header holds a control character; it is never sent."""


@dataclass
class UpstreamResponse:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    keep_alive: bool = True
    complete: bool = False
    head: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    chunks: asyncio.Queue[bytes | None | Exception] = field(default_factory=asyncio.Queue)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    async def body(self) -> bytes:
        parts = []
        while (chunk := await self.chunks.get()) is not None:
            if isinstance(chunk, Exception):
                raise chunk
            parts.append(chunk)
        return b"".join(parts)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.lost = False
        self.idle_since = 0.0
        self.head_only = False  # the pending request is a HEAD: its answer has no body
        self._interim = False  # the message being parsed is a 1xx, not the answer

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is None or self.response.complete:
            self._poison()  # bytes nobody asked for: they must never become someone's answer
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBrokenError(f"bad response from replica: {exc}"))
            self._poison()

    def _poison(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(UpstreamBrokenError("the replica closed the connection"))

    def _fail(self, exc: Exception) -> None:
        r = self.response
        if r is None or r.complete:
            return
        if not r.head.done():
            r.head.set_exception(exc)
        else:
            r.chunks.put_nowait(exc)
        r.complete = True

    # httptools callbacks
    def on_message_begin(self) -> None:
        r = self.response
        if r is None or r.complete:  # a second answer in the same read: not ours to give out
            self._poison()
            raise httptools.HttpParserError("unsolicited response")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.response
        assert r is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:  # the gateway never asks to switch protocols
                self._fail(UpstreamBrokenError("the replica switched protocols"))
                self._poison()
                return
            self._interim = True  # e.g. 100 Continue: the real answer follows on this connection
            r.headers.clear()
            return
        r.status = status
        r.keep_alive = self.parser.should_keep_alive()
        if not r.head.done():
            r.head.set_result(None)
        if self.head_only:  # the parser cannot know a HEAD answer has no body; never reuse
            r.keep_alive = False
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        if not self._interim and not self.response.complete:
            self.response.chunks.put_nowait(body)

    def on_message_complete(self) -> None:
        r = self.response
        assert r is not None
        if self._interim:
            self._interim = False
            return
        if r.complete:
            return
        r.complete = True
        r.chunks.put_nowait(None)

    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes, *, head_only: bool = False) -> UpstreamResponse:
        assert self.transport is not None
        self.response = UpstreamResponse()
        self.head_only = head_only
        self.transport.write(data)
        return self.response


def _time_out(head: asyncio.Future[None]) -> None:
    if not head.done():
        head.set_exception(TimeoutError())


class UpstreamPool:
    """Idle keep-alive connections per replica address."""

    def __init__(self, connect_timeout_s: float = 2.0, max_idle_per_host: int = 256) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Connection]] = defaultdict(list)

    async def _acquire(self, host: str, port: int) -> tuple[_Connection, bool]:
        idle = self._idle[(host, port)]
        loop = asyncio.get_running_loop()
        while idle:
            conn = idle.pop()
            # uvicorn drops keep-alive connections idle for 5 s; never race it with an old one
            if conn.usable and loop.time() - conn.idle_since < IDLE_REUSE_S:
                return conn, True
            if conn.transport is not None:
                conn.transport.close()
        try:
            connecting = loop.create_unix_connection(_Connection, reachable(host)) if port == UNIX else \
                loop.create_connection(_Connection, host, port)
            _, conn = await asyncio.wait_for(connecting, self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn, False

    async def request(
        self, host: str, port: int, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes,
        timeout_s: float,
    ) -> tuple[UpstreamResponse, _Connection]:
        """Send one request; return once the final response head has arrived."""
        lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
        lines.extend(k + b": " + v for k, v in headers)
        if _UNSAFE_HEAD.search(b"\x01".join(lines)) is not None:
            raise UnsafeRequestError("control character in the request target or a header")
        authority = "localhost" if port == UNIX else f"{host}:{port}"
        lines[0] += f"\r\nhost: {authority}\r\ncontent-length: {len(body)}".encode()
        data = b"\r\n".join(lines) + b"\r\n\r\n" + body
        conn, _reused = await self._acquire(host, port)
        response = conn.send(data, head_only=method == "HEAD")
        # one timer on the head's future: asyncio.wait_for(shield(...)) costs two futures, a task
        # switch and its own timer on every request
        timer = asyncio.get_running_loop().call_later(timeout_s, _time_out, response.head)
        try:
            await response.head
        except BaseException:  # broken, timed out, or the caller gone: the connection is no one's now
            conn.transport.close()  # type: ignore[union-attr]
            raise
        finally:
            timer.cancel()
        return response, conn

    def release(self, host: str, port: int, conn: _Connection) -> None:
        r = conn.response
        idle = self._idle[(host, port)]
        if r is not None and r.complete and r.keep_alive and conn.usable and len(idle) < self.max_idle:
            conn.response = None
            conn.idle_since = asyncio.get_running_loop().time()
            idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
