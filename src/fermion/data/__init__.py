"""The storage plane: an object store per cloud, and versioned datasets of content-defined chunks
in them (push, pull, sync, verify, encryption, deduplication)."""

from ._crypto import DatasetKey, DecryptError
from ._datasets import (
    CorruptChunk,
    DatasetView,
    FolderPlan,
    Progress,
    TransferReport,
    VerifyReport,
    collect_garbage,
    dataset_names,
    plan_folder,
    pull,
    push_folder,
    send_chunks,
    sha256_file,
    store_lock,
    sync,
    verify,
    write_chunks,
)
from ._dedup import DedupReport, dedup_folder
from ._manifest import CHUNK_MAX, SHA256, FileEntry, Manifest, diff, safe_relpath, scan_folder
from ._stores import ObjectStore, StoreConfig, StoreError, open_store

__all__ = [
    "CHUNK_MAX",
    "SHA256",
    "CorruptChunk",
    "DatasetKey",
    "DatasetView",
    "DedupReport",
    "DecryptError",
    "FileEntry",
    "FolderPlan",
    "Manifest",
    "ObjectStore",
    "Progress",
    "StoreConfig",
    "StoreError",
    "TransferReport",
    "VerifyReport",
    "collect_garbage",
    "dataset_names",
    "dedup_folder",
    "diff",
    "open_store",
    "plan_folder",
    "pull",
    "safe_relpath",
    "push_folder",
    "scan_folder",
    "send_chunks",
    "sha256_file",
    "store_lock",
    "sync",
    "verify",
    "write_chunks",
]
