"""One object store per cloud: ``s3://``, ``gs://``, ``az://`` through maintained clients, and
``file://`` folders. Keys are relative to the store's root; the store knows nothing of datasets or
checkpoints.

S3 objects are read and written by obstore (the Rust ``object_store`` crate): it spends about a
quarter of the CPU per request of s3fs (0.7 ms against 2.8 ms, measured on moto), which is what
bounds a sync of many small chunks. Buckets are made by s3fs, which obstore cannot do; GCS and
Azure go through fsspec's gcsfs and adlfs (obstore's GCS client insists on a token from the
metadata server, which no emulator gives)."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import AlreadyExistsError, PreconditionError
from obstore.exceptions import NotFoundError as ObjectMissing
from obstore.store import S3Store
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import FermionError, NotFoundError, UserInputError, shorten

PROTOCOLS = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "abfs", "abfs": "abfs", "file": "file"}

# gcsfs otherwise probes for hierarchical-namespace buckets, and stalls 60 s per call on a server without them
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


class StoreError(FermionError):
    """A store could not be reached or refused a call: the cloud's storage, not the caller, is at fault."""

    http_status = 502
    exit_code = 7


class StoreConfig(BaseModel):
    """Where a cloud keeps what must outlive its machines.

    ``options`` go to the fsspec filesystem as they are (credentials, region, a connection string);
    ``endpoint`` points an ``s3://`` or ``gs://`` store at an S3- or GCS-compatible server."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=1000)
    endpoint: str | None = Field(None, max_length=1000)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _known_protocol(cls, url: str) -> str:
        parsed = urlparse(url)
        if parsed.scheme not in PROTOCOLS:
            raise ValueError(f"store url {shorten(url)!r}: use s3://BUCKET, gs://BUCKET, az://CONTAINER or file:///PATH")
        if parsed.scheme == "file":
            if not parsed.path.startswith("/") or parsed.netloc:
                raise ValueError(f"store url {shorten(url)!r}: a file store is file:///ABSOLUTE/PATH")
        elif not parsed.netloc:
            raise ValueError(f"store url {shorten(url)!r} names no bucket or container")
        return url.rstrip("/")

    @property
    def protocol(self) -> str:
        return PROTOCOLS[urlparse(self.url).scheme]


class ObjectStore:
    """Put, get, list and delete whole objects under one root. Every call is safe from many
    threads at once; a put is atomic (a reader sees the old object, the new one, or none)."""

    def __init__(self, config: StoreConfig, name: str = "", *, create: bool = True) -> None:
        self.config = config
        self.create = create  # make the bucket, container or folder if it is missing (not for a source to read)
        self.name = name or config.url
        parsed = urlparse(config.url)
        self.objects: Any = None  # obstore's client, where it serves this store's object calls
        if config.protocol == "file":
            self.root = parsed.path.rstrip("/")
            self.fs = None
        else:
            self.root = f"{parsed.netloc}{parsed.path}".rstrip("/")
            self.fs = _filesystem(config)
            if config.protocol == "s3":
                self.objects = _s3_objects(config, parsed.netloc, parsed.path.strip("/"))
        self._bucket = parsed.netloc
        self._ready = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectStore({self.config.url})"

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise UserInputError(f"invalid store key {shorten(key)!r}")
        return f"{self.root}/{key}"

    def ensure(self) -> None:
        """Create the bucket, container or folder if it is not there yet (once per process)."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            try:
                if self.fs is None:
                    if self.create:
                        Path(self.root).mkdir(parents=True, exist_ok=True)
                    elif not Path(self.root).is_dir():
                        raise FileNotFoundError(self.root)
                else:
                    _probe(self.config)  # a server that is down fails here, not after minutes of retries
                    if self.objects is not None and _bucket_listed(self.objects):
                        pass  # no s3fs call at all: its first one costs a third of a second
                    elif not self.fs.exists(self._bucket):
                        if not self.create:
                            raise FileNotFoundError(f"no bucket or container {self._bucket}")
                        self.fs.mkdir(self._bucket)
            except FileExistsError:
                pass
            except Exception as exc:  # noqa: BLE001 - every client raises its own kinds
                raise self._error("cannot open", exc) from exc
            self._ready = True

    def _error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.name} ({self.config.url}): {what}: {type(exc).__name__}: {shorten(str(exc), 300)}",
                          hint="check the store's url, endpoint and credentials in clouds.yaml, and that it is up")

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> bool:
        """Write ``key`` whole. With ``create_only`` an existing object is kept and False returned."""
        self.ensure()
        path = self._path(key)
        try:
            if self.fs is None:
                return _local_put(Path(path), data, create_only)
            if self.objects is not None:
                return self._object_put(key, data, create_only)
            if create_only:
                try:
                    self.fs.pipe_file(path, data, mode="create")
                except FileExistsError:
                    return False
                return True
            self.fs.pipe_file(path, data)
            return True
        except FileExistsError:
            return False
        except Exception as exc:  # noqa: BLE001
            raise self._error(f"cannot write {key}", exc) from exc

    def _object_put(self, key: str, data: bytes, create_only: bool) -> bool:
        try:
            obstore.put(self.objects, key, data, mode="create" if create_only else "overwrite")
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    def get(self, key: str) -> bytes:
        """The object's bytes; NotFoundError if there is none."""
        self.ensure()
        path = self._path(key)
        try:
            if self.fs is None:
                return Path(path).read_bytes()
            if self.objects is not None:
                return obstore.get(self.objects, key).bytes().to_bytes()
            return self.fs.cat_file(path)
        except (FileNotFoundError, NotADirectoryError, ObjectMissing):  # NotADirectoryError: a folder store, under a key
            raise NotFoundError(f"store {self.name} has no object {key}") from None
        except Exception as exc:  # noqa: BLE001
            raise self._error(f"cannot read {key}", exc) from exc

    def download(self, key: str, dest: Path) -> int:
        """Write the object to the file ``dest`` without holding it in memory; returns its size."""
        self.ensure()
        path = self._path(key)
        try:
            if self.fs is None:
                import shutil

                shutil.copyfile(path, dest)
            elif self.objects is not None:
                with open(dest, "wb") as f:
                    for part in obstore.get(self.objects, key).stream(min_chunk_size=1 << 20):
                        f.write(part)
            else:
                self.fs.get_file(path, str(dest))
            return dest.stat().st_size
        except (FileNotFoundError, NotADirectoryError, ObjectMissing):
            raise NotFoundError(f"store {self.name} has no object {key}") from None
        except Exception as exc:  # noqa: BLE001
            raise self._error(f"cannot read {key}", exc) from exc

    def exists(self, key: str) -> bool:
        self.ensure()
        path = self._path(key)
        try:
            if self.fs is None:
                return Path(path).is_file()
            if self.objects is not None:
                try:
                    obstore.head(self.objects, key)
                except (FileNotFoundError, ObjectMissing):
                    return False
                return True
            self.fs.invalidate_cache(path)
            return bool(self.fs.exists(path))
        except Exception as exc:  # noqa: BLE001
            raise self._error(f"cannot look up {key}", exc) from exc

    def list(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix`` (a folder-like key; "" for the whole store), mapped to its size."""
        self.ensure()
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            if self.fs is None:
                out: dict[str, int] = {}
                for dirpath, _dirs, files in os.walk(base):
                    for f in files:
                        if f.startswith(".") and f.endswith(".tmp"):
                            continue  # a put under way
                        full = os.path.join(dirpath, f)
                        try:
                            out[os.path.relpath(full, self.root)] = os.path.getsize(full)
                        except FileNotFoundError:
                            continue
                return out
            if self.objects is not None:
                return {key: size for key, (size, _) in self._object_list(prefix).items()}
            self.fs.invalidate_cache(base)
            found = self.fs.find(base, detail=True)
            cut = len(self.root) + 1
            return {p[cut:]: int(info.get("size") or 0) for p, info in found.items() if info.get("type") != "directory"}
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001
            raise self._error(f"cannot list {prefix}", exc) from exc

    def list_modified(self, prefix: str) -> dict[str, tuple[int, float]]:
        """Like ``list``, with each object's last modification time (seconds since the epoch)."""
        self.ensure()
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            if self.fs is None:
                out: dict[str, tuple[int, float]] = {}
                for key in self.list(prefix):
                    try:
                        st = os.stat(os.path.join(self.root, key))
                    except FileNotFoundError:
                        continue
                    out[key] = (st.st_size, st.st_mtime)
                return out
            if self.objects is not None:
                return self._object_list(prefix)
            self.fs.invalidate_cache(base)
            found = self.fs.find(base, detail=True)
            cut = len(self.root) + 1
            return {p[cut:]: (int(info.get("size") or 0), _modified(info)) for p, info in found.items()
                    if info.get("type") != "directory"}
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001
            raise self._error(f"cannot list {prefix}", exc) from exc

    def _object_list(self, prefix: str) -> dict[str, tuple[int, float]]:
        if prefix:
            self._path(prefix.rstrip("/"))  # the same checks as a key
        out: dict[str, tuple[int, float]] = {}
        for batch in obstore.list(self.objects, prefix.rstrip("/") or None, chunk_size=1000):
            for meta in batch:
                out[meta["path"]] = (int(meta["size"]), meta["last_modified"].timestamp())
        return out

    def delete(self, keys: list[str]) -> None:
        """Remove the objects; one already gone is no error."""
        if not keys:
            return
        self.ensure()
        paths = [self._path(k) for k in keys]
        try:
            if self.fs is None:
                for p in paths:
                    Path(p).unlink(missing_ok=True)
                return
            if self.objects is not None:
                obstore.delete(self.objects, keys)
                return
            self.fs.rm(paths)
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise self._error(f"cannot delete {len(keys)} objects", exc) from exc


def _modified(info: dict[str, Any]) -> float:
    """An object's modification time from a listing entry (each client names it its own way);
    0.0 (as old as can be) where none is given."""
    import datetime

    for name in ("LastModified", "last_modified", "updated", "mtime", "timeCreated"):
        value = info.get(name)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def _filesystem(config: StoreConfig) -> Any:
    import fsspec

    options = dict(config.options)
    if config.endpoint:
        if config.protocol == "abfs":
            raise UserInputError(f"store {config.url}: an az:// store takes its endpoint in options "
                                 "(connection_string, or account_name with account_host)")
        options.setdefault("endpoint_url", config.endpoint)
    if config.protocol == "s3":
        # a chunk is at most 4 MiB: one GET, no ranged parallel read, so no HEAD first for its size;
        # and no CRC32 of every body, which each chunk's sha256 already checks
        options.setdefault("max_concurrency", 1)
        options.setdefault("config_kwargs", {"max_pool_connections": 64, "request_checksum_calculation": "when_required",
                                             "response_checksum_validation": "when_required"})
    # one filesystem object per store: fsspec's instance cache would share one across stores with equal options
    return fsspec.filesystem(config.protocol, skip_instance_cache=True, **options)


# the s3fs options obstore is given under its own names; a store with any other option is all s3fs's
_S3_OPTIONS = {"key": "access_key_id", "secret": "secret_access_key", "token": "session_token"}
_S3_OURS = {"max_concurrency", "config_kwargs"}  # set by _filesystem for s3fs alone


def _s3_objects(config: StoreConfig, bucket: str, prefix: str) -> Any:
    """obstore's S3 client for the store's objects, or None where an option is one only s3fs knows."""
    options = {k: v for k, v in config.options.items() if k not in _S3_OURS}
    region = options.pop("region_name", None)
    kwargs = options.pop("client_kwargs", None) or {}
    if set(kwargs) - {"region_name"} or set(options) - set(_S3_OPTIONS) - {"anon"}:
        return None
    settings: dict[str, Any] = {_S3_OPTIONS[k]: v for k, v in options.items() if k in _S3_OPTIONS}
    if options.get("anon"):
        settings["skip_signature"] = True
    # obstore does not look a bucket's region up as s3fs does: a bucket outside us-east-1 needs region_name
    region = region or kwargs.get("region_name") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    settings["region"] = region or "us-east-1"
    client: dict[str, Any] = {"timeout": timedelta(seconds=300), "connect_timeout": timedelta(seconds=5),
                              "pool_max_idle_per_host": "64"}
    if config.endpoint:
        settings["endpoint"] = config.endpoint
        settings["virtual_hosted_style_request"] = False  # an S3-compatible server names the bucket in the path
        client["allow_http"] = config.endpoint.startswith("http://")
    # a refused connection fails in seconds, as s3fs's botocore does, not after obstore's default 3 minutes
    retry = {"max_retries": 4, "retry_timeout": timedelta(seconds=30)}
    return S3Store(bucket, prefix=prefix or None, client_options=client, retry_config=retry, **settings)


def _bucket_listed(objects: Any) -> bool:
    """Whether an obstore client can list its bucket (False: no such bucket, or not allowed to list)."""
    try:  # a prefix that names nothing: the answer is empty however many objects the bucket holds
        obstore.list_with_delimiter(objects, ".fermion-bucket-probe")
    except Exception:  # noqa: BLE001 - NoSuchBucket comes as a GenericError; s3fs then says what is wrong
        return False
    return True


def _probe(config: StoreConfig, timeout: float = 5) -> None:
    """Connect once to a store's own endpoint (an S3- or GCS-compatible server, Azurite), so that one
    that is down fails at once: the clients retry a refused connection with backoff for one to three
    minutes per call (gcsfs and adlfs offer no setting for it). Cloud endpoints are not probed."""
    endpoint = config.endpoint
    if config.protocol == "abfs":
        conn = str(config.options.get("connection_string") or "")
        parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
        endpoint = next((v for k, v in parts.items() if k.strip().lower() == "blobendpoint"), None)
    if not endpoint:
        return
    url = urlparse(endpoint)
    if url.hostname:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            pass


def _local_put(path: Path, data: bytes, create_only: bool) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)
    try:
        if create_only:
            try:
                os.link(tmp, path)  # fails if the name exists: the first writer wins
            except FileExistsError:
                return False
            return True
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def open_store(config: StoreConfig | dict[str, Any] | str, name: str = "") -> ObjectStore:
    """An :class:`ObjectStore` from a config, its dict, or a bare URL."""
    if isinstance(config, str):
        config = StoreConfig(url=config)
    elif isinstance(config, dict):
        config = StoreConfig.model_validate(config)
    return ObjectStore(config, name)
