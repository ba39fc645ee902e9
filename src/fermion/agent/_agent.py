"""The agent's loop. One connection long-polls the server for calls (start, stop, status, logs,
list); each call runs in a thread of its own and its answer goes back on a second connection,
which also carries, about once a second, the state of every workload the agent holds. The
workloads run in sessions of their own: they outlive the agent, and a restarted agent adopts
them from its handles file and from what its backend finds running."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from .._files import write_atomic
from ..backends import (Backend, Handle, Isolation, LocalBackend, NoSpotCapacity, ProvisionError, WorkloadRelay,
                        status_to_wire, workload_from_wire)
from ..clouds import CloudConfig
from ..errors import FermionError

POLL_WAIT_S = 20.0
REPORT_EVERY_S = 1.0
KEEP_ENDED_S = 600.0  # an ended workload stays in the report this long (the server reads its exit)
RETRY_S = 1.0
HANDLES = "handles.json"
LOGS_MAX_CHARS = 256 << 10  # a log tail in an answer: well within the server's limit on a request body
log = logging.getLogger("fermion.agent")


class AgentError(FermionError):
    """The agent cannot start: the server refused its token, or its cloud is not an agent cloud."""


class Agent:
    """Serves one cloud for the server (or the leading one of ``servers``), from the folder ``root``
    on this machine."""

    def __init__(self, servers: str | list[str], cloud: str, token: str, root: Path, *,
                 isolation: Isolation | None = None, verify: ssl.SSLContext | bool = True) -> None:
        self.cloud, self.root = cloud, root
        # several servers over one database: the agent dials in to the one that leads (the others say 409)
        self.bases = [f"{url.rstrip('/')}/api/v1/agent/{cloud}" for url in ([servers] if isinstance(servers, str)
                                                                              else servers)]
        self.base = self.bases[0]
        self.id = uuid.uuid4().hex[:12]  # this process: the server fails calls sent to an earlier one
        self._http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, verify=verify, timeout=30.0)
        self.fatal: AgentError | None = None  # why the server will not have this agent (it stops)
        self._stop = threading.Event()
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        config = CloudConfig.model_validate(self._get_config())
        (root / "workloads").mkdir(exist_ok=True)
        (root / "state").mkdir(exist_ok=True)
        (root / "archives").mkdir(exist_ok=True)
        isolation = isolation or Isolation()
        self._isolation = isolation.describe()  # told to the server: `fermion cloud list` shows it
        # each workload in a namespace of its own, as on a local cloud: jobs reach the server through this
        # agent's relay (its folder shown in their sandboxes), replicas are handed a port of this machine's
        # loopback, where the server reaches them until agents carry their cloud's traffic (issue 29)
        api_socket = root / "workload-api" / "api.sock"
        api_socket.parent.mkdir(mode=0o700, exist_ok=True)
        self._relay = WorkloadRelay(api_socket, lambda: self.base.split("/api/v1/agent/", 1)[0], verify=verify)
        self.backend: Backend = LocalBackend(config, root / "workloads", server_home=root / "state",
                                             isolation=isolation, hidden=[root / "archives"], api_socket=api_socket,
                                             tcp_replicas=True)
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}  # one call at a time per workload: a stop waits for its start
        self._handles: dict[str, Handle] = self._load_handles()
        self._ended: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="agent-call")

    # -- the server -------------------------------------------------------------------------
    def _get_config(self) -> dict[str, Any]:
        problems = []
        for _ in range(len(self.bases)):
            try:
                answer = self._http.get(f"{self.base}/config")
            except httpx.HTTPError as exc:
                problems.append(f"{self.base}: {exc}")
                self._next_server()
                continue
            if answer.status_code == 409:  # a server that does not lead: the next one
                problems.append(f"{self.base}: {_message(answer)}")
                self._next_server()
                continue
            self._check_refusal(answer)
            answer.raise_for_status()
            return dict(answer.json())
        raise AgentError(f"no server takes this agent now: {'; '.join(problems)}",
                         hint="check --server, and that this machine can reach it")

    def _next_server(self) -> None:
        self.base = self.bases[(self.bases.index(self.base) + 1) % len(self.bases)]

    def _check_refusal(self, answer: httpx.Response) -> None:
        """A server that will not have this agent at all: its token was replaced, or a newer agent
        serves the cloud. Trying again would never help: the agent stops, saying why."""
        if answer.status_code in (401, 403, 404, 410):
            self.fatal = AgentError(f"the server refused this agent: {_message(answer)}")  # its message has the fix
            self._stop.set()
            raise self.fatal

    def _post(self, path: str, body: dict[str, Any], read_timeout: float | None = None) -> Any:
        try:
            answer = self._http.post(f"{self.base}/{path}", json=body,
                                     timeout=httpx.Timeout(30.0, read=read_timeout) if read_timeout
                                     else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError:
            if len(self.bases) > 1:  # that server is gone: another may lead now
                self._next_server()
            raise
        if answer.status_code == 409:
            self._next_server()
        self._check_refusal(answer)
        if answer.status_code >= 400:
            raise httpx.HTTPStatusError(_message(answer), request=answer.request, response=answer)
        return answer.json()

    # -- running ----------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until ``stop()``: the poll in this thread, the report in another."""
        reporter = threading.Thread(target=self._report_loop, daemon=True, name="agent-report")
        reporter.start()
        log.info("agent %s for cloud %s: polling %s", self.id, self.cloud, self.base)
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                calls = self._post("poll", {"agent": self.id, "wait": POLL_WAIT_S, "isolation": self._isolation},
                                   POLL_WAIT_S + 30)["calls"]
            except AgentError:
                break
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("agent %s: the poll failed (%s); trying again", self.id, exc)
                self._stop.wait(RETRY_S)
                continue
            for call in calls:
                self._pool.submit(self._answer, call)
            if not calls and time.monotonic() - began < 1.0:  # a server stopping answers at once: no busy loop
                self._stop.wait(RETRY_S / 2)
        reporter.join(5)
        if self.fatal is not None:
            raise self.fatal

    def stop(self) -> None:
        """End the loops; the workloads keep running."""
        self._stop.set()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.backend.close()
        self._relay.close()
        self._http.close()

    def _answer(self, call: dict[str, Any]) -> None:
        result: dict[str, Any] = {"id": call.get("id")}
        try:
            result["value"] = self._do(str(call.get("op")), dict(call.get("args") or {}))
        except NoSpotCapacity as exc:
            result.update(error=str(exc), kind="no_spot")
        except (ProvisionError, OSError, ValueError, KeyError, TypeError) as exc:
            result.update(error=str(exc) or type(exc).__name__, kind="provision")
        except Exception as exc:  # noqa: BLE001 - the server must hear of it, not wait for a timeout
            log.exception("agent %s: call %s failed", self.id, call.get("op"))
            result.update(error=f"the agent failed: {type(exc).__name__}: {exc}", kind="provision")
        for _ in range(3):  # the answer matters: a lost one leaves the server waiting its call's whole timeout
            try:
                self._post("report", {"agent": self.id, "results": [result]})
                return
            except AgentError:
                return
            except httpx.HTTPError as exc:
                log.warning("agent %s: could not send an answer (%s)", self.id, exc)
                self._stop.wait(RETRY_S)

    def _do(self, op: str, args: dict[str, Any]) -> Any:
        if op == "list":
            return self.backend.list_workloads()
        wid = str(args["workload"]["id"] if op == "start" else args["handle"]["id"])
        with self._lock:
            busy = self._busy.setdefault(wid, threading.Lock())
        with busy:  # a stop that comes while its workload starts waits for the start, then stops it
            if op == "start":
                return self._start(args["workload"])
            handle = self._known(dict(args["handle"]))
            if op == "status":
                return status_to_wire(self.backend.status(handle))
            if op == "stop":
                self.backend.stop(handle, force=bool(args.get("force")))
                return None
            if op == "logs":  # within what one answer may carry
                return self.backend.logs(handle, min(int(args.get("tail", 200)), 5000))[-LOGS_MAX_CHARS:]
        raise ValueError(f"unknown call {op!r}")

    def _known(self, handle: Handle) -> Handle:
        with self._lock:
            return {**self._handles.get(str(handle["id"]), {}), **handle}

    def _start(self, data: dict[str, Any]) -> Handle:
        wid = str(data["id"])
        with self._lock:
            known = self._handles.get(wid)
        if known is not None and self.backend.status(known).alive:
            return known  # the server asked again (its first answer was lost): the same workload
        archive = self._archive(str(data["archive"])) if data.get("archive") else None
        handle = self.backend.start(workload_from_wire(data, archive))
        with self._lock:
            self._handles[wid] = handle
            self._ended.pop(wid, None)
            self._save_handles()
        return handle

    def _archive(self, digest: str) -> Path:
        """The photon archive, fetched from the server once and checked against its digest."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not an archive digest: {digest!r}")
        path = self.root / "archives" / f"{digest}.photon"
        if path.is_file():
            return path
        from ..errors import PhotonLoadError
        from ..photon.runtime import verify_archive

        answer = self._http.get(f"{self.base}/archive/{digest}", timeout=120)
        if answer.status_code >= 400:
            raise ProvisionError(f"cannot fetch photon archive {digest[:12]}: {_message(answer)}")
        fetched = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        try:
            fetched.write_bytes(answer.content)
            try:  # every file against the manifest, and the manifest's digest against the one asked for
                ok = verify_archive(fetched).sha256 == digest
            except PhotonLoadError:
                ok = False
            if not ok:
                raise ProvisionError(f"photon archive {digest[:12]} arrived corrupt (its content does not match)")
            fetched.replace(path)
        finally:
            fetched.unlink(missing_ok=True)
        return path

    # -- the report -------------------------------------------------------------------------
    def _report_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._post("report", {"agent": self.id, "results": [], "workloads": self._statuses()})
            except AgentError:
                return
            except httpx.HTTPError as exc:
                log.warning("agent %s: the report failed (%s)", self.id, exc)
            self._stop.wait(REPORT_EVERY_S)

    def _statuses(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            handles = dict(self._handles)
        now, out, forget = time.monotonic(), {}, []
        for wid, handle in handles.items():
            try:
                status = self.backend.status(handle)
            except (OSError, ValueError) as exc:
                log.warning("agent %s: status of %s failed: %s", self.id, wid, exc)
                continue
            out[wid] = status_to_wire(status)
            if not status.alive:
                ended = self._ended.setdefault(wid, now)
                if now - ended > KEEP_ENDED_S:
                    forget.append(wid)
        if forget:
            with self._lock:
                for wid in forget:
                    self._handles.pop(wid, None)
                    self._ended.pop(wid, None)
                    self._busy.pop(wid, None)
                self._save_handles()
        return out

    def _load_handles(self) -> dict[str, Handle]:
        """What an earlier agent process started here, and whatever else runs in this cloud's folder."""
        handles: dict[str, Handle] = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads((self.root / HANDLES).read_text())
            handles = {str(k): dict(v) for k, v in saved.items() if isinstance(v, dict)}
        for handle in self.backend.list_workloads():
            handles.setdefault(str(handle["id"]), handle)
        return handles

    def _save_handles(self) -> None:
        write_atomic(self.root / HANDLES, json.dumps(self._handles), 0o600)


def _message(answer: httpx.Response) -> str:
    try:
        body = answer.json()
        return str(body.get("error", {}).get("message") or body.get("detail") or body)
    except ValueError:
        return answer.text[:200] or f"HTTP {answer.status_code}"
