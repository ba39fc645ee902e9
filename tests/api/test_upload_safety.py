"""Hostile photon uploads and oversized requests against a real server (issue 8, must-fix 3, 4, 7).
Each test here failed on main before the fixes."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fermion.photon._package import build_archive, content_sha256
from fermion.testing import ServerProc, running_server
from tests.support import FIXTURE_PHOTONS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with running_server(tmp_path_factory.mktemp("upload") / "home") as s:
        yield s


def archive(manifest_changes: dict, files: dict[str, bytes] | None = None, *, digest: bool = True) -> bytes:
    """A .photon whose manifest is valid except for ``manifest_changes``."""
    files = files or {"p.py": b"from fermion import Photon, handler\nclass P(Photon):\n    @handler\n    def f(self) -> int:\n        return 1\n"}
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    identity = {"name": "p", "entry": "p.py:P", "requirements": [], "resources": {}}
    identity.update({k: v for k, v in manifest_changes.items() if k in identity})
    manifest = {**identity, "files": digests, "sha256": content_sha256(digests, identity) if digest else "0" * 64,
                **manifest_changes}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for name, data in files.items():
            zf.writestr(f"src/{name}", data)
    return buf.getvalue()


def upload(server: ServerProc, data: bytes) -> httpx.Response:
    with server.api() as api:
        return api.post("/photons", files={"file": ("x.photon", data, "application/zip")})


def test_a_claimed_sha256_is_never_a_path(server: ServerProc) -> None:
    r = upload(server, archive({"sha256": "../../../escaped"}))
    assert r.status_code == 400 and "sha256" in r.json()["error"]["message"]
    assert not list(server.home.parent.rglob("escaped*"))


def test_an_upload_cannot_replace_another_photon(server: ServerProc, tmp_path: Path) -> None:
    good = tmp_path / "good.photon"
    build_archive(f"{FIXTURE_PHOTONS}:Versioned", good)
    first = upload(server, good.read_bytes()).json()
    stored = server.home / "photon-store" / f"{first['sha256']}.photon"
    before = hashlib.sha256(stored.read_bytes()).hexdigest()
    # other code claiming the same sha256
    evil = archive({"sha256": first["sha256"]})
    r = upload(server, evil)
    assert r.status_code == 400 and "does not match" in r.json()["error"]["message"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == before
    # the same upload again is accepted and changes nothing
    assert upload(server, good.read_bytes()).json()["sha256"] == first["sha256"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("entry", ["/abs/path/evil.py:Evil", "../evil.py:Evil", "missing.py:P", "p.py:not-a-class"])
def test_the_entry_must_name_a_file_of_the_archive(server: ServerProc, entry: str) -> None:
    r = upload(server, archive({"entry": entry}, digest=False))
    assert r.status_code == 400 and "entry" in r.json()["error"]["message"]


def test_zip_bombs_are_refused_before_unpacking(server: ServerProc) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps({"name": "b"}))
        for i in range(3):  # 3 x 200 MiB of zeros: about 600 KB packed
            zf.writestr(f"src/zeros{i}.bin", b"\0" * (200 << 20))
    start = time.monotonic()
    r = upload(server, buf.getvalue())
    assert r.status_code == 400 and "refused" in r.json()["error"]["message"]
    assert time.monotonic() - start < 10


def test_a_manifest_bomb_is_refused(server: ServerProc) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", b'{"name": "' + b"a" * (3 << 20) + b'"}')
    r = upload(server, buf.getvalue())
    assert r.status_code == 400 and "manifest.json" in r.json()["error"]["message"]


def test_too_many_files_are_refused(server: ServerProc) -> None:
    r = upload(server, archive({}, {f"f{i}.py": b"" for i in range(10_001)}, digest=False))
    assert r.status_code == 400 and "at most" in r.json()["error"]["message"]


def test_oversized_bodies_get_413_without_being_read(server: ServerProc) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"POST /api/v1/photons HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {server.token}\r\n"
                     "content-type: multipart/form-data; boundary=b\r\ncontent-length: 300000000\r\n\r\n".encode())
        assert conn.recv(65536).startswith(b"HTTP/1.1 413")
    with server.api() as api:
        r = api.put("/deployments/big", content=b'{"photon": "' + b"a" * (2 << 20) + b'"}',
                    headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_resources_have_sane_minimums(server: ServerProc, tmp_path: Path) -> None:
    good = tmp_path / "v.photon"
    build_archive(f"{FIXTURE_PHOTONS}:Versioned", good)
    sha = upload(server, good.read_bytes()).json()["sha256"]
    with server.api() as api:
        r = api.put("/deployments/tiny", json={"photon": sha, "resources": {"cpus": 5e-324, "memory_gb": 1}})
        assert r.status_code == 422 and "cpus" in r.json()["error"]["message"]
        tiny = upload(server, archive({"resources": {"cpus": 0.001}}, digest=True)).json()["sha256"]
        r = api.put("/deployments/tiny", json={"photon": tiny})
        assert r.status_code == 400 and "invalid resources" in r.json()["error"]["message"]


def test_a_model_name_is_never_a_path(server: ServerProc) -> None:
    with server.api() as api:
        r = api.post("/jobs", json={"name": "ft", "model_name": "../artifacts/victim",
                                    "finetune": {"train_data": "/nope.csv"}})
        assert r.status_code == 422 and "model_name" in r.json()["error"]["message"]
