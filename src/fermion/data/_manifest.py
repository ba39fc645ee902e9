"""A dataset version: an immutable manifest of files, each a list of content-defined chunks
addressed by sha256. Versions and files share chunks, so a second version stores only what changed."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator
from pyfastcdc import FastCDC

from ..errors import UserInputError, shorten

# measured chunk sizes average avg + min (FastCDC's cut-point skipping): about 1.25 MiB here
CHUNK_AVG, CHUNK_MIN, CHUNK_MAX = 1 << 20, 1 << 18, 1 << 22
SHA256 = re.compile(r"^[0-9a-f]{64}$")
FORMAT = 1
# chunks are shared within a space only: a project's plain datasets and jobs share one, and each
# encrypted dataset has its own, so no one learns from a store whether another project holds a chunk
DEFAULT_SPACE = "default"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str = Field(min_length=1, max_length=1024)
    size: int = Field(ge=0, strict=True)
    sha256: str = Field(pattern=SHA256.pattern)
    chunks: list[tuple[str, Annotated[int, Strict()]]]  # (sha256 of the chunk, its size), in file order

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        return safe_relpath(path)

    @field_validator("chunks")
    @classmethod
    def _chunk_ids(cls, chunks: list[tuple[str, int]]) -> list[tuple[str, int]]:
        for sha, size in chunks:
            if not SHA256.match(sha) or not 0 < size <= CHUNK_MAX:
                raise ValueError(f"invalid chunk {shorten(sha)} of {size} bytes")
        return chunks

    @model_validator(mode="after")
    def _sizes_add_up(self) -> FileEntry:
        if sum(size for _, size in self.chunks) != self.size:
            raise ValueError(f"file {shorten(self.path)}: its chunks add up to another size than {self.size}")
        return self


class Manifest(BaseModel):
    """One version of a dataset. Its digest (sha256 of its canonical JSON) is its identity. Frozen:
    the digest is computed once (a manifest of 100,000 files takes a second to serialize)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: int = FORMAT
    dataset: str
    files: list[FileEntry]
    parent: str | None = None  # the digest of the version this one was made from
    created_at: float
    message: str = Field("", max_length=2000)
    encrypted: bool = False
    space: str = Field(DEFAULT_SPACE, pattern=r"^[a-z0-9][a-z0-9.-]{0,200}$")  # where in the store its chunks are

    @model_validator(mode="after")
    def _one_tree(self) -> Manifest:
        """Files that can all be written out: each path once, none inside another file, and a chunk
        the same size wherever it appears."""
        paths = {f.path for f in self.files}
        if len(paths) != len(self.files):
            raise ValueError("a path appears twice in the version's files")
        for path in paths:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in paths:
                    raise ValueError(f"{shorten(parent)} is a file and a folder of {shorten(path)}")
                parent = parent.rpartition("/")[0]
        sizes: dict[str, int] = {}
        for f in self.files:
            for sha, size in f.chunks:
                if sizes.setdefault(sha, size) != size:
                    raise ValueError(f"chunk {sha[:12]}… is given two sizes")
        return self

    def canonical(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> Manifest:  # type: ignore[override]
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("digest", None)  # other fields, another identity
        return copied

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_sizes(self) -> dict[str, int]:
        """Every distinct chunk the version needs, with its size."""
        return {sha: size for f in self.files for sha, size in f.chunks}


def safe_relpath(path: str) -> str:
    """A relative POSIX path with no '..', '.', empty or absolute parts: never a way out of a folder."""
    if not path or "\\" in path or "\x00" in path or any(p in ("..", ".", "") for p in path.split("/")):
        raise ValueError(f"invalid path in a dataset: {shorten(path)!r}")
    return path


def chunker() -> FastCDC:
    return FastCDC(CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX)


def iter_chunks(path: Path, cdc: FastCDC | None = None) -> Iterator[memoryview]:
    """The file's content-defined chunks (views into a memory map, valid while iterating)."""
    if path.stat().st_size == 0:
        return
    for c in (cdc or chunker()).cut_file(str(path)):
        yield c.data


def scan_folder(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as (relative POSIX path, path), sorted; links are refused
    rather than followed, so a dataset never captures what lies outside its folder."""
    if not root.is_dir():
        raise UserInputError(f"{root} is not a folder", hint="give the folder that holds the dataset's files")
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                raise UserInputError(f"{full} is a symbolic link", hint="a dataset holds regular files only: copy the target in")
            if not full.is_file():
                continue
            try:
                safe_relpath(rel)
            except ValueError as exc:
                raise UserInputError(str(exc)) from None
            out.append((rel, full))
    return sorted(out)


def diff(old: Manifest, new: Manifest) -> dict[str, object]:
    """Files added, removed and changed between two versions, and the bytes the new one adds."""
    a, b = {f.path: f for f in old.files}, {f.path: f for f in new.files}
    old_chunks = old.chunk_sizes()
    added = sorted(set(b) - set(a))
    removed = sorted(set(a) - set(b))
    changed = sorted(p for p in set(a) & set(b) if a[p].sha256 != b[p].sha256)
    new_bytes = sum(size for sha, size in new.chunk_sizes().items() if sha not in old_chunks)
    return {"from": old.digest, "to": new.digest, "added": added, "removed": removed, "changed": changed,
            "unchanged": len(set(a) & set(b)) - len(changed), "new_chunk_bytes": new_bytes,
            "size_before": old.size, "size_after": new.size}
