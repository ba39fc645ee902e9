"""SecretBox in-process: sealing, key files, references, rotation over a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import os
import shutil
import stat
from pathlib import Path

import pytest

from fermion.errors import ConflictError
from fermion.security import MissingSecretError, SecretBox, SecretError, env_purpose
from fermion.store import DeploymentRow, JobRow, PhotonRow, SecretRow, Store, default_db_url

NO_ENV: dict[str, str] = {}


def box(home: Path) -> SecretBox:
    return SecretBox(home, environ=NO_ENV)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_uses_a_fresh_nonce_and_names_the_key(tmp_path: Path) -> None:
    b = box(tmp_path)
    one, two = b.seal("hunter2-value", "secret:db"), b.seal("hunter2-value", "secret:db")
    assert one != two and "hunter2" not in one
    assert one.startswith(f"fmenc:v1:{b.key_id}:")
    assert b.open(one, "secret:db") == b.open(two, "secret:db") == "hunter2-value"
    assert b.open(b.seal("", "secret:empty"), "secret:empty") == ""
    assert b.open(b.seal("ünïcode ✓", "secret:u"), "secret:u") == "ünïcode ✓"


def test_tampered_or_moved_ciphertext_does_not_open(tmp_path: Path) -> None:
    b = box(tmp_path)
    sealed = b.seal("the-value", "env:deployment:web:API_KEY")
    body = sealed.rsplit(":", 1)[1]
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[20] ^= 1
    tampered = sealed[: -len(body)] + base64.urlsafe_b64encode(bytes(raw)).decode()
    for token, purpose in [
        (tampered, "env:deployment:web:API_KEY"),
        (sealed, "env:deployment:web:OTHER"),  # another key of the same row
        (sealed, "env:deployment:api:API_KEY"),  # the same key of another row
        (sealed, "secret:API_KEY"),
        (sealed[:-4], "env:deployment:web:API_KEY"),
        (sealed.replace(b.key_id, "0" * 16), "env:deployment:web:API_KEY"),
    ]:
        with pytest.raises(SecretError):
            b.open(token, purpose)


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    b = box(tmp_path)
    key = tmp_path / "master.key"
    assert mode(key) == 0o600
    assert len(base64.b64decode(key.read_text().strip())) == 32
    again = box(tmp_path)
    assert again.key_id == b.key_id
    assert again.open(b.seal("v", "p"), "p") == "v"


def test_key_file_readable_by_others_or_malformed_is_refused(tmp_path: Path) -> None:
    box(tmp_path)
    key = tmp_path / "master.key"
    key.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        box(tmp_path)
    key.chmod(0o600)
    key.write_text("not base64 of 32 bytes\n")
    with pytest.raises(SecretError, match="malformed"):
        box(tmp_path)


def test_key_from_the_environment_never_touches_the_home(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    b = SecretBox(tmp_path, environ={"FERMION_MASTER_KEY": key})
    assert not (tmp_path / "master.key").exists()
    assert SecretBox(tmp_path, environ={"FERMION_MASTER_KEY": key}).open(b.seal("v", "p"), "p") == "v"
    with pytest.raises(ConflictError, match="rotate the environment variable"):
        b.rotate(Store(default_db_url(tmp_path)))
    with pytest.raises(SecretError, match="malformed"):
        SecretBox(tmp_path, environ={"FERMION_MASTER_KEY": base64.b64encode(b"short").decode()})


def _fill(b: SecretBox, store: Store) -> None:
    """Two secrets, a sealed deployment env, a legacy plain deployment env and a sealed job env."""
    with store.session() as s:
        b.set_secret(s, "api-key", "sk-live-0123456789")
        b.set_secret(s, "db_pass", "correct horse battery")
        s.add(PhotonRow(sha256="a" * 64, name="p", archive_path="/nowhere", manifest={}))
        s.flush()  # no relationship tells the unit of work that the photon must come first
        s.add(DeploymentRow(name="web", photon_sha256="a" * 64, env=b.seal_env(
            {"API_KEY": "secret:api-key", "PLAIN": "visible-value-123"}, env_purpose("deployment", "web"))))
        s.add(DeploymentRow(name="legacy", photon_sha256="a" * 64, env={"DB": "secret:db_pass", "MODE": "fast"}))
        s.add(JobRow(name="train", command=["true"], env=b.seal_env({"TOKEN": "secret:db_pass"}, env_purpose("job", "train"))))


EXPECTED = {
    ("deployment", "web"): {"API_KEY": "sk-live-0123456789", "PLAIN": "visible-value-123"},
    ("deployment", "legacy"): {"DB": "correct horse battery", "MODE": "fast"},
    ("job", "train"): {"TOKEN": "correct horse battery"},
}


def _opened(b: SecretBox, store: Store) -> dict[tuple[str, str], dict[str, str]]:
    with store.session() as s:
        return {(kind, name): b.open_env(s, s.get(DeploymentRow if kind == "deployment" else JobRow, name).env,
                                         env_purpose(kind, name)) for kind, name in EXPECTED}


def test_open_env_resolves_references_accepts_legacy_rows_and_names_a_missing_secret(tmp_path: Path, db_url: str) -> None:
    b, store = box(tmp_path), Store(db_url)
    _fill(b, store)
    assert _opened(b, store) == EXPECTED
    with store.session() as s:
        assert b.referrers(s, "db_pass") == ["deployment legacy", "job train"]
        s.delete(s.get(SecretRow, ("default", "db_pass")))
    with store.session() as s, pytest.raises(MissingSecretError, match="db_pass"):
        b.open_env(s, s.get(JobRow, "train").env, env_purpose("job", "train"))
    with store.session() as s:
        assert b.open_env(s, s.get(JobRow, "train").env, env_purpose("job", "train"), missing_ok=True) == {}
        with pytest.raises(MissingSecretError, match="'nope'"):
            b.check_references(s, {"X": "secret:nope"})
    store.close()


def test_rotation_re_encrypts_everything_under_a_new_key_file(tmp_path: Path, db_url: str) -> None:
    b, store = box(tmp_path), Store(db_url)
    _fill(b, store)
    old_id, old_key = b.key_id, (tmp_path / "master.key").read_text()
    out = b.rotate(store)
    assert out["key_id"] == b.key_id != old_id
    assert (out["secrets"], out["deployments"], out["jobs"]) == (2, 2, 1)  # the legacy row is sealed now
    assert (tmp_path / "master.key").read_text() != old_key and mode(tmp_path / "master.key") == 0o600
    assert not (tmp_path / "master.key.old").exists()
    fresh = box(tmp_path)  # knows only the new key, so every row was re-encrypted
    assert fresh.key_id == b.key_id
    assert _opened(fresh, store) == EXPECTED
    with store.session() as s:
        assert all(v.startswith(f"fmenc:v1:{b.key_id}:") for v in s.get(DeploymentRow, "legacy").env.values())
    store.close()


def test_an_interrupted_rotation_stays_readable_and_the_next_one_finishes_it(tmp_path: Path, db_url: str) -> None:
    b, store = box(tmp_path), Store(db_url)
    _fill(b, store)
    # the state a crash leaves between writing the new key file and committing the rows
    shutil.copy2(tmp_path / "master.key", tmp_path / "master.key.old")
    (tmp_path / "master.key").unlink()
    restarted = box(tmp_path)
    assert restarted.key_id != b.key_id
    assert _opened(restarted, store) == EXPECTED
    restarted.rotate(store)
    assert not (tmp_path / "master.key.old").exists()
    assert _opened(box(tmp_path), store) == EXPECTED
    store.close()


def test_redact_hides_values_of_four_characters_or_more() -> None:
    text = "token=sk-live-0123456789 mode=abc key=sk-live-0123456789-extra\n-----BEGIN KEY-----\nMIIB"
    out = SecretBox.redact(text, ["sk-live-0123456789", "sk-live-0123456789-extra", "abc",
                                  "-----BEGIN KEY-----\nMIIBxyz\n-----END KEY-----"])
    assert out == "token=*** mode=abc key=***\n***\nMIIB"
