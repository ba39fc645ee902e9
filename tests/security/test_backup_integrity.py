"""Backups cannot be used to write outside the home or to slip rows in (issue 28, must-fix 3): a
member named to climb out of the photon store is refused before anything is written, and every
backup is sealed, so whoever can write a backup file but lacks the passphrase can neither read it,
alter it, nor replace it with one of their own."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from fermion.store import Backup, BackupError, Store, TokenRow, UserRow
from fermion.testing import fermion_cmd

PASSPHRASE = "the operator's long passphrase"


def cli(home: Path, *args: str, passphrase: str | None = PASSPHRASE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FERMION_HOME": str(home), "COLUMNS": "1000"}
    env.pop("FERMION_BACKUP_PASSPHRASE", None)
    if passphrase is not None:
        env["FERMION_BACKUP_PASSPHRASE"] = passphrase
    return subprocess.run(fermion_cmd(*args), capture_output=True, text=True, env=env, timeout=120)


def plain_backup(path: Path, members: dict[str, bytes], manifest_members: dict[str, bytes] | None = None) -> None:
    """A tar shaped as a backup, its manifest listing ``manifest_members`` with correct digests."""
    listed = members if manifest_members is None else manifest_members
    manifest = {"format": "fermion-backup", "version": 1, "created_at": 0, "source": {"url": "x"}, "tables": {},
                "members": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in listed.items()}}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["photons/../../escaped", "photons/../escaped.photon", "/tmp/escaped",
                                  "files/../../escaped", "tables/../../escaped.jsonl", "photons/" + "0" * 63 + "/.photon"])
def test_a_member_named_outside_its_folder_is_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    home = tmp_path / "deep" / "home"
    home.mkdir(parents=True)
    bad = tmp_path / "bad.fbk"
    plain_backup(bad, {name: b"planted"})
    with pytest.raises(BackupError, match="which no Fermion backup has"):
        Backup(bad)
    out = cli(home, "backup", "restore", str(bad), "--unsealed")
    assert out.returncode != 0 and "which no Fermion backup has" in out.stderr and "Traceback" not in out.stderr
    planted = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == b"planted"]
    assert planted == [], f"a restore wrote {planted}"


def a_home_with_a_database(home: Path) -> None:
    home.mkdir(parents=True)
    store = Store(f"sqlite:///{home / 'fermion.db'}")
    with store.session() as s:
        s.add(UserRow(name="admin", admin=True))
    store.close()


def test_every_backup_is_sealed_and_nothing_but_the_passphrase_opens_it(tmp_path: Path) -> None:
    home, backup = tmp_path / "home", tmp_path / "state.fbk"
    a_home_with_a_database(home)
    assert "set $FERMION_BACKUP_PASSPHRASE" in cli(home, "backup", "create", str(backup), passphrase=None).stderr
    assert not backup.exists()
    made = cli(home, "backup", "create", str(backup))
    assert made.returncode == 0, made.stderr
    assert b"fermion-backup" not in backup.read_bytes() and b"users" not in backup.read_bytes()  # encrypted
    verified = cli(home, "backup", "verify", str(backup))
    assert verified.returncode == 0 and "authentic and intact" in verified.stdout, verified.stderr
    wrong = cli(home, "backup", "verify", str(backup), passphrase="somebody else's phrase")
    assert wrong.returncode != 0 and "does not open with this passphrase" in wrong.stderr

    # one byte changed anywhere in the sealed file: refused, nothing restored
    altered = tmp_path / "altered.fbk"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 1
    altered.write_bytes(bytes(data))
    new_home = tmp_path / "new"
    refused = cli(new_home, "backup", "restore", str(altered))
    assert refused.returncode != 0 and "altered" in refused.stderr and not (new_home / "fermion.db").exists()

    # the file replaced by a backup of the writer's own making, with a token of theirs: a plain one is
    # refused as unsealed; one sealed under their own passphrase does not open with the operator's
    forged_plain = tmp_path / "forged.fbk"
    forged_home = tmp_path / "forged-home"
    a_home_with_a_database(forged_home)
    store = Store(f"sqlite:///{forged_home / 'fermion.db'}")
    with store.session() as s:
        s.add(TokenRow(name="mine", user="admin", token_hash=hashlib.sha256(b"attacker").hexdigest()))
    store.close()
    assert cli(forged_home, "backup", "create", str(forged_plain), passphrase="the attacker's passphrase").returncode == 0
    refused = cli(new_home, "backup", "restore", str(forged_plain))
    assert refused.returncode != 0 and "does not open with this passphrase" in refused.stderr
    plain = tmp_path / "plain.fbk"
    plain_backup(plain, {})
    refused = cli(new_home, "backup", "restore", str(plain))
    assert refused.returncode != 0 and "is not sealed: nothing proves who wrote it" in refused.stderr
    assert "--unsealed" in refused.stderr and not (new_home / "fermion.db").exists()

    restored = cli(new_home, "backup", "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert f"restored {backup}" in restored.stderr and (new_home / "fermion.db").exists()
