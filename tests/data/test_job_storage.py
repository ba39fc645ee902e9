"""A job's checkpoints outlive its cloud only through the stores: the cloud dies with its disk and
its store, and the job resumes on another cloud from the copy in that cloud's store."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

from fermion.testing import Emulator, running_server, start_s3_emulator
from tests.support import EXAMPLES


def test_a_job_resumes_from_a_checkpoint_it_could_only_get_through_the_stores(gcs_emulator: Emulator,
                                                                            tmp_path: Path) -> None:
    east_s3 = start_s3_emulator(tmp_path / "east-s3")  # east's store, lost with east
    try:
        def store(e: Emulator) -> str:
            return json.dumps(e.store(f"ckpt-{uuid.uuid4().hex[:8]}").model_dump(exclude_none=True))

        clouds = (f"clouds:\n  - name: east\n    pricing: {{price_per_hour: 0.1}}\n    store: {store(east_s3)}\n"
                  f"  - name: west\n    pricing: {{price_per_hour: 0.2}}\n    store: {store(gcs_emulator)}\n")
        with running_server(tmp_path / "home", clouds) as server:
            server.cli("job", "run", "--name", "steps", "--workdir", str(EXAMPLES / "jobs"), "--", "python", "steps.py", "60",
                       "0.1")

            def log(api, number: int = 0) -> str:  # noqa: ANN001
                return list(api.get("/jobs/steps/logs").json().values())[number]

            first = server.wait_for(lambda api: (j := api.get("/jobs/steps").json())["status"] == "RUNNING" and j)
            attempt = first["attempts"][0]
            assert attempt["cloud"] == "east"
            # by step 15, snapshots (every 0.5 s, ~5 steps) from step 10 on are in both clouds' stores
            server.wait_for(lambda api: "step 15 on" in (text := log(api)) and "kept in the stores of east, west" in text,
                            timeout=60)

            server.cli("cloud", "fail", "east")
            east_s3.stop()  # the store goes with the cloud,
            shutil.rmtree(server.workdir("east", attempt["id"]))  # and so does its disk
            done = server.wait_for(lambda api: (j := api.get("/jobs/steps").json())["status"] in ("SUCCEEDED", "FAILED")
                                   and j, timeout=120)
            assert done["status"] == "SUCCEEDED", done
            assert [(a["cloud"], a["state"]) for a in done["attempts"]] == [("east", "PREEMPTED"), ("west", "SUCCEEDED")], [
                (a["cloud"], a["state"], a["reason"]) for a in done["attempts"]]
            with server.api() as api:
                second = log(api, 1)
            assert "restored checkpoint" in second and "from the store of west" in second, second
            resumed = int(re.search(r"resumed from step (\d+) on west", second).group(1))
            assert 10 <= resumed < 60
            assert "done: sum of steps 1830" in second  # 1 + ... + 60: the state came back whole
            # the job has ended: a collection drops its checkpoints (east, down, is not asked)
            first_gc = json.loads(server.cli("cloud", "gc", "--json").stdout)["stores"]
            assert set(first_gc) == {"west"} and first_gc["west"]["checkpoints_dropped"] >= 1, first_gc
            assert json.loads(server.cli("cloud", "gc", "--json").stdout)["stores"]["west"]["checkpoints_dropped"] == 0
    finally:
        east_s3.stop()


READER = """
import hashlib, os, pathlib, sys
stores = pathlib.Path(sys.argv[1])
print("STORES", sorted(p.name for p in stores.rglob("*")) if stores.exists() else "absent", flush=True)
root = pathlib.Path(os.environ["FERMION_DATA_DIR"]) / "rows"
for p in sorted(root.rglob("*")):
    if p.is_file():
        print("FILE", p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest(), flush=True)
"""


def test_a_job_gets_its_pinned_dataset_version_from_the_nearest_store(tmp_path: Path) -> None:
    import hashlib

    data = tmp_path / "rows"
    (data / "part").mkdir(parents=True)
    files = {"a.csv": b"text,label\nhello,greeting\n", "part/b.bin": bytes(range(256)) * 4000}
    for rel, body in files.items():
        (data / rel).write_bytes(body)
    clouds = "clouds:\n  - name: east\n  - name: west\n"
    with running_server(tmp_path / "home", clouds) as server:
        server.cli("dataset", "create", "rows", str(data), "--cloud", "east")
        (data / "a.csv").write_bytes(b"text,label\nchanged,after the pin\n")
        server.cli("dataset", "push", "rows", str(data))  # v2: the job was asked for v1
        stores = tmp_path / "home-stores"  # the clouds' folder stores, beside the home
        assert any(stores.rglob("*.json"))
        server.cli("job", "run", "--name", "reader", "--cloud", "west", "--data", "dataset:rows@1", "--",
                   "python", "-c", READER, str(stores))
        done = server.wait_for(lambda api: (j := api.get("/jobs/reader").json())["status"] in ("SUCCEEDED", "FAILED")
                               and j, timeout=60)
        with server.api() as api:
            log = next(iter(api.get("/jobs/reader/logs").json().values()))
        assert done["status"] == "SUCCEEDED", log
        assert "fetched from the store of east" in log  # west's store does not hold it
        # the job sees no store's folder (the sandbox shows none of the host's): its data came through the server
        assert "STORES absent" in log or "STORES []" in log
        seen = dict(line.split()[1:] for line in log.splitlines() if line.startswith("FILE "))
        assert seen == {rel: hashlib.sha256(body).hexdigest() for rel, body in files.items()}

        bad = server.cli("job", "run", "--name", "nope", "--data", "dataset:missing", "--", "true", check=False)
        assert bad.returncode != 0 and "no dataset named 'missing'" in " ".join(bad.stderr.split())


TRAIN = """
import json, os, pathlib
here = pathlib.Path.cwd()
print("FILES", sorted(p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file()), flush=True)
print("PARAMS", json.loads(pathlib.Path("config/params.json").read_text())["lr"], flush=True)
print("CHECKPOINTS", pathlib.Path(os.environ["FERMION_CHECKPOINT_DIR"]).is_absolute(), flush=True)
out = pathlib.Path(os.environ["FERMION_JOB_OUTPUT"])  # the attempt's own, on its cloud
(out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\\n' + "x" * 20000 + '\\n[1, 2]\\n{"step": 2}\\n')
(out / "report.txt").write_text("done")
"""


def test_a_job_runs_in_the_code_sent_with_it_which_it_gets_through_the_stores(tmp_path: Path) -> None:
    import os

    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    (project / "train.py").write_text(TRAIN)
    (project / "config" / "params.json").write_text('{"lr": 0.25}')
    (project / ".gitignore").write_text("weights.bin\n")
    (project / "weights.bin").write_bytes(b"w" * 1000)  # ignored
    (project / ".env").write_text("API_KEY=secret\n")  # a secret: never sent
    clouds = "clouds:\n  - name: east\n  - name: west\n"
    with running_server(tmp_path / "home", clouds) as server:
        said = " ".join(server.cli("job", "run", "--name", "coded", "--cloud", "west", "--workdir", str(project), "--",
                                   "python", "train.py").stderr.split())
        assert "kept in the stores of east, west; left out as secrets: .env" in said, said
        digest = re.search(r"code ([0-9a-f]{12}): 2 files", said)
        assert digest, said
        moved = tmp_path / "elsewhere"
        project.rename(moved)  # the job cannot be reading the sender's folder
        done = server.wait_for(lambda api: (j := api.get("/jobs/coded").json())["status"] in ("SUCCEEDED", "FAILED")
                               and j, timeout=60)
        with server.api() as api:
            log = next(iter(api.get("/jobs/coded/logs").json().values()))
        assert done["status"] == "SUCCEEDED", log
        assert f"code {digest.group(1)} (2 files" in log and "fetched from the store of west" in log, log
        assert "FILES ['config/params.json', 'train.py']" in log and "PARAMS 0.25" in log and "CHECKPOINTS True" in log
        # its metrics reached the server line by line (what is not a JSON object dropped), its output the stores
        assert done["metrics"] == [{"step": 1, "loss": 0.5}, {"step": 2}], done["metrics"]
        with server.api() as api:
            events = [e["reason"] for e in api.get("/events", params={"object_id": "coded"}).json()]
        assert any(r.startswith("2 files of attempt") and "kept in the stores of west, east" in r for r in events), events
        # each store keeps its manifest, as a code version of the project
        for cloud in ("east", "west"):
            assert list((tmp_path / "home-stores" / cloud).rglob("code.default/versions/*.json")), cloud

        again = " ".join(server.cli("job", "run", "--name", "coded-again", "--workdir", str(moved), "--",
                                    "python", "train.py").stderr.split())
        assert f"code {digest.group(1)}: 2 files" in again and "(0 sent)" in again, again

        # a command naming a file of the sender's folder, sent without it, would not find it there
        script = os.path.relpath(moved / "train.py")
        bad = server.cli("job", "run", "--name", "forgot", "--", "python", script, check=False)
        assert bad.returncode != 0 and "--workdir ." in bad.stderr, bad.stderr
        with server.api() as api:
            r = api.post("/jobs", json={"name": "ghost", "command": ["true"], "code": "ab" * 32})
        assert r.status_code == 400 and "no reachable store holds code abababababab" in r.json()["error"]["message"], r.text


def test_placement_weighs_the_egress_of_bringing_a_jobs_data_to_a_cloud(tmp_path: Path) -> None:
    data = tmp_path / "rows"
    data.mkdir()
    (data / "rows.bin").write_bytes(bytes(range(256)) * 8000)  # 2 MB, in west's store only
    # east is cheaper by $0.02/h, but bringing 2 MB out of west at $50/GB costs $0.10 once
    clouds = ("clouds:\n  - name: east\n    pricing: {price_per_hour: 0.10}\n"
              "  - name: west\n    pricing: {price_per_hour: 0.12, egress_per_gb: 50}\n")
    with running_server(tmp_path / "home", clouds) as server:
        server.cli("dataset", "create", "rows", str(data), "--cloud", "west")
        for name, extra in (("near-data", ["--data", "dataset:rows"]), ("no-data", [])):
            server.cli("job", "run", "--name", name, *extra, "--", "true")
        with server.api() as api:
            def placed(name: str) -> tuple[str, str]:
                attempt = server.wait_for(lambda api: (j := api.get(f"/jobs/{name}").json())["attempts"] and
                                          j["attempts"][0])
                events = api.get("/events", params={"object_id": attempt["id"]}).json()
                return attempt["cloud"], next(e["reason"] for e in events if "placed on" in e["reason"])

            cloud, why = placed("near-data")
            assert cloud == "west", why
            assert "next best east" in why and "$0.1000/h + $0.1024 once to bring 0.00205 GB of rows from west's store" \
                in why, why
            cloud, why = placed("no-data")
            assert cloud == "east" and "once" not in why, why


def test_a_photon_archive_lost_from_the_servers_disk_comes_back_from_the_stores(tmp_path: Path) -> None:
    from fermion.data import DatasetView, open_store, push_folder
    from fermion.photon.runtime import build_archive
    from tests.support import TEXT_PHOTON

    clouds = "clouds:\n  - name: east\n  - name: west\n"
    with running_server(tmp_path / "home", clouds) as server:
        assert "READY" in server.cli("deploy", TEXT_PHOTON, "--name", "text", "--public").stdout
        for cloud in ("east", "west"):  # kept in two clouds' stores as it was uploaded
            assert list((tmp_path / "home-stores" / cloud).rglob("photons.*/versions/*.json")), cloud
        (archive,) = (tmp_path / "home" / "photon-store").glob("*.photon")
        good = archive.read_bytes()
        sha = archive.stem
        # the stores hold another photon's archive under this one's name: it is never started
        other = tmp_path / "other"
        other.mkdir()
        build_archive(f"{EXAMPLES / 'embedder' / 'photon.py'}:Embedder", other / "photon.photon")
        views = [DatasetView(open_store(f"file://{tmp_path / 'home-stores' / cloud}"), f"photons.{sha}", space="photons")
                 for cloud in ("east", "west")]
        for view in views:
            for digest in view.digests():
                view.drop(digest)
            push_folder(view, other)
        archive.unlink()  # and the server's disk loses the right one
        server.cli("deployment", "scale", "text", "3")
        waiting = server.wait_for(lambda api: [r["reason"] for r in api.get("/deployments/text").json()["replica_list"]
                                               if "waiting for the photon's archive" in r["reason"]], timeout=30)
        assert waiting and not archive.exists()
        (other / "photon.photon").write_bytes(good)  # a good copy comes back to a store
        for digest in views[0].digests():
            views[0].drop(digest)
        push_folder(views[0], other)
        server.wait_for(lambda api: len([r for r in api.get("/deployments/text").json()["replica_list"]
                                         if r["state"] == "READY"]) == 3, timeout=90)
        assert archive.read_bytes() == good  # fetched back, checked, and the new replicas started from it
