"""The .photon archive: a zip of manifest.json and source files. No pickles, ever."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from pydantic import BaseModel, Field, field_validator, model_validator

from .. import __version__
from .._files import write_atomic
from ..config import manifest_cache_dir
from ..errors import PhotonLoadError, UnsafeArchiveError
from ._credentials import ExplainedSelection, content_reasons, name_reason
from ._ignore import (
    IgnoreRules,
    explicit_path,
    is_fermion_home,
    is_secret,
    is_secret_dir,
    is_secret_file,
    secret_paths_in,
)
from ._loader import load_module, load_photon_class, split_ref
from ._photon import Photon

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
MAX_ARCHIVE_BYTES = 200 * 1024 * 1024  # sources, unpacked
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_FILES = 10_000
MAX_RATIO = 100  # unpacked/packed for members over 1 MiB: beyond it, a zip bomb
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# what reading a hostile zip may raise: corrupt data, an encrypted member, an unknown compression
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError)
_ENTRY = re.compile(r"^(?P<path>[^:]+\.py):(?P<cls>[A-Za-z_][A-Za-z0-9_]*)$")
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

    @field_validator("name")
    @classmethod
    def _short_name(cls, value: str) -> str:
        if not 0 < len(value) <= 200:
            raise ValueError("name must be 1 to 200 characters")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.match(value):  # it names files and folders: never let it hold a path
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value

    @model_validator(mode="after")
    def _entry_inside(self) -> PhotonManifest:
        for path, digest in self.files.items():
            if _unsafe_path(path) or not _SHA256.match(digest):
                raise ValueError(f"files: invalid entry {path[:200]!r}")
        match = _ENTRY.match(self.entry)
        if match is None or match["path"] not in self.files:
            raise ValueError(f"entry {self.entry[:200]!r} must be 'file.py:Class' naming a .py file of the archive")
        return self


def _unsafe_path(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return (not path or path.startswith(("/", "\\")) or "\\" in path or (len(path) > 1 and path[1] == ":")
            or ".." in parts or any(ord(c) < 32 for c in path))


IDENTITY_FIELDS = ("name", "entry", "requirements", "resources")


def content_sha256(files: dict[str, str], identity: dict[str, Any]) -> str:
    """The photon's identity: one digest over every (path, file digest) and the manifest fields
    that change what runs (``IDENTITY_FIELDS``), independent of order and timestamps. Two classes
    of one file are two photons."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\0{files[path]}\n".encode())
    h.update(json.dumps({k: identity.get(k) for k in IDENTITY_FIELDS}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def manifest_sha256(manifest: PhotonManifest, files: dict[str, str]) -> str:
    return content_sha256(files, manifest.model_dump(include=set(IDENTITY_FIELDS)))


def _stream_sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return _stream_sha256(f)


def source_files(root: Path, include: Sequence[str | Path] = (), kind: str = "photon", *,
                 entry: str | Path | None = None) -> ExplainedSelection:
    """Pick the files to pack under ``root``: not junk, not ignored, not credential-like by name or content, plus
    whatever ``include`` names and the ``entry`` file, packed even if they look like credentials (with a warning).
    ``kind`` (photon, job) names what is packed in the errors."""
    if is_fermion_home(root):  # its token and database sit beside the sources: nothing here is safe to pack
        raise PhotonLoadError(
            f"{root} looks like a Fermion home (it holds cli.json or fermion.db); refusing to pack it",
            hint=f"move the {kind} into a folder of its own",
        )
    sel = ExplainedSelection()
    total = 0

    def add(rel: str, full: Path) -> None:
        nonlocal total
        sel.files[rel] = full
        sel.sizes[rel] = full.stat().st_size
        total += sel.sizes[rel]
        if total > MAX_ARCHIVE_BYTES:  # checked as we go, so a huge tree fails fast
            raise PhotonLoadError(
                f"the {kind} directory {root} holds more than {MAX_ARCHIVE_BYTES >> 20} MiB",
                hint=f"keep weights and data out of the {kind} (a dataset, a .fermionignore) or move it to a folder "
                     "of its own",
            )

    _walk(root, sel, add)
    named = list(dict.fromkeys(explicit_path(root, item) for item in include))
    entry_rel = explicit_path(root, entry) if entry is not None else None
    for rel in [*named, entry_rel] if entry_rel is not None else named:
        if rel in sel.skipped:
            sel.skipped.remove(rel)
        if rel not in sel.files:
            add(rel, root / rel)
        if why := name_reason(rel) or _folder_reason(root, rel):
            sel.reasons[rel] = why
    for rel, why in content_reasons(sel.files).items():
        sel.reasons.setdefault(rel, why)  # a name says it more plainly than a line number
        if rel not in named and rel != entry_rel:
            del sel.files[rel], sel.sizes[rel]
            sel.leave_out(rel, why)
    sel.included_secrets = [rel for rel in named if rel in sel.reasons]
    sel.entry_secrets = [entry_rel] if entry_rel in sel.reasons else []
    sel.skipped.sort()
    sel.files = dict(sorted(sel.files.items()))  # same sources, same archive, whatever the order of include
    return sel


def _walk(root: Path, sel: ExplainedSelection, add: Callable[[str, Path], None]) -> None:
    """Add the files under ``root`` that are not junk, ignored or named like credentials; note those left out."""
    rules = IgnoreRules()
    for dirpath, dirnames, filenames in os.walk(root):  # top-down, so a folder's ignore files load before its files
        here = Path(dirpath)
        prefix = "" if here == root else here.relative_to(root).as_posix() + "/"
        rules.load(here, prefix)
        kept = []
        for d in sorted(dirnames):
            if (here / d).is_symlink():  # os.walk does not follow it, and links are never packed
                continue
            if is_secret_dir(here / d):  # checked before the dot rule so that .ssh/ or .fermion/ is reported
                sel.leave_out(prefix + d + "/", _dir_reason(here / d))
            elif d in _SKIP_DIRS or d.startswith("."):
                for rel in secret_paths_in(here / d, prefix + d):  # never entered, but .docker/config.json is told
                    sel.leave_out(rel, "a tool's credentials (Docker or Kubernetes config)")
            elif not rules.ignored(prefix + d, is_dir=True):
                kept.append(d)
        dirnames[:] = kept  # an ignored folder is not entered, so (as in git) no "!" can re-include its files
        for name in sorted(filenames):
            full, rel = here / name, prefix + name
            if full.is_symlink() or not full.is_file():  # a link, or a fifo or socket that reading would hang on
                continue
            if why := name_reason(rel):  # before the ignore rules: a credential is reported even if ignored
                sel.leave_out(rel, why)
            elif not (full.suffix in _SKIP_SUFFIXES or name.startswith(".") or rules.ignored(rel, is_dir=False)):
                add(rel, full)


def _dir_reason(folder: Path) -> str:
    if is_fermion_home(folder):
        return "a Fermion home (admin token, database)"
    return "a credentials folder"


def _folder_reason(root: Path, rel: str) -> str | None:
    """Why ``rel`` looks like a credential by a folder it sits in (``rel`` was named, so the walk did not judge it)."""
    if is_secret(root, rel) and not is_secret_file(rel):
        return "inside a credentials folder or Fermion home"
    return None


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


def build_archive(
    ref: str, output: str | Path, include: Sequence[str | Path] = (), *, cache: bool = True
) -> tuple[PhotonManifest, ExplainedSelection]:
    """Package the photon ``ref`` and the folder around its file into ``output``.

    Honours .gitignore and .fermionignore files and leaves credential-like files out (by name, and by content
    through detect-secrets' rules: see ``_credentials``); ``include`` names files (relative to the photon's folder) to
    pack anyway. Returns the manifest and what was packed and skipped, and why; warns (UserWarning) about included
    or entry-file credentials and sources over 10 MiB.

    With ``cache``, a ``FILE.py:Class`` whose packed files are byte for byte those of an earlier build
    (with the same Fermion, pydantic, FastAPI and Python) takes that build's manifest (kept in
    ``$FERMION_HOME/manifests``) instead of importing the photon and FastAPI to describe its handlers again: that
    is most of a deploy's time on the client. Handler types defined outside the photon's folder are
    not part of the key: ``cache=False`` (``--rebuild``) after changing them.
    """
    target, cls_name = split_ref(ref)
    cached, key = None, None
    if cache and cls_name and target.endswith(".py") and Path(target).is_file():
        source = Path(target).resolve()
        selection = source_files(source.parent, include, entry=source.name)  # the entry is packed even if ignored
        digests = {rel: _file_sha256(p) for rel, p in selection.files.items()}
        key = _cache_key(digests, f"{source.name}:{cls_name}")
        cached = _cached_manifest(key, digests)
    if cached is not None:
        manifest = cached
    else:
        photon_cls = load_photon_class(ref)
        module_file = load_module(target).__file__
        if module_file is None:
            raise PhotonLoadError(f"{target} has no source file to package")
        source = Path(module_file).resolve()
        root = source.parent
        if key is None:  # a module ref: its files are known once it is imported (a file's were read above)
            selection = source_files(root, include, entry=source.name)  # the entry is packed even if ignored
            digests = {rel: _file_sha256(p) for rel, p in selection.files.items()}
        identity = {
            "name": photon_cls.photon_name(),
            "entry": f"{source.relative_to(root).as_posix()}:{photon_cls.__name__}",
            "requirements": list(photon_cls.requirements),
            "resources": dict(photon_cls.resources),
        }
        manifest = PhotonManifest(**identity, handlers=handler_manifests(photon_cls), files=digests,
                                  sha256=content_sha256(digests, identity))
        if key is not None:
            _cache_manifest(key, manifest)
    paths = selection.files
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
    for message in selection.warnings():
        warnings.warn(message, UserWarning, stacklevel=2)
    return manifest, selection


def _cache_key(digests: dict[str, str], entry: str) -> str:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {"fermion": __version__, "python": platform.python_version()}
    for package in ("pydantic", "fastapi"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return hashlib.sha256(json.dumps({"files": digests, "entry": entry, "versions": versions},
                                     sort_keys=True).encode()).hexdigest()


def _cached_manifest(key: str, digests: dict[str, str]) -> PhotonManifest | None:
    try:
        manifest = PhotonManifest.model_validate_json((manifest_cache_dir() / f"{key}.json").read_bytes())
    except (OSError, ValueError):
        return None  # none yet, or unreadable: built afresh and written again
    identity = manifest.model_dump(include=set(IDENTITY_FIELDS))
    if manifest.files != digests or manifest.sha256 != content_sha256(digests, identity):
        return None
    return manifest.model_copy(update={"created_at": time.time()})


def _cache_manifest(key: str, manifest: PhotonManifest) -> None:
    folder = manifest_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(folder / f"{key}.json", manifest.model_dump_json(), 0o600)
    except OSError:
        pass  # a cache that cannot be written costs the next build its time, nothing else


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"archive entry {name[:200]!r} is a link; links are refused")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise UnsafeArchiveError(f"archive entry {name[:200]!r} has an absolute path; refused")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"archive entry {name[:200]!r} escapes the archive with '..'; refused")
    if info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise UnsafeArchiveError(f"archive entry {name[:200]!r} unpacks {info.file_size // max(info.compress_size, 1)}"
                                 f" times its packed size; refused as a zip bomb")


def _check_members(archive: str | Path, infos: list[zipfile.ZipInfo]) -> None:
    """Bound what unpacking could cost before any member is read."""
    if len(infos) > MAX_FILES + 1:
        raise UnsafeArchiveError(f"{archive} holds {len(infos)} entries; at most {MAX_FILES} files are allowed")
    total = 0
    for info in infos:
        _check_member(info)
        total += info.file_size
    if total > MAX_ARCHIVE_BYTES + MAX_MANIFEST_BYTES:
        raise UnsafeArchiveError(f"{archive} unpacks to {total >> 20} MiB; at most {MAX_ARCHIVE_BYTES >> 20} MiB allowed")


def read_manifest(archive: str | Path) -> PhotonManifest:
    """Validate the archive's entries and sizes and return its manifest."""
    try:
        with zipfile.ZipFile(archive) as zf:
            _check_members(archive, zf.infolist())
            try:
                info = zf.getinfo(MANIFEST)
            except KeyError:
                raise PhotonLoadError(f"{archive} has no {MANIFEST}; is it a .photon archive?") from None
            if info.file_size > MAX_MANIFEST_BYTES:
                raise UnsafeArchiveError(f"{archive}: {MANIFEST} is {info.file_size} bytes; at most "
                                         f"{MAX_MANIFEST_BYTES} allowed")
            raw = zf.read(info)
    except _ZIP_ERRORS as exc:
        raise PhotonLoadError(f"cannot read photon archive {archive}: {exc}") from exc
    try:
        return PhotonManifest.model_validate(json.loads(raw))
    except (ValueError, RecursionError) as exc:
        raise PhotonLoadError(f"{archive} has an invalid {MANIFEST}: {str(exc)[:1000]}") from exc


def _source_members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.is_dir() or info.filename == MANIFEST:
            continue
        if not info.filename.startswith("src/"):
            raise UnsafeArchiveError(f"archive entry {info.filename[:200]!r} is outside src/")
        members[info.filename[len("src/"):]] = info
    return members


def verify_archive(archive: str | Path) -> PhotonManifest:
    """Read every file of the archive and check it against the manifest; the manifest's sha256
    is trusted only once it equals the digest computed here from the bytes."""
    manifest = read_manifest(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            seen = {rel: _member_sha256(zf, info) for rel, info in _source_members(zf).items()}
    except _ZIP_ERRORS as exc:
        raise PhotonLoadError(f"cannot read photon archive {archive}: {exc}") from exc
    _check_digests("the archive", manifest, seen)  # an upload's path is the server's business
    return manifest


def _member_sha256(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    with zf.open(info) as f:
        return _stream_sha256(f)


def _check_digests(label: str | Path, manifest: PhotonManifest, seen: dict[str, str]) -> None:
    """The files read from the archive must be the manifest's, and the manifest's digest theirs."""
    if seen != manifest.files or manifest_sha256(manifest, seen) != manifest.sha256:
        raise PhotonLoadError(f"{label} does not match its manifest's sha256; it is corrupt or was altered")


def extract_archive(archive: str | Path, cache_dir: str | Path) -> tuple[Path, PhotonManifest]:
    """Unpack (once) into ``cache_dir/<sha>``, verifying every file's sha256."""
    manifest = read_manifest(archive)
    dest = Path(cache_dir) / manifest.sha256[:24]
    if (dest / MANIFEST).exists():
        return dest / "src", manifest
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache_dir))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                seen: dict[str, str] = {}
                for rel, info in _source_members(zf).items():
                    data = zf.read(info)
                    seen[rel] = hashlib.sha256(data).hexdigest()
                    target = staging / "src" / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
        except _ZIP_ERRORS as exc:
            raise PhotonLoadError(f"cannot read photon archive {archive}: {exc}") from exc
        _check_digests(archive, manifest, seen)
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
    entry = (src / rel).resolve()
    if not entry.is_relative_to(src.resolve()) or not entry.is_file():  # the validator checked; be sure
        raise UnsafeArchiveError(f"the entry {manifest.entry[:200]!r} is not a file inside the archive")
    return load_photon_class(f"{entry}:{cls_name}"), manifest
