"""Model optimization: quantize, export to ONNX, prune and distill a fine-tuned classifier, with a
measured report for every variant and what serving it would cost on each cloud."""

from ._costs import cost_per_cloud
from ._measure import Figures, Measured, measure
from ._methods import METHODS, StepSettings, export_onnx, run_step
from ._model import FORMATS, Predictor, model_format
from ._run import AUTO_CANDIDATES, CompressConfig, CompressResult, VariantReport, compress, parse_chain

__all__ = [
    "AUTO_CANDIDATES",
    "FORMATS",
    "METHODS",
    "CompressConfig",
    "CompressResult",
    "Figures",
    "Measured",
    "Predictor",
    "StepSettings",
    "VariantReport",
    "compress",
    "cost_per_cloud",
    "export_onnx",
    "measure",
    "model_format",
    "parse_chain",
    "run_step",
]
