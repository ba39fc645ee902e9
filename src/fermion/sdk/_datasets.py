"""Versioned datasets through the SDK: create, push, pull, sync, verify, diff, dedup, delete."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from ..errors import FermionError, UserInputError
from ._http import Transport
from ._progress import ProgressFactory, quiet
from ._results import Dataset, DatasetSummary, DatasetVersion, Pulled, Pushed
from ._sources import Source, fetched
from ._transfer import WORKERS, follow_stream, plan_cache, send_plan


def split_ref(ref: str) -> tuple[str, str | None]:
    """NAME@VERSION → (NAME, VERSION); NAME → (NAME, None)."""
    name, _, version = ref.partition("@")
    if not name:
        raise UserInputError(f"invalid dataset reference {ref!r}", hint="use NAME or NAME@VERSION")
    return name, version or None


class Datasets:
    """``conn.datasets()`` lists them; the methods take NAME or NAME@VERSION."""

    def __init__(self, http: Transport) -> None:
        self._http = http

    def __call__(self) -> list[DatasetSummary]:
        return [DatasetSummary.model_validate(d) for d in self._http.get("/datasets")]

    def get(self, name: str) -> Dataset:
        """The dataset, its versions, and which clouds' stores hold each (asked of the stores now)."""
        return Dataset.model_validate(self._http.get(f"/datasets/{name}"))

    def version(self, ref: str) -> DatasetVersion:
        """One version's manifest: its files and their chunks."""
        name, version = split_ref(ref)
        return DatasetVersion.model_validate(self._http.get(f"/datasets/{name}/versions/{version or 'latest'}"))

    def create(self, name: str, folder: str | Path | None = None, *, cloud: str | None = None,
               encrypt: bool = False, project: str | None = None, description: str = "", message: str = "",
               cache: bool = True, endpoint: str | None = None, source_options: dict[str, Any] | None = None,
               progress: ProgressFactory = quiet) -> Pushed | dict[str, Any]:
        """Create a dataset (its home store on ``cloud``), and push ``folder`` as its first version.
        ``folder`` may be a URL instead, read with this machine's credentials: ``s3://BUCKET/PREFIX``,
        ``gs://…``, ``az://…`` or ``file:///PATH`` (every object under it; ``endpoint`` and
        ``source_options``, e.g. ``{"key": …, "secret": …}``, for its server and client) or one
        ``http(s)://`` file. The source is read before the dataset is made, and a push that fails
        takes the new, empty dataset away again: a failure leaves nothing behind."""
        if folder is None:
            return self._create(name, cloud, encrypt, project, description)
        with fetched(folder, progress, endpoint=endpoint, options=source_options) as source:
            plan = _plan(source, cache, progress)  # read whole first: a bad file makes nothing either
            self._create(name, cloud, encrypt, project, description)
            try:
                return self._send(name, plan, cloud, message or source.note, progress)
            except BaseException:
                self._forget_if_empty(name)
                raise

    def _create(self, name: str, cloud: str | None, encrypt: bool, project: str | None,
                description: str) -> dict[str, Any]:
        return self._http.request("POST", "/datasets", json={"name": name, "cloud": cloud, "encrypted": encrypt,
                                                            "project": project, "description": description})

    def _forget_if_empty(self, name: str) -> None:
        """Delete a dataset this call created if it still has no version; best effort (the error
        that brought us here is the one to raise)."""
        try:
            if not self.get(name).versions:
                self.delete(name)
        except (FermionError, httpx.HTTPError):
            pass

    def push(self, name: str, folder: str | Path, *, cloud: str | None = None, message: str = "",
             cache: bool = True, endpoint: str | None = None, source_options: dict[str, Any] | None = None,
             progress: ProgressFactory = quiet) -> Pushed:
        """Push a folder as the next version: only chunks the store lacks are sent (an interrupted push
        sends the rest when run again); a folder equal to the latest version makes none. ``folder``
        may be a URL, as for ``create``; the version's message then says where it came from."""
        with fetched(folder, progress, endpoint=endpoint, options=source_options) as source:
            return self._send(name, _plan(source, cache, progress), cloud, message or source.note, progress)

    def _send(self, name: str, plan: Any, cloud: str | None, message: str, progress: ProgressFactory) -> Pushed:
        """Send a planned folder's missing chunks, then commit its files as the next version."""
        report = send_plan(self._http, plan, f"push {name}", f"/datasets/{name}/missing",
                           f"/datasets/{name}/chunks", {"cloud": cloud}, progress)
        version = self._http.request("POST", f"/datasets/{name}/versions", json={
            "cloud": cloud, "message": message, "files": [e.model_dump() for e in plan.entries]})
        return Pushed.model_validate({**version, "sent_bytes": report.bytes_sent, "sent_chunks": report.chunks_sent,
                                      "skipped_bytes": report.bytes_skipped})

    def pull(self, ref: str, dest: str | Path, *, cloud: str | None = None,
             progress: ProgressFactory = quiet) -> Pulled:
        """Write a version's files to ``dest``; files already there and equal are kept. Every file is
        checked against its digest as it is written."""
        from ..data import CorruptChunk, FileEntry, sha256_file, write_chunks

        name, _ = split_ref(ref)
        v = self.version(ref)
        entries = [FileEntry.model_validate(f) for f in v.files] if isinstance(v.files, list) else []
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        with progress(f"pull {name} v{v.number}", v.size) as bar:
            def fetch(entry: FileEntry) -> int:
                path = dest / entry.path  # FileEntry refuses a path that leaves dest
                if path.is_file() and not path.is_symlink() and path.stat().st_size == entry.size \
                        and sha256_file(path) == entry.sha256:
                    bar.advance(entry.size)
                    return 0

                def chunks() -> Iterator[bytes]:
                    for sha, size in entry.chunks:
                        yield self._http.raw("GET", f"/datasets/{name}/chunks/{sha}",
                                             params={"cloud": cloud} if cloud else None)
                        bar.advance(size)

                try:
                    write_chunks(path, chunks(), entry.sha256)
                except CorruptChunk:
                    raise FermionError(f"{entry.path} arrived corrupt", hint=f"`fermion dataset verify {name}`") from None
                return 1

            with ThreadPoolExecutor(WORKERS) as pool:
                results = list(pool.map(fetch, entries))
        return Pulled(number=v.number, digest=v.digest, files=len(entries), fetched=sum(results),
                      kept=len(results) - sum(results))

    def sync(self, ref: str, to: str, *, source: str | None = None, progress: ProgressFactory = quiet) -> dict[str, Any]:
        """Copy versions (every one, or NAME@VERSION) to ``to``'s store: only the chunks it lacks, each
        from the nearest store holding it intact (so a sync also repairs what verify found)."""
        name, version = split_ref(ref)
        return follow_stream(self._http, f"/datasets/{name}/sync", {"to": to, "from": source, "version": version},
                             f"sync {name} → {to}", progress)

    def verify(self, ref: str, *, cloud: str | None = None) -> dict[str, Any]:
        """Read back every chunk and check it; corrupt ones are named and moved aside."""
        name, version = split_ref(ref)
        return self._http.request("POST", f"/datasets/{name}/verify", json={"cloud": cloud, "version": version},
                                  timeout=httpx.Timeout(60, read=None))

    def diff(self, name: str, a: str, b: str = "latest") -> dict[str, Any]:
        """Files added, removed and changed between versions ``a`` and ``b``."""
        return self._http.get(f"/datasets/{name}/diff", a=a, b=b)

    def dedup(self, ref: str, *, threshold: float = 0.85, column: str | None = None) -> dict[str, Any]:
        """Remove exact and near-duplicate rows (MinHash) of text and tabular files, as a new version."""
        name, version = split_ref(ref)
        return self._http.request("POST", f"/datasets/{name}/dedup",
                                  json={"version": version, "threshold": threshold, "column": column},
                                  timeout=httpx.Timeout(60, read=None))

    def delete(self, ref: str) -> dict[str, Any]:
        """Delete a version (NAME@VERSION), or the dataset, from every store."""
        name, version = split_ref(ref)
        return self._http.request("DELETE", f"/datasets/{name}", params={"version": version} if version else None,
                                  timeout=httpx.Timeout(60, read=None))


def _plan(source: Source, cache: bool, progress: ProgressFactory) -> Any:
    """Chunk and hash a source's files (a FolderPlan); the plan cache only for the caller's own
    folder (a fetched one is new every time)."""
    from ..data import plan_folder

    path = source.folder
    with progress(f"chunking {source.url or path}", None):
        return plan_folder(path, plan_cache(path) if cache and source.local else None)
