"""REST API v1: datasets. The server holds the stores' credentials and the encrypted datasets'
keys; clients send and fetch chunks through it and never see a store."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..data import (
    CHUNK_MAX,
    SHA256,
    CorruptChunk,
    DatasetKey,
    DatasetView,
    FileEntry,
    Manifest,
    Progress,
    StoreError,
    collect_garbage,
    dataset_names,
    diff,
    sync,
    verify,
)
from ..errors import ConflictError, FermionError, NotFoundError, UserInputError, shorten
from ..security import dataset_key_purpose
from ..store import DatasetRow, DatasetVersionRow, JobRow
from ..types import NAME_PATTERN
from ._auth import caller, require_token
from ._principal import Principal, require_project
from ._schemas import ERROR_RESPONSES

if TYPE_CHECKING:
    from ._server import Platform

router = APIRouter(prefix="/api/v1/datasets", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])
MAX_CHUNKS_PER_CALL = 200_000
JOB_ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")


def _platform(request: Request) -> Platform:
    return request.app.state.platform


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    project: str | None = None
    cloud: str | None = None  # where pushes land by default: the first cloud if not given
    encrypted: bool = Field(False, strict=True)
    description: str = Field("", max_length=2000)


class ChunkQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cloud: str | None = None
    chunks: dict[str, Annotated[int, Strict()]] = Field(max_length=MAX_CHUNKS_PER_CALL)


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cloud: str | None = None
    files: list[FileEntry] = Field(max_length=1_000_000)
    message: str = Field("", max_length=2000)


class SyncSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    to: str
    source: str | None = Field(None, alias="from")  # default: every other cloud that holds the versions
    version: str | None = None  # default: every version


class VerifySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cloud: str | None = None  # default: every cloud that holds the version
    version: str | None = None


class DedupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = None
    threshold: float = Field(0.85, gt=0, le=1)
    column: str | None = Field(None, max_length=200)
    message: str = Field("", max_length=2000)


# -- helpers -----------------------------------------------------------------------------------
def _dataset(s: Session, name: str, me: Principal, role: str = "viewer") -> DatasetRow:
    row = s.get(DatasetRow, name)
    hidden = NotFoundError(f"no dataset named {shorten(name)!r}", hint="see `fermion dataset list`")
    if row is None:
        raise hidden
    me.require(row.project, role, hidden)
    return row


def _key(p: Platform, row: DatasetRow) -> DatasetKey | None:
    if not row.key_sealed:
        return None
    return DatasetKey(bytes.fromhex(p.secrets.open(row.key_sealed, dataset_key_purpose(row.name))))


def dataset_space(row: DatasetRow) -> str:
    """Where in a store a dataset's chunks live: its project's space (shared by the project's plain
    datasets and jobs), or one of its own when encrypted."""
    return f"enc.{row.name}" if row.encrypted else row.project


def _view(p: Platform, row: DatasetRow, cloud: str | None) -> DatasetView:
    cloud = cloud or row.home_cloud
    if cloud not in p.stores:
        raise UserInputError(f"unknown cloud {shorten(cloud)!r}", hint=f"known: {', '.join(sorted(p.stores))}")
    return DatasetView(p.stores[cloud], row.name, _key(p, row), dataset_space(row))


def _resolve(s: Session, row: DatasetRow, ref: str | None) -> DatasetVersionRow:
    """A version by number (3, v3), digest or digest prefix (8+ hex digits), or the latest."""
    q = select(DatasetVersionRow).where(DatasetVersionRow.dataset == row.name)
    if ref in (None, "", "latest"):
        found = _latest(s, row.name)
        if found is None:
            raise ConflictError(f"dataset {row.name} has no version yet", hint=f"`fermion dataset push {row.name} PATH`")
        return found
    assert ref is not None
    if m := re.fullmatch(r"v?([0-9]{1,9})", ref):
        found = s.scalars(q.where(DatasetVersionRow.number == int(m.group(1)))).first()
    elif re.fullmatch(r"[0-9a-f]{8,64}", ref):
        matches = s.scalars(q.where(DatasetVersionRow.digest.startswith(ref))).all()
        if len(matches) > 1:
            raise UserInputError(f"version {ref} of {row.name} is ambiguous", hint="give more digits of the digest")
        found = matches[0] if matches else None
    else:
        raise UserInputError(f"invalid version {shorten(ref)!r}", hint="use a number (3), a digest prefix, or latest")
    if found is None:
        raise NotFoundError(f"dataset {row.name} has no version {shorten(ref)}", hint=f"see `fermion dataset show {row.name}`")
    return found


def _version_out(v: DatasetVersionRow) -> dict[str, object]:
    return {"number": v.number, "digest": v.digest, "parent": v.parent, "files": v.files, "size": v.size,
            "message": v.message, "origin": v.origin, "created_at": v.created_at}


def check_chunk_list(chunks: dict[str, int]) -> None:
    """A 400 for a list of chunks (sha256 → size) that names one wrongly."""
    bad = next((sha for sha, size in chunks.items() if not SHA256.match(sha) or not 0 < size <= CHUNK_MAX), None)
    if bad is not None:
        raise UserInputError(f"invalid chunk {shorten(bad)!r}", hint=f"a chunk is named by its sha256 and is 1..{CHUNK_MAX} bytes")


def clouds_holding(p: Platform, view_of: Callable[[str], DatasetView], digest: str, first: str | None = None) -> list[str]:
    """The reachable clouds whose stores hold version ``digest`` of ``view_of(cloud)``, ``first`` first."""
    up = p.reachable_stores()
    out = []
    for cloud in dict.fromkeys([first, *up]):
        if cloud in up:
            try:
                if view_of(cloud).has(digest):
                    out.append(cloud)
            except StoreError:
                continue
    return out


def dataset_input(p: Platform, ref: str, me: Principal) -> tuple[int, list[str]]:
    """A version's size in bytes and the clouds whose stores hold it now (for a placement), by
    NAME or NAME@VERSION; 404 for a dataset the caller may not see."""
    name, _, version = ref.partition("@")
    with p.store.session() as s:
        row = _dataset(s, name, me)
        v = _resolve(s, row, version or None)
        s.expunge(row)
        size, digest = v.size, v.digest
    return size, clouds_holding(p, lambda cloud: _view(p, row, cloud), digest, row.home_cloud)


def _holders(p: Platform, row: DatasetRow, digest: str, first: str | None = None) -> list[DatasetView]:
    """The stores that hold a version, ``first`` first, then the dataset's home, then the rest."""
    up = p.reachable_stores()
    order = [c for c in dict.fromkeys([first, row.home_cloud, *up]) if c in up]
    out = []
    for cloud in order:
        view = _view(p, row, cloud)
        try:
            if view.has(digest):
                out.append(view)
        except StoreError:
            continue  # an unreachable store holds nothing we can use now
    return out


_MOVES: dict[tuple[int, tuple[str, ...]], tuple[float, dict[str, tuple[float, str]]]] = {}
MOVES_TTL_S = 10.0  # a job waiting for a cloud asks on every pass: the stores are asked this often at most


def data_moves(p: Platform, pinned: list[dict[str, object]]) -> dict[str, tuple[float, str]]:
    """What bringing a job's pinned dataset versions to each cloud costs: per cloud whose store
    lacks one, its bytes times the egress price of the cheapest cloud whose store holds it
    ($ once, and what moves from where), for the optimizer to weigh against the hourly price."""
    key = (id(p), tuple(sorted(f"{pin['name']}@{pin['digest']}" for pin in pinned)))
    cached = _MOVES.get(key)
    if cached is not None and time.monotonic() - cached[0] < MOVES_TTL_S:
        return cached[1]
    moves = _data_moves(p, pinned)
    if len(_MOVES) > 1000:
        _MOVES.clear()
    _MOVES[key] = (time.monotonic(), moves)
    return moves


def _data_moves(p: Platform, pinned: list[dict[str, object]]) -> dict[str, tuple[float, str]]:
    needs: list[tuple[str, int, dict[str, float]]] = []  # (name, bytes, holder cloud -> $/GB out of it)
    for pin in pinned:
        with p.store.session() as s:
            row = s.get(DatasetRow, str(pin["name"]))
            v = s.scalars(select(DatasetVersionRow).where(DatasetVersionRow.dataset == str(pin["name"]),
                                                          DatasetVersionRow.digest == str(pin["digest"]))).first()
            if row is None or v is None:
                continue
            s.expunge(row)
            size = v.size
        held = {view.store.name: p.configs[view.store.name].egress_per_gb()
                for view in _holders(p, row, str(pin["digest"])) if view.store.name in p.configs}
        if held:
            needs.append((row.name, size, held))
    moves: dict[str, tuple[float, str]] = {}
    for cloud in p.stores:
        dollars, notes = 0.0, []
        for name, size, held in needs:
            if cloud in held:
                continue
            source = min(held, key=lambda c: (held[c], c))
            dollars += size / 1e9 * held[source]
            notes.append(f"{size / 1e9:.3g} GB of {name} from {source}'s store (${held[source]:g}/GB)")
        if notes:
            moves[cloud] = (dollars, "bring " + ", ".join(notes))
    return moves


def record_version(p: Platform, name: str, manifest: Manifest, origin: dict[str, object]) -> DatasetVersionRow:
    """Number a committed manifest (the same manifest twice keeps its number)."""
    for _ in range(5):  # two commits at once may pick the same number: the loser takes the next
        try:
            with p.store.session() as s:
                existing = s.scalars(select(DatasetVersionRow).where(
                    DatasetVersionRow.dataset == name, DatasetVersionRow.digest == manifest.digest)).first()
                if existing is not None:
                    s.expunge(existing)
                    return existing
                number = (s.scalar(select(func.max(DatasetVersionRow.number)).where(
                    DatasetVersionRow.dataset == name)) or 0) + 1
                v = DatasetVersionRow(dataset=name, number=number, digest=manifest.digest, parent=manifest.parent,
                                      files=len(manifest.files), size=manifest.size, message=manifest.message,
                                      origin=origin, created_at=manifest.created_at)
                s.add(v)
                p.store.record(s, "dataset", f"{name}:{number}", "", "created",
                               f"{origin.get('by', 'push')} to {origin.get('cloud', '?')}: {len(manifest.files)} files, "
                               f"{manifest.size} bytes")
                s.flush()
                s.expunge(v)
                return v
        except IntegrityError:
            continue
    raise ConflictError(f"dataset {name} is being changed by others right now", hint="try again")


def commit_files(p: Platform, row: DatasetRow, view: DatasetView, files: list[FileEntry], message: str,
                 origin: dict[str, object]) -> tuple[DatasetVersionRow, bool]:
    """Commit ``files`` as the next version, unless they are what the latest version holds already.
    Returns (version, whether it is new)."""
    with p.store.session() as s:
        latest = _latest(s, row.name)
    base = _base(view, latest)
    if base is not None and base.files == files:
        return latest, False  # type: ignore[return-value] - a base is the latest version
    try:
        manifest = Manifest(dataset=row.name, files=files, parent=latest.digest if latest else None,
                            created_at=time.time(), message=message, encrypted=row.encrypted, space=view.space)
    except ValidationError as exc:
        raise UserInputError(f"invalid files for a version: {exc.errors()[0]['msg']}") from None
    view.commit(manifest, base)
    return record_version(p, row.name, manifest, origin), True


def _versions(s: Session, row: DatasetRow, ref: str | None) -> list[DatasetVersionRow]:
    """The version ``ref`` names, or every version of the dataset, oldest first."""
    if ref:
        return [_resolve(s, row, ref)]
    return list(s.scalars(select(DatasetVersionRow).where(DatasetVersionRow.dataset == row.name)
                          .order_by(DatasetVersionRow.number)).all())


def _latest(s: Session, name: str) -> DatasetVersionRow | None:
    latest = s.scalars(select(DatasetVersionRow).where(DatasetVersionRow.dataset == name)
                       .order_by(DatasetVersionRow.number.desc()).limit(1)).first()
    if latest is not None:
        s.expunge(latest)
    return latest


def _base(view: DatasetView, latest: DatasetVersionRow | None) -> Manifest | None:
    """The latest version's manifest if ``view``'s store holds it: its chunks need no look-up there."""
    if latest is None:
        return None
    try:
        return view.read(latest.digest) if view.has(latest.digest) else None
    except (NotFoundError, CorruptChunk):
        return None


def _read(p: Platform, row: DatasetRow, digest: str, cloud: str | None = None) -> Manifest:
    for view in _holders(p, row, digest, cloud):
        try:
            return view.read(digest)
        except (NotFoundError, CorruptChunk):
            continue
    raise NotFoundError(f"no reachable store holds version {digest[:12]} of {row.name}",
                        hint=f"see `fermion dataset show {row.name}`")


# -- routes --------------------------------------------------------------------------------------
@router.post("", status_code=201)
def create_dataset(request: Request, spec: DatasetCreate) -> dict[str, object]:
    """A new, empty dataset; ``encrypted`` gives it a key the server keeps."""
    p, me = _platform(request), caller(request)
    cloud = spec.cloud or next(iter(p.stores), "")
    if cloud not in p.stores:
        raise UserInputError(f"unknown cloud {shorten(cloud)!r}", hint=f"known: {', '.join(sorted(p.stores))}")
    with p.store.session() as s:
        project = spec.project or me.default_project()
        require_project(s, project, me, "editor")
        if s.get(DatasetRow, spec.name) is not None:
            raise ConflictError(f"dataset {spec.name!r} exists", hint="push a new version to it, or pick another name")
        sealed = None
        if spec.encrypted:
            sealed = p.secrets.seal(DatasetKey.generate().hex(), dataset_key_purpose(spec.name))
        s.add(DatasetRow(name=spec.name, project=project, home_cloud=cloud, encrypted=spec.encrypted,
                         key_sealed=sealed, description=spec.description, created_at=time.time()))
        p.store.record(s, "dataset", spec.name, "", "created", f"on {cloud}{', encrypted' if spec.encrypted else ''}")
    return {"name": spec.name, "project": project, "cloud": cloud, "encrypted": spec.encrypted}


@router.get("")
def list_datasets(request: Request) -> list[dict[str, object]]:
    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        out = []
        for row in s.scalars(select(DatasetRow).order_by(DatasetRow.name)).all():
            if not me.visible(row.project):
                continue
            latest = _latest(s, row.name)
            out.append({"name": row.name, "project": row.project, "cloud": row.home_cloud, "encrypted": row.encrypted,
                        "versions": latest.number if latest else 0, "files": latest.files if latest else 0,
                        "size": latest.size if latest else 0, "latest": latest.digest if latest else None})
        return out


@router.get("/{name}")
def show_dataset(request: Request, name: str) -> dict[str, object]:
    """The dataset, its versions, and which clouds' stores hold each (asked of the stores now)."""
    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        row = _dataset(s, name, me)
        out_versions = [_version_out(v) for v in _versions(s, row, None)]
        s.expunge(row)
    stores: dict[str, object] = {}
    for cloud in p.stores:
        try:
            held = set(_view(p, row, cloud).digests())
        except StoreError as exc:
            stores[cloud] = {"url": p.stores[cloud].config.url, "error": exc.message}
            continue
        stores[cloud] = {"url": p.stores[cloud].config.url, "versions": [v["number"] for v in out_versions
                                                                         if v["digest"] in held]}
    return {"name": row.name, "project": row.project, "cloud": row.home_cloud, "encrypted": row.encrypted,
            "description": row.description, "versions": out_versions, "stores": stores}


@router.post("/{name}/missing")
def missing_chunks(request: Request, name: str, query: ChunkQuery) -> dict[str, object]:
    """Which of these chunks (sha256 → size) the cloud's store lacks: a push sends only those."""
    p, me = _platform(request), caller(request)
    check_chunk_list(query.chunks)
    with p.store.session() as s:
        row = _dataset(s, name, me, "editor")
        latest = _latest(s, name)
        s.expunge(row)
    view = _view(p, row, query.cloud)
    base = _base(view, latest)
    return {"missing": view.lacking(query.chunks, base)}


@router.put("/{name}/chunks/{sha}", status_code=201)
async def put_chunk(request: Request, name: str, sha: str, cloud: str | None = None) -> dict[str, object]:
    """Store one chunk; its bytes must hash to ``sha``. Read whole (at most 4 MiB), then checked,
    sealed and written in a thread."""
    if not SHA256.match(sha):
        raise UserInputError(f"invalid chunk name {shorten(sha)!r}", hint="a chunk is named by the sha256 of its bytes")
    p, me = _platform(request), caller(request)

    def authorize() -> DatasetRow:
        with p.store.session() as s:
            row = _dataset(s, name, me, "editor")
            s.expunge(row)
            return row

    row = await anyio.to_thread.run_sync(authorize)
    body = await request.body()
    if not 0 < len(body) <= CHUNK_MAX:
        raise UserInputError(f"a chunk is 1..{CHUNK_MAX} bytes, not {len(body)}")
    written = await anyio.to_thread.run_sync(lambda: _view(p, row, cloud).put_chunk(sha, body))
    return {"chunk": sha, "stored_bytes": written}


@router.get("/{name}/chunks/{sha}")
def get_chunk(request: Request, name: str, sha: str, cloud: str | None = None) -> Response:
    """A chunk's plain bytes, checked, from ``cloud``'s store or else the first store that holds it intact."""
    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        row = _dataset(s, name, me)
        s.expunge(row)
    return nearest_chunk(p, [cloud, row.home_cloud], lambda c: _view(p, row, c), sha, f"dataset {name}",
                         hint=f"`fermion dataset verify {name}`, then `fermion dataset sync`")


_NAMED_CHUNKS: dict[tuple[str, str], frozenset[str]] = {}


def named_chunks(key: tuple[str, str], read: Callable[[], Manifest]) -> frozenset[str]:
    """The chunks a manifest names (``key``: its view's name and its digest), remembered: a manifest
    is named by its digest, so what it names never changes."""
    found = _NAMED_CHUNKS.get(key)
    if found is None:
        found = frozenset(read().chunk_sizes())
        if len(_NAMED_CHUNKS) > 1000:
            _NAMED_CHUNKS.clear()
        _NAMED_CHUNKS[key] = found
    return found


def nearest_chunk(p: Platform, first: list[str | None], view_of: Callable[[str], DatasetView], sha: str, what: str,
                  hint: str | None = None, allowed: frozenset[str] | None = None) -> Response:
    """A chunk's plain bytes, checked, from the first reachable store that holds it intact: the
    clouds of ``first`` before the others. With ``allowed``, only a chunk of those (a workload
    reads the chunks of what it was given, not whatever else its project's space holds)."""
    if not SHA256.match(sha):
        raise UserInputError(f"invalid chunk name {shorten(sha)!r}", hint="a chunk is named by the sha256 of its bytes")
    if allowed is not None and sha not in allowed:
        raise NotFoundError(f"{what} has no chunk {sha[:12]}…")
    up = p.reachable_stores()
    errors = []
    for cloud in [c for c in dict.fromkeys([*first, *up]) if c in up]:
        try:
            return Response(view_of(cloud).get_chunk(sha), media_type="application/octet-stream",
                            headers={"x-fermion-cloud": cloud})
        except (NotFoundError, CorruptChunk, StoreError) as exc:
            errors.append(f"{cloud}: {exc.message}")
    raise NotFoundError(f"no reachable store holds chunk {sha[:12]}… of {what} intact ({'; '.join(errors) or 'none up'})",
                        hint=hint)


@router.post("/{name}/versions", status_code=201)
def create_version(request: Request, name: str, spec: VersionCreate) -> dict[str, object]:
    """Commit the next version from files whose chunks were sent: refused while any is missing."""
    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        row = _dataset(s, name, me, "editor")
        s.expunge(row)
    view = _view(p, row, spec.cloud)
    version, new = commit_files(p, row, view, sorted(spec.files, key=lambda f: f.path), spec.message,
                                {"by": "push", "cloud": view.store.name, "user": me.user})
    return {**_version_out(version), "new": new, "cloud": view.store.name}


@router.get("/{name}/versions/{ref}")
def get_version(request: Request, name: str, ref: str) -> dict[str, object]:
    """A version's manifest: its files and their chunks."""
    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        row = _dataset(s, name, me)
        v = _resolve(s, row, ref)
        s.expunge(row)
        out = _version_out(v)
    manifest = _read(p, row, str(out["digest"]))
    return {**out, "files": [f.model_dump() for f in manifest.files]}


@router.get("/{name}/diff")
def diff_versions(request: Request, name: str, a: str, b: str = "latest") -> dict[str, object]:
    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        row = _dataset(s, name, me)
        va, vb = _resolve(s, row, a), _resolve(s, row, b)
        s.expunge(row)
        na, nb, da, db = va.number, vb.number, va.digest, vb.digest
    return {**diff(_read(p, row, da), _read(p, row, db)), "from_version": na, "to_version": nb}


def _progress_stream(work, progress_every_s: float = 0.2) -> Iterator[bytes]:  # noqa: ANN001
    """Run ``work(progress)`` in a thread and stream its progress as JSON lines, then its result."""
    lines: queue.Queue[dict[str, object]] = queue.Queue()
    state = {"done": 0, "sent_at": 0.0}
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            state["done"] += n
            now = time.monotonic()
            if now - state["sent_at"] >= progress_every_s:
                state["sent_at"] = now
                lines.put({"done": state["done"]})

    def run() -> None:
        try:
            lines.put({"result": work(Progress(advance, lambda n: lines.put({"total": n})))})
        except FermionError as exc:
            lines.put({"error": exc.message, "type": type(exc).__name__, "status": exc.http_status, "hint": exc.hint})
        except Exception as exc:  # noqa: BLE001 - the stream has begun: the error goes in it
            lines.put({"error": f"{type(exc).__name__}: {shorten(str(exc), 300)}", "type": "ServerError", "status": 500})

    threading.Thread(target=run, daemon=True, name="dataset-work").start()
    while True:
        line = lines.get()
        yield (json.dumps(line) + "\n").encode()
        if "result" in line or "error" in line:
            return


@router.post("/{name}/sync")
def sync_dataset(request: Request, name: str, spec: SyncSpec) -> StreamingResponse:
    """Bring a version (or all) to ``to``'s store, copying only the chunks it lacks, each from the
    nearest store that holds it intact. Streams progress as JSON lines, then the report."""
    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        row = _dataset(s, name, me, "editor")
        wanted = _versions(s, row, spec.version)
        s.expunge(row)
        digests = [v.digest for v in wanted]
    target = _view(p, row, spec.to)
    if spec.to not in p.reachable_stores():
        raise ConflictError(f"cloud {spec.to} is down, and its store with it", hint="sync once it has recovered")
    if not digests:
        raise ConflictError(f"dataset {name} has no version yet", hint=f"`fermion dataset push {name} PATH`")
    up = p.reachable_stores()
    order = [c for c in dict.fromkeys([spec.source, row.home_cloud, *up]) if c in up and c != spec.to]
    sources = [_view(p, row, c) for c in order]
    if not sources:
        raise ConflictError(f"no other cloud's store to sync {name} from", hint="name another cloud with --to")

    def work(progress: Progress) -> dict[str, object]:
        report = sync(sources, target, digests, progress=progress)
        with p.store.session() as s:
            p.store.record(s, "dataset", name, "", "synced",
                           f"to {spec.to}: {report.chunks_sent} chunks, {report.bytes_sent} bytes sent, "
                           f"{len(report.failed)} unobtainable")
        return {**report.as_dict(), "to": spec.to}

    return StreamingResponse(_progress_stream(work), media_type="application/x-ndjson")


@router.post("/{name}/verify")
def verify_dataset(request: Request, name: str, spec: VerifySpec) -> dict[str, object]:
    """Read back every chunk of a version (or all) in each store that holds it; corrupt chunks are
    named, with their files, and moved aside so the next sync sends them again."""
    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        row = _dataset(s, name, me, "editor")
        wanted = _versions(s, row, spec.version)
        s.expunge(row)
        digests = [v.digest for v in wanted]
    clouds = [spec.cloud] if spec.cloud else list(p.stores)
    reports = {}
    for cloud in clouds:
        view = _view(p, row, cloud)
        try:
            held = [d for d in digests if view.has(d)]
        except StoreError as exc:
            reports[cloud] = {"ok": False, "error": exc.message}
            continue
        if held or spec.cloud:
            reports[cloud] = verify(view, held).as_dict()
    return {"ok": all(r["ok"] for r in reports.values()), "stores": reports}


@router.post("/{name}/dedup", status_code=201)
def dedup_dataset(request: Request, name: str, spec: DedupSpec) -> dict[str, object]:
    """Remove exact and near-duplicate rows of the version's text and tabular files; the result is
    the next version, and the report says what went."""
    import tempfile

    from ..data import dedup_folder, plan_folder, pull, send_chunks

    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        row = _dataset(s, name, me, "editor")
        v = _resolve(s, row, spec.version)
        s.expunge(row)
        number, digest = v.number, v.digest
    source = _holders(p, row, digest)
    if not source:
        raise NotFoundError(f"no reachable store holds version {number} of {name}")
    view = source[0]
    with tempfile.TemporaryDirectory(prefix="fermion-dedup-") as tmp:
        pull(view, view.read(digest), Path(tmp) / "in")
        report = dedup_folder(Path(tmp) / "in", Path(tmp) / "out", threshold=spec.threshold, column=spec.column)
        plan = plan_folder(Path(tmp) / "out")
        send_chunks(plan, view.missing(plan.chunks), lambda sha, data: view.put_chunk(sha, data, check=False))
        message = spec.message or f"dedup of v{number}: {report.exact_removed} exact and {report.near_removed} near duplicates removed"
        version, new = commit_files(p, row, view, plan.entries, message,
                                    {"by": "dedup", "cloud": view.store.name, "of": number, "threshold": spec.threshold})
    return {**_version_out(version), "new": new, "report": report.as_dict()}


@router.delete("/{name}")
def delete_dataset(request: Request, name: str, version: str | None = None) -> dict[str, object]:
    """Delete one version, or the whole dataset, from every store; chunks no version needs any
    more are then collected."""
    p, me = _platform(request), caller(request)
    with p.store.session() as s:
        row = _dataset(s, name, me, "editor")
        targets = _versions(s, row, version)
        digests = [(t.number, t.digest) for t in targets]
        s.expunge(row)
    with p.store.session() as s:
        pins = {(d["name"], d["digest"]): j.name for j in s.scalars(select(JobRow).where(JobRow.status.not_in(JOB_ENDED)))
                for d in j.spec.get("datasets", [])}
    held = next(((n, job) for n, digest in digests if (name, digest) in pins for job in [pins[(name, digest)]]), None)
    if held is not None:
        raise ConflictError(f"version {held[0]} of {name} is pinned by job {held[1]}, which has not ended",
                            hint=f"wait for it, or `fermion job cancel {held[1]}`")
    freed: dict[str, object] = {}
    keys = {k: v for k, v in _all_keys(p).items() if k != name or version}
    for cloud, store in p.stores.items():
        view = _view(p, row, cloud)
        try:
            for _, digest in digests:
                view.drop(digest)
            objects, nbytes = collect_garbage(store, keys)
            freed[cloud] = {"objects": objects, "bytes": nbytes}
        except FermionError as exc:  # this store is cleaned at the next delete that reaches it
            freed[cloud] = {"error": exc.message}
    with p.store.session() as s:
        for number, _ in digests:
            v = s.get(DatasetVersionRow, (name, number))
            if v is not None:
                s.delete(v)
        s.flush()
        if not version:
            s.delete(s.get(DatasetRow, name))
        p.store.record(s, "dataset", name if not version else f"{name}:{digests[0][0]}", "", "deleted", "")
    return {"deleted": [n for n, _ in digests], "dataset_deleted": not version, "freed": freed}


stores_router = APIRouter(prefix="/api/v1/stores", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])


@stores_router.post("/gc")
def collect_store_garbage(request: Request) -> dict[str, object]:
    """In each reachable store: drop the checkpoints of jobs that have ended (their output and
    models stay), then delete the chunks nothing names any more and that are over an hour old."""
    from ._checkpoints import checkpoint_dataset, job_view

    p, me = _platform(request), caller(request)
    me.require_admin()
    with p.store.session() as s:
        ended = [(j.name, j.project) for j in s.scalars(select(JobRow).where(JobRow.status.in_(JOB_ENDED)))]
    keys = _all_keys(p)
    out: dict[str, object] = {}
    for cloud in p.reachable_stores():
        dropped = 0
        try:
            held = set(dataset_names(p.stores[cloud]))
            for job, project in ended:
                if checkpoint_dataset(job) in held:
                    view = job_view(p, cloud, checkpoint_dataset(job), project)
                    for digest in view.digests():
                        view.drop(digest)
                        dropped += 1
            objects, nbytes = collect_garbage(p.stores[cloud], keys)
            out[cloud] = {"checkpoints_dropped": dropped, "objects": objects, "bytes": nbytes}
        except FermionError as exc:
            out[cloud] = {"checkpoints_dropped": dropped, "error": exc.message}
    with p.store.session() as s:
        p.store.record(s, "store", "all", "", "collected", "; ".join(
            f"{c}: {v['error']}" if "error" in v else f"{c}: {v['checkpoints_dropped']} checkpoints dropped, "
            f"{v['bytes']} bytes freed" for c, v in out.items()) or "no store reachable")
    return {"stores": out}


def _all_keys(p: Platform) -> dict[str, DatasetKey | None]:
    with p.store.session() as s:
        return {row.name: _key(p, row) for row in s.scalars(select(DatasetRow)).all()}
