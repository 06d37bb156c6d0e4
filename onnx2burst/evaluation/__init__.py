"""Measuring an SNN against its ANN: ``evaluate`` (top-1, agreement, KL, spikes, energy, ms),
the metrics (``metrics``: symmetric KL, docs/method.md §6) and the energy model (``energy``, §7)."""
from .evaluate import evaluate, load_onnx
from .results import EvalResult, ModelStats

__all__ = ["evaluate", "load_onnx", "EvalResult", "ModelStats"]
