"""The web dashboard's side of the server: ``/ui`` (a static page that holds no data), an
overview of what the caller's token may see, and a live stream of events.

The page logs in with a token and calls the API with it like any client; the server never sets a
cookie, so a page from another site cannot call the API in the user's name. The stream is
server-sent events read with ``fetch`` (an ``EventSource`` cannot send the Authorization header,
and a token in the URL would land in logs).
"""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import func, or_, select

from ..errors import NotFoundError
from ..photon.runtime import error_response
from ..store import TERMINAL_STATES, AttemptRow, CloudRow, DeploymentRow, EventRow, JobRow, ModelVersionRow, ReplicaRow
from ._auth import caller, require_token
from ._routes import _get_deployment, _visible_events, platform
from ..wire import EventOut
from ._schemas import ERROR_RESPONSES
from ._stream import RETRY_AFTER_S, EventStreamResponse, StreamHub, frames

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


def _price(p: Platform, cloud: str | None, spot: bool) -> float:
    if cloud not in p.clouds:  # unplaced, or a cloud no longer configured: no catalog price to charge
        return 0.0
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


@router.get("/lineage")
def lineage(request: Request) -> dict[str, list[dict[str, str]]]:
    """The registry as a graph: data and datasets → the jobs that trained on them → the model
    versions they made → the variants compressed from those → the deployments serving each. Nodes
    have an id, a kind (data, dataset, base, job, model, deployment) and a label; edges join ids."""
    from .. import registry
    from ..security import env_purpose

    p, me = platform(request), caller(request)
    nodes: dict[str, dict[str, str]] = {}
    edges: list[dict[str, str]] = []

    def node(kind: str, key: str, label: str) -> str:
        nid = f"{kind}:{key}"
        nodes.setdefault(nid, {"id": nid, "kind": kind, "label": label})
        return nid

    with p.store.session() as s:
        rows = [r for r in s.scalars(select(ModelVersionRow).order_by(ModelVersionRow.name, ModelVersionRow.version))
                if me.visible(r.project)]
        envs: dict[str, dict[str, str]] = {}

        def env_of(d: DeploymentRow) -> dict[str, str]:
            """A deployment's opened env, once per call; none for one the caller may not see."""
            if d.name not in envs:
                envs[d.name] = p.secrets.open_env(s, d.env, env_purpose("deployment", d.name), missing_ok=True,
                                                  project=d.project) if me.visible(d.project) else {}
            return envs[d.name]

        for r in rows:
            staged = r.stage and r.stage != "none"
            model = node("model", f"{r.name}:{r.version}", f"{r.name}:{r.version}" + (f" ({r.stage})" if staged else ""))
            # a lineage is partly what a job wrote (its result.json): every piece is taken as text
            lin = r.lineage if isinstance(r.lineage, dict) else {}
            job = lin.get("job")
            maker = node("job", str(job), f"job {job}") if job else model
            if maker != model:
                edges.append({"from": maker, "to": model})
            datasets = [d for d in lin.get("datasets") or [] if isinstance(d, dict) and "name" in d]
            inputs = [node("dataset", f"{d['name']}:{d.get('version')}", f"dataset {d['name']} v{d.get('version')}")
                      for d in datasets]
            if not inputs and lin.get("train_sha256"):
                inputs.append(node("data", str(lin["train_sha256"]), f"data {str(lin['train_sha256'])[:12]}"))
            base = str(lin.get("base_model") or "")
            if base:
                inputs.append(node("model", base, base) if ":" in base and "/" not in base
                              else node("base", base, f"base {base.rstrip('/').rsplit('/', 1)[-1]}"))
            if lin.get("parent"):
                parent = str(lin["parent"])
                edges.append({"from": node("model", parent, parent), "to": model,
                              "label": str(lin.get("method") or "variant")})
            edges.extend({"from": i, "to": maker} for i in inputs)
            for d in registry.served_by(s, r, env_of):
                edges.append({"from": model, "to": node("deployment", d, f"deployment {d}")})
    return {"nodes": list(nodes.values()), "edges": edges}


@router.get("/costs")
def costs(request: Request, window_s: float = Query(86_400, gt=0, le=30 * 86_400),
          points: int = Query(48, ge=2, le=1000)) -> dict[str, Any]:
    """Spend over the last ``window_s``, from each cloud's catalog price and how long each replica
    and job attempt ran there (a replica from its creation to its end, an attempt from its start
    to its end): totals per cloud, deployment and job, the cumulative spend per cloud at
    ``points`` times from the first spend in the window to now, and the rate now. What the
    caller may see only."""
    p, me = platform(request), caller(request)
    now = time.time()
    start = now - window_s
    spans: list[tuple[str, str, str, float, float, float]] = []  # (kind, name, cloud, from, to, $/h)
    with p.store.session() as s:
        deployments = {d.name for d in s.scalars(select(DeploymentRow)).all() if me.visible(d.project)}
        for r in s.scalars(select(ReplicaRow).where(ReplicaRow.cloud.is_not(None), or_(
                ReplicaRow.state.not_in(TERMINAL_STATES), ReplicaRow.state_since >= start))):
            if r.deployment in deployments and r.cloud in p.clouds:
                end = r.state_since if r.state in TERMINAL_STATES else now
                spans.append(("deployment", r.deployment, r.cloud, r.created_at, end, _price(p, r.cloud, r.spot)))
        jobs = {j.name for j in s.scalars(select(JobRow)).all() if me.visible(j.project)}
        for a in s.scalars(select(AttemptRow).where(AttemptRow.started_at.is_not(None), or_(
                AttemptRow.ended_at.is_(None), AttemptRow.ended_at >= start))):
            if a.job in jobs and a.cloud in p.clouds:
                spans.append(("job", a.job, a.cloud, a.started_at, a.ended_at or now, _price(p, a.cloud, a.spot)))

    def spent(upto: float) -> dict[tuple[str, str, str], float]:
        out: dict[tuple[str, str, str], float] = {}
        for kind, name, cloud, t0, t1, rate in spans:
            seconds = min(t1, upto) - max(t0, start)
            if seconds > 0:
                out[(kind, name, cloud)] = out.get((kind, name, cloud), 0.0) + rate * seconds / 3600
        return out

    total = spent(now)
    by: dict[str, dict[str, float]] = {"cloud": {}, "deployment": {}, "job": {}}
    for (kind, name, cloud), dollars in total.items():
        by["cloud"][cloud] = by["cloud"].get(cloud, 0.0) + dollars
        by[kind][name] = by[kind].get(name, 0.0) + dollars
    series = []
    first = max(start, min((t0 for *_, t0, _, _ in spans), default=now))  # from the first spend, not an empty day
    for i in range(points):
        at = first + (now - first) * (i + 1) / points
        cumulative: dict[str, float] = {}
        for (_, _, cloud), dollars in spent(at).items():
            cumulative[cloud] = cumulative.get(cloud, 0.0) + dollars
        series.append({"at": round(at, 3), "by_cloud": {c: round(v, 6) for c, v in sorted(cumulative.items())}})
    rounded = {k: {n: round(v, 6) for n, v in sorted(d.items())} for k, d in by.items()}
    return {"window_s": window_s, "total": round(sum(total.values()), 6), "by_cloud": rounded["cloud"],
            "by_deployment": rounded["deployment"], "by_job": rounded["job"], "series": series,
            "per_hour_now": round(sum(rate for *_, t1, rate in spans if t1 >= now), 6)}


# a stream, not a JSON operation: kept out of the OpenAPI schema (and so out of schema fuzzing)
@router.get("/stream", include_in_schema=False)
async def stream(request: Request, after: int | None = Query(None, ge=0, le=2**62),
                 limit_s: float | None = Query(None, gt=0, le=86_400)) -> Response:
    """New events as server-sent events (``event: change``, data: the event as JSON), from the
    event after ``after`` (default: from now on); a comment line every 15 s while nothing happens.
    With ``limit_s``, the stream ends after that many seconds. Every open stream is fed by one
    poller (see ``_stream``); a token and an address hold a bounded number of streams (8 and 32
    by default, ``fermion._limits``: 429 past them), and a stream that falls too far behind, or
    whose token is revoked, ends with ``event: ended`` (its reason, and ``after``: the id to
    resume after)."""
    p, me = platform(request), caller(request)
    hub = StreamHub.of(request.app)
    opened = hub.admit(me, request)
    if isinstance(opened, str):
        refused = error_response(429, opened, "TooManyStreams")
        refused.headers["retry-after"] = str(RETRY_AFTER_S)
        return refused
    try:
        await hub.join(opened)
    except BaseException:
        hub.leave(opened)
        raise
    end = time.monotonic() + limit_s if limit_s is not None else float("inf")
    return EventStreamResponse(hub, opened, frames(hub, opened, after, end, p.stopping))
