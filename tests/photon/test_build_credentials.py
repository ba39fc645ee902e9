"""`fermion photon build` leaves credential-like files out, by name and by content (detect-secrets' rules and the
magic of Fermion's own formats), says which and why, and packs one anyway when --include names it."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fermion.errors import PhotonLoadError
from fermion.photon import _credentials, _package
from fermion.photon._package import build_archive, source_files
from fermion.security import new_token
from tests.photon.test_build_ignore import PHOTON, build, packed, photon_dir

REPO = Path(__file__).resolve().parents[2]
ATTACK = ("backup.fbk", "kubeconfig", "gcp-sa.json", "secrets.yaml", "token.txt")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def fermion_backup(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real backup, by the project's own code: its database (with a token row) and master key."""
    from fermion.store import Store, TokenRow, UserRow, create_backup

    tmp = tmp_path_factory.mktemp("backup")
    store = Store(f"sqlite:///{tmp / 'fermion.db'}")
    with store.session() as s:
        s.add(UserRow(name="admin", admin=True))
        s.flush()
        s.add(TokenRow(name="cli", user="admin", token_hash="0" * 64))
    key = tmp / "master.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    create_backup(store.url, tmp / "b.fbk", files={"master.key": key})
    store.close()
    return (tmp / "b.fbk").read_bytes()


def service_account(pem: str) -> str:
    """A GCP service-account key shaped like the JSON Google hands out."""
    return json.dumps({
        "type": "service_account", "project_id": "acme-prod", "private_key_id": os.urandom(20).hex(),
        "private_key": pem, "client_email": "deployer@acme-prod.iam.gserviceaccount.com",
        "client_id": "104857600123456789012", "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/deployer%40acme-prod.iam."
                                "gserviceaccount.com",
        "universe_domain": "googleapis.com",
    }, indent=2)


def kubeconfig() -> str:
    """A kubeconfig whose user holds a service-account token (a JWT)."""
    jwt = ".".join([b64url(json.dumps({"alg": "RS256", "kid": "k1"}).encode()),
                    b64url(json.dumps({"iss": "kubernetes/serviceaccount",
                                       "sub": "system:serviceaccount:default:deployer"}).encode()),
                    b64url(os.urandom(256))])
    ca = base64.b64encode(os.urandom(600)).decode()
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n"
            "    server: https://34.118.0.10\n  name: prod\ncontexts:\n- context:\n    cluster: prod\n"
            f"    user: deployer\n  name: prod\ncurrent-context: prod\nusers:\n- name: deployer\n  user:\n"
            f"    token: {jwt}\n")


SECRETS_YAML = 'database:\n  host: db.internal\n  user: app\n  password: "q8Lw2!zR7c#Vn4"\n'


@pytest.fixture
def attack(pem: str, fermion_backup: bytes) -> dict[str, str | bytes]:
    """The five files the attack found packed, with realistic contents."""
    return {"backup.fbk": fermion_backup, "kubeconfig": kubeconfig(), "gcp-sa.json": service_account(pem),
            "secrets.yaml": SECRETS_YAML, "token.txt": new_token("fma") + "\n"}


def test_the_attack_files_are_left_out_and_named_with_why(tmp_path: Path, attack: dict[str, str | bytes]) -> None:
    # Fails before the fix: all five were packed (only service-account*.json-like names were known).
    root = photon_dir(tmp_path, {**attack, "util.py": "x = 1\n"})
    _, selection = build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "out.photon")
    assert packed(tmp_path / "out.photon") == {"photon.py", "util.py"}
    assert selection.skipped == sorted(ATTACK)
    assert all(selection.reasons[rel] for rel in ATTACK)

    result = build(root, tmp_path, "-o", "cli.photon")
    assert result.returncode == 0, result.stderr
    assert packed(tmp_path / "cli.photon") == {"photon.py", "util.py"}
    out = result.stdout[result.stdout.index("skipped as secrets"):]
    for rel in ATTACK:
        assert rel in out and selection.reasons[rel] in out  # each named, with its reason
    data = json.loads(build(root, tmp_path, "-o", "json.photon", "--json").stdout)
    assert data["skipped_why"] == {rel: selection.reasons[rel] for rel in ATTACK}


@pytest.mark.parametrize(("original", "innocent", "why"), [
    ("backup.fbk", "notes.bin", "Fermion backup"),
    ("kubeconfig", "cluster.yaml", "kubeconfig"),
    ("gcp-sa.json", "config.json", "Private Key (detect-secrets)"),
    ("secrets.yaml", "settings.yaml", "Secret Keyword (detect-secrets)"),
    ("token.txt", "notes.txt", "Fermion API token"),
])
def test_renamed_innocently_they_are_still_left_out_by_content(
    tmp_path: Path, attack: dict[str, str | bytes], original: str, innocent: str, why: str
) -> None:
    root = photon_dir(tmp_path, {innocent: attack[original]})
    _, selection = build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "out.photon")
    assert packed(tmp_path / "out.photon") == {"photon.py"}
    assert selection.skipped == [innocent]
    assert why in selection.reasons[innocent] and "named like" not in selection.reasons[innocent]


def test_a_private_key_in_notes_is_left_out_and_include_packs_it(tmp_path: Path, pem: str) -> None:
    root = photon_dir(tmp_path, {"notes.txt": f"deploy key, do not lose:\n{pem}", "util.py": "x = 1\n"})
    _, selection = build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "out.photon")
    assert packed(tmp_path / "out.photon") == {"photon.py", "util.py"}
    assert selection.reasons["notes.txt"] == "line 2: Private Key (detect-secrets)"

    with pytest.warns(UserWarning, match=r"notes.txt looks like a secret and is packed: .*Private Key"):
        _, selection = build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "in.photon", include=["notes.txt"])
    assert packed(tmp_path / "in.photon") == {"photon.py", "util.py", "notes.txt"}
    assert selection.skipped == [] and selection.included_secrets == ["notes.txt"]

    result = build(root, tmp_path, "-o", "cli.photon", "--include", "notes.txt")
    assert result.returncode == 0, result.stderr
    assert packed(tmp_path / "cli.photon") == {"photon.py", "util.py", "notes.txt"}
    assert "notes.txt looks like a secret and is packed" in result.stderr
    assert "skipped as secrets" not in result.stdout


def test_include_packs_each_attack_file(tmp_path: Path, attack: dict[str, str | bytes]) -> None:
    root = photon_dir(tmp_path, attack)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, selection = build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "out.photon", include=list(ATTACK))
    assert packed(tmp_path / "out.photon") == {"photon.py", *ATTACK}
    assert selection.skipped == [] and sorted(selection.included_secrets) == sorted(ATTACK)
    assert len([w for w in caught if "looks like a secret and is packed" in str(w.message)]) == len(ATTACK)


@pytest.mark.parametrize(("text", "kind"), [
    ('AWS_ACCESS_KEY_ID = "AKIAZ7Q3XW5M2RBVLT4N"\n', "AWS Access Key"),
    (f"GITHUB = 'ghp_{'Zq7LmR2vXw9KpT4sBn8cYd1eFg6hJ3aQ5uVo'}'\n", "GitHub Token"),
    ("SLACK = 'xoxb-290145671234-3097654123456-Vq8ZrT2mLw9KpX4sBn7cYd1e'\n", "Slack Token"),
    ("STRIPE = 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'\n", "Stripe Access Key"),
    ("DB = 'postgresql://app:Zr8kq2vLw9@db.internal:5432/prod'\n", "Basic Auth Credentials"),
])
def test_detect_secrets_rules_find_keys_in_code(tmp_path: Path, text: str, kind: str) -> None:
    root = photon_dir(tmp_path, {"settings_local.py": text})
    selection = source_files(root)
    assert selection.skipped == ["settings_local.py"]
    assert selection.reasons["settings_local.py"] == f"line 1: {kind} (detect-secrets)"


def test_a_line_allowlisted_as_detect_secrets_knows_it_is_packed(tmp_path: Path) -> None:
    root = photon_dir(tmp_path, {
        "fixtures.py": 'STRIPE = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"  # pragma: allowlist secret\n',
        "test.yaml": 'password: "Zr8kq2vLw9"  # pragma: allowlist secret\n',
    })
    assert source_files(root).skipped == []


ORDINARY = {
    "model/config.json": json.dumps({"architectures": ["BertModel"], "hidden_size": 768, "vocab_size": 30522,
                                     "_commit_hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4",
                                     "pad_token": "[PAD]"}, indent=2),
    "model/vocab.json": json.dumps({w: i for i, w in enumerate(["password", "secret", "token", "Ġkey", "api"])}),
    "checksums.py": 'WEIGHTS_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"\n'
                    f'RUN_ID = "{uuid.UUID(int=12345678901234567890)}"\nRUN_UUID = "{uuid.uuid4()}"\n',
    "refs.py": 'SECRET_REF = "secret:"\nAPI_KEY_ENV = "secret:api-key"\nimport os\npassword = os.environ["PW"]\n'
               'secret_name = "openai-key"\ntoken = request.headers["authorization"]\n',
    "deploy.yaml": "env:\n  API_KEY: secret:api-key\n  DB_PASSWORD: ${DB_PASSWORD}\nresources:\n  cpu: 2\n",
    "credentials.py": "def load(name: str) -> str:\n    return name\n",  # a module: judged by content only
    "requirements.txt": "numpy==2.4.6\ntorch==2.9.0 --hash=sha256:" + "ab" * 32 + "\n",
    "data/rows.jsonl": '{"id": "6f1c2e7a-9d4b-4c3e-8a5f-1b2c3d4e5f60", "text": "reset my password please"}\n',
}


def test_an_ordinary_photon_loses_nothing(tmp_path: Path) -> None:
    root = photon_dir(tmp_path, ORDINARY)
    selection = source_files(root)
    assert selection.skipped == [] and set(selection.files) == {"photon.py", *ORDINARY}


@pytest.mark.parametrize("folder", [".", *sorted({p.parent.name for p in (REPO / "examples").glob("*/*.py")})])
def test_the_repo_examples_pack_what_they_packed_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    root = tmp_path / "photon"
    shutil.copytree(REPO / "examples" / folder, root, ignore=shutil.ignore_patterns("__pycache__"))
    selection = source_files(root)
    monkeypatch.setattr(_package, "content_reasons", lambda files: {})  # as before: names only
    assert selection.skipped == [] and selection.files == source_files(root).files


def test_fermion_state_is_recognised_by_magic_whatever_its_name(tmp_path: Path, fermion_backup: bytes) -> None:
    db = tmp_path / "cache.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE project_secrets (project TEXT, name TEXT, value BLOB)")
    plain_tar = gzip.decompress(fermion_backup)
    other = io.BytesIO()
    with tarfile.open(fileobj=other, mode="w:gz") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    root = photon_dir(tmp_path, {
        "state.bin": db.read_bytes(), "old.tar": plain_tar, "blob.dat": b"FBKE2\x11" + os.urandom(64),
        "big.dat": fermion_backup + os.urandom(2 << 20),  # over the scan cap: magic still read
        "other.tar.gz": other.getvalue(), "weights.bin": b"\x00" + os.urandom(4096),
    })
    selection = source_files(root)
    assert selection.skipped == ["big.dat", "blob.dat", "old.tar", "state.bin"]
    assert "Fermion database" in selection.reasons["state.bin"] and "sealed" in selection.reasons["blob.dat"]
    assert set(selection.files) == {"photon.py", "other.tar.gz", "weights.bin"}


def test_big_and_binary_files_are_judged_by_name_only(tmp_path: Path, pem: str) -> None:
    cap = _credentials.MAX_SCAN_BYTES
    root = photon_dir(tmp_path, {
        "big.txt": "x" * cap + "\n" + pem,  # past the cap: not scanned
        "blob.bin": b"\x00\x01" + pem.encode(),  # binary: not scanned
        "big.pem": "x" * cap,  # but a name is always judged
    })
    selection = source_files(root)
    assert selection.skipped == ["big.pem"] and set(selection.files) == {"photon.py", "big.txt", "blob.bin"}


def test_a_yaml_alias_bomb_is_scanned_quickly(tmp_path: Path) -> None:
    # detect-secrets' own YAML parser expands aliases: a 1 KiB file like this one hung it
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    root = photon_dir(tmp_path, {"bomb.yaml": "\n".join(lines) + '\npassword: "Zr8kq2vLw9"\n'})
    started = time.monotonic()
    selection = source_files(root)
    assert time.monotonic() - started < 10
    assert selection.reasons["bomb.yaml"] == "line 10: Secret Keyword (detect-secrets)"


def test_an_entry_file_holding_a_key_is_packed_with_a_warning(tmp_path: Path) -> None:
    root = photon_dir(tmp_path)
    (root / "photon.py").write_text(PHOTON + 'STRIPE = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"\n')
    with pytest.warns(UserWarning, match="photon.py, the photon's entry file, looks like a secret .*Stripe"):
        _, selection = build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "out.photon")
    assert packed(tmp_path / "out.photon") == {"photon.py"} and selection.entry_secrets == ["photon.py"]


def test_jobs_leave_credentials_out_too(tmp_path: Path, pem: str) -> None:
    root = photon_dir(tmp_path, {"train.py": "print(1)\n", "notes.txt": pem})
    selection = source_files(root, kind="job")
    assert selection.skipped == ["notes.txt"] and "notes.txt" not in selection.files


def test_bad_input_gives_an_error_not_a_traceback(tmp_path: Path) -> None:
    root = photon_dir(tmp_path, {"sub/a.txt": "a"})
    for args, message in [(("--include", "missing.txt"), "no such file"),
                          (("--include", "../x"), "not inside the photon folder")]:
        result = build(root, tmp_path, "-o", "bad.photon", *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    os.mkfifo(root / "pipe")  # reading it would hang the scan: it is no file to pack
    build_archive(f"{root / 'photon.py'}:Echo", tmp_path / "ok.photon")
    assert packed(tmp_path / "ok.photon") == {"photon.py", "sub/a.txt"}


def test_detect_secrets_is_imported_by_a_build_only_and_leaves_warnings_alone(tmp_path: Path) -> None:
    probe = ("import sys, fermion, fermion.photon.runtime, fermion.cli._photon\n"
             "assert 'detect_secrets' not in sys.modules, 'imported eagerly'\n")
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=REPO)
    shown = warnings.showwarning
    source_files(photon_dir(tmp_path))
    assert warnings.showwarning is shown  # importing detect-secrets would route warnings into logging


def test_fermion_formats_match_what_fermion_writes() -> None:
    from fermion.security import SECRET_NAME_PATTERN, SECRET_REF
    from fermion.store._backup import FORMAT

    assert _credentials._SECRET_REF.pattern == SECRET_REF + SECRET_NAME_PATTERN
    assert FORMAT == "fermion-backup" and _credentials._FERMION_TOKEN.fullmatch(new_token("fmd"))
    assert _credentials.sniff_text(base64.b64encode(os.urandom(32)).decode() + "\n")  # a master.key


def test_a_file_the_rules_cannot_judge_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import detect_secrets.core.scan

    def broken(lines: object, filename: str) -> object:
        raise RecursionError("deep")

    monkeypatch.setattr(detect_secrets.core.scan, "_process_line_based_plugins", broken)
    root = photon_dir(tmp_path, {"odd.txt": "AKIA" + "Q" * 16 + "\n", "plain.txt": "hello\n"})
    selection = source_files(root)
    assert selection.reasons == {"odd.txt": "could not be scanned (RecursionError): left out to be safe"}
    assert set(selection.files) == {"photon.py", "plain.txt"}  # the prefilter cleared it: never scanned


def test_without_detect_secrets_a_build_refuses_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "detect_secrets.core.scan", None)  # as if it were not installed
    with pytest.raises(PhotonLoadError, match="detect-secrets is not installed") as caught:
        source_files(photon_dir(tmp_path))
    assert caught.value.hint and "pip install detect-secrets" in caught.value.hint


@pytest.mark.parametrize(("name", "content", "why"), [
    ("settings_latin1.py", 'CITY = "caf\xe9"\nAWS_ACCESS_KEY_ID = "AKIAZ7Q3XW5M2RBVLT4N"\n'.encode("latin-1"),
     "AWS Access Key"),
    ("config", json.dumps({"apiVersion": "v1", "kind": "Config", "users": [{"name": "u", "user": {
        "client-key-data": base64.b64encode(b"-----BEGIN RSA PRIVATE KEY-----" + b"x" * 40).decode()}}]}).encode(),
     "a kubeconfig's client key"),
    ("prod.env", b"DATABASE_PASSWORD=Zr8kq2vLw9\n", "named like an environment file"),
    ("client_secret_123-abc.apps.googleusercontent.com.json",
     b'{"installed": {"client_id": "123-abc.apps.googleusercontent.com", "client_secret": "GOCSPX-x"}}',
     "named like an OAuth client secret"),
])
def test_what_an_outside_review_found_packed_is_left_out(tmp_path: Path, name: str, content: bytes, why: str) -> None:
    root = photon_dir(tmp_path, {})
    (root / name).write_bytes(content)
    selection = source_files(root)
    assert selection.skipped == [name], selection
    assert why in selection.reasons[name]
