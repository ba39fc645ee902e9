"""Datasets in object stores: push a folder, pull a version, sync between stores, verify, delete.

Layout of a store (shared by every dataset in it, so datasets deduplicate against each other)::

    chunks/ab/<id>                         a chunk: id = its sha256, or an HMAC of it when encrypted
    datasets/<name>/versions/<digest>.json a manifest, written last, create-only
    quarantine/<id>.<time>                 a chunk that failed verification, kept for inspection

A version is visible once its manifest exists, and a manifest is written only after every chunk
it names is present: an interrupted transfer leaves chunks, never a broken version, and running
it again sends only what is missing. Two pushes at once write different manifests and share
chunks that are equal byte for byte, so neither can damage the other."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from .._files import write_atomic
from ..errors import ConflictError, FermionError, NotFoundError, UserInputError, shorten
from ._crypto import OVERHEAD, DatasetKey, DecryptError
from ._manifest import DEFAULT_SPACE, FileEntry, Manifest, chunker, iter_chunks, scan_folder
from ._stores import ObjectStore, StoreError

WORKERS = 16
MAX_NAMED_FILES = 20  # files named per bad chunk in a verify report
GC_GRACE_S = 3600.0  # a chunk younger than this may belong to a version being committed right now
FOLDERS_OVER_LISTING = 64  # past this many chunk folders to look in, one listing of the whole space is cheaper
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def store_lock(store: ObjectStore) -> threading.Lock:
    """One lock per store in this process: a commit and a garbage collection never interleave."""
    with _locks_guard:
        return _locks.setdefault(store.config.url, threading.Lock())


class Progress:
    """What a transfer reports as it goes; the CLI draws it as a bar. Safe from many threads."""

    def __init__(self, on_advance: Callable[[int], None] | None = None,
                 on_total: Callable[[int], None] | None = None) -> None:
        self._advance, self._total = on_advance, on_total
        self._lock = threading.Lock()

    def total(self, nbytes: int) -> None:
        if self._total:
            self._total(nbytes)

    def advance(self, nbytes: int) -> None:
        if self._advance:
            with self._lock:
                self._advance(nbytes)


NO_PROGRESS = Progress()


@dataclass
class TransferReport:
    """What one push, pull or sync moved."""

    files: int = 0
    chunks: int = 0  # distinct chunks the versions need
    chunks_sent: int = 0
    bytes_sent: int = 0  # payload bytes written to the target (after encryption)
    bytes_skipped: int = 0  # bytes the target had already
    seconds: float = 0.0
    versions: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # chunks no source could give intact

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class CorruptChunk(FermionError):
    http_status = 409


class DatasetView:
    """One dataset in one store, with its key when it is encrypted."""

    def __init__(self, store: ObjectStore, name: str, key: DatasetKey | None = None, space: str = DEFAULT_SPACE) -> None:
        self.store, self.name, self.key, self.space = store, name, key, space

    def __repr__(self) -> str:
        return f"DatasetView({self.name} in {self.store.name})"

    # -- names -------------------------------------------------------------------------------
    def chunk_key(self, sha: str) -> str:
        oid = self.key.object_id(sha) if self.key else sha
        return f"chunks/{self.space}/{oid[:2]}/{oid}"

    def of(self, manifest: Manifest) -> DatasetView:
        """This dataset in the space ``manifest`` keeps its chunks in."""
        return self if manifest.space == self.space else DatasetView(self.store, self.name, self.key, manifest.space)

    def stored_size(self, size: int) -> int:
        return size + OVERHEAD if self.key else size

    def manifest_key(self, digest: str) -> str:
        return f"datasets/{self.name}/versions/{digest}.json"

    # -- chunks ------------------------------------------------------------------------------
    def present(self) -> dict[str, int]:
        """The chunk objects of this view's space, key → size (one listing, not a call per chunk)."""
        return self.store.list(f"chunks/{self.space}")

    def missing(self, chunks: dict[str, int], present: dict[str, int] | None = None) -> list[str]:
        """The chunks (sha → size) this store lacks or holds with the wrong size."""
        present = self.present() if present is None else present
        return [sha for sha, size in chunks.items() if present.get(self.chunk_key(sha)) != self.stored_size(size)]

    def lacking(self, chunks: dict[str, int], base: Manifest | None = None) -> list[str]:
        """Like ``missing``, trusting the chunks of ``base`` if that version is here: a version in a
        store has all its chunks there (commit, verify and garbage collection keep it so). The
        chunks left are looked up in their folders when those are few, else in one listing."""
        if base is not None and (base.dataset, base.space) == (self.name, self.space) and self.has(base.digest):
            known = base.chunk_sizes()
            chunks = {sha: size for sha, size in chunks.items() if known.get(sha) != size}
        folders = sorted({self.chunk_key(sha).rsplit("/", 1)[0] for sha in chunks})
        if len(folders) > FOLDERS_OVER_LISTING:
            return self.missing(chunks)
        present: dict[str, int] = {}  # a chunk's folder holds 1/256 of its space: one listing each
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="lookup") as pool:
            for listed in pool.map(self.store.list, folders):
                present.update(listed)
        return self.missing(chunks, present)

    def put_chunk(self, sha: str, data: bytes | memoryview, *, check: bool = True) -> int:
        """Store one chunk; with ``check`` its bytes must hash to ``sha``. Returns the bytes written."""
        if check and hashlib.sha256(data).hexdigest() != sha:
            raise UserInputError(f"chunk {sha[:12]}… does not hash to its name", hint="send the chunk's bytes unchanged")
        blob = self.key.seal_chunk(sha, data) if self.key else bytes(data)
        self.store.put(self.chunk_key(sha), blob)
        return len(blob)

    def get_chunk(self, sha: str) -> bytes:
        """The chunk's plain bytes, checked against its sha256; CorruptChunk if they do not match."""
        blob = self.store.get(self.chunk_key(sha))
        return self.open_chunk(sha, blob)

    def open_chunk(self, sha: str, blob: bytes) -> bytes:
        if self.key:
            try:
                blob = self.key.open(blob, sha)
            except DecryptError as exc:
                raise CorruptChunk(f"chunk {sha} in store {self.store.name} is corrupt ({exc})") from None
        if hashlib.sha256(blob).hexdigest() != sha:
            raise CorruptChunk(f"chunk {sha} in store {self.store.name} is corrupt (its sha256 differs)")
        return blob

    # -- manifests ---------------------------------------------------------------------------
    def commit(self, manifest: Manifest, base: Manifest | None = None, *, sent: Iterable[str] = (),
               since: float | None = None) -> bool:
        """Make a version visible: only once every chunk it names is here (looked up afresh, under
        the store's lock, so a garbage collection cannot take one away meanwhile). Those of ``base``,
        a version already here, need no look-up, nor those this process ``sent`` (written since
        ``since``, a time.time(): younger than the collection's grace period). False if it already was."""
        if manifest.dataset != self.name or manifest.encrypted != bool(self.key) or manifest.space != self.space:
            raise UserInputError(f"manifest is for dataset {shorten(manifest.dataset)} "
                                 f"({'encrypted' if manifest.encrypted else 'plain'}), not {self.name}")
        chunks = manifest.chunk_sizes()
        if since is not None and time.time() - since < GC_GRACE_S / 2:
            written = set(sent)
            chunks = {sha: size for sha, size in chunks.items() if sha not in written}
        with store_lock(self.store):
            lacking = self.lacking(chunks, base)
            if lacking:
                raise ConflictError(f"store {self.store.name} lacks {len(lacking)} chunks of this version "
                                    f"(first: {lacking[0]})", hint="send the missing chunks, then commit again")
            body = manifest.canonical()
            if self.key:
                body = self.key.seal(body, manifest.digest)
            return self.store.put(self.manifest_key(manifest.digest), body, create_only=True)

    def read(self, digest: str) -> Manifest:
        body = self.store.get(self.manifest_key(digest))
        if self.key:
            try:
                body = self.key.open(body, digest)
            except DecryptError:
                raise CorruptChunk(f"manifest {digest} of {self.name} in store {self.store.name} is corrupt") from None
        if hashlib.sha256(body).hexdigest() != digest:  # the body is the canonical JSON its digest names
            raise CorruptChunk(f"manifest {digest} of {self.name} in store {self.store.name} is corrupt")
        try:
            manifest = Manifest.model_validate_json(body)
        except ValidationError:
            raise CorruptChunk(f"manifest {digest} of {self.name} in store {self.store.name} is corrupt") from None
        manifest.__dict__["digest"] = digest  # checked above: no need to serialize it again
        return manifest

    def digests(self) -> list[str]:
        """The versions visible in this store."""
        keys = self.store.list(f"datasets/{self.name}/versions")
        return sorted(k.rsplit("/", 1)[-1].removesuffix(".json") for k in keys if k.endswith(".json"))

    def has(self, digest: str) -> bool:
        return self.store.exists(self.manifest_key(digest))

    def versions(self) -> list[Manifest]:
        """Every version in this store, oldest first."""
        return sorted((self.read(d) for d in self.digests()), key=lambda m: (m.created_at, m.digest))

    def drop(self, digest: str) -> None:
        """Remove a version's manifest (its chunks go at the next garbage collection)."""
        self.store.delete([self.manifest_key(digest)])


def _run_all(pool: ThreadPoolExecutor, futures: list[Future]) -> None:
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    for f in done:
        if f.exception() is not None:
            for other in futures:
                other.cancel()
            raise f.exception()  # type: ignore[misc]


@dataclass
class FolderPlan:
    """A folder chunked and hashed: its manifest entries, and where each distinct chunk lies."""

    entries: list[FileEntry]
    where: dict[str, tuple[Path, int, int]]  # chunk sha → (file, offset, length)

    @property
    def chunks(self) -> dict[str, int]:
        return {sha: length for sha, (_, _, length) in self.where.items()}

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


def plan_folder(root: Path, cache: Path | None = None, files: list[tuple[str, Path]] | None = None) -> FolderPlan:
    """Chunk and hash every file under ``root``, or just ``files`` (relative path, path), nothing
    sent yet. With ``cache`` (a JSON file
    of this machine's), a file whose size, modification time, inode and change time are those
    recorded there is not read again: its entry is taken from the cache, as rsync trusts size and
    time. A file that changes later is still checked again when its chunks are sent."""
    cdc = chunker()
    entries: list[FileEntry] = []
    where: dict[str, tuple[Path, int, int]] = {}
    known: dict[str, object] = {}
    if cache is not None:
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    seen: dict[str, object] = {}
    for rel, path in scan_folder(root) if files is None else files:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        cached = known.get(rel)
        entry = None
        if isinstance(cached, dict) and cached.get("stamp") == stamp:
            try:
                entry = FileEntry.model_validate(cached["entry"])
            except ValidationError:
                entry = None
        if entry is None:
            whole = hashlib.sha256()
            chunks: list[tuple[str, int]] = []
            for data in iter_chunks(path, cdc):
                whole.update(data)
                chunks.append((hashlib.sha256(data).hexdigest(), len(data)))
            entry = FileEntry(path=rel, size=sum(n for _, n in chunks), sha256=whole.hexdigest(), chunks=chunks)
        offset = 0
        for sha, n in entry.chunks:
            where.setdefault(sha, (path, offset, n))
            offset += n
        entries.append(entry)
        seen[rel] = {"stamp": stamp, "entry": entry.model_dump(mode="json")}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(seen), 0o600)
    return FolderPlan(entries, where)


def send_chunks(plan: FolderPlan, shas: list[str], put: Callable[[str, bytes], int], *,
                progress: Progress = NO_PROGRESS, workers: int = WORKERS) -> TransferReport:
    """Read each chunk of ``shas`` from its file (checked again: the file may have changed since
    it was planned) and hand it to ``put``, ``workers`` at a time."""
    report = TransferReport(files=len(plan.entries), chunks=len(plan.where))
    report.bytes_skipped = plan.size - sum(plan.where[s][2] for s in shas)
    lock = threading.Lock()

    def send(sha: str) -> None:
        path, offset, length = plan.where[sha]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if hashlib.sha256(data).hexdigest() != sha:
            raise ConflictError(f"{path} changed while it was being sent", hint="push again once it is written")
        n = put(sha, data)
        with lock:
            report.chunks_sent += 1
            report.bytes_sent += n
        progress.advance(length)

    with ThreadPoolExecutor(workers, thread_name_prefix="send") as pool:
        _run_all(pool, [pool.submit(send, sha) for sha in shas])
    return report


def push_folder(view: DatasetView, root: Path, *, parent: str | None = None, message: str = "",
                progress: Progress = NO_PROGRESS, workers: int = WORKERS,
                cache: Path | None = None) -> tuple[Manifest, TransferReport]:
    """Make a version of ``root`` in ``view``'s store, sending only the chunks the store lacks;
    the version is committed once they are all there. Running it again after an interruption
    sends what did not arrive. ``parent``, a version in the store, vouches for its chunks there;
    ``cache`` (see plan_folder) spares re-reading the files that did not change."""
    started, began = time.perf_counter(), time.time()
    plan = plan_folder(root, cache)
    base = view.read(parent) if parent and view.has(parent) else None
    lacking = view.lacking(plan.chunks, base)
    progress.total(sum(plan.where[s][2] for s in lacking))
    report = send_chunks(plan, lacking, lambda sha, data: view.put_chunk(sha, data, check=False),
                         progress=progress, workers=workers)
    manifest = Manifest(dataset=view.name, files=plan.entries, parent=parent, created_at=time.time(), message=message,
                        encrypted=bool(view.key), space=view.space)
    view.commit(manifest, base, sent=lacking, since=began)
    report.versions = [manifest.digest]
    report.seconds = time.perf_counter() - started
    return manifest, report


def sync(sources: list[DatasetView], target: DatasetView, digests: Iterable[str] | None = None, *,
         progress: Progress = NO_PROGRESS, workers: int = WORKERS) -> TransferReport:
    """Bring ``digests`` (default: every version of the first source) to ``target``, copying only
    the chunks it lacks, each from the first source that holds it intact. A version is committed
    on the target only when all its chunks arrived; chunks no source holds intact are reported."""
    started, began = time.perf_counter(), time.time()
    report = TransferReport()
    primary = sources[0]
    wanted = list(digests) if digests is not None else primary.digests()
    there = set(target.digests())  # versions the target holds whole already: nothing to check
    manifests: list[Manifest] = []
    for d in wanted:
        if d not in there:
            manifests.append(_read_any(sources, d))
    manifests.sort(key=lambda m: (m.created_at, m.digest))  # parents first: each is the next one's base
    bases = {m.digest: m for m in manifests}
    for m in manifests:  # a parent the target holds vouches for its chunks there
        if m.parent and m.parent in there and m.parent not in bases:
            bases[m.parent] = _read_any(sources, m.parent)
    trusted: dict[str, int] = {}
    for m in manifests:
        if m.parent in there:
            trusted.update(bases[m.parent].chunk_sizes())
    needed: dict[str, int] = {}
    for m in manifests:
        needed.update(m.chunk_sizes())
    report.chunks = len(needed)
    lacking = target.lacking({sha: size for sha, size in needed.items() if trusted.get(sha) != size})
    report.bytes_skipped = sum(needed.values()) - sum(needed[s] for s in lacking)
    progress.total(sum(needed[s] for s in lacking))
    lock = threading.Lock()

    def copy(sha: str) -> None:
        for src in sources:
            try:  # through this process, checked: a bad copy in one source is passed over for the next
                plain = src.get_chunk(sha)
            except (NotFoundError, CorruptChunk, StoreError):
                continue
            n = target.put_chunk(sha, plain, check=False)
            with lock:
                report.chunks_sent += 1
                report.bytes_sent += n
            progress.advance(needed[sha])
            return
        with lock:
            report.failed.append(sha)

    with ThreadPoolExecutor(workers, thread_name_prefix="sync") as pool:
        _run_all(pool, [pool.submit(copy, sha) for sha in lacking])
    failed = set(report.failed)
    for m in manifests:
        if failed & set(m.chunk_sizes()):
            continue
        target.commit(m, bases.get(m.parent) if m.parent in there else None, sent=lacking, since=began)
        there.add(m.digest)
    report.versions = [d for d in wanted if d in there]
    report.seconds = time.perf_counter() - started
    return report


def _read_any(views: list[DatasetView], digest: str) -> Manifest:
    """A version's manifest from the first of ``views`` that holds it intact."""
    for view in views:
        try:
            return view.read(digest)
        except (NotFoundError, CorruptChunk, StoreError):
            continue
    raise NotFoundError(f"no reachable store holds version {digest} of {views[0].name} intact")


def pull(view: DatasetView, manifest: Manifest, dest: Path, *, progress: Progress = NO_PROGRESS,
         workers: int = WORKERS) -> TransferReport:
    """Write the version's files under ``dest``; a file already there with the right sha256 is kept."""
    started = time.perf_counter()
    report = TransferReport(files=len(manifest.files), chunks=len(manifest.chunk_sizes()), versions=[manifest.digest])
    progress.total(manifest.size)
    dest.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def fetch(entry: FileEntry) -> None:
        path = dest / entry.path
        if path.is_file() and not path.is_symlink() and path.stat().st_size == entry.size and sha256_file(path) == entry.sha256:
            with lock:
                report.bytes_skipped += entry.size
            progress.advance(entry.size)
            return
        def chunks() -> Iterator[bytes]:
            for sha, size in entry.chunks:
                yield view.get_chunk(sha)
                progress.advance(size)

        n = write_chunks(path, chunks(), entry.sha256)
        with lock:
            report.chunks_sent += len(entry.chunks)
            report.bytes_sent += n

    with ThreadPoolExecutor(workers, thread_name_prefix="pull") as pool:
        _run_all(pool, [pool.submit(fetch, f) for f in manifest.files])
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class VerifyReport:
    store: str
    versions: list[str]
    chunks: int = 0
    bytes: int = 0
    missing: dict[str, list[str]] = field(default_factory=dict)  # chunk sha → the files that need it
    corrupt: dict[str, list[str]] = field(default_factory=dict)
    quarantined: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)  # versions taken down here until a sync repairs them

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "ok": self.ok}


def verify(view: DatasetView, digests: Iterable[str] | None = None, *, quarantine: bool = True,
           progress: Progress = NO_PROGRESS, workers: int = WORKERS) -> VerifyReport:
    """Read back every chunk the versions need and check it. A missing or corrupt chunk is named,
    with the files it belongs to; a corrupt one is moved to ``quarantine/``, and the versions that
    need either are taken down in this store until a sync brings them back whole."""
    wanted = list(digests) if digests is not None else view.digests()
    report = VerifyReport(store=view.store.name, versions=wanted)
    users: dict[str, dict[str, None]] = {}  # chunk → the files that need it, in order, each once
    sizes: dict[str, int] = {}
    for d in wanted:
        for f in view.read(d).files:
            for sha, size in f.chunks:
                users.setdefault(sha, {})[f.path] = None
                sizes[sha] = size
    report.chunks, report.bytes = len(sizes), sum(sizes.values())
    progress.total(report.bytes)
    present = view.present()
    lock = threading.Lock()

    def check(sha: str) -> None:
        key = view.chunk_key(sha)
        try:
            if key not in present:
                raise NotFoundError(key)
            blob = view.store.get(key)
            view.open_chunk(sha, blob)
        except NotFoundError:
            with lock:
                report.missing[sha] = list(users[sha])[:MAX_NAMED_FILES]
        except CorruptChunk:
            with lock:
                report.corrupt[sha] = list(users[sha])[:MAX_NAMED_FILES]
            if quarantine:
                view.store.put(f"quarantine/{key.rsplit('/', 1)[-1]}.{int(time.time())}", blob)
                view.store.delete([key])
                with lock:
                    report.quarantined.append(sha)
        progress.advance(sizes[sha])

    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
        _run_all(pool, [pool.submit(check, sha) for sha in sizes])
    bad = {view.chunk_key(sha) for sha in [*report.missing, *report.corrupt]}
    if bad:
        report.withdrawn = withdraw(view, bad)
    return report


def dataset_names(store: ObjectStore) -> list[str]:
    """Every dataset (and job's checkpoints) with a manifest in ``store``."""
    return sorted({k.split("/", 2)[1] for k in store.list("datasets") if k.count("/") >= 3})


def withdraw(view: DatasetView, bad: set[str]) -> list[str]:
    """Take down every version in the store that needs one of the ``bad`` chunk objects: a version
    in a store has all its chunks there, so a sync (which trusts that) sends them again. Plain
    datasets share chunks, so every plain dataset in the store is looked at; an encrypted one's
    chunks are its own. Returns the digests withdrawn (from ``view``'s dataset and the others)."""
    with store_lock(view.store):
        views = [view]
        if view.key is None:
            views += [DatasetView(view.store, n, None, view.space) for n in dataset_names(view.store) if n != view.name]
        out = []
        for v in views:
            for digest in v.digests():
                try:
                    m = v.read(digest)
                except CorruptChunk:
                    continue  # another dataset's encrypted manifest: its chunks are not these
                if any(v.of(m).chunk_key(sha) in bad for sha in m.chunk_sizes()):
                    v.drop(digest)
                    out.append(digest)
        return out


def collect_garbage(store: ObjectStore, keys: Mapping[str, DatasetKey | None], *,
                    grace_s: float = GC_GRACE_S) -> tuple[int, int]:
    """Delete the chunks that no version of any dataset in ``store`` names and that are older than
    ``grace_s`` (a chunk sent for a version not committed yet, by this server or another, is
    young). ``keys`` maps every dataset the server knows to its key (None: plain). A dataset it
    does not know and cannot read (encrypted, its key gone with it) is garbage whole; one it knows
    but cannot read stops the collection: deleting what it might need is never a guess. Returns
    (objects deleted, bytes freed)."""
    with store_lock(store):
        keep: set[str] = set()
        kept_spaces: list[str] = []  # chunk prefixes kept whole: a young manifest no one here can read
        young = time.time() - grace_s
        for name in dataset_names(store):
            view = DatasetView(store, name, keys.get(name))
            for digest in view.digests():
                try:
                    m = view.read(digest)
                except CorruptChunk as exc:
                    if name in keys:
                        raise ConflictError(f"not collecting garbage in store {store.name}: {exc}",
                                            hint="every dataset this server knows must be readable first") from None
                    made = store.list_modified(f"datasets/{name}/versions").get(view.manifest_key(digest), (0, 0.0))[1]
                    if made < young:
                        view.drop(digest)  # unreadable by anyone: a deleted encrypted dataset's leftover
                    else:  # an encrypted dataset made since the keys were read (here or by another server)
                        kept_spaces.append(f"chunks/enc.{name}/")
                    continue
                keep.update(view.of(m).chunk_key(sha) for sha in m.chunk_sizes())
        chunks = store.list_modified("chunks")
        garbage = [k for k, (_, modified) in chunks.items() if k not in keep and modified < young
                   and not k.startswith(tuple(kept_spaces))]
        store.delete(garbage)
        return len(garbage), sum(chunks[k][0] for k in garbage)


def write_chunks(path: Path, chunks: Iterable[bytes], sha256: str) -> int:
    """Write a file from its chunks, one in memory at a time, through a temporary file beside it
    that is renamed into place only if the whole hashes to ``sha256``. Returns the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    whole, n = hashlib.sha256(), 0
    try:
        with open(tmp, "xb") as f:
            for data in chunks:
                whole.update(data)
                f.write(data)
                n += len(data)
        if whole.hexdigest() != sha256:
            raise CorruptChunk(f"{path.name} does not match its sha256 (a chunk changed on the way)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
