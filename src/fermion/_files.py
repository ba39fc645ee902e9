"""Writing a file whole or not at all, with its mode from the start."""

from __future__ import annotations

import os
import time
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644, *, durable: bool = False) -> None:
    """Write ``path`` through a fresh temporary file beside it, renamed over the old one. The
    temporary is created exclusively with ``mode`` (so never through a link someone planted, and
    never readable by others for a moment), and the rename replaces a link instead of following
    it. With ``durable``, the data and the rename are on disk before this returns."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
