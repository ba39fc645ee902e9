"""`make demo`: what Fermion does, end to end, on this machine.

Part 1 packages the MiniLM embedder photon (a real model, offline), serves it, calls it through
fermion.Client and shows adaptive batching. Part 2 starts a real two-node Ray cluster on this
machine and a Fermion server managing three priced local clouds and that Ray cluster as a fourth
cloud; deploys the embedder with a replica on Ray and one on a local cloud, sends traffic through
the gateway, kills a cloud and shows the traffic carrying on while the replica is re-placed;
autoscales a deployment from zero up a load ramp and back to zero; rolls a buggy release out as
a canary and back, and a good one forward; then puts the support tickets in a dataset on one cloud's object store (a real S3 server on loopback),
cleans out duplicate rows, syncs it to another cloud's store (GCS, or Azure Blob), finds and
repairs a corrupted chunk; then fine-tunes a model as a job that starts on Ray, loses its cloud
mid-run and resumes elsewhere; with FULL=1, compresses it (distilled, int8) with a measured report
and what serving it costs per cloud, and rolls the deployment over to the smaller model. Part 3 drives a
recommender's lifecycle from the Python SDK as a pipeline placed across the clouds: train, gate on
a popularity baseline and on production, deploy, promote; a new data version retrains it and a
canary rolls the update out under traffic; then the deployment migrates to another cloud live.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion import Client  # noqa: E402
from fermion.photon.runtime import build_archive  # noqa: E402
from fermion.testing import Load, emulators, local_ray_cluster, running_server, serve_photon  # noqa: E402

os.environ.setdefault("COLUMNS", "120")  # the CLI tables printed below are captured, not a TTY
console = Console()
EMBEDDER = f"{ROOT / 'examples/embedder/photon.py'}:Embedder"
TEXT = f"{ROOT / 'examples/text/photon.py'}:TextTools"
GREETER = f"{ROOT / 'examples/releases/photon.py'}:Greeter"
RECOMMENDER = ROOT / "examples" / "recommender"
FULL = os.environ.get("FERMION_DEMO_FULL", "") not in ("", "0")  # make demo FULL=1: the heavier steps too


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def main() -> None:
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        step("1. package the embedder photon")
        manifest, _ = build_archive(EMBEDDER, work / "embedder.photon")
        console.print(f"embedder.photon: entry {manifest.entry}, sha256 {manifest.sha256[:16]}…, "
                      f"handlers {', '.join(manifest.handlers)}")

        step("2. serve it from the archive (fermion photon run embedder.photon)")
        start = time.perf_counter()
        with serve_photon(str(work / "embedder.photon"), work, timeout=180) as served:
            console.print(f"ready at {served.url} in {time.perf_counter() - start:.1f}s (model loaded in init())")
            client = Client(served.url)

            step("3. call it: semantic similarity with real embeddings")
            query = "How do I move my service to another cloud?"
            docs = [
                "Fermion re-places replicas when a cloud fails.",
                "Bake the bread at 220 degrees for half an hour.",
                "Deployments can be migrated between providers.",
                "The cat slept on the warm windowsill.",
            ]
            vectors = client.embed(texts=[query, *docs])
            q = vectors[0]
            table = Table("document", "cosine similarity to the query", title=f"query: {query!r}")
            for doc, vec in sorted(zip(docs, vectors[1:]), key=lambda p: -sum(a * b for a, b in zip(q, p[1]))):
                table.add_row(doc, f"{sum(a * b for a, b in zip(q, vec)):.3f}")
            console.print(table)

            step("4. 64 concurrent callers, one text each: adaptive batching")
            texts = [f"request {i}: {docs[i % 4]}" for i in range(256)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(64) as pool:
                list(pool.map(lambda t: client.embed(texts=[t]), texts))
            elapsed = time.perf_counter() - t0
            metrics = client._http.get("/metrics").text
            sizes = [ln for ln in metrics.splitlines() if ln.startswith("fermion_batch_size_")]
            count = float(next(ln for ln in sizes if "_count" in ln).split()[-1])
            total = float(next(ln for ln in sizes if "_sum" in ln).split()[-1])
            console.print(f"256 requests in {elapsed:.2f}s ({256 / elapsed:.0f} req/s); "
                          f"{count:.0f} model calls, {total / count:.1f} texts per call on average")
        platform_demo(work)
        console.print(f"[green]done[/] in {(time.perf_counter() - began) / 60:.1f} min. Try: fermion server start, then fermion deploy examples/embedder/photon.py:Embedder --name emb")


CLOUDS = """
clouds:
  - name: aws-us-east-1
    capacity: {cpus: 4, memory_gb: 8}
    pricing: {catalog: aws, instance_type: c3.xlarge}
  - name: gcp-us-central1
    capacity: {cpus: 4, memory_gb: 8}
    pricing: {catalog: gcp, instance_type: n2-standard-4}
    inject: {latency_ms: 3}
  - name: azure-eastus
    capacity: {cpus: 4, memory_gb: 8}
    pricing: {catalog: azure, instance_type: Standard_D4s_v5}
"""
RAY_CLOUD = """
  - name: onprem-ray
    kind: ray
    address: "{address}"
    node_resource: fermion-node-onprem
    pricing: {{price_per_hour: 0.05}}
"""


def with_stores(clouds: str, stores: dict) -> str:
    """Each local cloud's store on the emulator of its kind (Azure's, where Node runs Azurite)."""
    lines = clouds.splitlines()
    out = []
    for line in lines:
        out.append(line)
        for prefix, kind in (("aws", "s3"), ("gcp", "gcs"), ("azure", "azure")):
            if line.strip().startswith(f"- name: {prefix}") and kind in stores:
                out.append(f"    store: {json.dumps(stores[kind].store(f'fermion-{prefix}').model_dump(exclude_none=True))}")
    return "\n".join(out) + "\n"


def dataset_demo(server, stores: dict) -> None:  # noqa: ANN001
    tickets = ROOT / "examples" / "data" / "tickets"
    target = "azure-eastus" if "azure" in stores else "gcp-us-central1"
    step("11. fermion dataset create tickets examples/data/tickets --cloud aws-us-east-1 --encrypt")
    console.print(server.cli("dataset", "create", "tickets", str(tickets), "--cloud", "aws-us-east-1", "--encrypt",
                             "-m", "support tickets as shipped").stdout)
    step("12. fermion dataset dedup tickets: exact and near-duplicate rows out (MinHash), as version 2")
    console.print(server.cli("dataset", "dedup", "tickets").stdout)
    console.print(server.cli("dataset", "diff", "tickets", "1", "2").stdout)
    step(f"13. fermion dataset sync tickets --to {target}: only the chunks its store lacks")
    console.print(server.cli("dataset", "sync", "tickets", "--to", target).stdout)
    console.print(server.cli("dataset", "show", "tickets").stdout)
    step(f"14. a chunk rots in {target}'s store: verify names it, sync repairs it")
    corrupt_one_chunk(server, target)
    console.print(server.cli("dataset", "verify", "tickets", "--cloud", target, check=False).stdout)
    console.print(server.cli("dataset", "sync", "tickets", "--to", target).stdout)
    console.print(server.cli("dataset", "verify", "tickets", "--cloud", target).stdout)


def corrupt_one_chunk(server, cloud: str) -> None:  # noqa: ANN001
    """Flip a byte of one stored chunk, through the store's own client (as bit rot or a bad write would)."""
    import yaml

    from fermion.data import open_store

    config = next(c for c in yaml.safe_load((server.home / "clouds.yaml").read_text())["clouds"] if c["name"] == cloud)
    store = open_store(config["store"], cloud)
    key = sorted(store.list("chunks"))[0]
    blob = bytearray(store.get(key))
    blob[len(blob) // 2] ^= 0xFF
    store.put(key, bytes(blob))


def replicas_table(server, title: str) -> Table:  # noqa: ANN001
    d = server.deployment("emb")
    table = Table("replica", "cloud", "state", "reason", title=f"{title} — deployment emb: {d['status']}")
    for r in d["replica_list"]:
        colour = "green" if r["state"] == "READY" else "yellow"
        table.add_row(r["id"], r["cloud"] or "-", f"[{colour}]{r['state']}[/]", r["reason"])
    return table


def platform_demo(work: Path) -> None:
    step("5. the optimizer over the shipped catalogs: fermion optimize examples/placement/inference.yaml")
    console.print(subprocess.run([sys.executable, "-m", "fermion", "optimize",
                                  str(ROOT / "examples/placement/inference.yaml")],
                                 capture_output=True, text=True).stdout)
    step("6. a Ray cluster (two nodes on this machine) and a Fermion server: three priced local clouds + Ray")
    t0 = time.perf_counter()
    with emulators(work / "stores") as stores, local_ray_cluster({"onprem": 4}, node_memory_gb=8) as cluster, \
            running_server(work / "server", with_stores(CLOUDS, stores) + RAY_CLOUD.format(address=cluster.address)) as server:
        console.print(f"Ray cluster at {cluster.address} up in {cluster.started_in_s:.1f}s; object stores "
                      f"{', '.join(f'{k} on {e.endpoint}' for k, e in stores.items())}; "
                      f"server up in {time.perf_counter() - t0:.1f}s")
        out = server.cli("cloud", "list")
        console.print(out.stdout)
        step("7. fermion deploy examples/embedder/photon.py:Embedder --name emb --replicas 2")
        start = time.perf_counter()
        server.cli("deploy", EMBEDDER, "--name", "emb", "--replicas", "2", "--public")
        console.print(f"2 replicas READY in {time.perf_counter() - start:.1f}s")
        console.print(replicas_table(server, "placed by the optimizer (cheapest clouds, at most half per cloud)"))
        failing = next(r["cloud"] for r in server.deployment("emb")["replica_list"] if r["cloud"] != "onprem-ray")
        step(f"8. traffic through the gateway, then cloud {failing} fails")
        with Load(f"{server.url}/d/emb/embed", {"texts": ["traffic through the gateway"]}, workers=4) as traffic:
            time.sleep(2)
            console.print(f"before the failure: {traffic.ok} requests served, {len(traffic.failures)} failed")
            server.cli("cloud", "fail", failing)
            console.print(f"[red]{failing} is down[/]: its replica was killed")
            t0 = time.perf_counter()
            server.wait_for(lambda api: sum(r["state"] == "READY" and r["cloud"] != failing
                                            for r in api.get("/deployments/emb").json()["replica_list"]) == 2,
                            timeout=300)
            console.print(f"replacement READY after {time.perf_counter() - t0:.1f}s")
            time.sleep(1)
        console.print(replicas_table(server, "after the failure"))
        console.print(f"traffic: [bold]{traffic.ok}[/] requests served, [bold]{len(traffic.failures)}[/] failed "
                      "(the gateway retried around the dead replica)")
        events = server.cli("events", "--limit", "8").stdout
        console.print(events)
        server.cli("cloud", "recover", failing)
        server.cli("deployment", "delete", "emb")
        autoscale_demo(server)
        canary_demo(server)
        dataset_demo(server, stores)
        finetune_demo(server)
        if FULL:
            compress_demo(server)
        else:
            step("17-18. (compression, then serving the smaller model: make demo FULL=1 runs them, a few minutes more)")
        recommender_demo(server, work)
        dashboard_demo(server)


def autoscale_demo(server) -> None:  # noqa: ANN001
    step("9. autoscaling: fermion deploy ... --min-replicas 0 --max-replicas 3; a wake from zero, a load ramp, "
         "back to zero")
    deployed_at = time.time()
    server.cli("deploy", TEXT, "--name", "text", "--public", "--replicas", "0", "--min-replicas", "0",
               "--max-replicas", "3", "--upscale-delay", "1", "--downscale-delay", "4", "--scale-to-zero-delay", "6",
               "--cloud", "aws-us-east-1", "--cloud", "gcp-us-central1", "--cloud", "azure-eastus")
    console.print(f"deployment text: {server.deployment('text')['status']}, no replica running")
    url = f"{server.url}/d/text/upper"
    t0 = time.perf_counter()
    answer = Client(f"{server.url}/d/text", timeout=60).upper(texts=["wake up"])
    console.print(f"first request held by the gateway while a replica started: {answer} after "
                  f"[bold]{time.perf_counter() - t0:.2f}s[/]")
    for workers in (2, 8):
        with Load(url, {"texts": ["load"]}, workers=workers) as load:
            time.sleep(6)
        d = server.deployment("text")
        console.print(f"{workers} clients for 6s: {load.ok} answers, {len(load.failures)} failed; "
                      f"{d['replicas']} replicas wanted, {d['ready']} ready")
    console.print("load stopped; waiting for the scale-down and the stop at zero…")
    server.wait_for(lambda api: api.get("/deployments/text").json()["status"] == "IDLE", timeout=180)
    rows = server.api().get("/events", params={"limit": 500}).json()
    table = Table("time", "decision", title="deployment text: every decision, with its numbers")
    for e in sorted(rows, key=lambda e: e["at"]):
        if e["object_id"] == "text" and e["reason"].startswith("autoscale"):
            table.add_row(time.strftime("%H:%M:%S", time.localtime(e["at"])), e["reason"][len("autoscale "):])
    console.print(table)
    cold = sorted((e["at"], e["reason"]) for e in rows
                  if e["kind"] == "replica" and "cold start" in e["reason"] and e["at"] > deployed_at)
    if cold:  # the wake's replica: the first to start after the deploy
        first = cold[0][1]
        console.print(f"the wake's replica, by phase: {first[first.index('cold start'):].rstrip(')')}")
    server.cli("deployment", "delete", "text")


def canary_demo(server) -> None:  # noqa: ANN001
    step("10. canaries: release 2 (buggy) goes out to 30% of the traffic and is rolled back by its numbers; "
         "release 3 is promoted")
    url = f"{server.url}/d/greeter/greet"
    server.cli("deploy", GREETER, "--name", "greeter", "--public", "--replicas", "2", "--env", "RELEASE=1")
    for release, window in (("2-buggy", 30), ("3", 5)):
        with Load(url, {"name": "Ada"}, workers=4) as load:
            started = time.time()
            server.cli("deploy", GREETER, "--name", "greeter", "--public", "--env", f"RELEASE={release}",
                       "--canary", "30", "--canary-window", str(window), "--canary-min-requests", "40")
            ended = server.wait_for(lambda api: next(
                (e for e in api.get("/events", params={"object_id": "greeter"}).json()
                 if e["new"] in ("ROLLED_BACK", "PROMOTED") and e["at"] > started), None), timeout=300)
            if ended["new"] == "PROMOTED":  # the stable replicas roll over to it, under the same load
                generation = server.deployment("greeter")["generation"]
                server.wait_for(lambda api: all(r["generation"] == generation and r["state"] == "READY"
                                                for r in api.get("/deployments/greeter").json()["replica_list"]),
                                timeout=180)
        shares = {}
        for answer in load.answers:
            shares[answer["release"]] = shares.get(answer["release"], 0) + 1
        colour = "red" if ended["new"] == "ROLLED_BACK" else "green"
        console.print(f"release {release}: [{colour}]{ended['new']}[/] — {ended['reason']}")
        console.print(f"  answers by release: {shares}; failed: {len(load.failures)}"
                      + (" (the canary's own errors, before its verdict)" if load.failures else ""))
    server.cli("deployment", "delete", "greeter")


def finetune_demo(server) -> None:  # noqa: ANN001
    step("15. fermion finetune: MiniLM + LoRA on the tickets dataset, as a job on the cheapest cloud (Ray); it dies mid-run")
    # the cleaned version of the dataset (v2), fetched on the job's cloud from the nearest store that holds it
    server.cli("finetune", "--name", "tickets", "--data", "dataset:tickets@2/train.csv", "--eval-data",
               "dataset:tickets@2/eval.csv", "--epochs", "3", "--checkpoint-every", "5", "--no-follow")
    first = server.wait_for(lambda api: (j := api.get("/jobs/tickets").json())["status"] == "RUNNING" and j)
    cloud = first["attempts"][0]["cloud"]
    server.wait_for(lambda api: any(m.get("step", 0) >= 12 for m in api.get("/jobs/tickets").json()["metrics"]),
                    timeout=300)
    server.cli("cloud", "fail", cloud)
    console.print(f"[red]{cloud} failed at step 12[/], its disk and store with it; the job resumes elsewhere from its "
                  "latest checkpoint (step 10), kept in another cloud's store")
    server.wait_for(lambda api: api.get("/jobs/tickets").json()["status"] in ("SUCCEEDED", "FAILED"), timeout=600)
    server.cli("cloud", "recover", cloud)
    console.print(server.cli("job", "status", "tickets").stdout)
    logs = server.api().get("/jobs/tickets/logs").json()
    for line in "\n".join(logs.values()).splitlines():
        if line.startswith("[fermion] dataset") or line.startswith("[fermion] restored"):
            console.print(line, markup=False)
    step("16. the registered model, its lineage, and serving it: fermion deploy --model tickets:1")
    console.print(server.cli("model", "list").stdout)
    model = json.loads(server.cli("model", "show", "tickets:1", "--json").stdout)
    console.print(f"tickets:1 is {model['artifact_uri'][:18]}…, {model['lineage']['bytes'] / 1e6:.1f} MB kept in the "
                  f"stores of {', '.join(model['lineage']['stores'])} (the job's output went there; the server's "
                  "disk holds no copy); each replica fetches it onto its own cloud")
    deployed = server.cli("deploy", "--model", "tickets:1", "--name", "support-router", "--public",
                          "--timeout", "180", check=False)
    if deployed.returncode != 0 or "READY" not in deployed.stdout:
        console.print(deployed.stdout, deployed.stderr, server.cli("events", "--limit", "30").stdout,
                      server.log.read_text()[-3000:])
        raise SystemExit("the model deployment did not become ready")
    client = Client(f"{server.url}/d/support-router", timeout=60)
    samples = ["My card was charged twice for the same order.", "The app shows a blank screen after the update.",
               "Where is my package? Tracking has not moved in a week.", "I cannot log in, my password reset fails."]
    table = Table("ticket", "label", "probability", title="support-router (through the gateway)")
    for text, answer in zip(samples, client.classify(texts=samples), strict=True):
        table.add_row(text, answer["label"], f"{answer['probabilities'][answer['label']]:.2f}")
    console.print(table)



def recommender_demo(server, work: Path) -> None:  # noqa: ANN001
    """The lifecycle as a pipeline, driven from Python: plan, run, update on new data, migrate."""
    import importlib.util

    import fermion

    spec = importlib.util.spec_from_file_location("recommender_data", RECOMMENDER / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)  # the example's own data generator
    write = generator.write

    pipeline = RECOMMENDER / "pipeline.yaml"
    conn = fermion.connect(server.url, server.token)
    step("19. a recommender as a pipeline, from Python: fermion.connect(); plan; run (train → gates → deploy → promote)")
    write(work / "interactions-v1", 1)
    conn.datasets.create("interactions", work / "interactions-v1", message="400 users, 24 picks each")
    placed = conn.pipelines.plan(pipeline)
    console.print(placed.explanation, markup=False, highlight=False)
    start = time.perf_counter()
    first = conn.pipelines.run(pipeline, wait=True, timeout=600)
    console.print(f"run 1 {first.status} in {time.perf_counter() - start:.1f}s")
    console.print(server.cli("pipeline", "status", "recommender").stdout, markup=False, highlight=False)
    if first.status != "SUCCEEDED":
        raise SystemExit("the recommender pipeline failed")
    answer = Client(f"{server.url}/d/recommender", timeout=30).recommend(user="u7", k=5)
    console.print(f"recommend(u7) → {answer['items']} (served by {answer['model']})")

    step("20. new data: version 2 of interactions lands; the trigger retrains, gates on production, and the "
         "canary rolls the update out under traffic")
    write(work / "interactions-v2", 2)
    with Load(f"{server.url}/d/recommender/recommend", {"user": "u7", "k": 5}, workers=3) as traffic:
        conn.datasets.push("interactions", work / "interactions-v2", message="a week later: more picks, 80 new users")
        deadline = time.monotonic() + 60
        while conn.pipelines.get("recommender").runs < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        second = conn.pipelines.wait("recommender", 2, timeout=600)
    console.print(server.cli("pipeline", "status", "recommender").stdout, markup=False, highlight=False)
    served = sorted({a["model"] for a in traffic.answers})
    console.print(f"traffic during the update: [bold]{traffic.ok}[/] answers from {', '.join(served)}, "
                  f"[bold]{len(traffic.failures)}[/] failed; run 2 {second.status} ({second.trigger})")
    v2 = conn.models.get("recommender:2")
    console.print(f"recommender:2 is {v2.stage}: recall@10 {v2.metrics['recall_at_10']:.3f} vs popularity "
                  f"{v2.metrics['popularity_recall_at_10']:.3f}; lineage: pipeline {v2.lineage['pipeline']}, "
                  f"dataset interactions v{v2.lineage['datasets'][0]['version']}, cloud {v2.lineage['clouds'][-1]}")

    here = sorted(conn.deployment("recommender").get().placed)
    other = next(c for c in ("azure-eastus", "gcp-us-central1", "aws-us-east-1") if c not in here)
    step(f"21. conn.deployment('recommender').migrate(['{other}']): live, one replica at a time, under traffic")
    with Load(f"{server.url}/d/recommender/recommend", {"user": "u3", "k": 5}, workers=3) as traffic:
        moved = conn.deployment("recommender").migrate([other], timeout=300)
    console.print(f"{moved.current} → {moved.target}: {traffic.ok} answers, {len(traffic.failures)} failed "
                  f"(the new replica was READY before the old one drained)")
    conn.close()


def dashboard_demo(server) -> None:  # noqa: ANN001
    step("22. the dashboard: the clouds, deployments and events of this run, live in a browser")
    with server.api() as api:
        overview = api.get("/overview").json()
        graph = api.get("/lineage").json()
        spent = api.get("/costs").json()
    console.print(f"deployments: {len(overview['deployments'])}, replicas: {sum(c['replicas'] for c in overview['clouds'])}, "
                  f"running cost ${overview['cost_per_hour']:.4f}/h, ${spent['total']:.4f} spent so far; "
                  f"needs attention: {'; '.join(overview['attention']) or 'nothing'}")
    labels = {n["id"]: n["label"] for n in graph["nodes"]}
    console.print("lineage (the Models page draws it): " + "; ".join(
        f"{labels[e['from']]} → {labels[e['to']]}" for e in graph["edges"]))
    console.print(f"open [bold]{server.url}/ui[/] and log in with the token [bold]{server.token}[/]")
    if os.environ.get("FERMION_DEMO_KEEP"):
        console.print("the server stays up until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        console.print("(make demo KEEP=1 keeps the server up to look at it)")


def compress_demo(server) -> None:  # noqa: ANN001
    step("17. fermion compress tickets:1 --method auto: int8, and a 3-layer student then int8; the fastest within "
         "1 point of accuracy becomes tickets:2")
    # the CLI waits for the job's own limit, and this call for the CLI's, with room for its own start
    done = server.cli("compress", "tickets:1", "--method", "auto", "--candidates", "quantize,distill+quantize",
                      "--cpus", "2", "--name", "squeeze", "--timeout", "900", check=False, timeout=960)
    console.print(done.stdout, markup=False, highlight=False)
    if done.returncode != 0:
        console.print(done.stderr, server.cli("job", "logs", "squeeze", check=False).stdout)
        raise SystemExit("the compression job failed")
    step("18. fermion deploy --model tickets:2 --name support-router: the same deployment rolls over to the variant")
    server.cli("deploy", "--model", "tickets:2", "--name", "support-router", "--public", "--timeout", "180")
    client = Client(f"{server.url}/d/support-router", timeout=60)
    samples = ["My card was charged twice for the same order.", "Where is my package? Tracking has not moved."]
    for text, answer in zip(samples, client.classify(texts=samples), strict=True):
        console.print(f"{text} → {answer['label']} ({answer['probabilities'][answer['label']]:.2f}), served by tickets:2")
    console.print(server.cli("model", "compare", "tickets:1", "tickets:2").stdout, markup=False, highlight=False)


if __name__ == "__main__":
    main()
