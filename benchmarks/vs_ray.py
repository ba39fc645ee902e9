"""Claim: Fermion against Ray Serve on the same machine, driven by the same load client
(fermion.testing.closed_loop), interleaved (A B B A) and repeated, medians and ratios printed.

1. Cold start, platform running: `fermion deploy` of the text photon -> its first answer through
   the gateway, against `serve.run` of a deployment of the same handler -> its first answer
   through Ray's proxy (Ray and Serve already started). Goal: Fermion <= 0.5x Ray. Fermion's cloud
   keeps a warm pool of one spare replica process (`warm_pool: 1` in clouds.yaml), as Ray keeps
   its worker processes started; each deploy comes 3 s after the last on both systems (the pool
   refills 2 s after a replica took its spare).
2. Wake from zero: a deployment scaled to zero, its first request -> its answer, on Fermion (the
   text photon, min 0 replicas) and on Ray Serve (the same handler, autoscaling from 0). Goal:
   Fermion <= 0.5 s.
3. The cheapest handler (the text photon's `stats`: count the words of a short text), 16 clients:
   Fermion direct, through the server's gateway, through a gateway process (`fermion gateway
   start`: the data plane alone) and through one of 2 workers (as many as cores) on one port;
   Ray Serve through its proxy. Goals: gateway >= 0.95x direct, and its added p50 at 1 client
   <= 0.4 ms. The CPU each process spends per request says where the limit is.
4. Batching: the MiniLM embedder (examples/embedder, one text per request) at 64 clients, Fermion
   direct and through its gateway, against Ray Serve's @serve.batch with the photon's batch
   options and model code, through its proxy (default) and in its throughput mode
   (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: requests straight to the replica, no proxy; its GC frozen at
   start). Goal: Fermion's p99 <= Ray throughput mode's at equal or better throughput.

Fairness: each system runs alone (the other one stopped: Ray's idle processes take CPU), in
sessions taken in turn (F R R F); Ray's `max_ongoing_requests` is set above the load (64 for 16
clients); access logs are off on both sides (Fermion's gateway and replicas log no access lines);
both run one replica on this machine's cores, torch with the same threads (OMP_NUM_THREADS, set
for both); the batch handler runs off the event loop on both (a worker thread). Needs Ray Serve:
`pip install -c constraints.txt "ray[serve]==2.60.0"` (skipped with a message otherwise).

Usage: python benchmarks/vs_ray.py [--duration 8] [--sessions 2] [--repeats 2] [--part all|serving|batching]"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.batching import SENTENCES  # noqa: E402
from fermion.photon import REPLICA_AUTH_HEADER  # noqa: E402
from fermion.testing import LoadResult, closed_loop, fermion_cmd, running_server, start_gateway, stop, web  # noqa: E402

TEXT_PHOTON = f"{ROOT / 'examples' / 'text' / 'photon.py'}:TextTools"
# one spare replica process kept started (Ray keeps worker processes started too)
CLOUDS = "clouds:\n  - name: local\n    warm_pool: 1\n"
SERVER = "server (gateway)"
GATEWAY_PROCESS = "gateway process"
GATEWAY_WORKERS = "gateway, 2 workers"
PAUSE_S = 3.0  # between two deploys, on both systems: time for Fermion's pool to refill (it waits 2 s)
BODY = {"text": "request through the platform to the handler", "min_length": 2}
EMBEDDER_DIR = ROOT / "examples" / "embedder"
EMBEDDER_PHOTON = f"{EMBEDDER_DIR / 'photon.py'}:Embedder"
BATCH_CLIENTS = 64
TORCH_THREADS = str(os.cpu_count() or 1)  # torch's own default here, set explicitly for both systems


def embed_body(i: int) -> dict:
    return {"texts": [f"{SENTENCES[i % 4]} (request {i})"]}


def word_stats(text: str, min_length: int = 1) -> dict:
    """The text photon's `stats` handler, as Ray's deployment runs it."""
    words = [w for w in text.split() if len(w) >= min_length]
    return {"words": len(words), "chars": len(text), "longest": max(words, key=len, default="")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_answer(url: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < deadline:
            try:
                if http.post(url, json=BODY).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    raise RuntimeError(f"{url} never answered")


class RayServe:
    """Ray and Serve started once; each deployment an app of its own."""

    def __init__(self) -> None:
        import ray
        from ray import serve

        self.serve = serve
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port},
                    logging_config={"enable_access_log": False, "log_level": "WARNING"})

        @serve.deployment(max_ongoing_requests=64, logging_config={"enable_access_log": False})
        class Stats:
            async def __call__(self, request) -> dict:  # noqa: ANN001 - Starlette's request
                body = await request.json()
                return word_stats(body["text"], body.get("min_length", 1))

        self.app = Stats

    def deploy(self, name: str, **options: object) -> str:
        app = self.app.options(**options) if options else self.app
        self.serve.run(app.bind(), name=name, route_prefix=f"/{name}")
        return f"http://127.0.0.1:{self.port}/{name}"

    def running(self, name: str) -> int:
        status = self.serve.status().applications[name]
        return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())

    def delete(self, name: str) -> None:
        self.serve.delete(name)

    def stop(self) -> None:
        import ray

        self.serve.shutdown()
        ray.shutdown()


def fermion_cold(server, name: str) -> float:  # noqa: ANN001 - ServerProc
    start = time.perf_counter()
    subprocess.run(fermion_cmd("deploy", TEXT_PHOTON, "--name", name, "--public", "--no-wait"), env=server.env,
                   check=True, capture_output=True)
    first_answer(f"{server.url}/d/{name}/stats")
    return time.perf_counter() - start


def ray_cold(ray_serve: RayServe, name: str) -> float:
    start = time.perf_counter()
    url = ray_serve.deploy(name)
    first_answer(url)
    return time.perf_counter() - start


def wait(predicate, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for a scale-down to zero")
        time.sleep(0.2)


def wake_once(url: str, at_zero) -> float:  # noqa: ANN001
    wait(at_zero)
    time.sleep(1)  # the last replica's process has ended
    start = time.perf_counter()
    r = web.post(url, json=BODY, timeout=120)
    r.raise_for_status()
    return time.perf_counter() - start


def line(label: str, r: LoadResult) -> str:
    return f"  {label:34} {r.throughput:9.0f} req/s   p50 {r.p50:6.2f} ms   p99 {r.p99:7.2f} ms   errors {r.errors}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load run")
    parser.add_argument("--sessions", type=int, default=2, help="sessions of each system, in turn: F R R F ...")
    parser.add_argument("--repeats", type=int, default=2, help="cold starts and wakes per session")
    parser.add_argument("--batch-duration", type=float, default=12.0, help="seconds per batching load run")
    parser.add_argument("--part", choices=("all", "serving", "batching"), default="all",
                        help="serving: parts 1-3; batching: part 4")
    parser.add_argument("--ray-batching", choices=("default", "throughput"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = TORCH_THREADS  # inherited by Fermion's replicas and Ray's workers
    if args.ray_batching:  # a child process: one Ray batching session, its result as JSON
        print(json.dumps(ray_batching_child(args.ray_batching, args.batch_duration).__dict__))
        return
    try:
        import ray
        import ray.serve  # noqa: F401
    except ImportError as exc:
        print(f"vs_ray: Ray Serve is not installed ({exc}); pip install -c constraints.txt 'ray[serve]==2.60.0'")
        return
    order = [("fermion", "ray"), ("ray", "fermion")]
    if args.part in ("all", "serving"):
        results: dict[str, list[Session]] = {"fermion": [], "ray": []}
        for i in range(args.sessions):
            for system in order[i % 2]:
                results[system].append(fermion_session(args) if system == "fermion" else ray_session(args))
        report(results, args)
    if args.part in ("all", "batching"):
        batching: dict[str, list[LoadResult]] = {}
        for i in range(args.sessions):
            for system in order[i % 2]:
                runs = fermion_batching(args) if system == "fermion" else ray_batching(args)
                for label, result in runs.items():
                    batching.setdefault(label, []).append(result)
        report_batching(batching, args)
    print(f"Ray {ray.__version__}; {os.cpu_count()} cores shared by the load client, the platform and the replica; "
          f"each system ran alone ({args.sessions} sessions each, in turn), the other one stopped")


@dataclass
class Session:
    cold: list[float] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)
    load: dict[tuple[str, int], LoadResult] = field(default_factory=dict)  # (path, clients) -> result
    cpu_us: dict[tuple[str, str], float] = field(default_factory=dict)  # (path, process) -> CPU µs per request


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """CPU seconds of ``pid``, and with ``tree`` of every process under it (a sandboxed replica runs
    below bwrap's init); the server's own without: its replicas are its children too."""
    if not tree:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(proc.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, (0, 0.0))[1]
        todo += [child for child, (parent, _) in stats.items() if parent == current]
    return total


def load_runs(session: Session, targets: dict[str, tuple[str, dict[str, str]]], duration: float,
              watch: dict[str, int] | None = None) -> None:
    """Each target at 1 and 16 clients; with ``watch`` (name -> pid), the CPU each process spent
    per request in the 16-client runs (warm-up included: an upper bound)."""
    for clients in (1, 16):
        for label, (url, headers) in targets.items():
            before = {name: cpu_seconds(pid, tree=name != SERVER) for name, pid in (watch or {}).items()}
            result = closed_loop(url, lambda i: BODY, concurrency=clients, duration_s=duration, headers=headers)
            session.load[(label, clients)] = result
            if clients == 16:
                sent = result.requests * (1 + 1.0 / duration)  # the 1 s warm-up's requests, at the same rate
                for name, pid in (watch or {}).items():
                    spent = cpu_seconds(pid, tree=name != SERVER) - before[name]
                    session.cpu_us[(label, name)] = 1e6 * spent / sent


def fermion_session(args: argparse.Namespace) -> Session:
    out = Session()
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "home", CLOUDS) as server:
        def deploy(name: str, *flags: str) -> None:
            subprocess.run(fermion_cmd("deploy", TEXT_PHOTON, "--name", name, "--public", *flags), env=server.env,
                           check=True, capture_output=True)

        def delete(name: str) -> None:
            subprocess.run(fermion_cmd("deployment", "delete", name), env=server.env, capture_output=True)

        fermion_cold(server, "warm")  # the first deploy of a server warms its paths and the page cache
        delete("warm")
        for i in range(args.repeats):
            time.sleep(PAUSE_S)
            out.cold.append(fermion_cold(server, f"cold{i}"))
            delete(f"cold{i}")
        deploy("sleepy", "--min-replicas", "0", "--max-replicas", "1", "--scale-to-zero-delay", "2")

        def idle() -> bool:
            d = server.deployment("sleepy")
            return d["status"] == "IDLE" and not d["replica_list"]

        out.wakes = [wake_once(f"{server.url}/d/sleepy/stats", idle) for _ in range(args.repeats)]
        delete("sleepy")
        deploy("stats")
        replica = server.deployment("stats")["replica_list"][0]
        with sqlite3.connect(server.home / "fermion.db") as db:  # the replica's address and the gateway's secret
            url, secret = db.execute("SELECT url, auth_secret FROM replicas WHERE id = ?", (replica["id"],)).fetchone()
        # gateway processes apart from the server (the data plane alone): one, and two workers on one port
        gateways = {n: start_gateway(Path(tmp) / f"gw{n}", [server.url], server.token, workers=n) for n in (1, 2)}
        try:
            load_runs(out, {"fermion direct": (f"{url}/stats", {REPLICA_AUTH_HEADER.decode(): secret}),
                            "fermion gateway": (f"{server.url}/d/stats/stats", {}),
                            GATEWAY_PROCESS: (f"{gateways[1].url}/d/stats/stats", {}),
                            GATEWAY_WORKERS: (f"{gateways[2].url}/d/stats/stats", {})}, args.duration,
                      watch={SERVER: server.proc.pid, "replica": server.pid(replica["id"]),
                             GATEWAY_PROCESS: gateways[1].proc.pid, GATEWAY_WORKERS: gateways[2].proc.pid})
        finally:
            for gateway in gateways.values():
                stop(gateway.proc)
    return out


def ray_session(args: argparse.Namespace) -> Session:
    out = Session()
    ray_serve = RayServe()
    try:
        ray_cold(ray_serve, "warm")
        ray_serve.delete("warm")
        for i in range(args.repeats):
            time.sleep(PAUSE_S)
            out.cold.append(ray_cold(ray_serve, f"cold{i}"))
            ray_serve.delete(f"cold{i}")
        url = ray_serve.deploy("sleepy", autoscaling_config={
            "min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0,
            "downscale_delay_s": 2, "downscale_to_zero_delay_s": 2})
        out.wakes = [wake_once(url, lambda: ray_serve.running("sleepy") == 0) for _ in range(args.repeats)]
        ray_serve.delete("sleepy")
        load_runs(out, {"ray serve proxy": (ray_serve.deploy("stats"), {})}, args.duration)
    finally:
        ray_serve.stop()
    return out


def fermion_batching(args: argparse.Namespace) -> dict[str, LoadResult]:
    """The embedder deployed on a running server: 64 clients direct, then through the gateway."""
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "home") as server:
        subprocess.run(fermion_cmd("deploy", EMBEDDER_PHOTON, "--name", "embed", "--public"), env=server.env,
                       check=True, capture_output=True)
        replica = server.deployment("embed")["replica_list"][0]
        with sqlite3.connect(server.home / "fermion.db") as db:
            url, secret = db.execute("SELECT url, auth_secret FROM replicas WHERE id = ?", (replica["id"],)).fetchone()
        targets = {"fermion direct": (f"{url}/embed", {REPLICA_AUTH_HEADER.decode(): secret}),
                   "fermion gateway": (f"{server.url}/d/embed/embed", {})}
        return {label: closed_loop(target, embed_body, concurrency=BATCH_CLIENTS, duration_s=args.batch_duration,
                                   warmup_s=2.0, headers=headers)
                for label, (target, headers) in targets.items()}


def ray_batching(args: argparse.Namespace) -> dict[str, LoadResult]:
    """Ray Serve's default, then its throughput mode, each in a process of its own (Serve reads its
    mode from the environment when its modules load)."""
    out = {}
    for mode, label in (("default", "ray serve proxy"), ("throughput", "ray throughput mode")):
        env = dict(os.environ)
        if mode == "throughput":
            env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        child = subprocess.run([sys.executable, __file__, "--ray-batching", mode,
                                "--batch-duration", str(args.batch_duration)],
                               env=env, capture_output=True, text=True, timeout=900)
        if child.returncode != 0:
            raise RuntimeError(f"the Ray {mode} session failed:\n{child.stderr[-3000:]}")
        out[label] = LoadResult(**json.loads(child.stdout.strip().splitlines()[-1]))
    return out


def ray_batching_child(mode: str, duration: float) -> LoadResult:
    import ray
    from ray import serve

    ingress = free_port()  # throughput mode: the replica serves HTTP itself, from the first free port here
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(ingress)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(ingress + 200)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False, "log_level": "WARNING"})
    sys.path.insert(0, str(EMBEDDER_DIR))
    from photon import Embedder

    options = Embedder.handlers()["embed"][0].batch  # the photon's own batch options, for Ray too
    embedder_dir, threads = str(EMBEDDER_DIR), int(TORCH_THREADS)

    @serve.deployment(max_ongoing_requests=2 * BATCH_CLIENTS, logging_config={"enable_access_log": False})
    class Embed:
        def __init__(self) -> None:
            sys.path.insert(0, embedder_dir)
            import torch
            from photon import Embedder

            torch.set_num_threads(threads)
            self.model = Embedder()
            self.model.init()

        @serve.batch(max_batch_size=options.max_size, batch_wait_timeout_s=options.max_wait_ms / 1000)
        async def embed(self, texts: list[str]) -> list[list[float]]:
            import asyncio

            return await asyncio.to_thread(self.model.encode, texts)  # off the event loop, as Fermion runs it

        async def __call__(self, request) -> list[list[float]]:  # noqa: ANN001 - Starlette's request
            import asyncio

            return list(await asyncio.gather(*(self.embed(t) for t in (await request.json())["texts"])))

    try:
        serve.run(Embed.bind(), name="embed", route_prefix="/embed")
        candidates = [port] if mode == "default" else range(ingress, ingress + 200)
        url = next(u for u in (f"http://127.0.0.1:{p}/embed" for p in candidates) if _answers(u))
        return closed_loop(url, embed_body, concurrency=BATCH_CLIENTS, duration_s=duration, warmup_s=2.0)
    finally:
        serve.shutdown()
        ray.shutdown()


def _answers(url: str) -> bool:
    try:
        return web.post(url, json=embed_body(0), timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def report_batching(runs: dict[str, list[LoadResult]], args: argparse.Namespace) -> None:
    print()
    print(f"batching: the MiniLM embedder, {BATCH_CLIENTS} clients, 1 text per request, {args.batch_duration:g} s "
          f"per run, torch threads {TORCH_THREADS}, the median of {args.sessions} sessions")
    med = {}
    for label, results in runs.items():
        ordered = sorted(results, key=lambda r: r.p99)
        med[label] = ordered[(len(ordered) - 1) // 2]
        print(line(label, med[label]))
    ray_tp = med["ray throughput mode"]
    for label in ("fermion direct", "fermion gateway"):
        r = med[label]
        print(f"  {label} / ray throughput mode: throughput {r.throughput / ray_tp.throughput:.2f}x, "
              f"p99 {r.p99 / ray_tp.p99:.2f}x (goal: p99 <= 1.0x at throughput >= 1.0x)")
    print(f"  fermion gateway / ray serve proxy: throughput {med['fermion gateway'].throughput / med['ray serve proxy'].throughput:.2f}x, "
          f"p99 {med['fermion gateway'].p99 / med['ray serve proxy'].p99:.2f}x")


def report(results: dict[str, list[Session]], args: argparse.Namespace) -> None:
    def all_of(system: str, what: str) -> list[float]:
        return [x for session in results[system] for x in getattr(session, what)]

    print()
    print("cold start: deploy -> first answer, platform running (seconds)")
    cold = {system: all_of(system, "cold") for system in results}
    f_cold, r_cold = statistics.median(cold["fermion"]), statistics.median(cold["ray"])
    print(f"  fermion deploy -> gateway answer   {' '.join(f'{x:.2f}' for x in cold['fermion'])}   median {f_cold:.2f}")
    print(f"  ray serve.run -> proxy answer      {' '.join(f'{x:.2f}' for x in cold['ray'])}   median {r_cold:.2f}")
    print(f"  ratio fermion / ray: {f_cold / r_cold:.2f} (goal <= 0.5)")
    print("wake from zero: first request -> its answer (seconds)")
    wakes = {system: all_of(system, "wakes") for system in results}
    f_wake, r_wake = statistics.median(wakes["fermion"]), statistics.median(wakes["ray"])
    print(f"  fermion (text photon, min 0)       {' '.join(f'{x:.2f}' for x in wakes['fermion'])}   median {f_wake:.2f}"
          " (goal <= 0.5)")
    print(f"  ray serve (autoscaling from 0)     {' '.join(f'{x:.2f}' for x in wakes['ray'])}   median {r_wake:.2f}")
    print(f"  ratio fermion / ray: {f_wake / r_wake:.2f}")
    print(f"the text photon's `stats` handler, {args.duration:g} s per run, the median of {args.sessions} sessions")
    med: dict[tuple[str, int], LoadResult] = {}
    keys = sorted({k for system in results for session in results[system] for k in session.load}, key=lambda k: k[1])
    for key in keys:
        runs = sorted((s.load[key] for system in results for s in results[system] if key in s.load),
                      key=lambda r: r.throughput)
        med[key] = runs[(len(runs) - 1) // 2]
        print(line(f"{key[0]}, {key[1]} client(s)", med[key]))
    d16, r16, d1, r1 = med[("fermion direct", 16)], med[("ray serve proxy", 16)], med[("fermion direct", 1)], \
        med[("ray serve proxy", 1)]
    for path in ("fermion gateway", GATEWAY_PROCESS, GATEWAY_WORKERS):
        g16, g1 = med[(path, 16)], med[(path, 1)]
        print(f"  {path}: / direct at 16 clients {g16.throughput / d16.throughput:.2f} (goal >= 0.95), "
              f"/ ray proxy {g16.throughput / r16.throughput:.2f}; added p50 at 1 client {g1.p50 - d1.p50:.2f} ms "
              f"(goal <= 0.4)")
    print(f"  ray proxy p50 at 1 client {r1.p50:.2f} ms")
    cpu: dict[tuple[str, str], list[float]] = {}
    for session in results["fermion"]:
        for key, us in session.cpu_us.items():
            cpu.setdefault(key, []).append(us)
    print("  CPU per request at 16 clients (medians; the load client takes the rest of the two cores):")
    for (path, process), values in sorted(cpu.items()):
        print(f"    {path:18} {process:18} {statistics.median(values):6.0f} µs")


if __name__ == "__main__":
    main()
