"""REST API v1: the link of each agent cloud's agent (`fermion agent start`), which dials out to
the server, and the admin's call that issues its token.

An agent token acts for its own cloud only: it names the cloud and a serial, tagged under the
master key; it opens only these routes, for that cloud, and only while the serial is the cloud's
current one (issuing a new token voids the old). It is no user's token: every other route refuses it.
"""

from __future__ import annotations

import hmac
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from ..backends import AgentBackend
from ..errors import AuthError, ConflictError, NotFoundError, UserInputError, shorten
from ..store import CloudRow
from ._auth import caller
from ._schemas import ERROR_RESPONSES

TOKEN_PREFIX = "fagent-"  # not a user token (fma_): refused everywhere else
MAX_WAIT_S = 25.0
POLL_THREADS = 64  # agent clouds one server drives (a poll holds a thread; a newer poll of a cloud ends its older one)
router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)


def agent_token(p: Any, cloud: str, serial: int) -> str:  # noqa: ANN401 - the Platform
    return f"{TOKEN_PREFIX}{cloud}.{serial}.{p.secrets.mac('agent', f'{cloud}/{serial}')}"


def _agent_backend(request: Request, cloud: str) -> tuple[AgentBackend, Callable[[], bool]]:
    """The cloud's backend, if the request carries its current agent token (else a 401) and this
    server leads (else a 409 naming the leader: only the leader's controllers drive the clouds);
    and a check that the token is still the cloud's current one."""
    p = request.app.state.platform
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    named, _, rest = token.removeprefix(TOKEN_PREFIX).partition(".")
    serial, _, tag = rest.partition(".")
    refused = AuthError("missing, invalid or replaced agent token",
                        hint="get the current one with `fermion cloud agent NAME` (it voids the old one)")
    if not token.startswith(TOKEN_PREFIX) or not hmac.compare_digest(named.encode(), cloud.encode()) \
            or not serial.isdigit() or not p.secrets.check_mac("agent", f"{cloud}/{serial}", tag):
        raise refused
    backend = getattr(p.clouds.get(cloud), "inner", None)
    if not isinstance(backend, AgentBackend):
        raise refused

    def current() -> bool:
        with p.store.session() as s:
            row = s.get(CloudRow, cloud)
            return row is not None and row.agent_serial == int(serial) != 0

    if not current():
        raise refused
    if not p.leads():
        leader = p.leadership.leader_url()
        raise ConflictError("this server does not run the controllers: agents dial in to the one that does",
                            hint=f"the leader is {leader}" if leader else "no server leads now; try again shortly")
    return backend, current


class Poll(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: str = Field(min_length=1, max_length=64, description="the agent process's instance id")
    wait: float = Field(20.0, ge=0, le=MAX_WAIT_S)
    isolation: str = Field("", max_length=500, description="how the agent's machine confines workloads")


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: str = Field(min_length=1, max_length=64)
    results: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)
    workloads: dict[str, dict[str, Any]] | None = Field(None, max_length=100_000,
                                                        description="every workload the agent holds: its status")


@router.get("/agent/{cloud}/config")
def agent_config(request: Request, cloud: str) -> dict[str, Any]:
    """What the agent needs of its cloud's configuration (no store credentials)."""
    backend, _ = _agent_backend(request, cloud)
    return backend.config.model_dump(include={"name", "kind", "regions", "capacity", "pricing", "warm_pool"})


@router.post("/agent/{cloud}/poll")
async def agent_poll(request: Request, cloud: str, body: Poll) -> dict[str, Any]:
    """The agent's long poll: the calls waiting for it, as soon as there are any."""
    backend, current = await anyio.to_thread.run_sync(_agent_backend, request, cloud)
    stopping = request.app.state.platform.stopping  # a stopping server, or a replaced token, ends the poll
    state = request.app.state
    if getattr(state, "agent_polls", None) is None:  # their own threads: held polls never starve the API's
        state.agent_polls = anyio.CapacityLimiter(POLL_THREADS)
    calls = await anyio.to_thread.run_sync(backend.poll, body.agent, body.wait, body.isolation,
                                           lambda: stopping() or not current(), limiter=state.agent_polls)
    return {"calls": calls}


@router.post("/agent/{cloud}/report")
def agent_report(request: Request, cloud: str, body: Report) -> dict[str, bool]:
    """The agent's answers to calls, and the state of the workloads it holds."""
    backend, _ = _agent_backend(request, cloud)
    backend.report(body.agent, body.results, body.workloads)
    return {"ok": True}


@router.get("/agent/{cloud}/archive/{digest}")
def agent_archive(request: Request, cloud: str, digest: str) -> FileResponse:
    """A photon archive a workload of this cloud was started with (no other)."""
    backend, _ = _agent_backend(request, cloud)
    path = backend.archive(digest)
    if path is None or not Path(path).is_file():
        raise NotFoundError(f"no photon archive {shorten(digest)!r} was given to cloud {cloud}")
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/clouds/{name}/agent")
def issue_agent_token(request: Request, name: str) -> dict[str, str]:
    """A new token for the cloud's agent (the old one stops working), and the command that starts it."""
    caller(request).require_admin()
    p = request.app.state.platform
    if name not in p.clouds:
        raise NotFoundError(f"no cloud named {shorten(name)!r}", hint=f"known: {', '.join(sorted(p.clouds))}")
    if not isinstance(p.clouds[name].inner, AgentBackend):
        raise UserInputError(f"cloud {name} is not an agent cloud (kind {p.configs[name].kind})",
                             hint="give it `kind: agent` in clouds.yaml and restart the server")
    with p.store.session() as s:
        row = s.get(CloudRow, name)
        if row is None:
            raise NotFoundError(f"no cloud named {shorten(name)!r}")
        row.agent_serial += 1
        serial = row.agent_serial
        p.store.record(s, "cloud", name, "", "agent token issued", f"agent token {serial} issued; earlier ones void")
    token = agent_token(p, name, serial)
    server = p.public_url or str(request.base_url).rstrip("/")
    command = (f"FERMION_AGENT_TOKEN={shlex.quote(token)} fermion agent start --server {shlex.quote(server)} "
               f"--cloud {shlex.quote(name)} --root /var/lib/fermion-agent/{name}")
    return {"cloud": name, "token": token, "command": command}
