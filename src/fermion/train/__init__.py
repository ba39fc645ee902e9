"""Fine-tuning (transfer learning) of transformers encoders for classification."""

from ._checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
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
