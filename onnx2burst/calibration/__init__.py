"""Calibration plumbing: data readers (``load_calibration``), graph augmentation, the
onnxruntime runner, streaming statistics, and progress reporting."""
from .data import CalibrationSet, InputSpec, input_specs, load_calibration
from .progress import NullProgress, Progress
from .runner import Runner

__all__ = ["CalibrationSet", "InputSpec", "input_specs", "load_calibration", "NullProgress", "Progress", "Runner"]
