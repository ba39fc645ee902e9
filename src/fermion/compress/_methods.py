"""The compression steps. Each reads a model folder and writes another (see _model.py):
``onnx`` exports, ``quantize`` makes weights int8 (torch or ONNX Runtime), ``prune`` removes
weights or whole feed-forward neurons and recovers with a short fine-tune, ``distill`` trains a
student that keeps k of the teacher's layers on the teacher's outputs and the labels."""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserInputError
from ..train import LabelledText
from ._model import (
    MAX_LENGTH,
    load_torch_classifier,
    model_format,
    quantize_module,
    write_variant_info,
)

METHODS = ("quantize", "onnx", "prune", "distill")
Progress = Callable[[dict[str, Any]], None]


class StepSettings(BaseModel):
    """Settings of every step; each step reads its own."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["onnx", "torch"] = Field("onnx", description="quantize: int8 through ONNX Runtime or torch")
    sparsity: float = Field(0.5, gt=0, lt=1, description="prune: share of weights (or neurons) removed")
    prune_kind: Literal["structured", "magnitude"] = Field(
        "structured", description="prune: whole feed-forward neurons (smaller, faster) or single weights (zeros)")
    layers: int | None = Field(None, ge=1, description="distill: encoder layers the student keeps (default: half)")
    epochs: int = Field(6, ge=1, le=50, description="prune and distill: epochs of (recovery) training")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    temperature: float = Field(2.0, gt=0, description="distill: softening of the teacher's outputs")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's outputs against the labels")
    seed: int = 0


def _copy_shared(src: Path, dest: Path, weights: bool) -> None:
    """Tokenizer, config and labels (and, for a torch folder, the weights) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "encoder").mkdir(exist_ok=True)
    for f in (src / "encoder").iterdir():
        if weights or not f.name.endswith((".safetensors", ".bin")):
            shutil.copy2(f, dest / "encoder" / f.name)
    shutil.copy2(src / "labels.json", dest / "labels.json")


def save_torch(model: Any, tokenizer_from: Path, dest: Path, steps: list[dict[str, Any]]) -> None:
    from safetensors.torch import save_file

    _copy_shared(tokenizer_from, dest, weights=False)
    model.encoder.save_pretrained(dest / "encoder")
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(dest / "head.safetensors"))
    write_variant_info(dest, "torch", steps)


def export_onnx(src: Path, dest: Path, steps: list[dict[str, Any]]) -> None:
    """The whole classifier as one ONNX graph (opset 17, dynamic batch and length)."""
    import torch

    model = load_torch_classifier(src)
    _copy_shared(src, dest, weights=False)
    ids = torch.ones(2, 16, dtype=torch.long)
    mask = torch.ones(2, 16, dtype=torch.long)
    with warnings.catch_warnings(), torch.no_grad():  # the tracer warns of every shape-dependent branch
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask), str(dest / "model.onnx"), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                                        "attention_mask": {0: "batch", 1: "length"}, "logits": {0: "batch"}})
    write_variant_info(dest, "onnx", steps)


def quantize_onnx(src_onnx: Path, dest: Path, steps: list[dict[str, Any]]) -> None:
    """ONNX Runtime's dynamic int8 quantization (signed int8 weights, per-tensor)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # it logs a warning to the root logger on every call: "consider pre-processing"
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src_onnx), str(dest / "model.onnx"), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    write_variant_info(dest, "onnx", steps)


def quantize(src: Path, dest: Path, s: StepSettings, steps: list[dict[str, Any]]) -> None:
    fmt = model_format(src)
    if s.backend == "torch":
        import torch

        model = quantize_module(load_torch_classifier(src))
        _copy_shared(src, dest, weights=False)
        torch.save(model.state_dict(), dest / "quantized.pt")
        write_variant_info(dest, "torch-int8", steps)
        return
    if fmt == "torch-int8":
        raise UserInputError("this model is int8 already (torch); ONNX Runtime cannot quantize it again",
                             hint="quantize the fp32 parent")
    _copy_shared(src, dest, weights=False)
    if fmt == "onnx":
        source = dest / "fp32.onnx"
        shutil.copy2(src / "model.onnx", source)
        quantize_onnx(source, dest, steps)
        source.unlink()
        return
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(src, Path(tmp), steps)
        quantize_onnx(Path(tmp) / "model.onnx", dest, steps)


def _ffn_pairs(model: Any) -> list[tuple[Any, str, Any, str]]:
    """(module, attribute) of each layer's feed-forward in and out projection, for BERT-like encoders."""
    layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(x, "intermediate") and hasattr(x, "output") for x in layers):
        raise UserInputError("structured pruning needs a BERT-like encoder (layers with intermediate/output)",
                             hint="use --prune-kind magnitude for this model")
    return [(x.intermediate, "dense", x.output, "dense") for x in layers]


def prune_structured(model: Any, sparsity: float) -> int:
    """Drop the least important feed-forward neurons of every layer (the product of their in and
    out weight norms); returns the neurons each layer keeps."""
    import torch

    pairs = _ffn_pairs(model)
    width = getattr(pairs[0][0], pairs[0][1]).out_features
    keep = max(1, round(width * (1 - sparsity)))
    for up_owner, up_name, down_owner, down_name in pairs:
        up, down = getattr(up_owner, up_name), getattr(down_owner, down_name)
        score = up.weight.norm(dim=1) * down.weight.norm(dim=0)
        idx = torch.sort(score.topk(keep).indices).values
        new_up = torch.nn.Linear(up.in_features, keep)
        new_down = torch.nn.Linear(keep, down.out_features)
        with torch.no_grad():
            new_up.weight.copy_(up.weight[idx])
            new_up.bias.copy_(up.bias[idx])
            new_down.weight.copy_(down.weight[:, idx])
            new_down.bias.copy_(down.bias)
        setattr(up_owner, up_name, new_up)
        setattr(down_owner, down_name, new_down)
    model.encoder.config.intermediate_size = keep
    return keep


def prune_magnitude(model: Any, sparsity: float) -> list[Any]:
    """Zero the smallest weights of every encoder Linear (L1, per layer); returns the pruned layers,
    whose masks hold during recovery and are made permanent after."""
    import torch
    from torch.nn.utils import prune

    layers = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    for m in layers:
        prune.l1_unstructured(m, "weight", amount=sparsity)
    return layers


def keep_layers(model: Any, k: int) -> list[int]:
    """The student: the teacher's encoder with k of its layers, evenly spaced, the last one kept."""
    import torch

    layers = getattr(getattr(model.encoder, "encoder", None), "layer", None)
    if layers is None:
        raise UserInputError("distillation needs an encoder with a list of layers (encoder.layer)")
    n = len(layers)
    if k >= n:
        raise UserInputError(f"the student must keep fewer layers than the teacher's {n}", hint=f"--layers 1..{n - 1}")
    keep = sorted({round((i + 1) * n / k) - 1 for i in range(k)})
    model.encoder.encoder.layer = torch.nn.ModuleList([layers[i] for i in keep])
    model.encoder.config.num_hidden_layers = len(keep)
    return keep


def train_student(student: Any, teacher: Any, tokenizer: Any, data: LabelledText, labels: list[str], s: StepSettings,
                  on_progress: Progress | None = None) -> list[float]:
    """AdamW with warmup and linear decay on ``alpha * T² * KL(teacher || student) + (1 - alpha) * CE``;
    the teacher's logits are computed once (it is frozen). Returns the loss of each epoch."""
    import torch

    from ..train import resolve_precision

    label_ids = {x: i for i, x in enumerate(labels)}
    unknown = sorted(set(data.labels) - set(label_ids))
    if unknown:
        raise UserInputError(f"the training data has labels the model does not know: {', '.join(unknown[:5])}",
                             hint="compress with the data the model was fine-tuned on")
    torch.manual_seed(s.seed)
    teacher.eval()
    with torch.inference_mode():
        t_logits = torch.cat([teacher(**_batch(tokenizer, data.texts[i:i + 64])) for i in range(0, len(data), 64)])
    y_all = torch.tensor([label_ids[x] for x in data.labels])
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.01)
    total = math.ceil(len(data) / s.batch_size) * s.epochs
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: (k + 1) / warmup if k < warmup
                                              else max(0.0, (total - k) / max(1, total - warmup)))
    autocast = resolve_precision("auto", "cpu") == "bf16"
    student.train()
    history = []
    for epoch in range(s.epochs):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(s.seed * 1000 + epoch)).tolist()
        losses = []
        for i in range(0, len(order), s.batch_size):
            ids = order[i:i + s.batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                z = student(**_batch(tokenizer, [data.texts[j] for j in ids])).float()
            t = s.temperature
            soft = torch.nn.functional.kl_div(torch.log_softmax(z / t, -1), torch.softmax(t_logits[ids] / t, -1),
                                              reduction="batchmean") * t * t
            loss = s.alpha * soft + (1 - s.alpha) * torch.nn.functional.cross_entropy(z, y_all[ids])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        history.append(sum(losses) / len(losses))
        if on_progress is not None:
            on_progress({"epoch": epoch, "train_loss": history[-1]})
    student.eval()
    return history


def _batch(tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def prune(src: Path, dest: Path, s: StepSettings, data: LabelledText, steps: list[dict[str, Any]],
          on_progress: Progress | None = None) -> dict[str, Any]:
    from torch.nn.utils import prune as torch_prune
    from transformers import AutoTokenizer

    teacher = load_torch_classifier(src)
    student = copy.deepcopy(teacher)
    labels = json.loads((src / "labels.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(src / "encoder")
    if s.prune_kind == "structured":
        width = student.encoder.config.intermediate_size
        kept = prune_structured(student, s.sparsity)
        detail = {"ffn_neurons": f"{kept} of {width} per layer"}
        pruned = []
    else:
        pruned = prune_magnitude(student, s.sparsity)
        detail = {"zeroed_weights": f"{s.sparsity:.0%} of each encoder Linear"}
    history = train_student(student, teacher, tokenizer, data, labels, s, on_progress)
    for m in pruned:
        torch_prune.remove(m, "weight")
    save_torch(student, src, dest, steps)
    return {**detail, "recovery_loss": history}


def distill(src: Path, dest: Path, s: StepSettings, data: LabelledText, steps: list[dict[str, Any]],
            on_progress: Progress | None = None) -> dict[str, Any]:
    from transformers import AutoTokenizer

    teacher = load_torch_classifier(src)
    student = copy.deepcopy(teacher)
    n = student.encoder.config.num_hidden_layers
    kept = keep_layers(student, s.layers or max(1, n // 2))
    labels = json.loads((src / "labels.json").read_text())
    history = train_student(student, teacher, AutoTokenizer.from_pretrained(src / "encoder"), data, labels, s,
                            on_progress)
    save_torch(student, src, dest, steps)
    return {"teacher_layers": n, "student_layers": kept, "train_loss": history}


def run_step(method: str, src: Path, dest: Path, s: StepSettings, data: LabelledText | None,
             steps: list[dict[str, Any]], on_progress: Progress | None = None) -> dict[str, Any]:
    """One step from ``src`` into ``dest``; returns what it did (kept layers, losses)."""
    if method in ("prune", "distill") and data is None:
        raise UserInputError(f"{method} trains: it needs the model's training data", hint="give --data")
    if method == "onnx":
        if model_format(src) == "onnx":
            raise UserInputError("this model is ONNX already")
        export_onnx(src, dest, steps)
        return {}
    if method == "quantize":
        quantize(src, dest, s, steps)
        return {"backend": s.backend}
    if method == "prune":
        return prune(src, dest, s, data, steps, on_progress)
    if method == "distill":
        return distill(src, dest, s, data, steps, on_progress)
    raise UserInputError(f"unknown method {method!r}", hint=f"use one of {', '.join((*METHODS, 'auto'))}")

