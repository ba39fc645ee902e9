"""A cloud served by an agent that runs inside it (`fermion agent start`) and dials out to the
server: no inbound port on the cloud is needed for control. On the server, this is the cloud's
Backend. Its calls become requests that the agent collects by long-polling and answers on a
second connection; the agent also reports the state of every workload it holds about once a
second, and `status` answers from that report.

Link lost: after LINK_LOST_S (10 s; $FERMION_AGENT_LINK_LOST_S) without a word from the agent,
starts are refused and every workload reads as lost, so the controllers move the work elsewhere. A workload once reported
lost is fenced: the server has replaced it, so when its agent is heard again it is stopped,
never adopted (the verdict, not a clock, decides). An agent that restarts keeps its workloads
(they run in sessions of their own) and is heard again with the same report: nothing restarts."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..clouds import CloudConfig
from ..errors import FermionError
from ._protocol import DeclaredCapacity, Handle, NoSpotCapacity, ProvisionError, Status, Workload

LINK_LOST_ENV = "FERMION_AGENT_LINK_LOST_S"
LINK_LOST_S = 10.0  # silence after which the cloud is unhealthy and its workloads lost (default)
REPORT_FRESH_S = 3.0  # a report older than this is not trusted for a status: the agent is asked
CALL_TIMEOUT_S = 30.0
STATUS_TIMEOUT_S = 5.0  # a status the report lacks: asked in a controller's pass, so not for long
UNCLAIMED_S = 2.0  # a call no poll collects for this long: the agent is gone or restarting
# replicas of an agent cloud listen on its machine's loopback: reached from the server's machine only
# until a per-cloud ingress exists
REPLICA_HOST = "http://127.0.0.1:"
START_TIMEOUT_S = 90.0  # a sandboxed start may take the sandbox's own 20 s, and the archive's fetch
log = logging.getLogger("fermion.backends.agent")


class AgentUnreachable(ProvisionError):
    """The cloud's agent did not answer in time (the link is down or the agent is gone)."""


class AgentReplaced(FermionError):
    """An agent instance a newer one of the same cloud replaced: it must stop serving the cloud."""

    http_status = 410
    exit_code = 4


def workload_to_wire(w: Workload, archive_digest: str | None = None) -> dict[str, Any]:
    """A workload as the agent receives it: the photon archive by its digest (fetched by the agent)."""
    out = asdict(w)
    out["archive"] = archive_digest
    out["writable"] = [str(p) for p in w.writable]
    out["read_only"] = [str(p) for p in w.read_only]
    return out


def workload_from_wire(data: dict[str, Any], archive: Path | None) -> Workload:
    fields = {k: v for k, v in data.items() if k in Workload.__dataclass_fields__}
    fields.update(archive=archive, writable=[Path(p) for p in data.get("writable", [])],
                  read_only=[Path(p) for p in data.get("read_only", [])])
    return Workload(**fields)


def status_to_wire(s: Status) -> dict[str, Any]:
    return asdict(s)


def checked_status(data: Any, cloud: str) -> Status:  # noqa: ANN401 - what an agent sent
    """A status as an agent reported it, taken only as far as it is well formed: the server probes
    readiness itself, and a replica's address is a port on the agent's machine's loopback (an
    agent cannot point the gateway anywhere else)."""
    if not isinstance(data, dict) or not isinstance(data.get("alive"), bool):
        return Status(alive=True, note=f"cloud {cloud}: its agent sent a malformed status")
    code = data.get("exit_code")
    note = data.get("note")
    return Status(alive=data["alive"], url=_loopback_url(data.get("url")),
                  exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                  note=note[:300] if isinstance(note, str) else "", lost=data.get("lost") is True)


def _loopback_url(url: Any) -> str | None:  # noqa: ANN401
    """``http://127.0.0.1:PORT`` for a reported url of that form, else None."""
    if not isinstance(url, str) or not url.startswith(REPLICA_HOST):
        return None
    port = url[len(REPLICA_HOST):]
    return f"{REPLICA_HOST}{int(port)}" if port.isdigit() and 0 < int(port) < 65536 else None


def _archive_digest(path: Path) -> str:
    """The photon's digest, from its manifest: what the agent asks for and checks what it got against."""
    from ..photon.runtime import read_manifest

    return read_manifest(path).sha256


class _Call:
    def __init__(self, op: str, args: dict[str, Any]) -> None:
        self.op, self.args = op, args
        self.done = threading.Event()
        self.value: Any = None
        self.error: str | None = None
        self.kind: str | None = None


class AgentBackend(DeclaredCapacity):
    """The server's side of a cloud whose agent dials out to it."""

    kind = "agent"

    def __init__(self, config: CloudConfig, *, wanted: Callable[[Iterable[str]], set[str]] | None = None) -> None:
        self.name = config.name
        self.config = config
        self.link_lost_s = float(os.environ.get(LINK_LOST_ENV) or LINK_LOST_S)
        # of the workload ids given, those the server still wants running (the rest are stopped
        # when the agent reports them): set by the server, which knows the rows
        self.wanted = wanted
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._outbox: list[tuple[str, _Call]] = []  # not yet collected by the agent
        self._sent: dict[str, _Call] = {}  # collected, waiting for the answer
        self._archives: dict[str, Path] = {}  # the photon archives this cloud was asked to run
        self._report: dict[str, dict[str, Any]] = {}
        self._report_at = 0.0
        self._heard_at = 0.0  # the last word from the agent, of any kind
        self._since = time.monotonic()  # a server that just started gives its agents that long to dial in
        self._agent: str | None = None  # the running agent's instance id
        self._fenced: set[str] = set()  # read as lost, or stopped while out of reach: the database decides their fate
        self._fencing: set[str] = set()  # stops under way for those
        self._replaced: set[str] = set()  # agent instances a newer one replaced: refused
        self._poll_seq = 0  # one poll per cloud: a newer one ends the one held open
        self.isolation = ""  # how the agent's machine confines workloads, as the agent says
        self._reconciled_for: str | None = None
        self._closed = False
        self._polls = 0  # polls held open now: a live agent polls again as soon as one ends
        self._poll_ended = time.monotonic()

    # -- the link -----------------------------------------------------------------------------
    def connected(self) -> bool:
        """Whether the agent was heard from within the link-lost time."""
        return bool(self._heard_at) and time.monotonic() - self._heard_at < self.link_lost_s

    def give_time(self) -> None:
        """Count the agent's silence from now: a server that just began to lead (or serve) gives its
        agents the link-lost time to dial in before their workloads read as lost."""
        self._since = time.monotonic()

    def lost(self) -> bool:
        """Silent for the link-lost time, counted from this server's start if it never heard the agent."""
        return time.monotonic() - max(self._heard_at, self._since) >= self.link_lost_s

    def link_state(self) -> str:
        """A line for `fermion cloud list`: connected, lost (since when) or never seen."""
        if not self._heard_at:
            return "agent not connected since the server started"
        ago = time.monotonic() - self._heard_at
        if ago >= self.link_lost_s:
            return f"agent lost (last heard {ago:.0f}s ago)"
        # connected once the agent's first report was taken in (what it runs, adopted or stopped)
        state = "connected" if self._reconciled_for == self._agent else "connecting"
        return f"agent {state} (instance {self._agent}, last heard {ago:.0f}s ago)"

    def _heard(self, agent: str) -> None:
        """Called under the lock. A new agent instance: the calls sent to the old one are lost, and the
        old one is refused from now on (two agents for one cloud would take it from each other)."""
        if agent in self._replaced:
            raise AgentReplaced(f"agent instance {agent} of cloud {self.name} was replaced by a newer one",
                                hint="stop it: one agent serves a cloud")
        self._heard_at = time.monotonic()
        if agent != self._agent:
            if self._agent is not None:
                log.warning("cloud %s: its agent restarted (%s -> %s)", self.name, self._agent, agent)
                self._replaced.add(self._agent)
            self._agent = agent
            for call in self._sent.values():
                call.error, call.kind = "the cloud's agent restarted before it answered", "unreachable"
                call.done.set()
            self._sent.clear()

    def poll(self, agent: str, wait_s: float, isolation: str = "",
             give_up: Callable[[], bool] = lambda: False) -> list[dict[str, Any]]:
        """The agent's long-poll: the calls waiting for it, as soon as there are any (or none after
        ``wait_s``, or within a second of ``give_up()``: the server stops, or the agent's token was
        replaced; then none is handed out)."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            self._heard(agent)
            self.isolation = isolation[:300] or self.isolation
            self._polls += 1
            self._poll_seq += 1
            mine = self._poll_seq
            self._lock.notify_all()  # the poll held open before this one ends
            try:
                while not self._outbox and not self._closed and not give_up() and agent == self._agent \
                        and mine == self._poll_seq:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    # a poll held open says nothing of the agent (frozen, or cut off): its reports, each second, do
                    self._lock.wait(min(left, 1.0))
                # a poll of an agent instance since replaced (its connection likely dead), or one a newer
                # poll superseded, takes nothing
                current = agent == self._agent and mine == self._poll_seq and not self._closed and not give_up()
                batch, self._outbox = (self._outbox, []) if current else ([], self._outbox)
                for call_id, call in batch:
                    self._sent[call_id] = call
            finally:
                self._polls -= 1
                self._poll_ended = time.monotonic()
        return [{"id": call_id, "op": call.op, "args": call.args} for call_id, call in batch]

    def report(self, agent: str, results: list[dict[str, Any]], workloads: dict[str, dict[str, Any]] | None) -> None:
        """The agent's answers to calls, and (about once a second) the state of every workload it holds."""
        with self._lock:
            self._heard(agent)
            for result in results:
                call = self._sent.pop(str(result.get("id")), None)
                if call is None:
                    continue
                call.value, call.error, call.kind = result.get("value"), result.get("error"), result.get("kind")
                call.done.set()
            if workloads is not None:
                self._report, self._report_at = dict(workloads), time.monotonic()
            reconcile = workloads is not None and self._reconciled_for != agent
            running = {wid for wid, s in self._report.items() if isinstance(s, dict) and s.get("alive") is True}
            self._fenced &= running | self._fencing  # what no longer runs needs no stop
            # a new (or restarted) agent: all it runs is looked at; later, what was read as lost or stopped unheard
            candidates = (running if reconcile else running & self._fenced) - self._fencing
        if candidates:
            unwanted = candidates if self.wanted is None else candidates - self.wanted(candidates)
            with self._lock:
                self._fencing |= unwanted
            for wid in sorted(unwanted):
                threading.Thread(target=self._fence, args=(wid,), daemon=True, name=f"fence-{wid}").start()
        if reconcile:  # after the database answered: a failed query is asked again at the next report
            with self._lock:
                self._reconciled_for = agent

    def _fence(self, wid: str) -> None:
        """Stop a workload the server no longer wants (replaced while its agent was out of reach, or
        stopped then): it never serves again."""
        try:
            self._call("stop", {"handle": {"id": wid}, "force": True}, CALL_TIMEOUT_S)
            log.warning("cloud %s: stopped workload %s, which the server no longer wants (it had been out of reach)",
                        self.name, wid)
        except ProvisionError as exc:
            log.warning("cloud %s: could not stop workload %s yet: %s", self.name, wid, exc)
        finally:
            with self._lock:
                self._fencing.discard(wid)

    def reported(self, wid: str) -> bool:
        """Whether the agent's latest report (fresh enough to answer a status) holds ``wid``."""
        with self._lock:
            return wid in self._report and time.monotonic() - self._report_at < REPORT_FRESH_S

    def archive(self, digest: str) -> Path | None:
        """A photon archive the agent may fetch: only one this cloud was asked to run."""
        with self._lock:
            return self._archives.get(digest)

    def _call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        if not self.connected():
            raise AgentUnreachable(f"cloud {self.name}: {self.link_state()}")
        call = _Call(op, args)
        with self._lock:
            call_id = str(next(self._ids))
            self._outbox.append((call_id, call))
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        while not call.done.wait(0.2):
            with self._lock:
                waiting = any(i == call_id for i, _ in self._outbox)
                # no agent polls for it (gone, or stopped for a restart): say so now, not at the timeout
                unclaimed = waiting and self._polls == 0 and time.monotonic() - self._poll_ended > UNCLAIMED_S
            if unclaimed or self.lost() or time.monotonic() > deadline:
                with self._lock:
                    self._outbox = [(i, c) for i, c in self._outbox if i != call_id]
                    self._sent.pop(call_id, None)
                why = "no agent is polling" if unclaimed else self.link_state() if self.lost() else \
                    f"its agent did not answer {op} within {timeout:g}s"
                raise AgentUnreachable(f"cloud {self.name}: {why}")
        if call.error is not None:
            kind = {"no_spot": NoSpotCapacity, "unreachable": AgentUnreachable}.get(call.kind or "", ProvisionError)
            raise kind(f"cloud {self.name}: {call.error}")
        return call.value

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, workload: Workload) -> Handle:
        digest = None
        if workload.archive is not None:
            try:
                digest = _archive_digest(Path(workload.archive))
            except FermionError as exc:
                raise ProvisionError(f"cloud {self.name}: cannot read the photon archive of {workload.id}: {exc}") from exc
            with self._lock:
                self._archives[digest] = Path(workload.archive)
        with self._lock:
            self._fenced.discard(workload.id)
        handle = self._call("start", {"workload": workload_to_wire(workload, digest)}, START_TIMEOUT_S)
        if not isinstance(handle, dict) or handle.get("id") != workload.id:
            raise ProvisionError(f"cloud {self.name}: its agent answered the start of {workload.id} with no handle "
                                 "for it")
        return handle

    def status(self, handle: Handle) -> Status:
        wid = str(handle["id"])
        if self.lost():
            with self._lock:
                self._fenced.add(wid)
            return Status(alive=False, lost=True, note=f"cloud {self.name}: {self.link_state()}")
        with self._lock:
            fresh = time.monotonic() - self._report_at < REPORT_FRESH_S
            reported = self._report.get(wid) if fresh else None
        if reported is not None:
            return checked_status(reported, self.name)
        if not self.connected():  # a server just started: its agent has a moment to dial in
            return Status(alive=True, note=f"cloud {self.name}: waiting for its agent")
        try:
            return checked_status(self._call("status", {"handle": handle}, STATUS_TIMEOUT_S), self.name)
        except AgentUnreachable:  # a moment's trouble: alive until the link is declared lost
            return Status(alive=True, note=f"cloud {self.name}: its agent did not answer")

    def stop(self, handle: Handle, *, force: bool = False) -> None:
        """Stop now; with the agent out of reach, as soon as it is heard again (if the server still
        does not want the workload then): a stop never waits on a cloud that is gone."""
        try:
            self._call("stop", {"handle": handle, "force": force}, CALL_TIMEOUT_S)
        except AgentUnreachable:
            with self._lock:
                self._fenced.add(str(handle["id"]))
            return
        with self._lock:  # the report says "alive" until the next one: ask the agent instead meanwhile
            self._report.pop(str(handle["id"]), None)

    def logs(self, handle: Handle, tail: int = 200) -> str:
        try:
            return str(self._call("logs", {"handle": handle, "tail": tail}, CALL_TIMEOUT_S))
        except ProvisionError:
            return ""

    def list_workloads(self) -> list[Handle]:
        listed = self._call("list", {}, CALL_TIMEOUT_S)
        return [h for h in listed if isinstance(h, dict) and isinstance(h.get("id"), str)] \
            if isinstance(listed, list) else []

    def close(self) -> None:
        """Release the agent's poll; the agent and its workloads keep running."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
