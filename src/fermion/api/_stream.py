"""The event stream's fan-out (``GET /api/v1/stream``): one poller per server process reads what
is new in the store and hands each event to every open stream whose caller may see it.

Each stream used to run a database loop of its own, so many open streams slowed the whole API.
Now a single task, which runs only while a stream is open, reads the new events once per tick in
a worker thread, resolves each event's project once, and puts the event in the bounded queue of
every stream that may see it: a server admin sees everything, every caller the clouds' events,
and a project's members that project's deployments, replicas, jobs, attempts, model versions and
pipelines (the rule of ``GET /api/v1/events``). Every 5 s it checks each token that holds a
stream once, however many streams it holds, and ends the streams of a token that was revoked,
expired or lost its user.

A stream that resumes (``?after=ID``) joins the fan-out first, at the poller's cursor, reads its
backlog from the store up to that cursor, then takes what the poller hands it: nothing is lost
or sent twice across the join. A caller holds a bounded number of streams (per token and per
address, ``fermion._limits``: 429 past them), and a stream whose queue fills because its client
reads too slowly is ended with the id to resume from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import StreamingResponse

from .. import _limits
from ..errors import FermionError
from ..store import AttemptRow, DeploymentRow, EventRow, JobRow, ModelVersionRow, PipelineRow, ReplicaRow
from ..wire import EventOut
from ._principal import authenticate

if TYPE_CHECKING:
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

    from ..store import Store
    from ..types import Receive, Scope, Send
    from ._principal import Principal

log = logging.getLogger("fermion.stream")

POLL_S = 0.5  # how often the poller looks for new events
PING_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RECHECK_S = 5.0  # how often the tokens of the open streams are checked again
WAKE_S = 1.0  # how often a quiet stream looks whether its client went away or the server is stopping
BATCH = 500  # events read at a time
RETRY_AFTER_S = 5  # what a refused stream is told to wait
CUT_OFF_S = 10.0  # a stream ended for falling behind whose client still reads nothing is closed after this
PUBLIC_KIND = "cloud"  # events every caller may see
INVALID_TOKEN = "the token is no longer valid"
EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Event:
    """A new event as every stream sends it, with the project that decides who may see it."""

    __slots__ = ("id", "kind", "project", "frame")

    def __init__(self, id: int, kind: str, project: str | None, frame: bytes) -> None:  # noqa: A002
        self.id = id
        self.kind = kind
        self.project = project  # None: its object belongs to no project (or is gone): server admins only
        self.frame = frame  # the server-sent event, encoded once for every stream

    def visible_to(self, me: Principal) -> bool:
        return me.is_admin or self.kind == PUBLIC_KIND or (self.project is not None and me.visible(self.project))


def read_events(s: Session, after: int, upto: int | None = None, limit: int = BATCH) -> list[Event]:
    """The events after ``after`` (up to ``upto``), oldest first, at most ``limit``, each with its project."""
    q = select(EventRow).where(EventRow.id > after)
    if upto is not None:
        q = q.where(EventRow.id <= upto)
    rows = s.scalars(q.order_by(EventRow.id).limit(limit)).all()
    projects = _projects(s, rows) if rows else {}
    return [Event(r.id, r.kind, projects.get((r.kind, r.object_id)), _frame(r)) for r in rows]


def _frame(row: EventRow) -> bytes:
    data = EventOut.model_validate(row, from_attributes=True).model_dump()
    return f"id: {row.id}\nevent: change\ndata: {json.dumps(data)}\n\n".encode()


def _pairs(s: Session, key: Any, value: Any, keys: Iterable[str]) -> dict[str, str]:
    keys = set(keys)
    return dict(s.execute(select(key, value).where(key.in_(keys))).tuples().all()) if keys else {}


def _projects(s: Session, rows: Sequence[EventRow]) -> dict[tuple[str, str], str]:
    """(kind, object id) -> the project of the object each event is about, as the objects are now:
    a handful of queries per batch of events, whatever the number of streams. Kinds without a
    project (tokens, users, projects, datasets, ...) and objects that are gone are left out."""
    wanted: dict[str, set[str]] = {}
    for r in rows:
        wanted.setdefault(r.kind, set()).add(r.object_id)
    replicas = _pairs(s, ReplicaRow.id, ReplicaRow.deployment, wanted.get("replica", ()))
    attempts = _pairs(s, AttemptRow.id, AttemptRow.job, wanted.get("attempt", ()))
    deployments = _pairs(s, DeploymentRow.name, DeploymentRow.project, wanted.get("deployment", set()) | set(replicas.values()))
    jobs = _pairs(s, JobRow.name, JobRow.project, wanted.get("job", set()) | set(attempts.values()))
    pipelines = _pairs(s, PipelineRow.name, PipelineRow.project, wanted.get("pipeline", ()))
    models: dict[str, str] = {}
    if wanted.get("model"):
        names = {oid.rpartition(":")[0] for oid in wanted["model"]}
        for name, version, project in s.execute(select(ModelVersionRow.name, ModelVersionRow.version,
                                                       ModelVersionRow.project).where(ModelVersionRow.name.in_(names))):
            models[f"{name}:{version}"] = project
    out: dict[tuple[str, str], str] = {}
    for kind, ids in wanted.items():
        for oid in ids:
            if kind == "deployment":
                project = deployments.get(oid)
            elif kind == "replica":
                project = deployments.get(replicas.get(oid, ""))
            elif kind == "job":
                project = jobs.get(oid)
            elif kind == "attempt":
                project = jobs.get(attempts.get(oid, ""))
            elif kind == "model":
                project = models.get(oid)
            elif kind == "pipeline":
                project = pipelines.get(oid)
            else:
                project = None
            if project is not None:
                out[(kind, oid)] = project
    return out


def _authenticate_again(request: Request) -> Principal:
    request.state.principal = None  # authenticate() keeps the first answer for the request
    return authenticate(request, None)


class Stream:
    """One open stream: its caller, where it calls from, and the events waiting to go out to it."""

    def __init__(self, me: Principal, request: Request, address: str) -> None:
        self.me = me  # checked again every RECHECK_S: memberships change what it may see
        self.request = request
        self.token = me.token_id
        self.address = address
        self.queue: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.joined_at = 0  # the poller's cursor when it joined: the backlog ends there, the fan-out starts after
        self.ended: str | None = None  # why the fan-out ended it
        self.closed = False
        self.cancel: anyio.CancelScope | None = None

    def cut_off(self) -> None:
        """Close a stream that was ended but whose client reads nothing (its last write never finishes)."""
        if not self.closed and self.cancel is not None:
            self.cancel.cancel()


class StreamHub:
    """The streams of one server process and the single poller that feeds them."""

    def __init__(self, store: Store, registry: CollectorRegistry | None = None, *,
                 per_token: int | None = None, per_address: int | None = None, queue: int | None = None,
                 poll_s: float = POLL_S, recheck_s: float = RECHECK_S) -> None:
        self.store = store
        self.per_token = per_token or _limits.STREAMS_PER_TOKEN
        self.per_address = per_address or _limits.STREAMS_PER_ADDRESS
        self.queue_limit = queue or _limits.STREAM_QUEUE
        self.poll_s, self.recheck_s = poll_s, recheck_s
        self._open: set[Stream] = set()  # holding a slot
        self._fanout: set[Stream] = set()  # taking events from the poller
        self._by_token: Counter[str] = Counter()
        self._by_address: Counter[str] = Counter()
        self._cursor = 0  # the newest event handed out
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self.reads = 0  # the poller's reads of the store
        self.refused: Counter[str] = Counter()
        self.lagged = 0
        if registry is not None:
            try:
                registry.register(self)  # type: ignore[arg-type]
            except ValueError:  # a second hub on the same registry: the first one's figures stay
                pass

    @classmethod
    def of(cls, app: FastAPI) -> StreamHub:
        """The app's hub, made on first use."""
        hub = getattr(app.state, "streams", None)
        if hub is None:
            platform = app.state.platform
            hub = app.state.streams = cls(platform.store, platform.registry)
        return hub

    @property
    def running(self) -> bool:
        return self._task is not None

    # --- opening and closing streams (all on the event loop) ---

    def admit(self, me: Principal, request: Request) -> Stream | str:
        """A slot for a new stream of this caller, or why it may not have one."""
        address = request.client.host if request.client else ""
        if self._by_token[me.token_id] >= self.per_token:
            self.refused["token"] += 1
            return (f"this token already has {self.per_token} event streams open, the most it may; "
                    "close one (or use another token) and try again")
        if self._by_address[address] >= self.per_address:
            self.refused["address"] += 1
            return (f"this address already has {self.per_address} event streams open, the most it may; "
                    "close one and try again")
        stream = Stream(me, request, address)
        self._open.add(stream)
        self._by_token[stream.token] += 1
        self._by_address[address] += 1
        return stream

    async def join(self, stream: Stream) -> None:
        """Add ``stream`` to the fan-out, starting the poller if it is the first. Events after
        ``stream.joined_at`` reach it from here on; the ones before are its backlog."""
        async with self._starting:
            if self._task is None:
                self._cursor = await anyio.to_thread.run_sync(self._newest)
                self._task = asyncio.get_running_loop().create_task(self._run(), name="fermion-event-stream")
        # no await from here: the cursor it joins at is the last one handed out
        if not stream.closed:
            stream.joined_at = self._cursor
            self._fanout.add(stream)

    def leave(self, stream: Stream) -> None:
        """Give back the stream's slot (however it ended); the poller stops with the last one."""
        if stream.closed:
            return
        stream.closed = True
        self._open.discard(stream)
        self._fanout.discard(stream)
        stream.queue.clear()
        for counts, key in ((self._by_token, stream.token), (self._by_address, stream.address)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]

    def end(self, stream: Stream, reason: str) -> None:
        """Stop feeding ``stream``: it tells its client why and closes."""
        if stream.closed or stream.ended is not None:
            return
        stream.ended = reason
        self._fanout.discard(stream)
        stream.queue.clear()
        stream.wake.set()

    async def close(self) -> None:
        """End every stream and the poller (the server is stopping)."""
        for stream in list(self._fanout):
            self.end(stream, "the server is stopping")
        task = self._task
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # --- the poller ---

    def _newest(self) -> int:
        with self.store.session() as s:
            return int(s.scalar(select(EventRow.id).order_by(EventRow.id.desc()).limit(1)) or 0)

    def _read(self, after: int) -> list[Event]:
        with self.store.session() as s:
            return read_events(s, after)

    async def _run(self) -> None:
        recheck_at = time.monotonic() + self.recheck_s
        try:
            while self._fanout:
                events: list[Event] = []
                try:
                    events = await anyio.to_thread.run_sync(self._read, self._cursor)
                    self.reads += 1
                    self._publish(events)
                    if time.monotonic() >= recheck_at:
                        recheck_at = time.monotonic() + self.recheck_s
                        await self._recheck()
                except Exception:  # a store that is away for a moment: the streams wait, the poller goes on
                    log.exception("the event streams' poller could not read the store; trying again")
                if len(events) < BATCH:  # more waiting: read on at once
                    await asyncio.sleep(self.poll_s)
        finally:
            self._task = None

    def _publish(self, events: list[Event]) -> None:
        """Hand each event to every stream that may see it (on the loop: no stream joins meanwhile)."""
        if not events:
            return
        self._cursor = events[-1].id
        for stream in list(self._fanout):
            me = stream.me
            mine = [e for e in events if e.visible_to(me)]
            if not mine:
                continue
            if len(stream.queue) + len(mine) > self.queue_limit:
                self.lagged += 1
                self.end(stream, "this stream fell too far behind; open it again with ?after= the last id it sent")
                asyncio.get_running_loop().call_later(CUT_OFF_S, stream.cut_off)
                continue
            stream.queue.extend(mine)
            stream.wake.set()

    async def _recheck(self) -> None:
        """Check each token that holds a stream once: revoked, expired or without its user, its
        streams end; otherwise they see what its user may see now."""
        groups: dict[str, list[Stream]] = {}
        for stream in self._fanout:
            groups.setdefault(stream.token, []).append(stream)
        if not groups:
            return
        results = await anyio.to_thread.run_sync(_check_all, [streams[0].request for streams in groups.values()])
        for streams, result in zip(groups.values(), results, strict=True):
            for stream in streams:
                if stream.closed:
                    continue
                if isinstance(result, str):
                    self.end(stream, result)
                elif result is not None:
                    stream.me = result

    def backlog(self, me: Principal, after: int, upto: int) -> tuple[list[Event], int]:
        """The events after ``after`` up to ``upto`` that ``me`` may see (one batch), and where
        the next batch starts (blocking: call it from a worker thread)."""
        with self.store.session() as s:
            events = read_events(s, after, upto)
        cursor = events[-1].id if len(events) == BATCH else upto
        return [e for e in events if e.visible_to(me)], cursor

    # --- metrics (the server's /metrics) ---

    def collect(self) -> Iterable[Any]:
        yield GaugeMetricFamily("fermion_event_streams_open", "Event streams open (GET /api/v1/stream).",
                                value=len(self._open))
        yield GaugeMetricFamily("fermion_event_stream_poller_running", "1 while the streams' poller runs (a stream "
                                "is open), else 0.", value=int(self.running))
        yield CounterMetricFamily("fermion_event_stream_reads", "Reads of new events by the streams' one poller.",
                                  value=self.reads)
        refused = CounterMetricFamily("fermion_event_streams_refused", "Event streams refused with 429, by the "
                                      "limit reached (per token, per address).", labels=["limit"])
        for limit in ("token", "address"):
            refused.add_metric([limit], self.refused[limit])
        yield refused
        yield CounterMetricFamily("fermion_event_streams_lagged", "Event streams ended for falling behind.",
                                  value=self.lagged)


def _check_all(requests: list[Request]) -> list[Principal | str | None]:
    """Each request's token checked again: its caller, why it is no longer valid, or None when
    the store could not tell (the stream goes on)."""
    out: list[Principal | str | None] = []
    for request in requests:
        try:
            out.append(_authenticate_again(request))
        except FermionError:
            out.append(INVALID_TOKEN)
        except Exception:
            log.exception("could not check an event stream's token again")
            out.append(None)
    return out


async def frames(hub: StreamHub, stream: Stream, after: int | None, end_at: float,
                 stopping: Callable[[], bool]) -> AsyncIterator[bytes]:
    """What one stream sends: its backlog (with ``after``), then what the poller hands it, a
    comment line every PING_S while nothing happens; ``event: ended`` when it is ended."""
    request = stream.request
    cursor = stream.joined_at if after is None else after
    yield b": stream open\n\n"
    while cursor < stream.joined_at and stream.ended is None:  # the backlog, a batch at a time
        events, cursor = await anyio.to_thread.run_sync(hub.backlog, stream.me, cursor, stream.joined_at)
        if events:
            yield b"".join(e.frame for e in events)
        if time.monotonic() >= end_at or stopping() or await request.is_disconnected():
            return
    quiet = time.monotonic()
    while True:
        out = []
        while stream.queue:
            event = stream.queue.popleft()
            if event.id > cursor:  # a resume from beyond where it joined skips what it has
                cursor = event.id
                out.append(event.frame)
        if out:
            yield b"".join(out)
            quiet = time.monotonic()
            continue  # more may have come while that went out
        if stream.ended is not None:
            yield f"event: ended\ndata: {json.dumps({'reason': stream.ended, 'after': cursor})}\n\n".encode()
            return
        now = time.monotonic()
        if now >= end_at or stopping() or await request.is_disconnected():
            return
        if now - quiet >= PING_S:
            yield b": ping\n\n"
            quiet = now
        stream.wake.clear()
        if stream.queue or stream.ended is not None:
            continue
        try:
            async with asyncio.timeout(min(WAKE_S, end_at - now)):
                await stream.wake.wait()
        except TimeoutError:
            pass


class EventStreamResponse(StreamingResponse):
    """A stream's server-sent events; its slot is given back however the response ends."""

    def __init__(self, hub: StreamHub, stream: Stream, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=EVENT_STREAM_HEADERS)
        self.hub, self.stream = hub, stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.CancelScope() as cancel:
                self.stream.cancel = cancel
                # not StreamingResponse's own disconnect listener: it waits in receive(), which the
                # body limits (fermion._limits) answer with a disconnect after 30 s; the frames look
                # at request.is_disconnected() each time they wake instead
                await self.stream_response(send)
        finally:
            self.hub.leave(self.stream)
