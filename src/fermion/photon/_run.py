"""Serving a photon as a replica: what ``fermion photon run`` and the backends' replica processes
(``python -m fermion.photon.replica``) both do, without the CLI's imports."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_photon(ref: str) -> type:
    """The photon class of a ``.photon`` archive (unpacked once into the photon cache) or a ref."""
    from ..config import photon_cache_dir
    from ._loader import load_photon_class
    from ._package import load_from_archive

    if ref.endswith(".photon"):
        cls, _ = load_from_archive(ref, photon_cache_dir())
        return cls
    return load_photon_class(ref)


def fetch_replica_model() -> None:
    """A replica that serves a registry model fetches it onto its cloud first, from the nearest
    store that holds it, and finds it at $FERMION_MODEL_DIR (the photon's environment no longer
    holds the token; it is good for that model alone)."""
    token = os.environ.pop("FERMION_REPLICA_TOKEN", None)
    if not os.environ.get("FERMION_MODEL_DIGEST") or not token:
        return
    from ..backends import fetch_model

    dest = Path("model").resolve()
    fetch_model(os.environ["FERMION_SERVER_URL"], token, dest, "/api/v1/replicas/self/model")
    os.environ["FERMION_MODEL_DIR"] = str(dest)


def run_photon(ref: str, *, host: str = "127.0.0.1", port: int = 8080, port_file: Path | None = None,
               log_level: str = "info", graceful_timeout_s: float = 30.0,
               auth_secret_file: Path | None = None, listen_fd: int | None = None) -> int:
    """Serve ``ref`` until SIGTERM; the exit code (0 after a clean stop, 1 when init() failed)."""
    from ._replica_auth import read_secret_file
    from ._serve import serve

    secret = read_secret_file(auth_secret_file) if auth_secret_file is not None else None
    fetch_replica_model()
    return serve(resolve_photon(ref), auth_secret=secret, host=host, port=port, port_file=port_file,
                 log_level=log_level, graceful_timeout_s=graceful_timeout_s, listen_fd=listen_fd)
