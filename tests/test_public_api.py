"""The public API is a curated list, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import fermion


def test_public_names_are_pinned() -> None:
    assert sorted(fermion.__all__) == sorted(
        [
            "BatchOptions",
            "Client",
            "FermionError",
            "HandlerTimeout",
            "Photon",
            "RemoteError",
            "ServiceUnavailable",
            "TransportError",
            "UserInputError",
            "ValidationFailed",
            "__version__",
            "handler",
        ]
    )
    for name in fermion.__all__:
        assert getattr(fermion, name) is not None


def test_import_fermion_does_not_pull_servers_or_torch() -> None:
    code = "import sys, fermion; print(sorted(m for m in ('fastapi','uvicorn','torch','httpx','sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
