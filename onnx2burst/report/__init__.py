"""Results, tables and plots: ``evaluate`` (``onnx2burst eval``) and the search reports.

Heavy pieces (rich, matplotlib) are imported when used.
"""
from __future__ import annotations

from .data import Dataset, load_dataset
from .evaluate import evaluate
from .results import EvalResult, ModelStats

__all__ = ["Dataset", "load_dataset", "evaluate", "EvalResult", "ModelStats"]
