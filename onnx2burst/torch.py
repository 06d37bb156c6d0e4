"""``onnx2burst.torch``: run an SNN ONNX file as a PyTorch module, export it as TorchScript.

The public names of :mod:`onnx2burst.interop.torch`, where the code lives.
"""
from __future__ import annotations

from .interop.torch import SUPPORTED_OPS, BurstIF, OnnxModule, export, load

__all__ = ["BurstIF", "OnnxModule", "load", "export", "SUPPORTED_OPS"]
