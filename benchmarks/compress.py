"""Claim: Fermion's compressed variants of the fine-tuned tickets classifier are much faster and
smaller than the fp32 torch model at about its accuracy, and at least as fast as the peer.

Baseline: the fp32 torch model itself (MiniLM-L6 + LoRA, merged, fine-tuned on the shipped tickets
in this run), measured by the same harness in the same run: each model in a fresh process
(`fermion.compress.measure`), the same eval set (80 rows), the same threads.

Peer: Hugging Face Optimum's ONNX Runtime quantization does not install here: optimum-onnx 0.1.0
(the newest) requires transformers<4.58 and optimum~=2.1, and Fermion pins transformers 5.23. The
peer is therefore what Optimum runs underneath, by hand: `torch.onnx.export` of the same classifier
and `onnxruntime.quantization.quantize_dynamic` with its defaults, written by this script, not by
Fermion.

Compared: fp32 torch; Fermion's int8 ONNX Runtime variant (`quantize`); Fermion's distilled student
(`distill`, 3 of 6 layers); distilled then quantized (`distill+quantize`); the peer.

Goals for the best variant: >= 2.5x throughput at batch 32 vs fp32 torch; <= 1 point of accuracy
drop; <= 0.3x the size; at least as fast as the peer.

Usage: python benchmarks/compress.py [--threads 2] [--runs 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from fermion.compress import Measured, StepSettings, export_onnx, measure, run_step  # noqa: E402
from fermion.train import FinetuneConfig, finetune  # noqa: E402

DATA = ROOT / "examples" / "data" / "tickets"
console = Console(width=170)


def peer_int8(parent: Path, dest: Path) -> None:
    """The peer's recipe: plain export, ONNX Runtime's dynamic quantization with its defaults."""
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(parent, Path(tmp), [])  # the same graph: torch.onnx.export of the classifier
        dest.mkdir(parents=True)
        for f in Path(tmp).rglob("*"):
            if f.is_file() and f.name != "model.onnx":
                target = dest / f.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.read_bytes())
        quantize_dynamic(str(Path(tmp) / "model.onnx"), str(dest / "model.onnx"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="measurements of each model (medians are shown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        ft = finetune(FinetuneConfig(train_data=str(DATA / "train.csv"), eval_data=str(DATA / "eval.csv"),
                                     output_dir=str(work / "ft"), epochs=3))
        parent = Path(ft.artifact)
        console.print(f"fine-tuned in {time.perf_counter() - started:.0f} s: accuracy {ft.final.accuracy:.3f}")
        from fermion.train import load_labelled

        train = load_labelled(DATA / "train.csv")
        folders = {"fp32 torch": parent}
        settings = StepSettings()
        run_step("quantize", parent, work / "int8", settings, None, [{"method": "quantize"}])
        folders["Fermion int8 (ONNX Runtime)"] = work / "int8"
        started = time.perf_counter()
        run_step("distill", parent, work / "student", settings, train, [{"method": "distill"}])
        console.print(f"distilled in {time.perf_counter() - started:.0f} s")
        folders["Fermion distilled (3 layers)"] = work / "student"
        run_step("quantize", work / "student", work / "student-int8", settings, None, [{"method": "quantize"}])
        folders["Fermion distilled + int8"] = work / "student-int8"
        peer_int8(parent, work / "peer")
        folders["peer: onnxruntime.quantization"] = work / "peer"
        measured: dict[str, list[Measured]] = {name: [] for name in folders}
        for _ in range(args.runs):  # interleaved: each run measures every model once
            for name, folder in folders.items():
                measured[name].append(measure(folder, DATA / "eval.csv", args.threads))
    med = {name: {k: statistics.median(getattr(m, k) for m in runs) for k in
                  ("accuracy", "macro_f1", "size_bytes", "peak_rss_mb", "model_memory_mb", "p50_ms", "p99_ms",
                   "throughput")} for name, runs in measured.items()}
    base, peer = med["fp32 torch"], med["peer: onnxruntime.quantization"]
    table = Table("model", "accuracy", "macro F1", "size", "peak RSS", "model RSS", "p50 ms", "p99 ms",
                  "texts/s @32", "× fp32", "× peer", title=f"compressing the tickets classifier ({args.threads} threads, "
                  f"{args.runs} run(s), medians)")
    for name, m in med.items():
        table.add_row(name, f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", f"{m['size_bytes'] / 1e6:.1f} MB",
                      f"{m['peak_rss_mb']:.0f} MB", f"{m['model_memory_mb']:.0f} MB", f"{m['p50_ms']:.2f}",
                      f"{m['p99_ms']:.2f}", f"{m['throughput']:.0f}", f"{m['throughput'] / base['throughput']:.2f}×",
                      f"{m['throughput'] / peer['throughput']:.2f}×")
    console.print(table)
    fermion = {k: v for k, v in med.items() if k.startswith("Fermion")}
    fit = {k: v for k, v in fermion.items() if (base["accuracy"] - v["accuracy"]) * 100 <= 1.0}
    best_name = max(fit or fermion, key=lambda k: (fit or fermion)[k]["throughput"])
    best = med[best_name]
    goals = [
        ("throughput at batch 32 >= 2.5x fp32 torch", best["throughput"] / base["throughput"], 2.5, True),
        ("accuracy drop <= 1 point", (base["accuracy"] - best["accuracy"]) * 100, 1.0, False),
        ("size <= 0.3x", best["size_bytes"] / base["size_bytes"], 0.3, False),
        ("at least as fast as the peer", best["throughput"] / peer["throughput"], 1.0, True),
    ]
    console.print(f"best variant: {best_name}")
    for label, value, goal, higher in goals:
        met = value >= goal if higher else value <= goal
        console.print(f"  {label}: {value:.2f} ({'met' if met else 'NOT met'})")


if __name__ == "__main__":
    main()
