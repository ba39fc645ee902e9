"""Claim: Fermion's dataset sync moves a dataset between two clouds' object stores about as fast as
`rclone sync`, and a 1% change costs about the changed bytes: an incremental sync takes <= 5% of
the first copy's time, moves <= 2x the changed bytes, and the store grows by about the changed
bytes (a new version, not a second copy).

Baseline, in the same run and on the same stores: `rclone sync` (v1.60; --transfers 16
--checkers 16, matching Fermion's 16 workers) and `aws s3 sync` (aws-cli v1; 16 concurrent
requests). The first copy runs twice, in turn (Fermion then rclone, then rclone then Fermion), and
its ratio is of the medians. The stores are two moto S3 servers on loopback ("cloud A" and "cloud B", different
endpoints, so a copy A -> B crosses services: no server-side copy). Each tool writes buckets of
its own, created empty for the full copies.

Bytes moved are counted the same way for every tool: the bytes the *target* server read from its
sockets. /proc/PID/io's rchar cannot tell them (Linux counts read(), not recv(), there), so each
moto process gets a small sitecustomize (through PYTHONPATH, from a temporary folder) that counts
its socket bytes and writes them out on SIGUSR1; rchar is still read, to show that moto reads no
files meanwhile (its objects are kept in memory: MOTO_S3_DEFAULT_KEY_BUFFER_SIZE is raised so
that none spills to a temporary file). Requests are counted from moto's request log.

Usage: python benchmarks/sync.py [--scale 1.0] [--seed 7]
(--scale multiplies the dataset's size and file count: --scale 0.05 for a quick trial)"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fermion.data import DatasetView, ObjectStore, open_store, plan_folder, push_folder, sync  # noqa: E402

from fermion.testing import start_s3_emulator  # noqa: E402

MB = 1e6
FILES, TOTAL = 2000, 1 << 30
SIZE_MIN, SIZE_MAX = 1 << 10, 16 << 20
EDIT, APPEND = 4096, 64 << 10
WORKERS = 16
DATASET = "bench"
FIRST_COPY, FIRST_COPY_AGAIN = "first copy A → B", "first copy A → B, again"
KEY_BUFFER = 1 << 30  # moto keeps an object in memory up to this size (its default spills >5 MB to disk)

# Loaded into each moto process through PYTHONPATH: counts the bytes its sockets receive and send,
# and writes "seq rx tx" to $FERMION_BENCH_COUNTERS on SIGUSR1.
SITECUSTOMIZE = r'''
import os, signal, socket, threading
_out = os.environ.get("FERMION_BENCH_COUNTERS")
if _out:
    _lock = threading.Lock()
    _n = {"rx": 0, "tx": 0, "seq": 0}

    def _count(name, kind, length):
        orig = getattr(socket.socket, name)
        def counted(self, *args, **kwargs):
            result = orig(self, *args, **kwargs)
            with _lock:
                _n[kind] += length(result, args)
            return result
        setattr(socket.socket, name, counted)

    _count("recv", "rx", lambda r, a: len(r))
    _count("recv_into", "rx", lambda r, a: r)
    _count("send", "tx", lambda r, a: r)
    _count("sendall", "tx", lambda r, a: memoryview(a[0]).nbytes)

    def _dump(signum, frame):
        _n["seq"] += 1
        tmp = f"{_out}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{_n['seq']} {_n['rx']} {_n['tx']}")
        os.replace(tmp, _out)

    signal.signal(signal.SIGUSR1, _dump)
'''
REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)?(GET|PUT|HEAD|POST|DELETE) ')


# -- the two clouds ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    rx: int
    tx: int
    rchar: int
    log_at: int


class Cloud:
    """One moto server, with its socket-byte counters and request log."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.counters = tmp / f"counters-{name}.txt"
        self._seq = 0
        hook = tmp / "sitecustomize"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "FERMION_BENCH_COUNTERS", "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE")}
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), saved["PYTHONPATH"]) if p)
        os.environ["FERMION_BENCH_COUNTERS"] = str(self.counters)
        os.environ["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(KEY_BUFFER)
        try:
            self.emu = start_s3_emulator(tmp)  # from the main thread: its parent-death signal follows this thread
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.pid = self.emu.proc.pid
        self.options = self.emu.store("x").options  # moto's key and secret
        self.snapshot()  # the hook is loaded, or this fails now rather than mid-run

    @property
    def endpoint(self) -> str:
        return self.emu.endpoint

    def store(self, bucket: str) -> ObjectStore:
        return open_store(self.emu.store(bucket), name=f"{self.name}:{bucket}")

    def snapshot(self) -> Snapshot:
        self._seq += 1
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError, ValueError):
                seq, rx, tx = (int(x) for x in self.counters.read_text().split())
                if seq >= self._seq:
                    break
            if time.monotonic() > deadline or self.emu.proc.poll() is not None:
                raise RuntimeError(f"moto {self.name} (pid {self.pid}) did not report its byte counters; "
                                   f"log tail:\n{self.emu.output()[-2000:]}")
            time.sleep(0.005)
        self._seq = seq
        io = dict(line.split(": ") for line in Path(f"/proc/{self.pid}/io").read_text().splitlines())
        log_at = self.emu.log.stat().st_size if self.emu.log else 0
        return Snapshot(rx, tx, int(io["rchar"]), log_at)

    def requests(self, since: Snapshot, until: Snapshot) -> dict[str, int]:
        if not self.emu.log:
            return {}
        with open(self.emu.log, "rb") as f:
            f.seek(since.log_at)
            text = f.read(until.log_at - since.log_at).decode(errors="replace")
        out: dict[str, int] = {}
        for m in REQUEST.finditer(text):
            out[m.group(1)] = out.get(m.group(1), 0) + 1
        return out

    def stop(self) -> None:
        self.emu.stop()


def bucket_bytes(store: ObjectStore) -> tuple[int, int]:
    """(objects, bytes) of every object in the store's bucket. ObjectStore.list("") refuses the empty
    prefix, so this lists through the store's filesystem client."""
    store.ensure()
    store.fs.invalidate_cache()
    found = store.fs.find(store.root, detail=True)
    sizes = [int(i.get("size") or 0) for i in found.values() if i.get("type") != "directory"]
    return len(sizes), sum(sizes)


# -- the dataset ------------------------------------------------------------------------------


def make_dataset(root: Path, files: int, total: int, rng: random.Random) -> dict[str, int]:
    """``files`` files of log-uniform sizes (SIZE_MIN..SIZE_MAX, then scaled to add up to ``total``),
    random bytes, in 20 folders. Returns relative path -> size."""
    raw = [math.exp(rng.uniform(math.log(SIZE_MIN), math.log(SIZE_MAX))) for _ in range(files)]
    factor = total / sum(raw)
    shape = {}
    for i, r in enumerate(raw):
        rel = f"d{i % 20:02d}/f{i:05d}.bin"
        size = max(1, int(r * factor))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 8 << 20)
                f.write(rng.randbytes(n))
                left -= n
        shape[rel] = size
    return shape


@dataclass
class Change:
    edited: list[str] = field(default_factory=list)
    appended: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    changed_bytes: int = 0  # total size, after the change, of the changed and new files
    edited_bytes: int = 0  # bytes actually overwritten, appended or created

    @property
    def files(self) -> int:
        return len(self.edited) + len(self.appended) + len(self.new)


def change_dataset(root: Path, shape: dict[str, int], rng: random.Random) -> Change:
    """1% of the files: half edited in the middle (EDIT bytes overwritten), some appended (APPEND
    bytes), one or two new files (sizes from the dataset's own distribution)."""
    n = max(4, round(len(shape) * 0.01))
    new = 2 if n >= 10 else 1
    edited = n // 2
    picks = rng.sample(sorted(shape), n - new)
    ch = Change(edited=picks[:edited], appended=picks[edited:])
    for rel in ch.edited:
        size = shape[rel]
        length = min(EDIT, max(1, size // 2))
        with open(root / rel, "r+b") as f:
            f.seek((size - length) // 2)
            f.write(rng.randbytes(length))
        ch.edited_bytes += length
    for rel in ch.appended:
        with open(root / rel, "ab") as f:
            f.write(rng.randbytes(APPEND))
        ch.edited_bytes += APPEND
    sizes = sorted(shape.values())
    for i in range(new):
        rel = f"d{i:02d}/new{i:02d}.bin"
        size = rng.choice(sizes)
        (root / rel).write_bytes(rng.randbytes(size))
        ch.new.append(rel)
        ch.edited_bytes += size
    ch.changed_bytes = sum((root / rel).stat().st_size for rel in ch.edited + ch.appended + ch.new)
    return ch


# -- the tools --------------------------------------------------------------------------------


class Tools:
    """rclone and aws, configured by environment (rclone) and a temporary config file (aws, for
    its concurrency), on the two clouds; every command bounded by a timeout."""

    def __init__(self, a: Cloud, b: Cloud, tmp: Path, timeout: float) -> None:
        self.rclone, self.aws = shutil.which("rclone"), shutil.which("aws")
        self.timeout = timeout
        self.current: subprocess.Popen[bytes] | None = None
        key, secret = a.options["key"], a.options["secret"]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
        self.rclone_env = {**base, "RCLONE_CONFIG": str(tmp / "rclone-none.conf")}
        for name, cloud in (("A", a), ("B", b)):
            self.rclone_env.update({
                f"RCLONE_CONFIG_{name}_TYPE": "s3", f"RCLONE_CONFIG_{name}_PROVIDER": "Other",
                f"RCLONE_CONFIG_{name}_ENDPOINT": cloud.endpoint, f"RCLONE_CONFIG_{name}_REGION": "us-east-1",
                f"RCLONE_CONFIG_{name}_ACCESS_KEY_ID": cloud.options["key"],
                f"RCLONE_CONFIG_{name}_SECRET_ACCESS_KEY": cloud.options["secret"],
                f"RCLONE_CONFIG_{name}_ENV_AUTH": "false"})
        config = tmp / "aws-config"
        config.write_text(f"[default]\nregion = us-east-1\ns3 =\n    max_concurrent_requests = {WORKERS}\n")
        self.aws_env = {**base, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(config),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-no-credentials"),
                        "AWS_EC2_METADATA_DISABLED": "true"}
        self.endpoint = {"A": a.endpoint, "B": b.endpoint}

    def versions(self) -> dict[str, str]:
        out = {}
        for name, exe, env in (("rclone", self.rclone, self.rclone_env), ("aws", self.aws, self.aws_env)):
            if exe:
                r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60, env=env)
                out[name] = (r.stdout + r.stderr).strip().splitlines()[0] if r.returncode == 0 else "?"
        return out

    def run(self, argv: list[str], env: dict[str, str]) -> None:
        with tempfile.TemporaryFile() as log:
            self.current = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                code = self.current.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.current.kill()
                self.current.wait(10)
                raise RuntimeError(f"{argv[0]} ran past {self.timeout:.0f} s: {' '.join(argv[1:])}") from None
            finally:
                self.current = None
            if code != 0:
                log.seek(0)
                raise RuntimeError(f"{' '.join(argv)} exited {code}:\n{log.read().decode(errors='replace')[-3000:]}")

    def rclone_cmd(self, verb: str, src: str, dst: str) -> None:
        self.run([self.rclone, verb, src, dst, "--transfers", str(WORKERS), "--checkers", str(WORKERS), "-q"],
                 self.rclone_env)

    def aws_cmd(self, *args: str, cloud: str = "A") -> None:
        quiet = ["--only-show-errors"] if args[0] == "sync" else []
        self.run([self.aws, "s3", *args, "--endpoint-url", self.endpoint[cloud], *quiet], self.aws_env)

    def kill_current(self) -> None:
        proc = self.current
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Row:
    phase: str
    tool: str
    seconds: float | None = None
    moved: int | None = None  # bytes the target server received
    source_out: int | None = None  # bytes the source server sent (store-to-store rows)
    requests: dict[str, int] = field(default_factory=dict)  # at the target
    source_requests: dict[str, int] = field(default_factory=dict)
    reported: int | None = None  # Fermion's TransferReport.bytes_sent
    note: str = ""


class Bench:
    def __init__(self, a: Cloud, b: Cloud) -> None:
        self.a, self.b = a, b
        self.rows: list[Row] = []
        self.rchar = 0  # bytes moto read from files during measured rows

    def measure(self, phase: str, tool: str, target: Cloud, fn, source: Cloud | None = None) -> Row:  # noqa: ANN001
        row = Row(phase, tool)
        t0, s0 = target.snapshot(), source.snapshot() if source else None
        start = time.perf_counter()
        result = fn()
        row.seconds = time.perf_counter() - start
        t1, s1 = target.snapshot(), source.snapshot() if source else None
        row.moved = t1.rx - t0.rx
        row.requests = target.requests(t0, t1)
        self.rchar += t1.rchar - t0.rchar
        if source:
            row.source_out = s1.tx - s0.tx
            row.source_requests = source.requests(s0, s1)
            self.rchar += s1.rchar - s0.rchar
        if result is not None and hasattr(result, "bytes_sent"):
            row.reported = result.bytes_sent
        self.rows.append(row)
        print(f"  {phase:26} {tool:8} {row.seconds:8.2f} s  {row.moved / MB:9.1f} MB in", flush=True)
        return row

    def skip(self, phase: str, tool: str, note: str) -> Row:
        row = Row(phase, tool, note=note)
        self.rows.append(row)
        return row


def fmt_requests(req: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(req.items())) if req else ""


def ratio_line(name: str, value: float | None, goal: float | None, detail: str) -> str:
    if value is None:
        return f"  {name:62} {'n/a':>8}   {detail}"
    verdict = "" if goal is None else (" goal met" if value <= goal else " goal MISSED")
    goal_s = "" if goal is None else f" (goal <= {goal:g})"
    return f"  {name:62} {value:8.3f}{goal_s}{verdict}   {detail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the dataset's size and file count")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    files = max(20, round(FILES * args.scale))
    total = int(TOTAL * args.scale)
    timeout = 300 + 1800 * args.scale  # per tool command
    rng = random.Random(args.seed)
    clouds: list[Cloud] = []
    tools: Tools | None = None
    timed_out = threading.Event()

    def watchdog() -> None:  # the whole run's bound: stop everything, so the calls under way fail
        timed_out.set()
        print(f"sync benchmark: ran past {deadline:.0f} s; stopping the tools and the servers", file=sys.stderr, flush=True)
        if tools:
            tools.kill_current()
        for c in clouds:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, signal.SIGKILL)

    deadline = 900 + 6000 * args.scale
    timer = threading.Timer(deadline, watchdog)
    timer.daemon = True
    timer.start()
    try:
        with tempfile.TemporaryDirectory(prefix="fermion-sync-bench-") as tmp_s:
            tmp = Path(tmp_s)
            data = tmp / "data"
            t = time.perf_counter()
            shape = make_dataset(data, files, total, rng)
            sizes = sorted(shape.values())
            size1 = sum(sizes)
            print(f"dataset: {len(sizes)} files, {size1 / MB:.1f} MB (sizes {sizes[0]} B .. {sizes[-1] / MB:.2f} MB, "
                  f"median {sizes[len(sizes) // 2] / 1e3:.0f} kB; random bytes, seed {args.seed}), "
                  f"written in {time.perf_counter() - t:.1f} s")
            try:
                clouds.append(Cloud("A", tmp))
                clouds.append(Cloud("B", tmp))
                a, b = clouds
                tools = Tools(a, b, tmp, timeout)
                run(a, b, tools, data, shape, size1, rng, args, tmp)
            finally:
                for c in clouds:
                    c.stop()
    finally:
        timer.cancel()
    if timed_out.is_set():
        sys.exit(1)


def run(a: Cloud, b: Cloud, tools: Tools, data: Path, shape: dict[str, int], size1: int, rng: random.Random,
        args: argparse.Namespace, tmp: Path) -> None:
    load = list(os.getloadavg())
    versions = tools.versions()
    bench = Bench(a, b)
    for bucket, cloud in (("fermion", a), ("fermion", b), ("fermion-2", b)):
        cloud.store(bucket).ensure()  # bucket creation is not part of a copy (aws needs its buckets made beforehand too)

    def view(cloud: Cloud, bucket: str = "fermion") -> DatasetView:
        """A view through a store opened afresh (no client caches), as a new `fermion` process would have."""
        return DatasetView(cloud.store(bucket), DATASET)

    fa = a.store("fermion")
    has_rclone, has_aws = tools.rclone is not None, tools.aws is not None
    missing = "n/a (not installed)"
    one_endpoint = "n/a: one endpoint per command"
    if has_aws:
        tools.aws_cmd("mb", "s3://aws", cloud="A")
    local = str(data)

    print(f"measuring ({os.cpu_count()} cores; moto A {a.endpoint}, moto B {b.endpoint})", flush=True)
    # 1. first copy: the dataset into A, then A -> B
    up1 = "upload local → A"
    # Fermion keeps what it read of the folder, as `fermion dataset push` does (unchanged files are not re-read)
    plan_cache = data.parent / "fermion-plan.json"
    bench.measure(up1, "fermion", a, lambda: push_folder(view(a), data, message="v1", cache=plan_cache)[1])
    m1 = view(a).versions()[-1]
    if has_rclone:
        bench.measure(up1, "rclone", a, lambda: tools.rclone_cmd("copy", local, "A:rclone"))
    else:
        bench.skip(up1, "rclone", missing)
    if has_aws:
        bench.measure(up1, "aws", a, lambda: tools.aws_cmd("sync", local, "s3://aws"))
    else:
        bench.skip(up1, "aws", missing)

    # twice, in turn (fermion rclone, then rclone fermion), each into empty buckets of B: whoever goes
    # second finds B holding more, and the machine's pace drifts; the ratio takes the medians
    for cp1, order, suffix in ((FIRST_COPY, ("fermion", "rclone"), ""), (FIRST_COPY_AGAIN, ("rclone", "fermion"), "-2")):
        for tool in order:
            if tool == "fermion":
                bench.measure(cp1, "fermion", b, lambda: sync([view(a)], view(b, f"fermion{suffix}")), source=a)
                assert view(b, f"fermion{suffix}").digests() == [m1.digest]
            elif has_rclone:
                bench.measure(cp1, "rclone", b, lambda: tools.rclone_cmd("sync", "A:rclone", f"B:rclone{suffix}"),
                              source=a)
                got = bucket_bytes(b.store(f"rclone{suffix}"))
                assert got == (len(shape), size1), (got, len(shape), size1)
            else:
                bench.skip(cp1, "rclone", missing)
        bench.skip(cp1, "aws", one_endpoint if has_aws else missing)

    grown_before = {"fermion": bucket_bytes(fa)}
    if has_rclone:
        grown_before["rclone"] = bucket_bytes(a.store("rclone"))
    if has_aws:
        grown_before["aws"] = bucket_bytes(a.store("aws"))

    # 2. incremental: 1% of the files change
    ch = change_dataset(data, shape, rng)
    print(f"changed {ch.files} files ({len(ch.edited)} edited in the middle, {len(ch.appended)} appended, "
          f"{len(ch.new)} new): {ch.changed_bytes / MB:.2f} MB of changed files, "
          f"{ch.edited_bytes / MB:.3f} MB actually written", flush=True)
    up2 = "incremental upload → A"
    bench.measure(up2, "fermion", a, lambda: push_folder(view(a), data, parent=m1.digest, message="v2",
                                                         cache=plan_cache)[1])
    m2 = next(m for m in view(a).versions() if m.digest != m1.digest)
    if has_rclone:
        bench.measure(up2, "rclone", a, lambda: tools.rclone_cmd("sync", local, "A:rclone"))
    else:
        bench.skip(up2, "rclone", missing)
    if has_aws:
        bench.measure(up2, "aws", a, lambda: tools.aws_cmd("sync", local, "s3://aws"))
    else:
        bench.skip(up2, "aws", missing)

    cp2 = "incremental sync A → B"
    bench.measure(cp2, "fermion", b, lambda: sync([view(a)], view(b)), source=a)
    assert sorted(view(b).digests()) == sorted([m1.digest, m2.digest])
    if has_rclone:
        bench.measure(cp2, "rclone", b, lambda: tools.rclone_cmd("sync", "A:rclone", "B:rclone"), source=a)
        size2 = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
        got = bucket_bytes(b.store("rclone"))
        assert got == (len(shape) + len(ch.new), size2), got
    else:
        bench.skip(cp2, "rclone", missing)
    bench.skip(cp2, "aws", one_endpoint if has_aws else missing)

    grown = {"fermion": bucket_bytes(fa)[1] - grown_before["fermion"][1]}
    if has_rclone:
        grown["rclone"] = bucket_bytes(a.store("rclone"))[1] - grown_before["rclone"][1]
    if has_aws:
        grown["aws"] = bucket_bytes(a.store("aws"))[1] - grown_before["aws"][1]

    # where Fermion's time goes (after the measured rows, page cache warm as it was for them)
    t = time.perf_counter()
    plan = plan_folder(data)
    plan_s = time.perf_counter() - t
    t = time.perf_counter()
    view(b).present()
    list_s = time.perf_counter() - t

    report(bench, versions, shape, size1, ch, grown, plan_s, len(plan.where), list_s, load)


def report(bench: Bench, versions: dict[str, str], shape: dict[str, int], size1: int, ch: Change,
           grown: dict[str, int], plan_s: float, chunks: int, list_s: float, load: list[float]) -> None:
    print()
    print(f"machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}; "
          f"two moto S3 servers on loopback (Python; they share the cores with the tools); "
          f"1-min load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"tools: fermion ({WORKERS} workers), " + ", ".join(f"{v}" for v in versions.values())
          + f"; rclone with --transfers {WORKERS} --checkers {WORKERS}, aws with max_concurrent_requests {WORKERS}")
    print(f"dataset: {len(shape)} files, {size1} bytes ({size1 / MB:.1f} MB); change: {ch.files} files, "
          f"{ch.changed_bytes} bytes of changed files, {ch.edited_bytes} bytes written")
    print()
    head = (f"{'phase':26} {'tool':8} {'seconds':>9} {'MB in at target':>16} {'MB out of A':>12} "
            f"{'report MB':>10}  requests at target | at source A")
    print(head)
    print("-" * len(head))
    for r in bench.rows:
        if r.seconds is None:
            print(f"{r.phase:26} {r.tool:8} {r.note}")
            continue
        src = f"{r.source_out / MB:12.1f}" if r.source_out is not None else f"{'':12}"
        rep = f"{r.reported / MB:10.1f}" if r.reported is not None else f"{'':10}"
        at_source = f" | {fmt_requests(r.source_requests)}" if r.source_out is not None else ""
        print(f"{r.phase:26} {r.tool:8} {r.seconds:9.2f} {r.moved / MB:16.2f} {src} {rep}  "
              f"{fmt_requests(r.requests)}{at_source}")
    print("each fermion row opens its stores afresh, as a new `fermion` process would (rclone and aws start cold too);")
    print("the first copy ran twice, in turn (fermion then rclone, then rclone then fermion), into empty buckets")
    print()
    rows = {(r.phase, r.tool): r for r in bench.rows if r.seconds is not None}

    def get(phase: str, tool: str) -> Row | None:
        if phase != FIRST_COPY:
            return rows.get((phase, tool))
        runs = [r for r in (rows.get((FIRST_COPY, tool)), rows.get((FIRST_COPY_AGAIN, tool))) if r]
        if not runs:
            return None
        return Row(phase, tool, seconds=statistics.median(r.seconds for r in runs), moved=runs[0].moved,
                   note=" and ".join(f"{r.seconds:.2f}" for r in runs))  # the median of both runs

    def best_peer(phase: str) -> Row | None:
        peers = [r for t in ("rclone", "aws") if (r := get(phase, t))]
        return min(peers, key=lambda r: r.seconds) if peers else None

    fu1, fc1 = get("upload local → A", "fermion"), get(FIRST_COPY, "fermion")
    fu2, fc2 = get("incremental upload → A", "fermion"), get("incremental sync A → B", "fermion")
    full_check = [r for r in (fu1, rows.get((FIRST_COPY, "fermion")), rows.get((FIRST_COPY, "rclone")),
                              get("upload local → A", "rclone"),
                              get("upload local → A", "aws")) if r]
    print("ratios")
    peer = best_peer(FIRST_COPY)
    print(ratio_line("first copy A → B: fermion / best peer time (medians)", fc1.seconds / peer.seconds if peer else None,
                     1.0, f"{fc1.seconds:.2f} s ({fc1.note}) vs {peer.tool} {peer.seconds:.2f} s ({peer.note})" if peer
                     else "no peer installed"))
    peer = best_peer("upload local → A")
    print(ratio_line("upload local → A: fermion / best peer time", fu1.seconds / peer.seconds if peer else None, None,
                     f"{fu1.seconds:.2f} s vs {peer.tool} {peer.seconds:.2f} s (preparation; no goal)" if peer
                     else "no peer installed"))
    print(ratio_line("incremental sync A → B / first copy A → B (fermion)", fc2.seconds / fc1.seconds, 0.05,
                     f"{fc2.seconds:.2f} s / {fc1.seconds:.2f} s"))
    print(ratio_line("incremental upload / first upload (fermion)", fu2.seconds / fu1.seconds, 0.05,
                     f"{fu2.seconds:.2f} s / {fu1.seconds:.2f} s; chunking+hashing the folder alone: {plan_s:.2f} s"))
    for label, r in (("incremental sync A → B", fc2), ("incremental upload → A", fu2)):
        print(ratio_line(f"{label}: fermion bytes in / changed bytes", r.moved / ch.changed_bytes, 2.0,
                         f"{r.moved / MB:.2f} MB / {ch.changed_bytes / MB:.2f} MB"))
        print(ratio_line(f"{label}: fermion bytes in / bytes written", r.moved / ch.edited_bytes, None,
                         f"{r.moved / MB:.2f} MB / {ch.edited_bytes / MB:.3f} MB (chunks are ~1.25 MB: no goal)"))
    for tool in ("rclone", "aws"):
        r = get("incremental upload → A", tool)
        if r:
            print(ratio_line(f"incremental upload → A: {tool} bytes in / changed bytes", r.moved / ch.changed_bytes,
                             None, f"{r.moved / MB:.2f} MB (whole files; no goal)"))
    print(ratio_line("store growth v1 → v2 / changed bytes (fermion)", grown["fermion"] / ch.changed_bytes, 2.0,
                     f"A grew {grown['fermion'] / MB:.2f} MB and keeps both versions"))
    for tool in ("rclone", "aws"):
        if tool in grown:
            print(ratio_line(f"store growth / changed bytes ({tool})", grown[tool] / ch.changed_bytes, None,
                             f"{grown[tool] / MB:.2f} MB: overwritten in place, the old version is gone"))
    print()
    print("checks")
    for r in full_check:
        print(f"  {r.phase} ({r.tool}): target received {r.moved / size1:.3f}x the dataset's bytes")
    print(f"  moto read {bench.rchar} bytes from files (rchar) during the measured rows: objects in memory, "
          "so bytes in = request bytes from sockets")
    print(f"  fermion: {chunks} distinct chunks of the dataset; listing B's chunks takes {list_s:.2f} s")


if __name__ == "__main__":
    main()
