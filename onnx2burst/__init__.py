"""onnx2burst: ANN-to-SNN conversion of ONNX graphs with burst spikes (Wang et al., arXiv 2311.14265).

The method is specified in ALGORITHM.md; section numbers (§) in docstrings refer to it.
"""
from __future__ import annotations

try:
    from importlib.metadata import version as _version

    __version__ = _version("onnx2burst")
except Exception:  # noqa: BLE001 - running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
