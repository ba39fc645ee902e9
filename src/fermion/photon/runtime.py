"""The photon runtime's public API for the server, the CLI and the backends: package and verify
archives, load a photon class, serve it, and the error shapes replicas answer with. (Kept apart
from ``fermion.photon`` so that writing a photon does not import the server stack.)

Each name is imported on first use: packaging an archive (``fermion deploy``) needs neither
FastAPI nor uvicorn, whose imports take a third of a second."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._loader import load_photon_class
    from ._package import build_archive, load_from_archive, read_manifest, source_files, verify_archive
    from ._replica_auth import read_secret_file
    from ._run import resolve_photon, run_photon
    from ._routes import error_response, validation_error_response
    from ._serve import DrainingServer, bind_socket, serve, write_port_file

_WHERE = {
    "load_photon_class": "_loader",
    "build_archive": "_package", "load_from_archive": "_package", "read_manifest": "_package",
    "source_files": "_package", "verify_archive": "_package",
    "read_secret_file": "_replica_auth",
    "resolve_photon": "_run", "run_photon": "_run",
    "error_response": "_routes", "validation_error_response": "_routes",
    "DrainingServer": "_serve", "bind_socket": "_serve", "serve": "_serve", "write_port_file": "_serve",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"{__package__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
