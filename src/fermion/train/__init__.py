"""Fine-tuning (transfer learning) of transformers encoders for classification."""

from typing import Any

from ._cli import read_job_config
from ._data import LabelledText, load_labelled
from ._finetune import (
    Classifier,
    EvalMetrics,
    FinetuneConfig,
    FinetuneResult,
    build_model,
    default_base,
    finetune,
    macro_f1,
    resolve_precision,
    split_eval,
)

__all__ = [
    "Classifier",
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
    "macro_f1",
    "read_job_config",
    "resolve_precision",
    "save_checkpoint",
    "split_eval",
]


def __getattr__(name: str) -> Any:
    # the checkpoint helpers import torch (seconds): only when asked for, not whenever the server
    # imports this package for FinetuneConfig
    if name in ("latest_checkpoint", "load_checkpoint", "save_checkpoint"):
        from . import _checkpoint

        return getattr(_checkpoint, name)
    raise AttributeError(f"module 'fermion.train' has no attribute {name!r}")
