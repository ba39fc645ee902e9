"""A backup sealed into an object store, and restored onto a new home on another machine's disk:
the new server serves the same deployments, knows the jobs' history, the registry and the
datasets (whose chunks never left the clouds' stores), and opens the same secrets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import fermion
from fermion.testing import fermion_cmd, kill_replicas, start_server, stop, web
from tests.support import TEXT_PHOTON

PASSPHRASE = "correct horse battery staple"


def clouds(stores: Path) -> str:
    return f"""
clouds:
  - name: east
    pricing: {{price_per_hour: 0.1}}
    store: {{url: "file://{stores / 'east'}"}}
  - name: west
    pricing: {{price_per_hour: 0.2}}
    store: {{url: "file://{stores / 'west'}"}}
"""


def cli(home: Path, *args: str, passphrase: str | None = PASSPHRASE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FERMION_HOME": str(home)}
    env.pop("FERMION_BACKUP_PASSPHRASE", None)
    if passphrase is not None:
        env["FERMION_BACKUP_PASSPHRASE"] = passphrase
    return subprocess.run(fermion_cmd(*args), capture_output=True, text=True, env=env, timeout=300)


def test_a_backup_in_a_store_restores_onto_a_new_home_that_serves_the_same_deployments(tmp_path: Path) -> None:
    stores, offsite = tmp_path / "stores", f"file://{tmp_path / 'offsite'}"
    old_home, new_home = tmp_path / "old", tmp_path / "new"
    server = start_server(old_home, clouds(stores))
    try:
        server.cli("secret", "set", "greeting", "--value", "s3cret-hello")
        server.cli("deploy", TEXT_PHOTON, "--name", "words", "--replicas", "2", "--public",
                   "--env", "GREETING=secret:greeting")
        data = tmp_path / "data"
        data.mkdir()
        (data / "rows.txt").write_text("a row\n" * 500)
        server.cli("dataset", "create", "rows", str(data), "--cloud", "west")
        server.cli("job", "run", "--name", "hello", "--follow", "--timeout", "60", "--", "python", "-c", "print('hi')")

        missing = cli(old_home, "backup", "create", "--to", offsite, passphrase=None)
        assert missing.returncode == 2 and "FERMION_BACKUP_PASSPHRASE" in missing.stderr
        sent = cli(old_home, "backup", "create", "--to", offsite)
        assert sent.returncode == 0, sent.stderr
        assert "sealed and sent to" in sent.stderr and "deployments: 1" in sent.stderr
        (name,) = [p.name for p in (tmp_path / "offsite").iterdir()]
        assert name.startswith("fermion-backup-") and name.endswith(".fbk.sealed")
        blob = (tmp_path / "offsite" / name).read_bytes()
        assert b"s3cret" not in blob and b"master" not in blob  # sealed: nothing readable leaves
    finally:
        stop(server.proc)
        kill_replicas(old_home)  # the old machine is gone, its replicas with it

    listed = cli(new_home, "backup", "list", "--from", offsite)
    assert listed.returncode == 0 and name in listed.stdout
    # the store's owner passes an older backup off as newer by renaming it: it no longer opens
    renamed = tmp_path / "offsite" / name.replace("fermion-backup-2", "fermion-backup-9")
    renamed.write_bytes(blob)
    forged = cli(new_home, "backup", "restore", "--from", offsite)
    assert forged.returncode == 2 and "altered or renamed" in " ".join(forged.stderr.split())
    renamed.unlink()
    wrong = cli(new_home, "backup", "restore", "--from", offsite, passphrase="not the passphrase at all")
    assert wrong.returncode == 2 and "does not open with this passphrase" in wrong.stderr
    restored = cli(new_home, "backup", "restore", "--from", offsite)
    assert restored.returncode == 0, restored.stderr
    assert f"fetched {name}" in restored.stderr and "master.key restored" in restored.stderr

    server = start_server(new_home, clouds(stores))
    try:
        with fermion.connect(server.url, server.token) as conn:
            # READY: its replicas started with GREETING opened, by the restored master key
            d = conn.deployment("words").wait(lambda x: x.ready == 2 and x.status == "READY", timeout=120)
            assert len({r.id for r in d.replica_list}) == 2
            assert web.post(f"{server.url}/d/words/upper", json={"texts": ["back"]}, timeout=30).json() == ["BACK"]
            job = conn.jobs.get("hello")
            assert job.status == "SUCCEEDED" and job.attempts[0].exit_code == 0
            out = conn.datasets.pull("rows", tmp_path / "pulled")
            assert out.fetched == 1 and (tmp_path / "pulled" / "rows.txt").read_text() == "a row\n" * 500
            assert [s.name for s in conn.secrets()] == ["greeting"]
    finally:
        stop(server.proc)
        kill_replicas(new_home)
