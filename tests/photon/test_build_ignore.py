"""`fermion photon build` packs sources only: ignore files honoured, secrets left out unless named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fermion.errors import PhotonLoadError
from fermion.photon._package import build_archive

PHOTON = '''
from fermion import Photon, handler


class Echo(Photon):
    @handler
    def echo(self, text: str) -> str:
        return text
'''


def photon_dir(tmp_path: Path, files: dict[str, str | bytes] | None = None) -> Path:
    """A photon folder in tmp_path holding photon.py and ``files`` (relative path -> content)."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "photon.py").write_text(PHOTON)
    for rel, content in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def packed(archive: Path) -> set[str]:
    with zipfile.ZipFile(archive) as zf:
        return {n.removeprefix("src/") for n in zf.namelist() if n != "manifest.json"}


def build(root: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fermion", "photon", "build", f"{root / 'photon.py'}:Echo", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "FERMION_HOME": str(tmp_path / "home"), "COLUMNS": "200"},
        cwd=tmp_path,
    )


def test_fermion_home_inside_the_photon_folder_is_not_packed(tmp_path: Path) -> None:
    # Fails before the fix: the old walk skipped only dot/junk names, so state/cli.json (the admin token) and
    # state/fermion.db were packed, as in the attack.
    root = photon_dir(
        tmp_path,
        {
            "state/cli.json": '{"token": "admin-secret"}',
            "state/fermion.db": b"SQLite format 3\x00",
            "state/photons/other/photon.py": "x = 1\n",
            "lib/helpers.py": "y = 2\n",
        },
    )
    manifest, selection = build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "out.photon")
    names = packed(tmp_path / "out.photon")
    assert names == {"photon.py", "lib/helpers.py"}
    assert not any(n.startswith("state/") for n in names)
    assert set(manifest.files) == names
    assert selection.skipped == ["state/"]


def test_photon_folder_that_is_a_fermion_home_is_refused(tmp_path: Path) -> None:
    root = photon_dir(tmp_path, {"cli.json": "{}", "fermion.db": b""})
    with pytest.raises(PhotonLoadError, match="looks like a Fermion home"):
        build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "out.photon")
    assert not (tmp_path / "out.photon").exists()


def test_gitignore_root_nested_and_negation_then_fermionignore(tmp_path: Path) -> None:
    root = photon_dir(
        tmp_path,
        {
            ".gitignore": "*.log\n!keep.log\nbuild/\n/top.txt\ndata/*\n!data/wanted.csv\n",
            "debug.log": "noise",
            "keep.log": "kept by negation",
            "build/out.py": "generated",
            "top.txt": "anchored at the root",
            "sub/top.txt": "not anchored here",
            "data/big.csv": "1,2",
            "data/wanted.csv": "3,4",
            "sub/.gitignore": "local.py\n!debug.log\n",
            "sub/local.py": "ignored by the nested file",
            "sub/debug.log": "re-included by the nested file",
            "sub/deep/local.py": "the nested pattern reaches down",
            "notes/build": "a file named build is not the build/ folder",
            ".fermionignore": "README.md\n!sub/local.py\n",
            "README.md": "ignored by .fermionignore",
        },
    )
    build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "out.photon")
    assert packed(tmp_path / "out.photon") == {
        "photon.py",
        "keep.log",
        "sub/top.txt",
        "data/wanted.csv",
        "sub/debug.log",
        "sub/local.py",  # .gitignore left it out, .fermionignore (applied after) brought it back
        "notes/build",
    }


def test_secret_files_are_skipped_and_reported(tmp_path: Path) -> None:
    root = photon_dir(
        tmp_path,
        {
            "id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----",
            ".env": "TOKEN=1",
            ".env.prod": "TOKEN=2",
            "x.pem": "-----BEGIN CERTIFICATE-----",
            "conf/tls.KEY": "key",
            "conf/service-account-prod.json": "{}",
            "conf/credentials": "[default]",
            ".docker/config.json": "{}",
            "docker/config.json": "{}",  # an ordinary config, outside .docker/
            "master.key": "k",
            "fermion.db-wal": "",
        },
    )
    _, selection = build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "out.photon")
    assert packed(tmp_path / "out.photon") == {"photon.py", "docker/config.json"}
    assert {"id_rsa", ".env", ".env.prod", "x.pem", "conf/tls.KEY", "master.key", ".docker/config.json"} <= set(selection.skipped)
    assert {"conf/service-account-prod.json", "conf/credentials", "fermion.db-wal"} <= set(selection.skipped)


def test_include_packs_a_named_secret_with_a_warning(tmp_path: Path) -> None:
    root = photon_dir(tmp_path, {"x.pem": "CERT", "id_rsa": "KEY", ".gitignore": "extra.txt\n", "extra.txt": "e"})
    with pytest.warns(UserWarning, match="x.pem looks like a secret"):
        _, selection = build_archive(
            f"{root / 'photon.py'}:Echo", tmp_path / "out.photon", include=["x.pem", "extra.txt"]
        )
    assert packed(tmp_path / "out.photon") == {"photon.py", "x.pem", "extra.txt"}
    assert selection.skipped == ["id_rsa"] and selection.included_secrets == ["x.pem"]
    with pytest.raises(PhotonLoadError, match="not inside the photon folder"):
        build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "o2.photon", include=["../out.photon"])

    result = build(root, tmp_path, "-o", "cli.photon", "--include", "id_rsa", "--include", "x.pem")
    assert result.returncode == 0, result.stderr
    assert packed(tmp_path / "cli.photon") == {"photon.py", "x.pem", "id_rsa"}
    assert "id_rsa looks like a secret and is packed" in result.stderr
    assert "x.pem looks like a secret and is packed" in result.stderr


def test_cli_prints_packed_sizes_skipped_secrets_and_warns_when_large(tmp_path: Path) -> None:
    root = photon_dir(tmp_path, {"weights.bin": os.urandom(11 * 1024 * 1024), "util.py": "z = 3\n", ".env": "A=1"})
    result = build(root, tmp_path, "-o", "big.photon")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "weights.bin" in out and "11.0 MiB" in out and "util.py" in out and "6 B" in out
    assert out.index("weights.bin") < out.index("util.py")  # largest first
    assert "total: 3 files" in out
    assert "skipped as secrets" in out and ".env" in out
    assert "over 10 MiB" in result.stderr and "init()" in result.stderr
    assert packed(tmp_path / "big.photon") == {"photon.py", "weights.bin", "util.py"}

    small = build(root, tmp_path, "-o", "small.photon", "--json")
    assert small.returncode == 0, small.stderr
    data = json.loads(small.stdout)
    assert data["entry"] == "photon.py:Echo" and data["skipped"] == [".env"]
    assert data["packed"]["weights.bin"] == 11 * 1024 * 1024


def test_cli_table_is_capped(tmp_path: Path) -> None:
    root = photon_dir(tmp_path, {f"m/f{i:02d}.py": "x" * (i + 1) for i in range(30)})
    result = build(root, tmp_path, "-o", "many.photon")
    assert result.returncode == 0, result.stderr
    assert "… and 11 more" in result.stdout and "total: 31 files" in result.stdout
    assert "m/f29.py" in result.stdout and "m/f00.py" not in result.stdout  # the smallest are folded
