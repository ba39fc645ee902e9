"""Build a .photon, run from it, and refuse unsafe archives."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from fermion import Client
from fermion.errors import UnsafeArchiveError
from fermion.photon._package import extract_archive
from fermion.testing import fermion_cmd, serve_photon
from tests.support import EXAMPLES, TEXT_PHOTON


def build(tmp_path: Path, ref: str = TEXT_PHOTON) -> Path:
    out = tmp_path / "text.photon"
    result = subprocess.run(fermion_cmd("photon", "build", ref, "-o", str(out)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def test_build_writes_manifest_and_sources_only(tmp_path: Path) -> None:
    archive = build(tmp_path)
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read("manifest.json"))
    assert names == ["manifest.json", "src/photon.py"]
    assert not any(n.endswith((".pkl", ".pickle", ".pyc")) for n in names)
    assert manifest["name"] == "text-tools"
    assert manifest["entry"] == "photon.py:TextTools"
    assert manifest["resources"] == {"cpus": 0.25, "memory_gb": 0.25}
    assert set(manifest["handlers"]) >= {"upper", "stats", "repeat", "count", "reverse_bytes"}
    assert manifest["handlers"]["upper"]["batch"] == {"max_size": 16, "max_wait_ms": 20.0, "max_latency_ms": None}
    assert manifest["handlers"]["count"]["stream"] is True
    assert manifest["handlers"]["stats"]["request_schema"]
    assert len(manifest["sha256"]) == 64
    # same sources, same bytes
    again = tmp_path / "again.photon"
    subprocess.run(fermion_cmd("photon", "build", TEXT_PHOTON, "-o", str(again)), check=True, capture_output=True)
    assert json.loads(zipfile.ZipFile(again).read("manifest.json"))["sha256"] == manifest["sha256"]


def test_run_from_archive(tmp_path: Path) -> None:
    archive = build(tmp_path)
    with serve_photon(str(archive), tmp_path) as served:
        client = Client(served.url)
        assert client.upper(["from archive"]) == ["FROM ARCHIVE"]
    assert list((tmp_path / "home" / "photons").iterdir())  # extracted into the cache


def _evil_archive(tmp_path: Path, name: str, *, link: bool = False) -> Path:
    good = build(tmp_path)
    evil = tmp_path / "evil.photon"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        info = zipfile.ZipInfo(name)
        if link:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        dst.writestr(info, "/etc/passwd" if link else "pwned")
    return evil


@pytest.mark.parametrize(
    ("entry", "link", "message"),
    [
        ("src/../../escaped.txt", False, "escapes the archive"),
        ("/tmp/fermion-absolute.txt", False, "absolute path"),
        ("src/link", True, "is a link"),
    ],
)
def test_zip_slip_is_refused(tmp_path: Path, entry: str, link: bool, message: str) -> None:
    evil = _evil_archive(tmp_path, entry, link=link)
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_archive(evil, tmp_path / "cache")
    result = subprocess.run(
        fermion_cmd("photon", "run", str(evil), "--port", "0"),
        capture_output=True,
        text=True,
        env={"FERMION_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert not Path("/tmp/fermion-absolute.txt").exists()


def test_tampered_archive_is_refused(tmp_path: Path) -> None:
    good = build(tmp_path)
    bad = tmp_path / "bad.photon"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data + b"\nimport os\n" if info.filename.endswith(".py") else data)
    with pytest.raises(Exception, match="does not match its manifest"):
        extract_archive(bad, tmp_path / "cache")


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    missing = subprocess.run(fermion_cmd("photon", "run", "nowhere.py:X"), capture_output=True, text=True)
    assert missing.returncode == 2 and "no photon file" in missing.stderr and "Traceback" not in missing.stderr
    two = subprocess.run(
        fermion_cmd("photon", "build", str(Path(__file__).with_name("fixture_photons.py"))),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert two.returncode == 2 and "name one" in two.stderr
    assert (EXAMPLES / "text" / "photon.py").exists()


COUNTING_PHOTON = '''
import os
from fermion import Photon, handler

with open(os.environ["IMPORTS_LOG"], "a") as f:
    f.write("imported\\n")


class Counted(Photon):
    @handler()
    def hello(self, name: str) -> str:
        return "hello " + name
'''


def test_a_second_build_of_the_same_files_takes_the_cached_manifest_without_importing(tmp_path: Path) -> None:
    env = {**os.environ, "FERMION_HOME": str(tmp_path / "home"), "IMPORTS_LOG": str(tmp_path / "imports.log")}
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "photon.py").write_text(COUNTING_PHOTON)
    ref = f"{folder / 'photon.py'}:Counted"

    def build_to(name: str, *flags: str) -> dict:
        out = tmp_path / f"{name}.photon"
        done = subprocess.run(fermion_cmd("photon", "build", ref, "-o", str(out), "--json", *flags), env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def imports() -> int:
        return (tmp_path / "imports.log").read_text().count("imported")

    first, second = build_to("a"), build_to("b")
    assert imports() == 1, "the second build imported the photon again"
    assert second["sha256"] == first["sha256"] and second["handlers"] == first["handlers"]
    assert set(second["handlers"]) == {"hello"} and second["packed"] == first["packed"]
    with zipfile.ZipFile(tmp_path / "a.photon") as a, zipfile.ZipFile(tmp_path / "b.photon") as b:
        assert [(i.filename, a.read(i)) for i in a.infolist()[1:]] == [(i.filename, b.read(i)) for i in b.infolist()[1:]]

    # a changed file is described afresh; so is an unchanged one with --rebuild; a damaged cache is no error
    (folder / "photon.py").write_text(COUNTING_PHOTON + "\n    @handler()\n    def bye(self) -> str:\n        return 'bye'\n")
    changed = build_to("c")
    assert imports() == 2 and set(changed["handlers"]) == {"hello", "bye"} and changed["sha256"] != first["sha256"]
    build_to("d", "--rebuild")
    assert imports() == 3
    for cached in (tmp_path / "home" / "manifests").iterdir():
        cached.write_text("{not json")
    again = build_to("e")
    assert imports() == 4 and set(again["handlers"]) == {"hello", "bye"} and again["sha256"] == changed["sha256"]
