"""Fine-tuning (transfer learning) of transformers encoders for classification."""

from typing import Any

from ._data import LabelledText, load_labelled
from ._finetune import EvalMetrics, FinetuneConfig, FinetuneResult, build_model, default_base, finetune

__all__ = [
    "EvalMetrics",
    "FinetuneConfig",
    "FinetuneResult",
    "LabelledText",
    "build_model",
    "default_base",
    "finetune",
    "latest_checkpoint",
    "load_checkpoint",
    "load_labelled",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    # the checkpoint helpers import torch (seconds): only when asked for, not whenever the server
    # imports this package for FinetuneConfig
    if name in ("latest_checkpoint", "load_checkpoint", "save_checkpoint"):
        from . import _checkpoint

        return getattr(_checkpoint, name)
    raise AttributeError(f"module 'fermion.train' has no attribute {name!r}")
