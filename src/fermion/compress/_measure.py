"""Measures one model folder in a process of its own, so that its peak memory is its own:
``python -m fermion.compress._measure FOLDER --eval FILE --threads N`` prints one JSON line.

Figures: accuracy, macro F1 and loss on the eval set, size on disk, peak resident memory (and the
part of it the model adds to the interpreter with its imports), p50/p99 latency at batch 1 and
throughput at batch 32, with ``threads`` compute threads."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..errors import UserInputError

LATENCY_CALLS = 100
THROUGHPUT_MIN_S = 1.5
THROUGHPUT_MIN_BATCHES = 6
BATCH = 32


class Figures(BaseModel):
    """What one run of a model measured (read back from a job's output: checked, bounded)."""

    format: str = Field(max_length=32)
    accuracy: float = Field(ge=0, le=1)
    macro_f1: float = Field(ge=0, le=1)
    loss: float = Field(ge=0)
    size_bytes: int = Field(ge=0)
    peak_rss_mb: float = Field(ge=0)
    model_memory_mb: float = Field(ge=0)
    p50_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    throughput: float = Field(ge=0, description="texts per second at batch 32")
    threads: int = Field(ge=1, le=4096)
    eval_rows: int = Field(ge=0)


class Measured(Figures):
    predictions: list[int]  # the label index of each eval row: the agreement with the parent is counted on them


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    # VmHWM is this process's own high-water mark; ru_maxrss is not: Linux carries it across exec,
    # so a child of a big parent would report the parent's peak
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_here(folder: Path, texts: list[str], labels: list[str], threads: int) -> Measured:
    import numpy as np

    import onnxruntime  # noqa: F401 - imported before the baseline, like torch: the model's share is its own
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from ..train import macro_f1
    from ._model import Predictor, folder_bytes

    before = _status_mb("VmRSS") or 0.0
    model = Predictor(folder, threads=threads)
    label_ids = {x: i for i, x in enumerate(model.labels)}
    unknown = sorted(set(labels) - set(label_ids))
    if unknown:
        raise UserInputError(f"the eval data has labels the model does not know: {', '.join(unknown[:5])}")
    logits = np.concatenate([model.logits(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    truth = np.array([label_ids[x] for x in labels])
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    preds = logits.argmax(axis=1)
    for t in texts[:5]:  # warm up: first calls allocate and (ONNX Runtime) pick kernels
        model.logits([t])
    times = []
    for i in range(LATENCY_CALLS):
        started = time.perf_counter()
        model.logits([texts[i % len(texts)]])
        times.append(time.perf_counter() - started)
    batches = [[texts[(j * BATCH + k) % len(texts)] for k in range(BATCH)] for j in range(4)]
    model.logits(batches[0])
    done, started = 0, time.perf_counter()
    while done < THROUGHPUT_MIN_BATCHES or time.perf_counter() - started < THROUGHPUT_MIN_S:
        model.logits(batches[done % len(batches)])
        done += 1
    elapsed = time.perf_counter() - started
    peak = _peak_mb()
    times.sort()
    return Measured(
        format=model.format, accuracy=float((preds == truth).mean()),
        macro_f1=macro_f1(preds.tolist(), truth.tolist(), len(model.labels)),
        loss=float(-log_probs[np.arange(len(truth)), truth].mean()), size_bytes=folder_bytes(folder),
        peak_rss_mb=round(peak, 1), model_memory_mb=round(max(0.0, peak - before), 1),
        p50_ms=statistics.median(times) * 1000, p99_ms=times[min(len(times) - 1, int(0.99 * len(times)))] * 1000,
        throughput=done * BATCH / elapsed, threads=threads, eval_rows=len(texts), predictions=preds.tolist())


def measure(folder: Path, eval_file: Path, threads: int, timeout_s: float = 900) -> Measured:
    """Measure ``folder`` in a fresh interpreter (its peak memory is then the model's and its imports')."""
    proc = subprocess.run([sys.executable, "-m", "fermion.compress._measure", str(folder), "--eval", str(eval_file),
                           "--threads", str(threads)], capture_output=True, text=True, timeout=timeout_s)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {folder.name} failed: {proc.stderr.strip()[-2000:]}")
    return Measured.model_validate_json(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder")
    parser.add_argument("--eval", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a job's log: lines, not progress bars
    from ..train import load_labelled

    data = load_labelled(args.eval)
    result: Any = measure_here(Path(args.folder), data.texts, data.labels, args.threads)
    print(json.dumps(result.model_dump()), flush=True)


if __name__ == "__main__":
    main()
