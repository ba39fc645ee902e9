"""Model artifacts in the clouds' stores. A fine-tune's attempt sends its output folder to the
stores when it succeeds; the server registers the model from there, by writing a manifest of the
model's files over chunks the stores already hold (no byte moves). A fine-tune that starts from
a registered model, and each replica that serves one, fetches it onto its own cloud from the
nearest store that holds it, with a token good only for that: no workload reads the server's disk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from ..data import CorruptChunk, DatasetView, FileEntry, Manifest, StoreError
from ..errors import AuthError, FermionError, NotFoundError, UserInputError, shorten
from ..security import env_purpose
from ..store import TERMINAL_STATES, DeploymentRow, JobRow, ModelVersionRow, ReplicaRow
from ._checkpoints import Caller, job_view, newest, output_dataset, require_attempt
from ._schemas import ERROR_RESPONSES

if TYPE_CHECKING:
    from ._server import Platform

STORE_URI = "store:"  # an artifact_uri of a model kept in the stores: store:<manifest digest>
REPLICA_TOKEN_PREFIX = "fmr-"
MODEL_PREFIX = "model/"  # where a fine-tune's output holds the model


def models_view(p: Platform, cloud: str, project: str) -> DatasetView:
    """A project's registered models in ``cloud``'s store (one manifest per version, by digest);
    their chunks share the project's space, so registering a job's output copies nothing."""
    return DatasetView(p.stores[cloud], f"models.{project}", space=project)


def stored_digest(artifact_uri: str) -> str | None:
    """The manifest digest of a model kept in the stores; None for one in a folder (older versions)."""
    return artifact_uri.removeprefix(STORE_URI) if artifact_uri.startswith(STORE_URI) else None


def model_holders(p: Platform, project: str, digest: str, first: str | None = None) -> list[str]:
    """The reachable clouds whose stores hold this model version, ``first`` first."""
    from ._datasets import clouds_holding

    return clouds_holding(p, lambda cloud: models_view(p, cloud, project), digest, first)


def read_file(p: Platform, view_of: Callable[[str], DatasetView], entry: FileEntry, first: str | None = None) -> bytes:
    """One file of a manifest, whole, each chunk from the first reachable store that holds it intact."""
    from ._datasets import nearest_chunk

    return b"".join(nearest_chunk(p, [first], view_of, sha, entry.path).body for sha, _ in entry.chunks)


def job_result(p: Platform, job: JobRow) -> tuple[dict[str, Any], Manifest, list[str]]:
    """A finished job's result.json and output manifest, from the stores, and the clouds holding it."""
    from ._datasets import clouds_holding

    def view_of(cloud: str) -> DatasetView:
        return job_view(p, cloud, output_dataset(job.name), job.project)

    found = newest(p, output_dataset(job.name), job.project)
    if found is None:
        raise NotFoundError(f"job {job.name}'s output is in no reachable store")
    manifest, cloud = found
    entry = next((f for f in manifest.files if f.path == "result.json"), None)
    if entry is None or entry.size > 4 << 20:
        raise UserInputError(f"job {job.name}'s output has no result.json")
    result = json.loads(read_file(p, view_of, entry, cloud))
    return result, manifest, clouds_holding(p, view_of, manifest.digest)


def register_output(p: Platform, job: JobRow, output: Manifest, holders: list[str]) -> tuple[str, int, list[str]]:
    """The model in a job's output (its files under model/), as a version manifest in each store that
    holds the output. Returns (artifact_uri, bytes, clouds)."""
    files = [f.model_copy(update={"path": f.path.removeprefix(MODEL_PREFIX)}) for f in output.files
             if f.path.startswith(MODEL_PREFIX)]
    if not files:
        raise UserInputError(f"job {job.name}'s output holds no model/ folder")
    manifest = Manifest(dataset=f"models.{job.project}", files=files, created_at=0.0, space=job.project)
    kept = []
    for cloud in holders:
        view = models_view(p, cloud, job.project)
        try:
            view.commit(manifest)  # over chunks the output put there already
            kept.append(cloud)
        except (StoreError, FermionError):
            continue
    if not kept:
        raise UserInputError(f"no store could keep the model of job {job.name}")
    return f"{STORE_URI}{manifest.digest}", manifest.size, kept


def _read_model(p: Platform, project: str, digest: str, first: str | None, ref: str) -> tuple[Manifest, str]:
    for cloud in model_holders(p, project, digest, first):
        try:
            return models_view(p, cloud, project).read(digest), cloud
        except (NotFoundError, CorruptChunk, StoreError):
            continue
    raise NotFoundError(f"no reachable store holds model {ref} ({digest[:12]})")


def _model_files(p: Platform, project: str, digest: str, first: str | None, ref: str) -> dict[str, object]:
    m, cloud = _read_model(p, project, digest, first, ref)
    return {"model": ref, "digest": digest, "cloud": cloud, "files": [f.model_dump() for f in m.files]}


def _model_chunk(p: Platform, project: str, digest: str, first: str, ref: str, sha: str) -> Response:
    """A chunk of that model version (and of nothing else its project's space holds)."""
    from ._datasets import named_chunks, nearest_chunk

    allowed = named_chunks((f"models.{project}", digest), lambda: _read_model(p, project, digest, first, ref)[0])
    return nearest_chunk(p, [first], lambda c: models_view(p, c, project), sha, f"model {ref}", allowed=allowed)


# -- a fine-tune's base model, for its attempts ----------------------------------------------------
attempt_router = APIRouter(prefix="/api/v1/attempts/self/model", responses=ERROR_RESPONSES)


def _base_of(p: Platform, me: Caller) -> tuple[str, str]:
    with p.store.session() as s:
        job = s.get(JobRow, me.job)
        base = (job.spec.get("base_model") if job else None) or {}
    if not base.get("digest"):
        raise NotFoundError(f"job {me.job} starts from no registered model")
    return base["ref"], base["digest"]


@attempt_router.get("")
def attempt_model(request: Request, me: Caller = Depends(require_attempt)) -> dict[str, object]:
    p = request.app.state.platform
    ref, digest = _base_of(p, me)
    return _model_files(p, me.project, digest, me.cloud, ref)


@attempt_router.get("/chunks/{sha}")
def attempt_model_chunk(request: Request, sha: str, me: Caller = Depends(require_attempt)) -> Response:
    p = request.app.state.platform
    ref, digest = _base_of(p, me)
    return _model_chunk(p, me.project, digest, me.cloud, ref, sha)


# -- the model a replica serves ----------------------------------------------------------------------
def replica_token(p: Platform, replica_id: str) -> str:
    """A replica's credential to fetch its deployment's model (the server's tag of its id)."""
    return f"{REPLICA_TOKEN_PREFIX}{replica_id}.{p.secrets.mac('replica', replica_id)}"


class ReplicaCaller(BaseModel):
    replica: str
    cloud: str
    project: str
    ref: str
    digest: str


def require_replica(request: Request) -> ReplicaCaller:
    """The live replica whose token this is and the model its deployment serves, or a 401."""
    p: Platform = request.app.state.platform
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    rid, _, tag = token.removeprefix(REPLICA_TOKEN_PREFIX).partition(".")
    refused = AuthError("missing, invalid or expired replica token")
    if not token.startswith(REPLICA_TOKEN_PREFIX) or not tag or not p.secrets.check_mac("replica", rid, tag):
        raise refused
    with p.store.session() as s:
        r = s.get(ReplicaRow, rid)
        d = s.get(DeploymentRow, r.deployment) if r is not None else None
        if r is None or d is None or r.state in TERMINAL_STATES or not r.cloud:
            raise refused
        env = p.secrets.open_env(s, d.env, env_purpose("deployment", d.name), missing_ok=True, project=d.project)
        ref = env.get("FERMION_MODEL", "")
        row = resolve_model(s, ref, d.project) if ref else None
        digest = stored_digest(row.artifact_uri) if row is not None else None
        if not digest:
            raise NotFoundError(f"deployment {d.name} serves no model kept in the stores")
        return ReplicaCaller(replica=rid, cloud=r.cloud, project=d.project, ref=ref, digest=digest)


def resolve_model(s: Session, ref: str, project: str) -> ModelVersionRow:
    """A registry reference (NAME:VERSION) of ``project``'s, or a 400 that names it."""
    from .. import registry

    try:
        row = registry.get_version(s, ref)
    except NotFoundError:
        row = None
    if row is None or row.project != project:
        raise UserInputError(f"no model version {shorten(ref)!r} in project {project}", hint="see `fermion model list`")
    return row


replica_router = APIRouter(prefix="/api/v1/replicas/self/model", responses=ERROR_RESPONSES)


@replica_router.get("")
def replica_model(request: Request, me: ReplicaCaller = Depends(require_replica)) -> dict[str, object]:
    return _model_files(request.app.state.platform, me.project, me.digest, me.cloud, me.ref)


@replica_router.get("/chunks/{sha}")
def replica_model_chunk(request: Request, sha: str, me: ReplicaCaller = Depends(require_replica)) -> Response:
    return _model_chunk(request.app.state.platform, me.project, me.digest, me.cloud, me.ref, sha)


# -- photon archives ---------------------------------------------------------------------------------
PHOTON_SPACE = "photons"  # archives are the server's, shared by every project that deploys them


def archive_view(p: Platform, cloud: str, sha256: str) -> DatasetView:
    return DatasetView(p.stores[cloud], f"photons.{sha256}", space=PHOTON_SPACE)


def keep_archive(p: Platform, sha256: str, path: Path) -> list[str]:
    """Put an uploaded photon archive in the stores of two clouds, as content-defined chunks (the
    same archive, or one that differs by a file, costs nothing, or about that file). Returns where
    it is kept; none reachable keeps it on the server alone (the upload still succeeds)."""
    import time

    from ..data import plan_folder, send_chunks, sync

    plan = plan_folder(path.parent, files=[("photon.photon", path)])
    kept: list[str] = []
    for cloud in p.reachable_stores():
        view = archive_view(p, cloud, sha256)
        try:
            if not kept:  # the first copy, sent from this disk
                if not view.digests():
                    send_chunks(plan, view.lacking(plan.chunks), lambda sha, data: view.put_chunk(sha, data, check=False))
                    view.commit(Manifest(dataset=view.name, files=plan.entries, created_at=time.time(),
                                         space=PHOTON_SPACE))
            else:  # the second, copied from the first store
                first = archive_view(p, kept[0], sha256)
                digests = first.digests()
                if not set(sync([first], view, digests).versions) >= set(digests):
                    continue
        except FermionError:  # this store is out of reach or refused: the next one
            continue
        kept.append(cloud)
        if len(kept) == 2:
            break
    return kept


def fetch_archive(p: Platform, sha256: str, dest: Path) -> bool:
    """Write a photon's archive to ``dest`` from the first reachable store that holds one whose
    contents are that photon's (a server whose disk lost it, or another server on the same
    database). Checked as an upload is before it lands: a store's wrong archive is never used."""
    import tempfile

    from ..data import write_chunks
    from ..photon.runtime import verify_archive

    for cloud in p.reachable_stores():
        view = archive_view(p, cloud, sha256)
        try:
            digests = view.digests()
        except FermionError:
            continue
        for digest in digests:
            with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
                try:
                    files = view.read(digest).files
                    if [f.path for f in files] != ["photon.photon"]:
                        continue
                    got = Path(tmp) / "photon.photon"
                    write_chunks(got, (view.get_chunk(sha) for sha, _ in files[0].chunks), files[0].sha256)
                    if verify_archive(got).sha256 != sha256:
                        continue
                    got.replace(dest)
                    return True
                except (FermionError, ValueError, OSError):
                    continue
    return False
