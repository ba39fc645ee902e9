"""`fermion compress` and the registry's views of measured variants (`model show`, `model compare`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._jobs import model_app
from ._platform import bars, connect
from ._output import console, print_json, print_table

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def compress(
    model: Annotated[str, typer.Argument(help="The parent: NAME:VERSION of the registry.")],
    method: Annotated[str, typer.Option(help="quantize, onnx, prune, distill, auto, or steps joined by '+' "
                                             "(distill+quantize).")],
    backend: Annotated[str, typer.Option(help="quantize: onnx (ONNX Runtime int8) or torch (dynamic int8).")] = "onnx",
    sparsity: Annotated[float, typer.Option(help="prune: share of weights or neurons removed.")] = 0.5,
    prune_kind: Annotated[str, typer.Option(help="prune: structured (feed-forward neurons) or magnitude.")] = "structured",
    layers: Annotated[int | None, typer.Option(help="distill: layers the student keeps (default: half).")] = None,
    epochs: Annotated[int, typer.Option(help="prune and distill: epochs of (recovery) training.")] = 6,
    lr: Annotated[float, typer.Option(help="prune and distill: peak learning rate (AdamW).")] = 1e-4,
    candidates: Annotated[str | None, typer.Option(help="auto: methods to try, comma-separated.")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="auto: points of accuracy a variant may lose.")] = 1.0,
    data: Annotated[str | None, typer.Option(help="Training data (default: the parent's fine-tune's); a path or "
                                                  "dataset:NAME[@VERSION]/PATH.")] = None,
    eval_data: Annotated[str | None, typer.Option(help="Eval data (default: the parent's).")] = None,
    name: Annotated[str | None, typer.Option(help="Job name (default: MODEL-METHOD-TIME).")] = None,
    model_name: Annotated[str | None, typer.Option(help="Registry name of the result (default: the parent's).")] = None,
    cloud: Annotated[list[str] | None, typer.Option(help="Allowed cloud (repeat).")] = None,
    cpus: Annotated[float, typer.Option(help="CPUs of the job: also the threads every measurement uses.")] = 1,
    memory_gb: Annotated[float, typer.Option(help="Memory of the job in GB.")] = 4,
    project: Annotated[str | None, typer.Option(help="The project (default: your token's, or default).")] = None,
    follow: Annotated[bool, typer.Option(help="Wait, then show the report.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to follow.")] = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Make a registered classifier smaller or faster, as a job on the best cloud: the variant is the
    model's next version, measured beside its parent (accuracy, size, memory, latency, throughput, cost)."""
    from ._jobs import _follow, _show_job

    conn = connect()
    out = conn.compress(model, method, backend=backend, sparsity=sparsity, prune_kind=prune_kind, layers=layers,
                        epochs=epochs, lr=lr, max_accuracy_drop=max_accuracy_drop, data=data, eval_data=eval_data,
                        candidates=[c.strip() for c in candidates.split(",") if c.strip()] if candidates else None,
                        name=name, model_name=model_name, clouds=cloud, cpus=cpus, memory_gb=memory_gb,
                        project=project, wait=False, progress=bars)
    job = _follow(conn, out.job.name, timeout, show=not json_out) if follow else out.job
    variant = conn.models.get(job.result["model"]) if job.result and job.result.get("model") else None
    if json_out:
        print_json({"job": job.to_json(), "model": variant.to_json() if variant else None})
    else:
        _show_job(job)
        if variant is not None:
            show_variant(variant.to_json())
    if job.status == "FAILED":
        raise typer.Exit(1)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


FIGURES = (  # (label, key in the measured figures, format, higher is better)
    ("accuracy", "accuracy", "{:.3f}", True),
    ("macro F1", "macro_f1", "{:.3f}", True),
    ("loss", "loss", "{:.4f}", False),
    ("size on disk", "size_bytes", None, False),
    ("peak memory (process)", "peak_rss_mb", "{:.0f} MB", False),
    ("memory the model adds", "model_memory_mb", "{:.0f} MB", False),
    ("p50 latency, batch 1", "p50_ms", "{:.2f} ms", False),
    ("p99 latency, batch 1", "p99_ms", "{:.2f} ms", False),
    ("throughput, batch 32", "throughput", "{:.0f} texts/s", True),
)


def _cell(key: str, fmt: str | None, figures: dict[str, Any] | None) -> str:
    if not figures or figures.get(key) is None:
        return "—"
    return _mb(figures[key]) if fmt is None else fmt.format(figures[key])


def figures_table(title: str, columns: list[tuple[str, dict[str, Any] | None]]) -> None:
    """Measured figures side by side, one column a model, and the ratio of the last to the first."""
    first, last = columns[0][1], columns[-1][1]
    rows = []
    for label, key, fmt, _ in FIGURES:
        ratio = ""
        if first and last and first.get(key) and last.get(key) is not None:
            ratio = f"{last[key] / first[key]:.2f}×"
        rows.append((label, *(_cell(key, fmt, f) for _, f in columns), ratio))
    print_table(title, ["", *(name for name, _ in columns), "ratio"], rows)


def show_costs(per_cloud: dict[str, Any]) -> None:
    print_table("performance and resource use per cloud (cheapest CPU instance types that hold it)",
                ["cloud", "region", "instance", "vCPUs", "req/s", "$/h", "$ per 1M req", "spot $ per 1M"],
                [(r["cloud"], r["region"], r["instance_type"], f"{r['vcpus']:g}", f"{r['requests_per_second']:.0f}",
                  f"{r['price']:.4f}", f"{r['cost_per_million']:.4f}" if r["cost_per_million"] is not None else "—",
                  f"{r['spot_cost_per_million']:.4f}" if r["spot_cost_per_million"] is not None else "—")
                 for r in per_cloud["rows"]])
    console.print(f"[dim]{per_cloud['scaling']}[/]")


def show_variant(m: dict[str, Any]) -> None:
    """A compressed version's report: its figures next to its parent's, agreement, candidates, costs."""
    metrics, lineage = m["metrics"], m["lineage"]
    report = metrics["report"]
    figures_table(f"{m['name']}:{m['version']} ({report['method']}, {metrics.get('format')}) against its parent "
                  f"{lineage.get('parent')}", [(str(lineage.get("parent")), metrics.get("parent_report")),
                                              (f"{m['name']}:{m['version']}", report["measured"])])
    console.print(f"labels agree with the parent's on {report['agreement']:.1%} of "
                  f"{report['measured']['eval_rows']} eval inputs; accuracy drop {report['accuracy_drop']:+.2f} "
                  f"points; {report['speedup']:.2f}× throughput; {report['size_ratio']:.2f}× size; measured with "
                  f"{report['measured']['threads']} thread(s)")
    if metrics.get("candidates"):
        print_table(f"auto: candidates (max accuracy drop {lineage.get('max_accuracy_drop')} points)",
                    ["method", "accuracy", "drop", "throughput", "speedup", "size", "agreement", "kept"],
                    [(c["method"], f"{c['measured']['accuracy']:.3f}", f"{c['accuracy_drop']:+.2f}",
                      f"{c['measured']['throughput']:.0f}/s", f"{c['speedup']:.2f}×", _mb(c["measured"]["size_bytes"]),
                      f"{c['agreement']:.1%}", "chosen" if c["method"] == report["method"] else
                      ("within bound" if c["within_bound"] else "over the bound")) for c in metrics["candidates"]])
    if m.get("per_cloud"):
        show_costs(m["per_cloud"])


def show_variants(variants: list[dict[str, Any]]) -> None:
    rows = []
    for v in variants:
        r = v["metrics"].get("report")
        if r:
            rows.append((f"v{v['version']}", r["method"], v["metrics"].get("format"), f"{r['measured']['accuracy']:.3f}",
                         f"{r['speedup']:.2f}×", f"{r['size_ratio']:.2f}×", f"{r['agreement']:.0%}"))
    print_table("variants", ["version", "method", "format", "accuracy", "speed", "size", "agree"], rows)


def measured_of(m: dict[str, Any], other: dict[str, Any]) -> dict[str, Any] | None:
    """A version's measured figures: its own report's, else those its variant ``other`` measured of it."""
    if m["metrics"].get("report"):
        return m["metrics"]["report"]["measured"]
    if other["lineage"].get("parent") == f"{m['name']}:{m['version']}":
        return other["metrics"].get("parent_report")
    final = m["metrics"].get("final")  # a fine-tune: its eval figures, nothing measured of its speed
    return {k: final.get(k) for k in ("accuracy", "macro_f1", "loss")} if final else None


def model_compare(a: Annotated[str, typer.Argument(help="NAME:VERSION")],
                  b: Annotated[str, typer.Argument(help="NAME:VERSION")], json_out: JsonOpt = False) -> None:
    """Two versions side by side: accuracy, size, memory, latency, throughput, and their lineage."""
    conn = connect()
    ma, mb = conn.models.get(a).to_json(), conn.models.get(b).to_json()
    fa, fb = measured_of(ma, mb), measured_of(mb, ma)
    if json_out:
        print_json({"a": {"ref": a, "figures": fa, "lineage": ma["lineage"]},
                    "b": {"ref": b, "figures": fb, "lineage": mb["lineage"]}})
        return
    figures_table(f"{a} and {b}", [(a, fa), (b, fb)])
    keys = ("parent", "method", "job", "clouds", "base_model")
    print_table("lineage", ["", a, b], [(k, str(ma["lineage"].get(k, "—")), str(mb["lineage"].get(k, "—")))
                                        for k in keys])


model_app.command("compare")(model_compare)  # beside the registry's other commands
