"""onnx2burst: ANN-to-SNN conversion of ONNX graphs with burst spikes (Wang et al., arXiv 2311.14265).

The method as implemented is in docs/method.md; section numbers (§) in docstrings refer to it.
"""
from __future__ import annotations

try:
    from importlib.metadata import version as _version

    __version__ = _version("onnx2burst")
except Exception:  # noqa: BLE001 - running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "convert", "Converter", "ConversionResult", "ConvertConfig", "CalibrationConfig",
           "ThresholdConfig", "LayerConfig", "ImageOptions", "SearchConfig", "GuardConfig", "Onnx2BurstError"]

# Imported on first use, so that `import onnx2burst` (and the CLI's --help) stays instant.
_LAZY = {
    "convert": "onnx2burst.convert", "Converter": "onnx2burst.convert", "ConversionResult": "onnx2burst.convert",
    "ConvertConfig": "onnx2burst.config", "CalibrationConfig": "onnx2burst.config",
    "ThresholdConfig": "onnx2burst.config", "LayerConfig": "onnx2burst.config", "ImageOptions": "onnx2burst.config",
    "SearchConfig": "onnx2burst.config", "GuardConfig": "onnx2burst.config",
    "Onnx2BurstError": "onnx2burst.errors",
}


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'onnx2burst' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
