"""The photon runtime's public API for the server, the CLI and the backends: package and verify
archives, load a photon class, serve it, and the error shapes replicas answer with. (Kept apart
from ``fermion.photon`` so that writing a photon does not import the server stack.)"""

from ._loader import load_photon_class
from ._package import build_archive, load_from_archive, read_manifest, source_files, verify_archive
from ._replica_auth import read_secret_file
from ._routes import error_response, validation_error_response
from ._serve import DrainingServer, bind_socket, serve, write_port_file

__all__ = [
    "DrainingServer",
    "bind_socket",
    "build_archive",
    "error_response",
    "load_from_archive",
    "load_photon_class",
    "read_manifest",
    "read_secret_file",
    "serve",
    "source_files",
    "validation_error_response",
    "verify_archive",
    "write_port_file",
]
