"""Calibration plumbing: graph augmentation, the onnxruntime runner, streaming statistics.
(Data readers are in ``onnx2burst.data``, progress in ``onnx2burst.progress``.)"""
from .runner import Runner

__all__ = ["Runner"]
