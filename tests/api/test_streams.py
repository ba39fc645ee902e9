"""The event stream (GET /api/v1/stream) against a real server: one shared poller feeds every
open stream, each event goes once and in order to whoever may see it and to no one else, a
resume with ``after=`` loses and repeats nothing across its join, callers hold a bounded number
of streams (429 past it), a closed stream frees its slot, a revoked token's streams end, and a
stream that falls behind is ended with the id to resume after."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from fermion.photon.runtime import build_archive
from fermion.testing import ServerProc, running_server, web
from tests.support import FIXTURE_PHOTONS

CLOUDS = """clouds:
  - name: alpha
"""


class Reader:
    """One stream over its own connection, read in a thread until it ends or is closed. Once the
    constructor returns with status 200 the stream has joined the server's fan-out."""

    def __init__(self, server: ServerProc, token: str, source: str | None = None, **params: object) -> None:
        url = urlsplit(server.url)
        self.frames: list[dict[str, str]] = []  # each event: its fields (id, event, data)
        self.comments: list[str] = []
        self.done = False
        self.cond = threading.Condition()
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120,
                                               source_address=(source, 0) if source else None)
        self.conn.connect()
        self.sock = self.conn.sock
        query = urlencode(params)
        self.conn.request("GET", "/api/v1/stream" + (f"?{query}" if query else ""),
                          headers={"Authorization": f"Bearer {token}"})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self.body = b""
        if self.status != 200:
            self.body = self.response.read()
            self.done = True
            self.conn.close()
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        frame: dict[str, str] = {}
        try:
            while raw := self.response.readline():
                line = raw.decode().rstrip("\n")
                with self.cond:
                    if not line:
                        if frame:
                            self.frames.append(frame)
                        frame = {}
                    elif line.startswith(":"):
                        self.comments.append(line)
                    else:
                        key, _, value = line.partition(": ")
                        frame[key] = value
                    self.cond.notify_all()
        except (OSError, http.client.HTTPException):
            pass  # closed by the test
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def changes(self) -> list[dict]:
        with self.cond:
            return [json.loads(f["data"]) for f in self.frames if f.get("event") == "change"]

    def ended(self) -> dict | None:
        with self.cond:
            return next((json.loads(f["data"]) for f in self.frames if f.get("event") == "ended"), None)

    def wait(self, predicate: Callable[[Reader], object], timeout: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"stream: {what or 'condition'} not met in {timeout}s; "
                                         f"{len(self.frames)} frames, done={self.done}")
                self.cond.wait(left)

    def close(self) -> None:
        """Go away as a client does: the connection closes under the reader."""
        if self.status == 200:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.thread.join(10)
        self.conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    # the address cap lowered to 12 so that two tokens reach it (every stream here comes from 127.0.0.1)
    with running_server(tmp_path_factory.mktemp("streams") / "home", CLOUDS,
                        env={"FERMION_STREAMS_PER_ADDRESS": "12"}) as server:
        yield server


@pytest.fixture()
def readers(server: ServerProc) -> Iterator[list[Reader]]:
    opened: list[Reader] = []
    yield opened
    for r in opened:
        r.close()
    # the server sees them go within a second or so: the next test starts with every slot free
    server.wait_for(lambda _: metric(server, "fermion_event_streams_open") == 0, timeout=20)


def metric(server: ServerProc, name: str) -> float:
    """The sum of a metric's samples on the server's /metrics."""
    text = web.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.token}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def token(server: ServerProc, name: str, **spec: object) -> dict:
    with server.api() as api:
        r = api.post("/tokens", json={"name": name, **spec})
        assert r.status_code == 201, r.text
        return r.json()


def make_events(server: ServerProc, prefix: str, n: int) -> list[str]:
    """``n`` events (a project created each: a server admin's to see), in order; their names."""
    names = [f"{prefix}-{i}" for i in range(n)]
    with server.api() as api:
        for name in names:
            assert api.post("/projects", json={"name": name}).status_code == 201
    return names


def all_events_after(server: ServerProc, after: int) -> list[int]:
    with server.api() as api:
        return [e["id"] for e in api.get("/events", params={"limit": 1000}).json() if e["id"] > after]


def last_event_id(server: ServerProc) -> int:
    with server.api() as api:
        return api.get("/events", params={"limit": 1}).json()[-1]["id"]


def test_a_token_holds_at_most_8_streams_and_a_closed_one_frees_its_slot(server: ServerProc,
                                                                          readers: list[Reader]) -> None:
    mine = token(server, "eight")["token"]
    for _ in range(8):
        readers.append(Reader(server, mine))
    assert [r.status for r in readers] == [200] * 8
    ninth = Reader(server, mine)
    assert ninth.status == 429
    assert ninth.headers["content-type"].startswith("application/json") and int(ninth.headers["retry-after"]) >= 1
    error = json.loads(ninth.body)["error"]
    assert error["type"] == "TooManyStreams" and "8 event streams" in error["message"]
    assert metric(server, "fermion_event_streams_refused_total") >= 1

    readers.pop(0).close()  # the client goes away: its slot comes free
    deadline = time.monotonic() + 15
    while (again := Reader(server, mine)).status != 200:
        assert again.status == 429 and time.monotonic() < deadline, "a closed stream's slot never came free"
        time.sleep(0.1)
    readers.append(again)
    assert Reader(server, mine).status == 429  # 8 again

    # another token may open its own; the address (12 here) caps the two together
    other = token(server, "other")["token"]
    for _ in range(4):
        readers.append(Reader(server, other))
    assert [r.status for r in readers[-4:]] == [200] * 4
    refused = Reader(server, other)
    assert refused.status == 429 and "this address already has 12" in json.loads(refused.body)["error"]["message"]


def test_one_poller_feeds_every_stream_and_runs_only_while_one_is_open(server: ServerProc,
                                                                       readers: list[Reader]) -> None:
    server.wait_for(lambda _: metric(server, "fermion_event_streams_open") == 0, timeout=20)
    server.wait_for(lambda _: metric(server, "fermion_event_stream_poller_running") == 0, timeout=20)
    mine = token(server, "poll")["token"]
    for _ in range(8):
        readers.append(Reader(server, mine))
    assert metric(server, "fermion_event_stream_poller_running") == 1
    start, t0 = metric(server, "fermion_event_stream_reads_total"), time.monotonic()
    server.wait_for(lambda _: metric(server, "fermion_event_stream_reads_total") >= start + 6, timeout=30)
    reads, elapsed = metric(server, "fermion_event_stream_reads_total") - start, time.monotonic() - t0
    assert reads <= elapsed / 0.5 + 3, f"{reads} reads in {elapsed:.1f}s for 8 streams: not one poller"
    for r in readers:
        r.close()
    server.wait_for(lambda _: metric(server, "fermion_event_stream_poller_running") == 0, timeout=20)
    assert metric(server, "fermion_event_streams_open") == 0


@pytest.fixture(scope="module")
def photon(server: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> str:
    archive = tmp_path_factory.mktemp("photon") / "v.photon"
    build_archive(f"{FIXTURE_PHOTONS}:Versioned", archive)
    with server.api() as api:
        r = api.post("/photons", files={"file": ("v.photon", archive.read_bytes(), "application/zip")})
        assert r.status_code == 201, r.text
        return r.json()["sha256"]


def test_an_event_reaches_every_stream_once_in_order_and_no_one_who_may_not_see_it(
        server: ServerProc, readers: list[Reader], photon: str) -> None:
    with server.api() as api:
        for name in ("ours", "theirs"):
            assert api.post("/projects", json={"name": name}).status_code == 201
        for user, project in (("alice", "ours"), ("bob", "theirs")):
            assert api.post("/users", json={"name": user}).status_code == 201
            assert api.put(f"/projects/{project}/members/{user}", json={"role": "viewer"}).status_code == 200
    alice = token(server, "alice", user="alice")["token"]  # a member of ours
    bob = token(server, "bob", user="bob")["token"]  # of theirs only
    admins = [Reader(server, server.token) for _ in range(4)]
    ours = [Reader(server, alice) for _ in range(4)]
    theirs = [Reader(server, bob) for _ in range(2)]
    readers.extend(admins + ours + theirs)
    assert all(r.status == 200 for r in readers)

    names = [f"ours-{i}" for i in range(5)]
    with server.api() as api:
        for name in names:  # a deployment of project ours each: its members' and the admins'
            r = api.put(f"/deployments/{name}", json={"photon": photon, "replicas": 0, "public": True,
                                                     "project": "ours"})
            assert r.status_code in (200, 201), r.text
        token(server, "admins-only")  # a token's event: server admins only
        # a cloud's events go to everyone: when the last one arrives, every earlier event has been handed out
        assert api.post("/clouds/alpha/fail").status_code == 200
        assert api.post("/clouds/alpha/recover").status_code == 200

    def recovered(r: Reader) -> bool:
        return any(e["kind"] == "cloud" and e["new"] == "healthy" for e in r.changes()) or r.done

    for r in readers:
        r.wait(recovered, what="the cloud's recovery")
    barrier = next(e["id"] for e in admins[0].changes() if e["kind"] == "cloud" and e["new"] == "healthy")

    def upto_barrier(r: Reader) -> list[dict]:  # what came later (the controller's own moves) may still be on its way
        return [e for e in r.changes() if e["id"] <= barrier]

    expected = upto_barrier(admins[0])
    created = [e for e in expected if e["kind"] == "deployment" and e["new"] == "DEPLOYING"]
    assert [e["object_id"] for e in created] == names  # in order
    assert any(e["kind"] == "token" for e in expected)
    for r in admins:
        assert upto_barrier(r) == expected  # once each, in order, the same for every stream
    ids = [e["id"] for e in expected]
    assert ids == sorted(set(ids))
    mine = [e for e in expected if e["kind"] == "cloud" or (e["kind"] == "deployment" and e["object_id"] in names)]
    for r in ours:
        assert upto_barrier(r) == mine
    for r in theirs:
        assert upto_barrier(r) == [e for e in expected if e["kind"] == "cloud"]


def test_a_resume_with_after_loses_and_repeats_nothing_across_its_join(server: ServerProc,
                                                                        readers: list[Reader]) -> None:
    start = last_event_id(server)
    make_events(server, "before", 30)  # the backlog of a stream that resumes from start
    middle = last_event_id(server)
    stop = threading.Event()
    made: list[str] = []

    def churn() -> None:  # events go on while streams join
        with server.api() as api:
            i = 0
            while not stop.is_set():
                assert api.post("/projects", json={"name": f"during-{i}"}).status_code == 201
                made.append(f"during-{i}")
                i += 1

    # server admins' tokens (6 streams each: a token holds at most 8)
    from_start, from_middle = (token(server, name, role="admin")["token"] for name in ("from-start", "from-middle"))
    maker = threading.Thread(target=churn)
    maker.start()
    try:
        for _ in range(6):  # joins at different moments of the flow
            readers.append(Reader(server, from_start, after=start))
            readers.append(Reader(server, from_middle, after=middle))
            assert readers[-1].status == readers[-2].status == 200
            n = len(made)
            deadline = time.monotonic() + 30
            while len(made) < n + 3:  # a few more events before the next join
                assert time.monotonic() < deadline and maker.is_alive()
                time.sleep(0.02)
    finally:
        stop.set()
        maker.join(30)
    make_events(server, "last", 1)
    end = last_event_id(server)
    for r in readers:
        r.wait(lambda r: any(e["id"] == end for e in r.changes()) or r.done, what="the last event")
        assert r.ended() is None
    everything = [i for i in all_events_after(server, start) if i <= end]
    assert len(everything) > 30 + 18
    for r in readers[0::2]:
        assert [e["id"] for e in r.changes() if e["id"] <= end] == everything
    for r in readers[1::2]:
        assert [e["id"] for e in r.changes() if e["id"] <= end] == [i for i in everything if i > middle]
    # a resume from beyond the newest event sends nothing it already has
    ahead = Reader(server, from_middle, after=end + 1000)
    readers.append(ahead)
    make_events(server, "ahead", 3)
    barrier = last_event_id(server)
    readers[0].wait(lambda r: any(e["id"] >= barrier for e in r.changes()), what="the events after the last")
    assert ahead.changes() == [] and ahead.ended() is None


def test_the_streams_of_a_revoked_token_end(server: ServerProc, readers: list[Reader]) -> None:
    made = token(server, "short-lived")
    streams = [Reader(server, made["token"]) for _ in range(3)]
    readers.extend(streams)
    assert all(r.status == 200 for r in streams)
    with server.api() as api:
        assert api.delete(f"/tokens/{made['id']}").status_code == 200
    for r in streams:  # the tokens are checked again every 5 s
        r.wait(lambda r: r.done, timeout=20, what="the end of the stream")
        assert r.ended() == {"reason": "the token is no longer valid", "after": r.ended()["after"]}
    assert Reader(server, made["token"]).status == 401


def test_a_stream_that_falls_behind_is_ended_and_resumes_where_it_was(tmp_path: Path) -> None:
    # a queue of 3 events per stream: a burst of more within one tick (0.5 s) overflows it
    with running_server(tmp_path / "home", CLOUDS, env={"FERMION_STREAM_QUEUE": "3"}) as server:
        start = last_event_id(server)
        slow = Reader(server, server.token, after=start)
        try:
            threads = [threading.Thread(target=make_events, args=(server, f"burst{t}", 15)) for t in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            slow.wait(lambda r: r.done, what="the end of the lagging stream")
            ended = slow.ended()
            assert ended is not None and "fell too far behind" in ended["reason"]
            sent = [e["id"] for e in slow.changes()]
            assert ended["after"] == (sent[-1] if sent else ended["after"])
            assert metric(server, "fermion_event_streams_lagged_total") >= 1
            # resumed as a client would, again each time events that keep coming overflow the small queue
            end, after, got = last_event_id(server), ended["after"], list(sent)
            for _ in range(20):
                if end in got:
                    break
                resumed = Reader(server, server.token, after=after)
                try:
                    resumed.wait(lambda r: r.done or any(e["id"] == end for e in r.changes()), what="the rest")
                    got += [e["id"] for e in resumed.changes()]
                    if resumed.done and (again := resumed.ended()) is not None:
                        after = again["after"]
                finally:
                    resumed.close()
            assert [i for i in got if i <= end] == [i for i in all_events_after(server, start) if i <= end]
        finally:
            slow.close()
