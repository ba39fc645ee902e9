"""Limits every Fermion HTTP server enforces: request heads and bodies arrive in bounded time
and bounded size, so one slow or greedy client cannot hold a connection or fill memory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import MutableMapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import send_error
from .types import ASGIApp, Receive, Scope, Send

HEADER_TIMEOUT_S = 10.0  # from the first byte of a request to the end of its head
BODY_IDLE_TIMEOUT_S = 30.0  # longest pause between two pieces of a body
BODY_TOTAL_TIMEOUT_S = 600.0  # a whole body, however it trickles (a 256 MiB upload at 0.5 MB/s)
GATEWAY_MAX_BODY = 32 * 1024 * 1024
API_MAX_BODY = 1024 * 1024
API_MAX_UPLOAD = 256 * 1024 * 1024  # a photon archive (200 MiB of sources at most) in multipart
UPLOAD_PATHS = frozenset({"/api/v1/photons"})
# datasets', jobs' code's and checkpoints' chunks (4 MiB at most) and lists of files come here
UPLOAD_PREFIXES = ("/api/v1/datasets/", "/api/v1/code", "/api/v1/attempts/self/")
CHUNK_BODY = 4 * 1024 * 1024 + 64 * 1024  # a chunk (fermion.data: 4 MiB at most), with room to spare
FILE_LIST_BODY = 64 * 1024 * 1024  # a version's list of files: about 200,000 files


def _setting(name: str, default: int) -> int:
    """A whole number of at least 1 from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {raw[:40]!r}")
    return int(raw)


# the event stream (GET /api/v1/stream): what one caller may hold open, and how far a stream may
# fall behind before it is ended (its client then resumes with ?after=<the last id it read>)
STREAMS_PER_TOKEN = _setting("FERMION_STREAMS_PER_TOKEN", 8)
STREAMS_PER_ADDRESS = _setting("FERMION_STREAMS_PER_ADDRESS", 32)
STREAM_QUEUE = _setting("FERMION_STREAM_QUEUE", 1000)  # events waiting to go out to one stream


def is_upload(path: str) -> bool:
    """Whether a path takes a large body (checked against the token before it is read)."""
    return path in UPLOAD_PATHS or path.startswith(UPLOAD_PREFIXES)


def body_cap(path: str, limit: int, upload_limit: int, upload_paths: frozenset[str]) -> int:
    """The most a request to ``path`` may send."""
    if path in upload_paths:
        return upload_limit
    if path.startswith(UPLOAD_PREFIXES):
        return CHUNK_BODY if "/chunks/" in path else FILE_LIST_BODY
    return limit


class BodyTooLarge(Exception):
    """The request body is over the limit (HTTP 413)."""


class BodyTimeout(Exception):
    """The client paused too long while sending the body (HTTP 408)."""


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for k, v in headers:
        if k == b"content-length":
            return int(v) if v.isdigit() else None
    return None


def body_deadline() -> float:
    """When a body that starts arriving now must have arrived whole (loop time)."""
    return asyncio.get_running_loop().time() + BODY_TOTAL_TIMEOUT_S


async def receive_in_time(receive: Receive, idle_timeout_s: float, deadline: float) -> MutableMapping[str, Any]:
    """The next piece of a body, or BodyTimeout after a pause of ``idle_timeout_s`` or past ``deadline``."""
    try:
        async with asyncio.timeout(min(idle_timeout_s, max(0.0, deadline - asyncio.get_running_loop().time()))):
            return await receive()
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive in time (a pause over {idle_timeout_s:g}s, or over "
                          f"{BODY_TOTAL_TIMEOUT_S:g}s in all)") from None


async def read_body(headers: list[tuple[bytes, bytes]], receive: Receive, limit: int, idle_timeout_s: float) -> bytes:
    """The whole request body, refused past ``limit`` bytes or a pause of ``idle_timeout_s``."""
    length = declared_length(headers)
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body of {length} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    deadline = body_deadline()
    while True:
        message = await receive_in_time(receive, idle_timeout_s, deadline)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


_CLOSE = ((b"connection", b"close"),)  # a refused body may still be on the connection: never read it as a request


def limit_bodies(app: ASGIApp, *, limit: int = API_MAX_BODY, upload_limit: int = API_MAX_UPLOAD,
                 upload_paths: frozenset[str] = UPLOAD_PATHS, idle_timeout_s: float = BODY_IDLE_TIMEOUT_S) -> ASGIApp:
    """Wrap ``app`` so a body over its limit gets a 413 and a stalled body a 408, before or while
    the app reads it; the app then sees a disconnect and whatever it answers is dropped."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        cap = body_cap(scope["path"], limit, upload_limit, upload_paths)
        length = declared_length(scope["headers"])
        if length is not None and length > cap:
            return await send_error(send, 413, f"request body of {length} bytes is over the limit of {cap} bytes",
                                    "PayloadTooLarge", _CLOSE)
        state = {"size": 0, "refused": False, "started": False}
        deadline = body_deadline()

        async def refuse(status: int, kind: str, message: str) -> MutableMapping[str, Any]:
            if not state["started"]:
                await send_error(send, status, message, kind, _CLOSE)
            state["refused"] = True
            return {"type": "http.disconnect"}

        async def limited_receive() -> MutableMapping[str, Any]:
            if state["refused"]:
                return {"type": "http.disconnect"}
            try:
                message = await receive_in_time(receive, idle_timeout_s, deadline)
            except BodyTimeout as exc:
                return await refuse(408, "RequestTimeout", str(exc))
            state["size"] += len(message.get("body", b""))
            if state["size"] > cap:
                return await refuse(413, "PayloadTooLarge", f"request body is over the limit of {cap} bytes")
            return message

        async def guarded_send(message: MutableMapping[str, Any]) -> None:
            if state["refused"]:
                return  # our error answer went out instead
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await app(scope, limited_receive, guarded_send)

    return guarded


class CoalescingTransport:
    """A transport whose writes of one turn of the event loop leave as one send. uvicorn writes a
    response's head and its body apart: two syscalls and two TCP segments for every small answer
    (a fifth of a gateway's CPU per proxied request), and two reads for whoever receives it."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()  # what was written goes out before the connection closes
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on request heads, and writes coalesced (see
    ``CoalescingTransport``). uvicorn cancels its keep-alive timer on any byte, so without the
    deadline a client that sends a header line every few seconds holds a connection open for ever;
    and it starts no timer on a new connection, so one that never sends a byte would hold its file
    descriptor for ever too: the deadline also runs from the moment a connection opens."""

    header_timeout_s = HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        message = b"request head not received in time"
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                             b"content-length: " + str(len(message)).encode() + b"\r\n\r\n" + message)
        self.transport.close()
