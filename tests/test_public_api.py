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
            "connect",
            "handler",
        ]
    )
    for name in fermion.__all__:
        assert getattr(fermion, name) is not None


def test_import_fermion_does_not_pull_servers_or_torch() -> None:
    code = "import sys, fermion; print(sorted(m for m in ('fastapi','uvicorn','torch','httpx','sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_packages_meet_only_through_public_names() -> None:
    """No module imports from tests/, and no package imports another package's private module."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = root / "src" / "fermion"
    offences = []
    for path in [*src.rglob("*.py"), *(root / "examples").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]:
        text = path.read_text()
        if re.search(r"^\s*(from|import) tests\b", text, re.M):
            offences.append(f"{path.relative_to(root)} imports from tests/")
        own = path.relative_to(src).parts[0] if path.is_relative_to(src) else None
        for package, module in re.findall(r"^\s*from (?:\.\.|fermion\.)(\w+)\.(_\w+) import", text, re.M):
            if package != own:
                offences.append(f"{path.relative_to(root)} imports {package}.{module}")
    assert offences == []
