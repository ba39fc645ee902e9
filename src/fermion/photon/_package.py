"""The .photon archive: a zip of manifest.json and source files. No pickles, ever."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, Field

from .. import __version__
from ..errors import PhotonLoadError, UnsafeArchiveError
from ._loader import load_module, load_photon_class, split_ref
from ._photon import Photon

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
MAX_ARCHIVE_BYTES = 200 * 1024 * 1024
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".pytest_cache", ".mypy_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".photon"}
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed, so the same sources give the same archive bytes


class HandlerManifest(BaseModel):
    method: str
    path: str
    stream: bool = False
    batch: dict[str, Any] | None = None
    timeout_s: float | None = None
    request_schema: dict[str, Any] | None = None
    response_schema: dict[str, Any] | None = None


class PhotonManifest(BaseModel):
    """What manifest.json of a .photon archive says."""

    format: int = FORMAT_VERSION
    name: str
    entry: str  # "relative/file.py:Class"
    requirements: list[str] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)
    handlers: dict[str, HandlerManifest] = Field(default_factory=dict)
    files: dict[str, str]  # path -> sha256
    sha256: str
    fermion_version: str = __version__
    created_at: float = Field(default_factory=time.time)


def content_sha256(files: dict[str, str]) -> str:
    """One digest over every (path, file digest), independent of order and timestamps."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\0{files[path]}\n".encode())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_files(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            full = Path(dirpath, name)
            if full.suffix in _SKIP_SUFFIXES or name.startswith(".") or full.is_symlink():
                continue
            total += full.stat().st_size
            if total > MAX_ARCHIVE_BYTES:
                raise PhotonLoadError(
                    f"the photon directory {root} holds more than {MAX_ARCHIVE_BYTES >> 20} MiB",
                    hint="keep weights out of the photon (load them in init()) or move the photon to its own folder",
                )
            files[full.relative_to(root).as_posix()] = full
    return files


def handler_manifests(photon_cls: type[Photon]) -> dict[str, HandlerManifest]:
    from ._app import build_app  # imports FastAPI; only needed when building

    schema = build_app(photon_cls).openapi()
    out: dict[str, HandlerManifest] = {}
    for opts, _ in photon_cls.handlers().values():
        op = schema["paths"][opts.path][opts.method.lower()]
        body = op.get("requestBody", {}).get("content", {})
        ok = op.get("responses", {}).get("200", {}).get("content", {})
        out[opts.name] = HandlerManifest(
            method=opts.method,
            path=opts.path,
            stream=bool(op.get("x-fermion-stream")),
            batch=opts.batch.model_dump() if opts.batch else None,
            timeout_s=opts.timeout_s,
            request_schema=next(iter(body.values()), {}).get("schema") if body else None,
            response_schema=ok.get("application/json", {}).get("schema"),
        )
    return out


def build_archive(ref: str, output: str | Path) -> PhotonManifest:
    """Package the photon ``ref`` and the folder around its file into ``output``."""
    photon_cls = load_photon_class(ref)
    target, _ = split_ref(ref)
    module_file = load_module(target).__file__
    if module_file is None:
        raise PhotonLoadError(f"{target} has no source file to package")
    source = Path(module_file).resolve()
    root = source.parent
    paths = _source_files(root)
    digests = {rel: _file_sha256(p) for rel, p in paths.items()}
    manifest = PhotonManifest(
        name=photon_cls.photon_name(),
        entry=f"{source.relative_to(root).as_posix()}:{photon_cls.__name__}",
        requirements=list(photon_cls.requirements),
        resources=dict(photon_cls.resources),
        handlers=handler_manifests(photon_cls),
        files=digests,
        sha256=content_sha256(digests),
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(MANIFEST, _ZIP_DATE), manifest.model_dump_json(indent=2))
        for rel, p in paths.items():
            info = zipfile.ZipInfo(f"src/{rel}", _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, p.read_bytes())
    tmp.replace(output)
    return manifest


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"archive entry {name!r} is a link; links are refused")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise UnsafeArchiveError(f"archive entry {name!r} has an absolute path; refused")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"archive entry {name!r} escapes the archive with '..'; refused")


def read_manifest(archive: str | Path) -> PhotonManifest:
    """Validate the archive's entries and return its manifest."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info)
            try:
                raw = zf.read(MANIFEST)
            except KeyError:
                raise PhotonLoadError(f"{archive} has no {MANIFEST}; is it a .photon archive?") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PhotonLoadError(f"cannot read photon archive {archive}: {exc}") from exc
    try:
        return PhotonManifest.model_validate(json.loads(raw))
    except ValueError as exc:
        raise PhotonLoadError(f"{archive} has an invalid {MANIFEST}: {exc}") from exc


def extract_archive(archive: str | Path, cache_dir: str | Path) -> tuple[Path, PhotonManifest]:
    """Unpack (once) into ``cache_dir/<sha>``, verifying every file's sha256."""
    manifest = read_manifest(archive)
    dest = Path(cache_dir) / manifest.sha256[:24]
    if (dest / MANIFEST).exists():
        return dest / "src", manifest
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache_dir))
    try:
        with zipfile.ZipFile(archive) as zf:
            seen: dict[str, str] = {}
            for info in zf.infolist():
                if info.is_dir() or info.filename == MANIFEST:
                    continue
                if not info.filename.startswith("src/"):
                    raise UnsafeArchiveError(f"archive entry {info.filename!r} is outside src/")
                rel = info.filename[len("src/") :]
                data = zf.read(info)
                seen[rel] = hashlib.sha256(data).hexdigest()
                target = staging / "src" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        if seen != manifest.files or content_sha256(seen) != manifest.sha256:
            raise PhotonLoadError(f"{archive} does not match its manifest's sha256; it is corrupt or was altered")
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        try:
            staging.rename(dest)
        except OSError:  # another process unpacked the same archive first
            if not (dest / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest / "src", manifest


def load_from_archive(archive: str | Path, cache_dir: str | Path) -> tuple[type[Photon], PhotonManifest]:
    src, manifest = extract_archive(archive, cache_dir)
    rel, _, cls_name = manifest.entry.rpartition(":")
    return load_photon_class(f"{src / rel}:{cls_name}"), manifest
