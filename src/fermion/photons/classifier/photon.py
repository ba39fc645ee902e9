"""Serves a text classifier from Fermion's model registry (FERMION_MODEL_DIR): fp32 torch, torch
int8 and ONNX Runtime variants alike."""

from __future__ import annotations

import os

from fermion import Photon, handler


class Classifier(Photon):
    """Classifies texts with a fine-tuned encoder + linear head; answers label and probabilities."""

    resources = {"cpus": 1, "memory_gb": 1}

    def init(self) -> None:
        from fermion.compress import Predictor

        self.model = Predictor(os.environ["FERMION_MODEL_DIR"])  # FERMION_THREADS, if set, caps its threads

    @handler(batch={"max_size": 32, "max_wait_ms": 5})
    def classify(self, texts: list[str]) -> list[dict[str, object]]:
        """The most likely label of each text, with every label's probability."""
        return self.model.classify(texts)

