"""The web dashboard's side of the server: ``/ui`` (a static page that holds no data), an
overview of what the caller's token may see, and a live stream of events.

The page logs in with a token and calls the API with it like any client; the server never sets a
cookie, so a page from another site cannot call the API in the user's name. The stream is
server-sent events read with ``fetch`` (an ``EventSource`` cannot send the Authorization header,
and a token in the URL would land in logs).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import func, select

from ..errors import NotFoundError
from ..store import TERMINAL_STATES, CloudRow, DeploymentRow, EventRow, ReplicaRow
from ._auth import caller, require_token
from ._routes import _get_deployment, _visible_events, platform
from ._schemas import ERROR_RESPONSES, EventOut

if TYPE_CHECKING:
    from ._principal import Principal
    from ._server import Platform

ui_router = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])

STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# the page runs its own script and style only: nothing inline, nothing from elsewhere
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
STREAM_POLL_S = 0.5  # how often the stream looks for new events
STREAM_PING_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RECENT_EVENTS = 30


def _static(name: str) -> bytes:
    return (resources.files("fermion.api") / "static" / name).read_bytes()


@ui_router.get("/ui")
def page() -> Response:
    return Response(_static("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@ui_router.get("/ui/static/{name}")
def static_file(name: str) -> Response:
    if name not in STATIC_TYPES:
        raise NotFoundError(f"no dashboard file named {name[:40]!r}")
    return Response(_static(name), media_type=STATIC_TYPES[name], headers=PAGE_HEADERS)


class CloudSummary(BaseModel):
    name: str
    kind: str
    health: str
    health_reason: str
    capacity: dict[str, float]
    used: dict[str, float]  # by every workload on it
    replicas: int  # live replicas of what the caller may see
    cost_per_hour: float  # of those replicas, at the catalog's price (spot price for spot replicas)


class DeploymentSummary(BaseModel):
    name: str
    project: str
    status: str
    status_reason: str
    replicas: int
    ready: int
    by_cloud: dict[str, int]
    cost_per_hour: float


class Overview(BaseModel):
    at: float
    attention: list[str]  # what is failing, worst first: down clouds, failed deployments
    clouds: list[CloudSummary]
    deployments: list[DeploymentSummary]
    cost_per_hour: float
    events: list[EventOut]
    last_event: int  # where a stream started now would begin


def _price(p: Platform, cloud: str, spot: bool) -> float:
    offering = p.scheduler.offering(cloud)
    return offering.spot_price if spot and offering.spot_price is not None else offering.price


def _overview(p: Platform, me: Principal) -> Overview:
    free = p.scheduler.free()
    with p.store.session() as s:
        deployments = [(d.name, d.project, d.status, d.status_reason or "", d.replicas)
                       for d in s.scalars(select(DeploymentRow).order_by(DeploymentRow.name)).all()
                       if d.status != "DELETING" and me.visible(d.project)]
        live = [(r.deployment, r.cloud, r.spot, r.state) for r in s.scalars(select(ReplicaRow).where(
            ReplicaRow.state.not_in(TERMINAL_STATES), ReplicaRow.deployment.in_([d[0] for d in deployments])))]
        q = select(EventRow).order_by(EventRow.id.desc()).limit(RECENT_EVENTS)
        if not me.is_admin:
            q = q.where(_visible_events(s, me))
        events = [EventOut.model_validate(e, from_attributes=True) for e in reversed(s.scalars(q).all())]
        last_event = s.scalar(select(func.max(EventRow.id))) or 0
        clouds = {c.name: (c.kind, c.health, c.health_reason) for c in s.scalars(select(CloudRow)).all()}
    cloud_out, attention = [], []
    for name in sorted(p.clouds):
        kind, health, reason = clouds.get(name, ("?", "unknown", ""))
        mine = [r for r in live if r[1] == name]
        capacity = p.scheduler.capacity(name)
        cap = {"cpus": capacity["cpus"], "memory_gb": capacity["memory_gb"]}
        cloud_out.append(CloudSummary(
            name=name, kind=kind, health=health, health_reason=reason, capacity=cap,
            used={k: round(cap[k] - free[name][k], 3) for k in cap}, replicas=len(mine),
            cost_per_hour=round(sum(_price(p, name, spot) for _, _, spot, _ in mine), 6)))
        if health != "healthy":
            attention.append(f"cloud {name} is {health}" + (f": {reason}" if reason else ""))
    deployment_out = []
    for name, project, status, status_reason, wanted in deployments:
        replicas = [r for r in live if r[0] == name]
        by_cloud: dict[str, int] = {}
        for _, cloud, _, _ in replicas:
            if cloud:
                by_cloud[cloud] = by_cloud.get(cloud, 0) + 1
        ready = sum(1 for *_, state in replicas if state == "READY")
        deployment_out.append(DeploymentSummary(
            name=name, project=project, status=status, status_reason=status_reason, replicas=wanted, ready=ready,
            by_cloud=by_cloud,
            cost_per_hour=round(sum(_price(p, cloud, spot) for _, cloud, spot, _ in replicas if cloud), 6)))
        if status in ("FAILED", "DEGRADED"):
            attention.append(f"deployment {name} is {status}, {ready}/{wanted} ready"
                             + (f": {status_reason}" if status_reason else ""))
    return Overview(at=time.time(), attention=attention, clouds=cloud_out, deployments=deployment_out,
                    cost_per_hour=round(sum(c.cost_per_hour for c in cloud_out), 6), events=events,
                    last_event=last_event)


@router.get("/overview")
def overview(request: Request) -> Overview:
    """The clouds with their health, capacity in use and running cost, the deployments, and recent
    events: what the caller's token may see, in one call (the dashboard's first page)."""
    return _overview(platform(request), caller(request))


@router.get("/deployments/{name}/series")
def deployment_series(request: Request, name: str,
                      since_s: float | None = Query(None, gt=0, le=86_400)) -> list[dict[str, Any]]:
    """What the deployment's replicas served over time, a point per scrape (every 10 s, 24 h kept):
    requests and 5xx answers per second, p50 and p99 latency in ms, and the same per cloud/version."""
    p = platform(request)
    with p.store.session() as s:
        _get_deployment(s, name, caller(request))
    return p.telemetry.series(name, since_s)


@router.get("/series")
def all_series(request: Request, since_s: float | None = Query(3600, gt=0, le=86_400)) -> dict[str, list[dict[str, Any]]]:
    """The series of every deployment the caller may see (see ``/deployments/{name}/series``)."""
    p, me = platform(request), caller(request)
    with p.store.session() as s:
        names = [d.name for d in s.scalars(select(DeploymentRow)).all() if d.status != "DELETING" and me.visible(d.project)]
    return {name: p.telemetry.series(name, since_s) for name in sorted(names)}


def _events_after(p: Platform, me: Principal, after: int) -> list[dict[str, Any]]:
    with p.store.session() as s:
        q = select(EventRow).where(EventRow.id > after).order_by(EventRow.id).limit(500)
        if not me.is_admin:
            q = q.where(_visible_events(s, me))
        rows = s.scalars(q).all()
        newest = s.scalar(select(func.max(EventRow.id))) or after
        out = [EventOut.model_validate(e, from_attributes=True).model_dump() for e in rows]
    # events the caller may not see still move the cursor on, so they are never looked at again
    return out if out else [{"id": newest, "hidden": True}] if newest > after else []


# a stream, not a JSON operation: kept out of the OpenAPI schema (and so out of schema fuzzing)
@router.get("/stream", include_in_schema=False)
async def stream(request: Request, after: int | None = None,
                 limit_s: float | None = Query(None, gt=0, le=86_400)) -> StreamingResponse:
    """New events as server-sent events (``event: change``, data: the event as JSON), from the
    event after ``after`` (default: from now on); a comment line every 15 s while nothing happens.
    With ``limit_s``, the stream ends after that many seconds."""
    p, me = platform(request), caller(request)
    if after is None:
        after = await anyio.to_thread.run_sync(_newest_event, p)
    end = time.monotonic() + limit_s if limit_s is not None else float("inf")

    async def events() -> AsyncIterator[bytes]:
        cursor, quiet_since = after, time.monotonic()
        yield b": stream open\n\n"
        while time.monotonic() < end and not await request.is_disconnected():
            found = await anyio.to_thread.run_sync(_events_after, p, me, cursor)
            for event in found:
                cursor = max(cursor, int(event["id"]))
                if not event.get("hidden"):
                    yield f"id: {event['id']}\nevent: change\ndata: {json.dumps(event)}\n\n".encode()
                    quiet_since = time.monotonic()
            if time.monotonic() - quiet_since > STREAM_PING_S:
                yield b": ping\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(STREAM_POLL_S)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _newest_event(p: Platform) -> int:
    with p.store.session() as s:
        return s.scalar(select(func.max(EventRow.id))) or 0
