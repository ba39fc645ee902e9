"""A classifier model folder in any of its formats, loaded for prediction.

Every folder holds ``encoder/`` (the tokenizer and the encoder's config), ``labels.json`` and
``variant.json`` (absent in models fine-tuned before variants: those are plain torch):

- ``torch``: ``encoder/`` also holds the weights (safetensors), ``head.safetensors`` the head;
- ``torch-int8``: ``quantized.pt``, the state dict of the dynamically quantized classifier;
- ``onnx``: ``model.onnx``, the whole classifier (encoder, mean pooling, head) as one graph that
  maps ``input_ids`` and ``attention_mask`` to logits; int8 or fp32 alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import UserInputError

Format = Literal["torch", "torch-int8", "onnx"]
FORMATS: tuple[str, ...] = ("torch", "torch-int8", "onnx")
VARIANT_FILE = "variant.json"
MAX_LENGTH = 128  # the classifier photon's truncation: what the reports measure is what it serves


def model_format(folder: Path) -> str:
    info = folder / VARIANT_FILE
    if not info.is_file():
        return "torch"
    fmt = json.loads(info.read_text()).get("format", "torch")
    if fmt not in FORMATS:
        raise UserInputError(f"model folder {folder} has an unknown format {fmt!r}", hint=f"known: {', '.join(FORMATS)}")
    return fmt


def check_model_folder(folder: Path) -> None:
    """A clear error for a folder that is not a classifier this module can load."""
    missing = [p for p in ("labels.json", "encoder/config.json") if not (folder / p).is_file()]
    if missing:
        raise UserInputError(f"{folder} is not a classifier model: it lacks {', '.join(missing)}",
                             hint="compress works on models made by `fermion finetune` (an encoder and a head)")


def build_classifier(encoder: Any, n_labels: int) -> Any:
    """Encoder + mean pooling + linear head, the same module the fine-tune trains."""
    import torch

    from ..train import Classifier

    return Classifier(encoder, encoder.config.hidden_size, n_labels, torch)


def load_torch_classifier(folder: Path) -> Any:
    """The fp32 torch module of a ``torch`` folder (what pruning and distillation start from)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    if model_format(folder) != "torch":
        raise UserInputError(f"{folder} is a {model_format(folder)} model; this step needs the torch (fp32) model",
                             hint="compress the fp32 parent, or put this step first in the chain")
    labels = json.loads((folder / "labels.json").read_text())
    model = build_classifier(AutoModel.from_pretrained(folder / "encoder"), len(labels))
    head = load_file(str(folder / "head.safetensors"))
    with torch.no_grad():
        model.head.weight.copy_(head["weight"])
        model.head.bias.copy_(head["bias"])
    return model.eval()


class Predictor:
    """Texts in, logits out, whatever the folder's format; ``threads`` caps the compute threads."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        check_model_folder(self.folder)
        self.format = model_format(self.folder)
        self.labels: list[str] = json.loads((self.folder / "labels.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder / "encoder")
        self.threads = threads or int(os.environ.get("FERMION_THREADS", "0")) or None
        if self.format == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.threads:
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(self.folder / "model.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
            return
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        self.torch = torch
        if self.format == "torch":
            self.module = load_torch_classifier(self.folder)
        else:
            from transformers import AutoConfig, AutoModel

            fp32 = build_classifier(AutoModel.from_config(AutoConfig.from_pretrained(self.folder / "encoder")),
                                    len(self.labels))
            self.module = quantize_module(fp32.eval())
            self.module.load_state_dict(torch.load(self.folder / "quantized.pt", weights_only=True))
        self.module.eval()

    def encode(self, texts: list[str]) -> dict[str, Any]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")

    def logits(self, texts: list[str]) -> np.ndarray:
        enc = self.encode(texts)
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        if self.format == "onnx":
            return self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(ids), self.torch.from_numpy(mask)).float().numpy()

    def classify(self, texts: list[str]) -> list[dict[str, object]]:
        """The most likely label of each text, with every label's probability."""
        z = self.logits(texts)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        return [{"label": self.labels[int(p.argmax())],
                 "probabilities": {lab: round(float(x), 4) for lab, x in zip(self.labels, p, strict=True)}}
                for p in probs]


def quantize_module(module: Any) -> Any:
    """Dynamic int8 quantization of every Linear layer (weights int8, activations quantized per batch)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch.ao's eager quantization warns that it moves to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


def write_variant_info(folder: Path, fmt: str, steps: list[dict[str, Any]]) -> None:
    (folder / VARIANT_FILE).write_text(json.dumps({"format": fmt, "steps": steps}, indent=2))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
