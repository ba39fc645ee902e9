"""REST API v1: photons, clouds, deployments, replicas, events, logs."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError

from ..control import promote, roll_back, start_canary
from ..errors import ConflictError, NotFoundError, PermissionDeniedError, PhotonLoadError, UserInputError, shorten
from ..photon.runtime import verify_archive
from ..security import env_purpose, hash_token, new_token
from ..store import (
    TERMINAL_STATES,
    AttemptRow,
    CloudRow,
    DeploymentRow,
    EventRow,
    JobRow,
    ModelVersionRow,
    PhotonRow,
    PipelineRow,
    ReplicaRow,
)
from ..types import NAME_PATTERN
from ._auth import caller, require_token
from ._principal import Principal, require_project
from ..wire import CloudOut, DeploymentOut, EventOut, ReplicaOut
from ._schemas import ERROR_RESPONSES, DeploymentSpec, Resources, ScaleSpec

if TYPE_CHECKING:
    from ._server import Platform

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])


def platform(request: Request) -> Platform:
    return request.app.state.platform


# -- photons -------------------------------------------------------------------------------
@router.post("/photons", status_code=201)
def upload_photon(request: Request, file: UploadFile) -> dict[str, object]:
    """Upload a .photon archive. Every file is checked against the manifest, and the archive is
    kept under the digest computed here, never under a name the client chose. A sync route: the
    copy and the check run in the thread pool, not on the loop that carries the gateway."""
    p = platform(request)
    if not caller(request).can_edit_any():
        raise PermissionDeniedError("uploading a photon needs the editor role in some project")
    with tempfile.NamedTemporaryFile(dir=p.photon_store, suffix=".upload", delete=False) as tmp:
        pass
    try:  # created first, so an upload broken off mid-copy leaves nothing behind
        with open(tmp.name, "wb") as out:
            shutil.copyfileobj(file.file, out)
        try:
            manifest = verify_archive(tmp.name)
        except PhotonLoadError as exc:  # its message names the temporary file: where it lies is the server's business
            message = exc.message.replace(f"photon archive {tmp.name}", "the uploaded photon archive")
            raise type(exc)(message.replace(tmp.name, "the uploaded archive"), hint=exc.hint) from None
        final = p.photon_store / f"{manifest.sha256}.photon"  # sha256 is 64 hex digits (validated)
        if not final.exists():  # content-addressed: an existing archive is never replaced
            Path(tmp.name).replace(final)
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    from ._artifacts import keep_archive

    kept = keep_archive(p, manifest.sha256, final)  # what outlives this server's disk
    _record_photon(p, manifest.sha256, manifest.name, final, manifest.model_dump())
    return {"sha256": manifest.sha256, "name": manifest.name, "handlers": list(manifest.handlers), "stores": kept}


def _record_photon(p: Platform, sha256: str, name: str, archive: Path, manifest: dict[str, object]) -> None:
    """The photon's row, unless it exists: two first uploads of the same photon at once both look,
    find none and insert; the database takes one and the other's IntegrityError means it is there."""
    try:
        with p.store.session() as s:
            if s.get(PhotonRow, sha256) is None:
                s.add(PhotonRow(sha256=sha256, name=name, archive_path=str(archive), manifest=manifest))
    except IntegrityError:
        with p.store.session() as s:
            if s.get(PhotonRow, sha256) is None:  # another constraint failed: not the race, so not ours to hide
                raise


@router.get("/photons")
def list_photons(request: Request) -> list[dict[str, object]]:
    """Every photon for a server admin; for others, those their projects' deployments run."""
    me = caller(request)
    with platform(request).store.session() as s:
        rows = s.scalars(select(PhotonRow).order_by(PhotonRow.created_at)).all()
        if not me.is_admin:
            used = {d.photon_sha256 for d in s.scalars(select(DeploymentRow)).all() if me.visible(d.project)}
            rows = [r for r in rows if r.sha256 in used]
        return [{"sha256": r.sha256, "name": r.name, "created_at": r.created_at} for r in rows]


# -- clouds --------------------------------------------------------------------------------
@router.get("/clouds")
def list_clouds(request: Request) -> list[CloudOut]:
    """The clouds this server manages now (one dropped from clouds.yaml keeps its row, unlisted)."""
    p = platform(request)
    free = p.scheduler.free()
    with p.store.session() as s:
        # counted by the database: a thousand PENDING replicas are not a thousand rows to load here
        counts: dict[str | None, int] = dict(s.execute(  # type: ignore[arg-type]
            select(ReplicaRow.cloud, func.count()).where(ReplicaRow.state.not_in(TERMINAL_STATES))
            .group_by(ReplicaRow.cloud)).all())
        out = []
        for row in s.scalars(select(CloudRow).where(CloudRow.name.in_(list(p.clouds))).order_by(CloudRow.name)).all():
            cfg = p.configs[row.name]
            capacity = p.scheduler.capacity(row.name)
            backend = p.clouds[row.name]
            health, health_reason = (row.health, row.health_reason) if backend.reachable() else \
                ("unhealthy", backend.inner.link_state())  # an agent cloud whose agent is not dialled in
            out.append(CloudOut(
                name=row.name, kind=row.kind, regions=cfg.regions, health=health,
                health_reason=health_reason,
                capacity={"cpus": capacity["cpus"], "memory_gb": capacity["memory_gb"]}, free=free[row.name],
                replicas=counts.get(row.name, 0), inject=cfg.inject.model_dump(),
                isolation=p.isolation.describe(own_network=cfg.network == "own") if row.kind == "local"
                else f"{backend.inner.isolation or 'as its agent reports'}; {backend.inner.link_state()}"
                if row.kind == "agent"
                else "probed on each node (bubblewrap, cgroups, a network namespace for each workload); nodes "
                     "without a sandbox refuse workloads"
                + (" unless allowed" if not p.isolation.allow_unsandboxed else ": allowed unconfined")
                + ("" if getattr(p.clouds[row.name].inner, "authenticated", True)
                   else "; Ray cluster without token authentication: a workload could drain it"),
            ))
        return out


def _cloud(request: Request, name: str) -> str:
    if name not in platform(request).clouds:
        raise NotFoundError(f"no cloud named {shorten(name)!r}",
                            hint=f"known: {', '.join(sorted(platform(request).clouds))}")
    return name


@router.post("/clouds/{name}/fail")
def fail_cloud(request: Request, name: str) -> dict[str, object]:
    """Inject an outage: every replica on the cloud is killed and new ones are refused."""
    caller(request).require_admin()
    p = platform(request)
    p.require_leader("fail a cloud")
    killed = p.controller.fail_cloud(_cloud(request, name), "injected outage")
    attempts = p.jobs.kill_on_cloud(name)
    return {"cloud": name, "killed": killed, "attempts_killed": attempts}


@router.post("/clouds/{name}/recover")
def recover_cloud(request: Request, name: str) -> dict[str, object]:
    caller(request).require_admin()
    platform(request).require_leader("recover a cloud")
    platform(request).scheduler.recover(_cloud(request, name))
    return {"cloud": name, "health": "healthy"}


# -- deployments ---------------------------------------------------------------------------
def _deployment_out(p: Platform, s, d: DeploymentRow, token: str | None = None) -> DeploymentOut:  # noqa: ANN001
    replicas = s.scalars(
        select(ReplicaRow).where(ReplicaRow.deployment == d.name, ReplicaRow.state.not_in(TERMINAL_STATES))
        .order_by(ReplicaRow.created_at)
    ).all()
    photon = s.get(PhotonRow, d.photon_sha256)
    return DeploymentOut(
        name=d.name, project=d.project, photon=d.photon_sha256, photon_name=photon.name if photon else "?",
        generation=d.generation,
        replicas=d.replicas, ready=sum(r.state == "READY" and r.generation == d.generation for r in replicas),
        resources=d.resources, clouds=d.clouds, public=d.public, status=d.status, status_reason=d.status_reason,
        last_error=d.last_error, endpoint=f"{p.public_url}/d/{d.name}", token=token, autoscale=d.autoscale,
        canary=_canary_out(d, replicas), spot=d.spot, placement=d.placement, target=d.target,
        replica_list=[ReplicaOut.model_validate(r, from_attributes=True) for r in replicas],
    )


def _canary_out(d: DeploymentRow, replicas: list[ReplicaRow]) -> dict[str, object] | None:
    if not d.canary:
        return None
    shown = {k: v for k, v in d.canary.items() if k not in ("env", "resources")}  # the env is sealed: not shown
    shown["ready"] = sum(r.state == "READY" and r.generation == d.canary["generation"] for r in replicas)
    return shown


def _get_deployment(s, name: str, me: Principal, role: str = "viewer") -> DeploymentRow:  # noqa: ANN001
    """The deployment, if the caller may see it and has ``role`` in its project."""
    d = s.get(DeploymentRow, name)
    hidden = NotFoundError(f"no deployment named {shorten(name)!r}", hint="see `fermion deployment list`")
    if d is None or d.status == "DELETING":
        raise hidden
    me.require(d.project, role, hidden)
    return d


@router.put("/deployments/{name}")
def put_deployment(request: Request, name: str, spec: DeploymentSpec) -> DeploymentOut:
    """Create a deployment, or update it (a new photon or settings roll out a new generation). With
    ``canary``, the update's photon, resources and env run as a canary beside the running version,
    which keeps every setting it has (replicas, clouds, access, autoscaling, spot, placement, rate
    limit): those of the request are not applied, and a rollback leaves the running version as it was."""
    p = platform(request)
    if not re.match(NAME_PATTERN, name):
        raise UserInputError(f"invalid deployment name {shorten(name)!r}", hint="use lowercase letters, digits and '-'")
    unknown = [c for c in spec.clouds if c not in p.clouds]
    if unknown:
        raise UserInputError(f"unknown cloud(s) {', '.join(unknown)}", hint=f"known: {', '.join(sorted(p.clouds))}")
    me = caller(request)
    with p.store.session() as s:
        d = s.get(DeploymentRow, name)
        project = spec.project or (d.project if d is not None else me.default_project())
        if d is not None:  # the name is taken: only its project's editors may touch it
            me.require(d.project, "editor", NotFoundError(f"deployment name {name!r} is taken", hint="pick another"))
            if project != d.project:
                raise ConflictError(f"deployment {name!r} belongs to project {d.project!r}",
                                    hint="a deployment cannot move between projects; delete it first")
        require_project(s, project, me, "editor")
        photon = s.get(PhotonRow, spec.photon)
        if photon is None:
            raise NotFoundError(f"no photon with sha256 {shorten(spec.photon)}", hint="upload it first (`fermion deploy` does)")
        p.secrets.check_references(s, spec.env, project)
        purpose = env_purpose("deployment", name)
        # what the spec sets, over what the photon declares (a spec asking only for egress keeps the photon's cpus)
        resources = _declared_resources(photon).model_copy(update={
            k: getattr(spec.resources, k) for k in spec.resources.model_fields_set} if spec.resources else {}).model_dump()
        autoscale = spec.autoscale.model_dump() if spec.autoscale else None
        replicas = spec.replicas
        if spec.autoscale is not None:  # the count to start with, within the bounds
            replicas = min(max(replicas, spec.autoscale.min), spec.autoscale.max)
        token = None
        if d is not None and d.status == "DELETING":
            raise UserInputError(f"deployment {name!r} is being deleted", hint="wait for it to finish, then deploy")
        if spec.canary is not None and d is None:
            raise UserInputError("a canary needs a running version to compare with",
                                 hint="deploy it without --canary first; later versions can go out as canaries")
        if d is None:
            token = None if spec.public else new_token("fmd")
            d = DeploymentRow(
                name=name, photon_sha256=spec.photon, replicas=replicas, resources=resources, clouds=spec.clouds,
                autoscale=autoscale, spot=spec.spot.model_dump() if spec.spot else None,
                placement=spec.placement.model_dump() if spec.placement else None,
                env=p.secrets.seal_env(spec.env, purpose), public=spec.public, idempotent=spec.idempotent,
                rate_limit=spec.rate_limit.model_dump() if spec.rate_limit else None,
                token_hash=hash_token(token) if token else None, status="DEPLOYING", generation=1, project=project,
            )
            s.add(d)
            p.store.record(s, "deployment", name, "", "DEPLOYING", f"created with photon {photon.name}")
        else:
            old_env = p.secrets.plain_env(d.env, purpose)  # compare values, not fresh-nonce ciphertexts
            rollout = (d.photon_sha256, d.resources, old_env) != (spec.photon, resources, spec.env)
            if spec.canary is not None and not rollout:
                raise UserInputError(f"nothing to canary: deployment {name!r} already runs this photon with these "
                                     "settings", hint="change the photon, its resources or its env")
            generation = _next_generation(s, d)
            if d.canary and (rollout or spec.canary is not None):  # a newer version replaces the canary
                roll_back(p.store, s, d, "replaced by a newer version")
            if spec.canary is not None:
                start_canary(p.store, s, d, {"photon_sha256": spec.photon, "resources": resources,
                                             "env": p.secrets.seal_env(spec.env, purpose)},
                             spec.canary.model_dump(), generation)
                rollout = False  # the stable version runs on beside it until the verdict
            else:  # a canary is a new version only: the running one keeps its settings (see _apply_settings)
                _apply_settings(d, spec, replicas, autoscale)
            if rollout:
                d.photon_sha256, d.resources, d.env = spec.photon, resources, p.secrets.seal_env(spec.env, purpose)
                d.generation = generation
                p.store.record(s, "deployment", name, d.status, "DEPLOYING", f"rolling out generation {d.generation}")
                d.status = "DEPLOYING"
            elif not p.secrets.is_sealed_env(d.env):  # a row from before encryption: sealed (as it was) on this write
                d.env = p.secrets.seal_env(old_env, purpose)
            if d.status == "FAILED" or rollout:
                d.crash_count, d.next_start_at, d.last_error = 0, 0.0, ""
                if d.status == "FAILED":
                    d.status = "DEPLOYING"
            if not d.public and d.token_hash is None:
                token = new_token("fmd")
                d.token_hash = hash_token(token)
            d.updated_at = time.time()
        s.flush()
        return _deployment_out(p, s, d, token)


def _apply_settings(d: DeploymentRow, spec: DeploymentSpec, replicas: int, autoscale: dict[str, object] | None) -> None:
    """The deployment-wide settings of an update (not of a canary): replicas, clouds, access,
    autoscaling, spot, placement and rate limit. A canary leaves all of them to the running
    version, so that its rollback finds that version exactly as it was (its promotion changes
    the photon, resources and env only)."""
    if spec.autoscale is not None and d.autoscale:  # the autoscaler's count stands, within the new bounds
        replicas = min(max(d.replicas, spec.autoscale.min), spec.autoscale.max)
    d.replicas, d.clouds, d.public, d.idempotent = replicas, spec.clouds, spec.public, spec.idempotent
    d.autoscale = autoscale
    d.spot = spec.spot.model_dump() if spec.spot else None
    d.placement = spec.placement.model_dump() if spec.placement else None
    d.rate_limit = spec.rate_limit.model_dump() if spec.rate_limit else None


def _declared_resources(photon: PhotonRow) -> Resources:
    declared = photon.manifest.get("resources") or {}
    try:
        return Resources(cpus=declared.get("cpus", 1), memory_gb=declared.get("memory_gb", 1))
    except ValueError as exc:
        raise UserInputError(f"photon {photon.name!r} declares invalid resources: {exc}",
                             hint="fix `resources` in the photon class, or pass --cpus/--memory-gb") from None


@router.get("/deployments")
def list_deployments(request: Request) -> list[DeploymentOut]:
    p = platform(request)
    me = caller(request)
    with p.store.session() as s:
        return [_deployment_out(p, s, d) for d in s.scalars(select(DeploymentRow).order_by(DeploymentRow.name)).all()
                if d.status != "DELETING" and me.visible(d.project)]


@router.get("/deployments/{name}")
def get_deployment(request: Request, name: str) -> DeploymentOut:
    p = platform(request)
    with p.store.session() as s:
        return _deployment_out(p, s, _get_deployment(s, name, caller(request)))


@router.post("/deployments/{name}/scale")
def scale_deployment(request: Request, name: str, spec: ScaleSpec) -> DeploymentOut:
    p = platform(request)
    with p.store.session() as s:
        d = _get_deployment(s, name, caller(request), "editor")
        if d.autoscale and not d.autoscale["min"] <= spec.replicas <= d.autoscale["max"]:
            raise UserInputError(f"deployment {name!r} autoscales between {d.autoscale['min']} and "
                                 f"{d.autoscale['max']} replicas; {spec.replicas} is outside",
                                 hint="change the bounds with `fermion deploy ... --min-replicas/--max-replicas`")
        p.store.record(s, "deployment", name, str(d.replicas), str(spec.replicas), "scaled")
        d.replicas = spec.replicas
        if d.status == "FAILED":
            d.status, d.crash_count, d.next_start_at = "DEPLOYING", 0, 0.0
        return _deployment_out(p, s, d)


def _next_generation(s, d: DeploymentRow) -> int:  # noqa: ANN001
    """A number no replica of ``d`` ever had: a new version must not reuse a canary's."""
    used = s.scalar(select(func.max(ReplicaRow.generation)).where(ReplicaRow.deployment == d.name)) or 0
    return max(d.generation, int(d.canary["generation"]) if d.canary else 0, used) + 1


@router.post("/deployments/{name}/promote")
def promote_deployment(request: Request, name: str) -> DeploymentOut:
    """End the canary by hand: it becomes the deployment's version (the stable replicas roll over)."""
    return _end_canary(request, name, promote, "promote")


@router.post("/deployments/{name}/rollback")
def rollback_deployment(request: Request, name: str) -> DeploymentOut:
    """End the canary by hand: its replicas drain, the stable version takes all the traffic."""
    return _end_canary(request, name, roll_back, "roll back")


def _end_canary(request: Request, name: str, verdict, verb: str) -> DeploymentOut:  # noqa: ANN001
    p, me = platform(request), caller(request)
    with p.store.session() as s:
        d = _get_deployment(s, name, me, "editor")
        if not d.canary:
            raise ConflictError(f"deployment {name!r} has no canary to {verb}",
                                hint="start one with `fermion deploy ... --canary PERCENT`")
        verdict(p.store, s, d, f"by hand ({me.user})")
        return _deployment_out(p, s, d)


@router.delete("/deployments/{name}", status_code=202)
def delete_deployment(request: Request, name: str) -> dict[str, str]:
    """Drain every replica, then remove the deployment."""
    p = platform(request)
    with p.store.session() as s:
        d = _get_deployment(s, name, caller(request), "editor")
        p.store.record(s, "deployment", name, d.status, "DELETING", "deleted by user")
        d.status = "DELETING"
    return {"deployment": name, "status": "DELETING"}


class RebalanceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    apply: bool = False
    min_saving: float = Field(0.1, ge=0, le=1, description="move only if the cost falls by this share")
    alpha: float = Field(1.0, ge=0, le=1e6, description="weight of the performance penalty (per 100 ms of latency)")
    beta: float = Field(1.0, ge=0, le=1e6, description="weight of the cost (per $/hour)")


@router.post("/deployments/{name}/rebalance")
def rebalance_deployment(request: Request, name: str, spec: RebalanceSpec) -> dict[str, object]:
    """The optimizer's placement for this deployment now, by alpha * performance + beta * cost; with
    apply, move replicas there one at a time (a new replica is READY before an old one drains) when
    the saving beats min_saving."""
    from ..placement import Objective

    p = platform(request)
    _require_ready(p, name, caller(request), "rebalance")
    out = p.controller.plan_rebalance(name, Objective(alpha=spec.alpha, beta=spec.beta))
    out["applied"] = False
    if spec.apply:
        p.require_leader("move replicas")
    if spec.apply and out["target"] and out["saving"] >= spec.min_saving and out["target"] != out["current"]:
        p.controller.start_rebalance(name, out["target"], f"saving {out['saving']:.0%} of the cost per hour")
        out["applied"] = True
    return out


def _require_ready(p, name: str, me: Principal, verb: str) -> None:  # noqa: ANN001
    with p.store.session() as s:
        d = _get_deployment(s, name, me, "editor")
        if d.status != "READY":
            raise ConflictError(f"deployment {name!r} is {d.status}", hint=f"{verb} a READY deployment")


class MigrateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    clouds: list[str] = Field(min_length=1, max_length=64, description="the clouds the deployment should run on")


@router.post("/deployments/{name}/migrate")
def migrate_deployment(request: Request, name: str, spec: MigrateSpec) -> dict[str, object]:
    """Move a live deployment onto ``clouds``: they become its allowed clouds, and its replicas move
    one at a time to the optimizer's placement over them, each new one READY before an old one drains
    (no request fails). Answers the plan; ``applied`` is false when it already runs there (or, IDLE,
    runs nowhere: its next replica starts there)."""
    p, me = platform(request), caller(request)
    clouds = list(dict.fromkeys(spec.clouds))
    with p.store.session() as s:
        d = _get_deployment(s, name, me, "editor")
        idle = _check_movable(d)
    unknown = [c for c in clouds if c not in p.clouds]
    if unknown:
        raise UserInputError(f"no cloud named {shorten(unknown[0])!r}", hint=f"clouds: {', '.join(sorted(p.clouds))}")
    p.require_leader("move replicas")
    out = p.controller.plan_rebalance(name, clouds=clouds)
    if not out["target"]:
        why = "; ".join(f"{r['cloud']} is {r['reason']}" for r in out["plan"]["rejected"])
        raise ConflictError(f"deployment {name!r} cannot run on {', '.join(clouds)}: "
                            f"{why or out['plan']['infeasible_reason']}", hint="name clouds that are healthy and have room")
    out["applied"] = not idle and out["target"] != out["current"]
    with p.store.session() as s:  # checked again where it is written: a move that began meanwhile wins
        d = _get_deployment(s, name, me, "editor")
        if _check_movable(d) != idle:
            raise ConflictError(f"deployment {name!r} changed while its move was planned", hint="try again")
        old = ", ".join(d.clouds or []) or "any cloud"
        d.clouds = clouds
        if out["applied"]:
            d.target = dict(out["target"])
        p.store.record(s, "deployment", name, d.status, "REBALANCING" if out["applied"] else d.status,
                       f"migrating from {old} to {', '.join(clouds)}" + (f": {out['current']} → {out['target']}"
                                                                         if out["applied"] else ""))
    if out["applied"]:
        p.controller.nudge()
    return out


def _check_movable(d: DeploymentRow) -> bool:
    """Whether ``d`` is IDLE (nothing to move); a 409 unless it is READY or IDLE with no move, canary
    or spot policy under way (those keep replicas the move would not carry)."""
    if d.status not in ("READY", "IDLE"):
        raise ConflictError(f"deployment {d.name!r} is {d.status}", hint="migrate a READY deployment")
    if d.target is not None:
        raise ConflictError(f"deployment {d.name!r} is already moving to {d.target}",
                            hint="wait for the move to end (`fermion deployment status`)")
    if d.canary:
        raise ConflictError(f"deployment {d.name!r} has a canary under way",
                            hint="promote or roll it back first (`fermion deployment promote|rollback`)")
    if d.spot:
        raise ConflictError(f"deployment {d.name!r} runs under a spot policy, which places its replicas itself",
                            hint="redeploy it with --cloud to change its clouds")
    return d.status == "IDLE"


@router.get("/deployments/{name}/logs")
def deployment_logs(request: Request, name: str, tail: int = 100) -> dict[str, str]:
    """The last ``tail`` lines of each live replica's log, by replica id."""
    p = platform(request)
    with p.store.session() as s:
        d = _get_deployment(s, name, caller(request))
        hide = p.secrets.open_env(s, d.env, env_purpose("deployment", name), missing_ok=True, project=d.project).values()
        rows = s.scalars(select(ReplicaRow).where(ReplicaRow.deployment == name).order_by(ReplicaRow.created_at)).all()
        rows = rows[-20:]
    out: dict[str, str] = {}
    for r in rows:  # the backends are asked with no session open (a remote one may be slow)
        if r.handle is not None:
            out[r.id] = p.secrets.redact(p.controller.logs(r, tail), hide)
    return out


@router.get("/replicas")
def list_replicas(request: Request, deployment: str | None = None, all: bool = False) -> list[ReplicaOut]:  # noqa: A002
    me = caller(request)
    with platform(request).store.session() as s:
        q = select(ReplicaRow).order_by(ReplicaRow.created_at)
        if deployment:
            q = q.where(ReplicaRow.deployment == deployment)
        if not all:
            q = q.where(ReplicaRow.state.not_in(TERMINAL_STATES))
        if not me.is_admin:
            q = q.where(ReplicaRow.deployment.in_(_visible_deployments(s, me)))
        return [ReplicaOut.model_validate(r, from_attributes=True) for r in s.scalars(q).all()]


def _visible_deployments(s, me: Principal) -> list[str]:  # noqa: ANN001
    return [d.name for d in s.scalars(select(DeploymentRow)).all() if me.visible(d.project)]


def _visible_events(s, me: Principal):  # noqa: ANN001, ANN202 - a SQL condition
    """The events the caller may read: the clouds', and those of its projects' deployments, their
    replicas, jobs, attempts and model versions, matched by kind and id (names repeat across kinds)."""
    deployments = _visible_deployments(s, me)
    jobs = [j.name for j in s.scalars(select(JobRow)).all() if me.visible(j.project)]
    by_kind = {
        "deployment": deployments,
        "replica": s.scalars(select(ReplicaRow.id).where(ReplicaRow.deployment.in_(deployments))).all(),
        "job": jobs,
        "attempt": s.scalars(select(AttemptRow.id).where(AttemptRow.job.in_(jobs))).all(),
        "model": [f"{m.name}:{m.version}" for m in s.scalars(select(ModelVersionRow)).all() if me.visible(m.project)],
        "pipeline": [x.name for x in s.scalars(select(PipelineRow)).all() if me.visible(x.project)],
    }
    return or_(EventRow.kind == "cloud",
               *(and_(EventRow.kind == kind, EventRow.object_id.in_(ids)) for kind, ids in by_kind.items()))


@router.get("/events")
def list_events(request: Request, object_id: str | None = None, limit: int = 100) -> list[EventOut]:
    """Recent changes of state; a caller who is not a server admin sees its projects' objects and the clouds."""
    me = caller(request)
    with platform(request).store.session() as s:
        q = select(EventRow).order_by(EventRow.id.desc()).limit(min(max(limit, 1), 1000))
        if object_id:
            q = q.where(EventRow.object_id == object_id)
        if not me.is_admin:
            q = q.where(_visible_events(s, me))
        return [EventOut.model_validate(e, from_attributes=True) for e in reversed(s.scalars(q).all())]
