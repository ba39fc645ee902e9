"""REST API v1: a job's code. ``fermion job run --workdir`` sends a folder here as chunks, as a
dataset push does, and the server keeps it in the stores of two clouds. Each attempt's wrapper
fetches it onto its own cloud before the command starts, from the nearest store that holds it:
no attempt reads the disk of the machine the job was sent from, or the server's."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from ..data import CHUNK_MAX, SHA256, CorruptChunk, DatasetView, FileEntry, Manifest, StoreError, sync
from ..errors import FermionError, NotFoundError, UserInputError, shorten
from ..store import JobRow
from ._auth import caller, require_token
from ._checkpoints import Caller, require_attempt
from ._principal import require_project
from ._schemas import ERROR_RESPONSES

if TYPE_CHECKING:
    from ._server import Platform

router = APIRouter(prefix="/api/v1/code", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])
attempt_router = APIRouter(prefix="/api/v1/attempts/self/code", responses=ERROR_RESPONSES)
MAX_FILES = 100_000
COPIES = 2  # the stores that keep a job's code: the loss of one cloud loses none
MAX_CODE_BYTES = 200 * 1024 * 1024  # as a photon's sources


def code_view(p: Platform, cloud: str, project: str) -> DatasetView:
    """The code of a project's jobs in ``cloud``'s store (a name no dataset can take: it has a dot);
    its chunks share the project's space, so code that is also in a dataset is stored once."""
    return DatasetView(p.stores[cloud], f"code.{project}", space=project)


def _homes(p: Platform) -> list[str]:
    """The clouds whose stores take new code: the first reachable ones, by name."""
    up = p.reachable_stores()
    if not up:
        raise UserInputError("no cloud's store is reachable to keep the job's code", hint="see `fermion cloud list`")
    return up[:COPIES]


def _project(request: Request, project: str | None) -> str:
    p, me = request.app.state.platform, caller(request)
    name = project or me.default_project()
    with p.store.session() as s:
        require_project(s, name, me, "editor")
    return name


class CodeChunks(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | None = None
    chunks: dict[str, Annotated[int, Strict()]] = Field(max_length=200_000)


class CodeCommit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | None = None
    files: list[FileEntry] = Field(max_length=MAX_FILES)


@router.post("/missing")
def missing(request: Request, body: CodeChunks) -> dict[str, object]:
    """Which of these chunks (sha256 → size) the store that takes new code lacks."""
    from ._datasets import check_chunk_list

    check_chunk_list(body.chunks)
    p = request.app.state.platform
    return {"missing": code_view(p, _homes(p)[0], _project(request, body.project)).lacking(body.chunks)}


@router.put("/chunks/{sha}", status_code=201)
async def put_chunk(request: Request, sha: str, project: str | None = None) -> dict[str, object]:
    if not SHA256.match(sha):
        raise UserInputError(f"invalid chunk name {shorten(sha)!r}", hint="a chunk is named by the sha256 of its bytes")
    p = request.app.state.platform
    name = await anyio.to_thread.run_sync(lambda: _project(request, project))
    body = await request.body()
    if not 0 < len(body) <= CHUNK_MAX:
        raise UserInputError(f"a chunk is 1..{CHUNK_MAX} bytes, not {len(body)}")
    written = await anyio.to_thread.run_sync(lambda: code_view(p, _homes(p)[0], name).put_chunk(sha, body))
    return {"chunk": sha, "stored_bytes": written}


@router.post("", status_code=201)
def commit(request: Request, body: CodeCommit) -> dict[str, object]:
    """Seal the files as a job's code (refused while a chunk is missing) and copy them to a second
    cloud's store. The same files give the same digest: code sent twice is stored once."""
    p = request.app.state.platform
    project = _project(request, body.project)
    homes = _homes(p)
    view = code_view(p, homes[0], project)
    try:  # no time or author in it: the digest names the files alone
        manifest = Manifest(dataset=view.name, files=sorted(body.files, key=lambda f: f.path), created_at=0.0,
                            space=view.space)
    except ValidationError as exc:
        raise UserInputError(f"invalid files for a job's code: {exc.errors()[0]['msg']}") from None
    if manifest.size > MAX_CODE_BYTES:
        raise UserInputError(f"a job's code is {MAX_CODE_BYTES >> 20} MiB at most, not {manifest.size >> 20} MiB",
                             hint="keep data and weights out of it: a dataset, a .fermionignore")
    if not view.has(manifest.digest):
        view.commit(manifest)
    kept = [homes[0]]
    for other in homes[1:]:
        try:
            if manifest.digest in sync([view], code_view(p, other, project), [manifest.digest]).versions:
                kept.append(other)
        except FermionError:
            pass  # kept in one store: a job still runs, and says where its code is
    return {"digest": manifest.digest, "files": len(manifest.files), "size": manifest.size, "stores": kept,
            "at": time.time()}


def holders(p: Platform, project: str, digest: str, first: str | None = None) -> list[str]:
    """The reachable clouds whose stores hold this code, ``first`` first."""
    from ._datasets import clouds_holding

    return clouds_holding(p, lambda cloud: code_view(p, cloud, project), digest, first)


def code_files_of(p: Platform, project: str, digest: str) -> set[str]:
    """The paths of code the project sent, from the first reachable store that holds it; a 400 if none."""
    for cloud in holders(p, project, digest):
        try:
            return {f.path for f in code_view(p, cloud, project).read(digest).files}
        except (NotFoundError, CorruptChunk, StoreError):
            continue
    raise UserInputError(f"no reachable store holds code {digest[:12]} of project {project}",
                         hint="send the folder with `fermion job run --workdir PATH`")


def _job_code(p: Platform, me: Caller) -> str:
    with p.store.session() as s:
        job = s.get(JobRow, me.job)
        digest = job.spec.get("code") if job else None
    if not digest:
        raise NotFoundError(f"job {me.job} was sent without code")
    return digest


def _read_code(p: Platform, me: Caller, digest: str) -> tuple[Manifest, str]:
    for cloud in holders(p, me.project, digest, me.cloud):
        try:
            return code_view(p, cloud, me.project).read(digest), cloud
        except (NotFoundError, CorruptChunk, StoreError):
            continue
    raise NotFoundError(f"no reachable store holds the code of job {me.job} ({digest[:12]})",
                        hint="send the job again (`fermion job run --workdir ...`) once a store that held it is back")


@attempt_router.get("")
def attempt_code(request: Request, me: Caller = Depends(require_attempt)) -> dict[str, object]:
    """The files of the attempt's job's code, from the nearest store that holds them."""
    p = request.app.state.platform
    digest = _job_code(p, me)
    m, cloud = _read_code(p, me, digest)
    return {"digest": digest, "cloud": cloud, "files": [f.model_dump() for f in m.files]}


@attempt_router.get("/chunks/{sha}")
def attempt_code_chunk(request: Request, sha: str, me: Caller = Depends(require_attempt)) -> Response:
    from ._datasets import named_chunks, nearest_chunk

    p = request.app.state.platform
    digest = _job_code(p, me)
    allowed = named_chunks((f"code.{me.project}", digest), lambda: _read_code(p, me, digest)[0])
    return nearest_chunk(p, [me.cloud], lambda cloud: code_view(p, cloud, me.project), sha, f"job {me.job}'s code",
                         allowed=allowed)
