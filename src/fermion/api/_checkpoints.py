"""REST API v1 for job attempts: their checkpoints and datasets, through the clouds' stores.

An attempt writes checkpoints to a folder on its own cloud; its wrapper sends each new snapshot
of that folder here, with the attempt's own token (the server's tag of the attempt id, good only
while the attempt lives). A snapshot lands in the store of the attempt's cloud and is copied to
one more cloud's store, so the loss of a cloud loses none. A resumed attempt, wherever it runs,
fetches the newest snapshot any store that is up still holds. An attempt reads the dataset
versions its job was pinned to, from its own cloud's store where that holds them, else the next."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from ..control import Need
from ..data import CHUNK_MAX, SHA256, CorruptChunk, DatasetView, FileEntry, Manifest, StoreError, sync
from ..errors import AuthError, NotFoundError, UserInputError, shorten
from ..store import DEFAULT_PROJECT, LIVE_ATTEMPT_STATES, AttemptRow, DatasetRow, JobRow
from ._schemas import ERROR_RESPONSES

if TYPE_CHECKING:
    from ._server import Platform

TOKEN_PREFIX = "fmt-"
KEEP = 3  # snapshots kept per job in each store


def attempt_token(p: Platform, attempt_id: str) -> str:
    """The credential an attempt gets in its environment (nothing is stored: the server checks its tag)."""
    return f"{TOKEN_PREFIX}{attempt_id}.{p.secrets.mac('attempt', attempt_id)}"


class Caller(BaseModel):
    attempt: str
    job: str
    cloud: str
    project: str


def _attempt_of(p: Platform, authorization: str) -> str | None:
    """The attempt id an ``Authorization`` header's token was made for, if the server made it."""
    token = authorization.removeprefix("Bearer ").strip()
    attempt_id, _, tag = token.removeprefix(TOKEN_PREFIX).partition(".")
    if not token.startswith(TOKEN_PREFIX) or not tag or not p.secrets.check_mac("attempt", attempt_id, tag):
        return None
    return attempt_id


def attempt_token_valid(p: Platform, authorization: str) -> bool:
    """A cheap check (no database) before a large body is read: the token is one the server made."""
    return _attempt_of(p, authorization) is not None


def require_attempt(request: Request) -> Caller:
    """The live attempt whose token this is, or a 401."""
    p: Platform = request.app.state.platform
    attempt_id = _attempt_of(p, request.headers.get("authorization", ""))
    refused = AuthError("missing, invalid or expired attempt token")
    if attempt_id is None:
        raise refused
    with p.store.session() as s:
        row = s.get(AttemptRow, attempt_id)
        if row is None or row.state not in LIVE_ATTEMPT_STATES or row.cloud not in p.stores:
            raise refused
        job = s.get(JobRow, row.job)
        return Caller(attempt=row.id, job=row.job, cloud=row.cloud, project=job.project if job else DEFAULT_PROJECT)


class ChunkList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunks: dict[str, Annotated[int, Strict()]] = Field(max_length=200_000)


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[FileEntry] = Field(max_length=100_000)
    label: str = Field("", max_length=200)  # e.g. "step 40"


def checkpoint_dataset(job: str) -> str:
    """The name a job's checkpoints go by in a store (a dataset no user can name: it has a dot)."""
    return f"checkpoints.{job}"


def output_dataset(job: str) -> str:
    """The name of a job's output (the folder $FERMION_JOB_OUTPUT as its last attempt left it)."""
    return f"outputs.{job}"


def job_view(p: Platform, cloud: str, name: str, project: str) -> DatasetView:
    """A job's snapshots (checkpoints, output) in ``cloud``'s store; their chunks share the space of
    the job's project."""
    return DatasetView(p.stores[cloud], name, space=project)


def _replica_cloud(p: Platform, me: Caller) -> str | None:
    """The other cloud whose store keeps a copy: the one a resumed attempt would most likely run on."""
    with p.store.session() as s:
        job = s.get(JobRow, me.job)
        allowed = job.clouds if job and job.clouds else list(p.stores)
        resources = job.resources if job else {}
    up = [c for c in p.reachable_stores() if c != me.cloud]
    others = [c for c in allowed if c in up] or up
    ranked = p.scheduler.rank(others, Need.of(resources))[0] if others else []
    return (ranked or others or [None])[0]


def snapshot_router(prefix: str, name_of: Callable[[str], str], keep: int, kind: str) -> APIRouter:
    """The routes by which an attempt sends snapshots of one of its folders (``kind``: checkpoint,
    output) to the stores, and fetches the newest back. Each store keeps a job's newest ``keep``."""
    router = APIRouter(prefix=prefix, responses=ERROR_RESPONSES)

    def view(p: Platform, cloud: str, me: Caller) -> DatasetView:
        return job_view(p, cloud, name_of(me.job), me.project)

    @router.post("/missing")
    def missing(request: Request, body: ChunkList, me: Caller = Depends(require_attempt)) -> dict[str, object]:
        from ._datasets import check_chunk_list

        p = request.app.state.platform
        check_chunk_list(body.chunks)
        return {"missing": view(p, me.cloud, me).lacking(body.chunks)}

    @router.put("/chunks/{sha}", status_code=201)
    async def put_chunk(request: Request, sha: str, me: Caller = Depends(require_attempt)) -> dict[str, object]:
        if not SHA256.match(sha):
            raise UserInputError(f"invalid chunk name {shorten(sha)!r}")
        body = await request.body()
        if not 0 < len(body) <= CHUNK_MAX:
            raise UserInputError(f"a chunk is 1..{CHUNK_MAX} bytes, not {len(body)}")
        p = request.app.state.platform
        written = await anyio.to_thread.run_sync(lambda: view(p, me.cloud, me).put_chunk(sha, body))
        return {"chunk": sha, "stored_bytes": written}

    @router.post("", status_code=201)
    def commit(request: Request, body: Snapshot, me: Caller = Depends(require_attempt)) -> dict[str, object]:
        """Seal a snapshot in the attempt's cloud's store, then copy it to one more cloud's store."""
        import time

        p = request.app.state.platform
        here = view(p, me.cloud, me)
        try:
            manifest = Manifest(dataset=here.name, files=sorted(body.files, key=lambda f: f.path), created_at=time.time(),
                                message=f"{body.label or kind} by attempt {me.attempt} on {me.cloud}", space=here.space)
        except ValidationError as exc:
            raise UserInputError(f"invalid files for a {kind}: {exc.errors()[0]['msg']}") from None
        here.commit(manifest)
        copies = [me.cloud]
        other = _replica_cloud(p, me)
        if other is not None:
            try:
                report = sync([here], view(p, other, me), [manifest.digest])
                if manifest.digest in report.versions:
                    copies.append(other)
            except StoreError:
                pass  # the snapshot is safe on its own cloud; the next one tries again
        for cloud in copies:
            _prune(view(p, cloud, me), keep)
        with p.store.session() as s:
            p.store.record(s, "job", me.job, "", kind, f"{body.label or kind} of attempt {me.attempt} "
                           f"({manifest.size} bytes) kept in the stores of {', '.join(copies)}")
        return {"digest": manifest.digest, "stores": copies}

    @router.get("/latest")
    def latest(request: Request, me: Caller = Depends(require_attempt)) -> dict[str, object]:
        """The newest snapshot of the attempt's job any store that is up holds (404 if none)."""
        p = request.app.state.platform
        found = newest(p, name_of(me.job), me.project)
        if found is None:
            raise NotFoundError(f"job {me.job} has no {kind} in any reachable store")
        m, cloud = found
        return {"digest": m.digest, "cloud": cloud, "message": m.message, "created_at": m.created_at,
                "files": [f.model_dump() for f in m.files]}

    @router.get("/chunks/{sha}")
    def get_chunk(request: Request, sha: str, me: Caller = Depends(require_attempt)) -> Response:
        """A chunk of the job's snapshots, checked, from the attempt's own cloud's store if it holds it."""
        from ._datasets import nearest_chunk

        p = request.app.state.platform
        return nearest_chunk(p, [me.cloud], lambda cloud: view(p, cloud, me), sha, f"job {me.job}'s {kind}s")

    return router


router = snapshot_router("/api/v1/attempts/self/checkpoints", checkpoint_dataset, KEEP, "checkpoint")
output_router = snapshot_router("/api/v1/attempts/self/output", output_dataset, 1, "output")


metrics_router = APIRouter(prefix="/api/v1/attempts/self/metrics", responses=ERROR_RESPONSES)
METRICS_CAP = 16 << 20  # a job's metrics.jsonl on the server: past this, lines are dropped (and said so)
METRIC_LINE_MAX = 16_384


class MetricLines(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lines: list[str] = Field(max_length=1000)


@metrics_router.post("")
def add_metrics(request: Request, body: MetricLines, me: Caller = Depends(require_attempt)) -> dict[str, object]:
    """Lines the job wrote to $FERMION_JOB_OUTPUT/metrics.jsonl, sent on by its wrapper as they
    come: the server keeps the job's metrics in a folder of its own, which no workload sees. A line
    that is not a JSON object, or is longer than 16 KiB, is dropped; past 16 MiB, all are."""
    import json
    import os
    import stat
    from pathlib import Path

    p = request.app.state.platform
    kept = []
    for line in body.lines:
        if len(line) > METRIC_LINE_MAX:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            kept.append(json.dumps(row, separators=(",", ":")) + "\n")
    with p.store.session() as s:
        job = s.get(JobRow, me.job)
        # a job made before outputs went through the stores has that folder mounted: never written here
        folder = Path(job.output_dir) if job and job.output_dir and job.spec.get("outputs") == "stores" else None
    if folder is None:
        raise NotFoundError(f"job {me.job} sends no metrics this way")
    if not kept:
        return {"kept": 0, "full": False}
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    with os.fdopen(fd, "a") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserInputError(f"job {me.job}'s metrics file is not a file")
        if st.st_size + sum(map(len, kept)) > METRICS_CAP:
            return {"kept": 0, "full": True}
        f.writelines(kept)
    return {"kept": len(kept), "full": False}


def _prune(view: DatasetView, keep: int = KEEP) -> None:
    """Drop all but the newest ``keep`` snapshots (their chunks stay until a garbage collection)."""
    try:
        old = view.versions()[:-keep]
    except (StoreError, CorruptChunk, NotFoundError):
        return
    for m in old:
        view.drop(m.digest)


def newest(p: Platform, name: str, project: str) -> tuple[Manifest, str] | None:
    """The newest snapshot named ``name`` (a job's checkpoints or output) that a reachable store
    holds, and that store's cloud."""
    best: tuple[Manifest, str] | None = None
    for cloud in p.reachable_stores():
        view = job_view(p, cloud, name, project)
        try:
            for digest in view.digests():
                m = view.read(digest)
                if best is None or (m.created_at, m.digest) > (best[0].created_at, best[0].digest):
                    best = (m, cloud)
        except (StoreError, CorruptChunk, NotFoundError):
            continue
    return best


datasets_router = APIRouter(prefix="/api/v1/attempts/self/datasets", responses=ERROR_RESPONSES)


def _pinned(p: Platform, me: Caller, name: str) -> tuple[DatasetRow, str]:
    """The dataset row and the digest the attempt's job was pinned to; 404 for any other."""
    with p.store.session() as s:
        job = s.get(JobRow, me.job)
        pin = next((d for d in (job.spec.get("datasets", []) if job else []) if d["name"] == name), None)
        row = s.get(DatasetRow, name)
        if pin is None or row is None:
            raise NotFoundError(f"job {me.job} was not given dataset {shorten(name)!r}")
        s.expunge(row)
    return row, pin["digest"]


@datasets_router.get("/{name}")
def dataset_version(request: Request, name: str, me: Caller = Depends(require_attempt)) -> dict[str, object]:
    """The files of the dataset version the job was pinned to, read from the nearest store."""
    from ._datasets import _holders

    p = request.app.state.platform
    row, digest = _pinned(p, me, name)
    for view in _holders(p, row, digest, me.cloud):
        try:
            m = view.read(digest)
        except (NotFoundError, CorruptChunk, StoreError):
            continue
        return {"name": name, "digest": digest, "cloud": view.store.name, "files": [f.model_dump() for f in m.files]}
    raise NotFoundError(f"no reachable store holds dataset {name} at {digest[:12]}",
                        hint=f"`fermion dataset sync {name} --to {me.cloud}`")


@datasets_router.get("/{name}/chunks/{sha}")
def dataset_chunk(request: Request, name: str, sha: str, me: Caller = Depends(require_attempt)) -> Response:
    from ._datasets import _key, dataset_space, nearest_chunk

    from ._datasets import _read, named_chunks

    p = request.app.state.platform
    row, digest = _pinned(p, me, name)
    key, space = _key(p, row), dataset_space(row)
    allowed = named_chunks((name, digest), lambda: _read(p, row, digest, me.cloud))
    return nearest_chunk(p, [me.cloud], lambda cloud: DatasetView(p.stores[cloud], name, key, space), sha,
                         f"dataset {name}", allowed=allowed)
