"""Serves a text classifier from Fermion's model registry (FERMION_MODEL_DIR)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fermion import Photon, handler


class Classifier(Photon):
    """Classifies texts with a fine-tuned encoder + linear head; answers label and probabilities."""

    resources = {"cpus": 1, "memory_gb": 1}

    def init(self) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(os.environ["FERMION_MODEL_DIR"])
        self.torch = torch
        self.labels = json.loads((model_dir / "labels.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir / "encoder")
        self.encoder = AutoModel.from_pretrained(model_dir / "encoder").eval()
        head = load_file(str(model_dir / "head.safetensors"))
        self.weight, self.bias = head["weight"], head["bias"]

    @handler(batch={"max_size": 32, "max_wait_ms": 5})
    def classify(self, texts: list[str]) -> list[dict[str, object]]:
        """The most likely label of each text, with every label's probability."""
        torch = self.torch
        with torch.inference_mode():
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = self.encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            probs = torch.softmax(pooled @ self.weight.T + self.bias, dim=-1)
        return [{"label": self.labels[int(p.argmax())],
                 "probabilities": {lab: round(float(x), 4) for lab, x in zip(self.labels, p, strict=True)}}
                for p in probs]
