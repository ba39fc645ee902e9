"""Compress a classifier: run a method (or a chain of steps, or ``auto``), measure every variant
and its parent in the same run, and write the chosen variant with its report."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserInputError, shorten
from ..train import LabelledText, load_labelled, split_eval
from ._measure import Figures, Measured, measure
from ._methods import METHODS, StepSettings, run_step
from ._model import check_model_folder

# what `auto` tries; chains share their first steps (distill+quantize quantizes the distilled student)
AUTO_CANDIDATES = ("quantize", "quantize:torch", "onnx", "prune", "distill", "distill+quantize")
Progress = Callable[[dict[str, Any]], None]


class CompressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_dir: str = Field(description="the parent model's folder")
    parent: str = Field("", description="the parent's registry reference, for the lineage")
    method: str = Field(description="quantize, onnx, prune, distill, auto, or steps joined by '+' (distill+quantize)")
    settings: StepSettings = Field(default_factory=StepSettings)
    candidates: list[str] | None = Field(None, description="auto: the methods to try (default: all)")
    max_accuracy_drop: float = Field(1.0, ge=0, le=100, description="auto: points of accuracy a variant may lose")
    train_data: str | None = Field(None, description="the model's training data (prune and distill train on it)")
    eval_data: str | None = Field(None, description="default: 20% of train_data, held out by seed")
    output_dir: str
    threads: int = Field(1, ge=1, le=256, description="compute threads of every measurement")


class VariantReport(BaseModel):
    """One variant's figures, beside its parent's."""

    method: str = Field(max_length=200)
    measured: Figures
    agreement: float = Field(description="share of eval inputs labelled as the parent labels them")
    accuracy_drop: float = Field(description="points of accuracy lost against the parent (negative: gained)")
    speedup: float = Field(description="throughput at batch 32 over the parent's")
    size_ratio: float
    within_bound: bool | None = None
    details: list[dict[str, Any]] = Field(default_factory=list)


class CompressResult(BaseModel):
    method: str = Field(max_length=200)
    chosen: str = Field(max_length=200)
    parent: Figures
    report: VariantReport
    candidates: list[VariantReport] = Field(max_length=64)
    labels: list[str]
    lineage: dict[str, Any]
    artifact: str


def parse_chain(method: str) -> list[tuple[str, str | None]]:
    """'distill+quantize:torch' -> [('distill', None), ('quantize', 'torch')]."""
    steps = []
    for part in method.split("+"):
        name, _, backend = part.strip().partition(":")
        if name not in METHODS:
            raise UserInputError(f"unknown method {shorten(part)!r}",
                                 hint=f"use one of {', '.join((*METHODS, 'auto'))}, or steps joined by '+'")
        if backend and (name != "quantize" or backend not in ("onnx", "torch")):
            raise UserInputError(f"{shorten(part)!r}: only quantize takes a backend (quantize:onnx or quantize:torch)")
        steps.append((name, backend or None))
    if any(n in ("prune", "distill") for n, _ in steps[1:]) and steps[0][0] not in ("prune", "distill"):
        raise UserInputError(f"{method}: prune and distill train a torch model; put them before quantize and onnx")
    return steps


def _data(cfg: CompressConfig) -> tuple[LabelledText | None, LabelledText]:
    if cfg.train_data is None and cfg.eval_data is None:
        raise UserInputError("compress needs the model's eval data (and its training data to prune or distill)",
                             hint="give --data (and --eval-data), or compress a model whose fine-tune job still exists")
    train = load_labelled(cfg.train_data) if cfg.train_data else None
    if cfg.eval_data:
        return train, load_labelled(cfg.eval_data)
    assert train is not None
    return split_eval(train, cfg.settings.seed)


def _report(method: str, m: Measured, parent: Measured, details: list[dict[str, Any]]) -> VariantReport:
    same = sum(a == b for a, b in zip(m.predictions, parent.predictions, strict=True))
    return VariantReport(method=method, measured=Figures.model_validate(m.model_dump(exclude={"predictions"})),
                         agreement=same / max(1, len(m.predictions)),
                         accuracy_drop=round((parent.accuracy - m.accuracy) * 100, 4),
                         speedup=m.throughput / parent.throughput if parent.throughput else 0.0,
                         size_ratio=m.size_bytes / parent.size_bytes if parent.size_bytes else 0.0, details=details)


def compress(cfg: CompressConfig, on_progress: Progress | None = None) -> CompressResult:
    """Run ``cfg.method`` on the parent and write the chosen variant to ``output_dir/model``."""
    parent_dir = Path(cfg.model_dir)
    check_model_folder(parent_dir)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(row: dict[str, Any]) -> None:  # metrics.jsonl: what `fermion job status` and --follow show
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        if on_progress is not None:
            on_progress(row)

    auto = cfg.method == "auto"
    methods = list(cfg.candidates or AUTO_CANDIDATES) if auto else [cfg.method]
    chains = {m: parse_chain(m) for m in methods}
    train, evald = _data(cfg)
    work = out / "variants"
    work.mkdir(parents=True, exist_ok=True)
    eval_file = work / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                                 for t, y in zip(evald.texts, evald.labels, strict=True)))
    say({"phase": "measure", "variant": "parent"})
    parent = measure(parent_dir, eval_file, cfg.threads)
    say({"phase": "measured", "variant": "parent", "accuracy": parent.accuracy, "throughput": parent.throughput})
    built: dict[str, tuple[Path, list[dict[str, Any]]]] = {"": (parent_dir, [])}
    reports: dict[str, VariantReport] = {}
    folders: dict[str, Path] = {}  # each candidate's variant, by method
    for method, chain in chains.items():
        key = ""
        for name, backend in chain:  # a chain's prefix made for another candidate is reused
            step_key = f"{key}+{name}:{backend or ''}" if key else f"{name}:{backend or ''}"
            if step_key not in built:
                src, done = built[key]
                dest = work / f"v{len(built)}"
                settings = cfg.settings.model_copy(update={"backend": backend} if backend else {})
                step = {"method": name, **({"backend": settings.backend} if name == "quantize" else {})}
                say({"phase": "step", "variant": method, "step": name})
                detail = run_step(name, src, dest, settings, train, [*(d["step"] for d in done), step],
                                  lambda row, n=name: say({"phase": n, **row}))
                built[step_key] = (dest, [*done, {"step": step, **detail}])
            key = step_key
        folder, details = built[key]
        folders[method] = folder
        say({"phase": "measure", "variant": method})
        report = _report(method, measure(folder, eval_file, cfg.threads), parent, details)
        if auto:
            report.within_bound = report.accuracy_drop <= cfg.max_accuracy_drop
        reports[method] = report
        say({"phase": "measured", "variant": method, "accuracy": report.measured.accuracy,
             "throughput": report.measured.throughput, "speedup": round(report.speedup, 3)})
    if auto:
        fit = [r for r in reports.values() if r.within_bound]
        if not fit:
            drops = ", ".join(f"{r.method} {r.accuracy_drop:.1f}" for r in reports.values())
            raise UserInputError(f"no variant stays within {cfg.max_accuracy_drop} point(s) of accuracy (drops: {drops})",
                                 hint="raise --max-accuracy-drop, or give prune and distill more --epochs")
        chosen = max(fit, key=lambda r: r.measured.throughput)
    else:
        chosen = reports[cfg.method]
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(folders[chosen.method], model_dir)
    shutil.rmtree(work)
    result = CompressResult(
        method=cfg.method, chosen=chosen.method, parent=Figures.model_validate(parent.model_dump(exclude={"predictions"})),
        report=chosen,
        candidates=list(reports.values()) if auto else [], labels=json.loads((parent_dir / "labels.json").read_text()),
        lineage={"parent": cfg.parent, "method": cfg.method, "chosen": chosen.method,
                 "steps": [d["step"] for d in chosen.details], "settings": cfg.settings.model_dump(),
                 "max_accuracy_drop": cfg.max_accuracy_drop if auto else None,
                 "train_data": cfg.train_data, "eval_data": cfg.eval_data},
        artifact=str(model_dir))
    (out / "result.json").write_text(result.model_dump_json(indent=2))
    return result
