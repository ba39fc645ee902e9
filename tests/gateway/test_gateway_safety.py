"""The gateway against hostile callers and odd replicas: a real gateway served by uvicorn on
loopback, in front of a scripted replica on a raw TCP socket that records every byte it gets.

Each test here failed on main before the security fixes (issue 8, must-fix 1, 2, 5, 6, 7, 9)."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from fermion._limits import BoundedHttpToolsProtocol
from fermion.gateway import Endpoint, Gateway, Route, RoutingTable
from fermion.security import hash_token
from fermion.testing import web

SECRET = "replica-secret-123"


@dataclass
class Seen:
    """One request as the replica received it."""

    head: bytes
    body: bytes

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: bytes) -> list[bytes]:
        return [line.split(b":", 1)[1].strip() for line in self.head.split(b"\r\n")[1:]
                if line.split(b":", 1)[0].strip().lower() == name]


@dataclass
class ScriptedReplica:
    """A keep-alive HTTP/1.1 server whose answer bytes are chosen by ``answer(seen)``."""

    answer: Callable[[Seen], bytes]
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def serve(self) -> socketserver.ThreadingTCPServer:
        replica = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = self.request.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    seen = Seen(head, b"")
                    length = int((seen.header(b"content-length") or [b"0"])[0])
                    while len(buf) < length:
                        data = self.request.recv(65536)
                        if not data:
                            return
                        buf += data
                    seen.body, buf = buf[:length], buf[length:]
                    replica.seen.append(seen)
                    self.request.sendall(replica.answer(seen))

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: " + str(len(body)).encode() + \
        b"\r\n" + extra + b"\r\n" + body


def echo_path(seen: Seen) -> bytes:
    return ok(seen.request_line.split(b" ")[1])


async def not_found(scope, receive, send) -> None:  # noqa: ANN001 - the app behind the gateway
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@contextmanager
def gateway_before(replica: ScriptedReplica, *, header_timeout_s: float = 10.0, **limits: float) -> Iterator[str]:
    """A real gateway on a free loopback port routing /d/pub/ to ``replica``; yields its URL."""
    tcp = replica.serve()
    table = RoutingTable()
    table.publish({"pub": Route("pub", public=True, idempotent=True, token_hash=None,
                                endpoints=[Endpoint("r1", "local", f"http://127.0.0.1:{replica.port}", SECRET)])})
    gateway = Gateway(table, CollectorRegistry(), {}, **limits)  # type: ignore[arg-type]
    try:
        with served(gateway, header_timeout_s) as url:
            yield url
    finally:
        tcp.shutdown()
        tcp.server_close()


@contextmanager
def served(gateway: Gateway, header_timeout_s: float = 10.0) -> Iterator[str]:
    """``gateway`` served by uvicorn on a free loopback port; yields its URL."""
    protocol = type("Protocol", (BoundedHttpToolsProtocol,), {"header_timeout_s": header_timeout_s})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(gateway.wrap(not_found), http=protocol, loop="asyncio",
                                           log_level="error", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def raw_exchange(url: str, data: bytes, wait_s: float = 2.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as conn:
        conn.sendall(data)
        out = b""
        try:
            while chunk := conn.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def test_crlf_in_the_path_cannot_smuggle_a_second_request() -> None:
    replica = ScriptedReplica(echo_path)
    smuggle = (b"GET /d/pub/healthz%20HTTP/1.1%0d%0aHost:%20x%0d%0a%0d%0aGET%20/stolen HTTP/1.1\r\n"
               b"host: gw\r\nconnection: close\r\n\r\n")
    with gateway_before(replica) as url:
        raw_exchange(url, smuggle)
        # the replica got one request, its target still percent-encoded
        assert len(replica.seen) == 1
        assert replica.seen[0].request_line == b"GET /healthz%20HTTP/1.1%0d%0aHost:%20x%0d%0a%0d%0aGET%20/stolen HTTP/1.1"
        # under concurrent traffic, nobody gets an answer meant for another caller
        errors: list[str] = []

        def caller(i: int) -> None:
            with httpx.Client(base_url=url) as http:
                for j in range(40):
                    path = f"/caller-{i}-{j}"
                    r = http.get(f"/d/pub{path}")
                    if r.text != path:
                        errors.append(f"{path} got {r.status_code} {r.text[:60]!r}")

        def attacker() -> None:
            for _ in range(40):
                raw_exchange(url, smuggle, wait_s=0.5)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(6)] + [threading.Thread(target=attacker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert all(s.request_line.count(b" ") == 2 for s in replica.seen)


def test_raw_control_characters_in_the_query_are_refused() -> None:
    replica = ScriptedReplica(echo_path)
    with gateway_before(replica) as url:
        answer = raw_exchange(url, b"GET /d/pub/x?a=\x01b HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400") and replica.seen == []


def test_a_100_continue_never_becomes_the_answer_or_leaks_to_the_next_caller() -> None:
    # an odd replica that sends 100 Continue before every answer
    replica = ScriptedReplica(lambda seen: b"HTTP/1.1 100 Continue\r\n\r\n" + echo_path(seen))
    with gateway_before(replica) as url, httpx.Client(base_url=url) as http:
        first = http.post("/d/pub/first", content=b"x" * 10, headers={"expect": "100-continue"})
        second = http.get("/d/pub/second")
        assert (first.status_code, first.text) == (200, "/first")
        assert (second.status_code, second.text) == (200, "/second")
        assert replica.seen[0].header(b"expect") == []  # the gateway holds the whole body: no Expect upstream


def test_an_answer_nobody_asked_for_is_never_handed_out() -> None:
    # a replica that answers each request twice: the second answer must be dropped with its connection
    replica = ScriptedReplica(lambda seen: echo_path(seen) + ok(b"STALE"))
    with gateway_before(replica) as url, httpx.Client(base_url=url) as http:
        answers = [http.get(f"/d/pub/n{i}").text for i in range(20)]
    assert answers == [f"/n{i}" for i in range(20)]


def test_a_replica_over_its_latency_target_is_retried_and_its_reason_reaches_the_caller() -> None:
    # a batched handler's max_latency_ms refusal: the handler did not run, so the gateway may try
    # again (here the only replica, after a pause), and in the end answers 503, not 502, with why
    body = b'{"error": {"type": "BatchOverloaded", "message": "over capacity: past max_latency_ms of 300"}}'
    refusal = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    replica = ScriptedReplica(lambda seen: refusal)
    with gateway_before(replica) as url, httpx.Client(base_url=url) as http:
        r = http.post("/d/pub/embed", json={"texts": ["a"]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "replica r1: over capacity: past max_latency_ms of 300" in r.json()["error"]["message"]
    assert len(replica.seen) > 1  # tried again before giving up


def test_fermion_credentials_never_reach_the_replica_and_the_replica_secret_does() -> None:
    replica = ScriptedReplica(echo_path)
    with gateway_before(replica) as url, httpx.Client(base_url=url) as http:
        r = http.get("/d/pub/x", headers={"authorization": "Bearer fma_admin-token", "x-fermion-replica-auth": "forged",
                                          "x-fermion-anything": "1", "x-custom": "kept"})
        assert r.status_code == 200
    seen = replica.seen[0]
    assert seen.header(b"authorization") == [] and seen.header(b"x-fermion-anything") == []
    assert seen.header(b"x-fermion-replica-auth") == [SECRET.encode()]
    assert seen.header(b"x-custom") == [b"kept"]


def test_date_and_server_headers_appear_once() -> None:
    replica = ScriptedReplica(lambda seen: ok(b"hi", b"date: Mon, 01 Jan 2024 00:00:00 GMT\r\nserver: replica\r\n"))
    with gateway_before(replica) as url:
        answer = raw_exchange(url, b"GET /d/pub/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").lower()
    assert answer.count(b"\r\ndate:") == 1 and answer.count(b"\r\nserver:") == 1


def test_a_long_unknown_name_is_not_echoed_back() -> None:
    with gateway_before(ScriptedReplica(echo_path)) as url:
        r = web.get(f"{url}/d/{'n' * 10_000}/x")
    assert r.status_code == 404 and len(r.content) < 1024 and "no deployment named" in r.text


def test_bodies_over_the_limit_get_413_and_never_reach_the_replica() -> None:
    replica = ScriptedReplica(echo_path)
    with gateway_before(replica, max_body=1024) as url, httpx.Client(base_url=url) as http:
        assert http.post("/d/pub/x", content=b"x" * 2000).status_code == 413
        # no content-length: counted as it arrives
        assert http.post("/d/pub/x", content=iter([b"x" * 600, b"x" * 600])).status_code == 413
        assert http.post("/d/pub/x", content=b"x" * 100).status_code == 200
    assert len(replica.seen) == 1


def test_a_stalled_body_gets_408() -> None:
    replica = ScriptedReplica(echo_path)
    with gateway_before(replica, body_idle_timeout_s=0.5) as url:
        start = time.monotonic()
        answer = raw_exchange(url, b"POST /d/pub/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\n\r\n0123456789",
                              wait_s=5)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 4 and replica.seen == []


def test_a_slow_request_head_is_cut_off() -> None:
    with gateway_before(ScriptedReplica(echo_path), header_timeout_s=1.0) as url:
        host, port = url.removeprefix("http://").split(":")
        start = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"GET /d/pub/x HTTP/1.1\r\n")
            answer = b""
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                for i in range(20):  # a header line every 0.3 s would hold the connection for ever
                    time.sleep(0.3)
                    conn.sendall(f"x-slow-{i}: y\r\n".encode())
                    conn.setblocking(False)
                    try:
                        answer += conn.recv(65536)
                    except BlockingIOError:
                        pass
                    conn.setblocking(True)
        assert time.monotonic() - start < 5
        assert answer.startswith(b"HTTP/1.1 408")


def test_each_caller_has_its_own_rate_limit() -> None:
    replica = ScriptedReplica(echo_path)
    tcp = replica.serve()
    table = RoutingTable()
    table.publish({"lim": Route("lim", public=False, idempotent=True, token_hash=hash_token("dep-token"),
                                endpoints=[Endpoint("r1", "local", f"http://127.0.0.1:{replica.port}", SECRET)],
                                rate_limit=(2.0, 3.0))})
    gateway = Gateway(table, CollectorRegistry(), {hash_token("admin-token"): None})
    try:
        with served(gateway) as url, httpx.Client(base_url=url) as http:
            statuses = [http.get("/d/lim/x", headers={"authorization": "Bearer dep-token"}).status_code
                        for _ in range(6)]
            assert statuses[:3] == [200, 200, 200] and set(statuses[3:]) == {429}  # a burst of 3, then 2/s
            refused = http.get("/d/lim/x", headers={"authorization": "Bearer dep-token"})
            assert refused.headers["retry-after"] == "1" and "RateLimited" in refused.text
            # another token has a bucket of its own
            assert http.get("/d/lim/x", headers={"authorization": "Bearer admin-token"}).status_code == 200
            time.sleep(0.6)  # refilled by one
            assert http.get("/d/lim/x", headers={"authorization": "Bearer dep-token"}).status_code == 200
    finally:
        tcp.shutdown()
        tcp.server_close()
