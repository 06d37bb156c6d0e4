"""One exception hierarchy for onnx2burst. Every message names the node, file or argument
it is about, so that the CLI can print it as it is and exit non-zero.

    Onnx2BurstError
    ├── ConfigError              a bad argument (T, psi, tau, --maxpool, per-layer overrides, ...)
    ├── ModelLoadError           missing file, not ONNX, truncated, unsafe external data
    ├── ModelSaveError           output == input, not writable, a folder, ...
    ├── GraphError               a graph the passes cannot canonicalise or rewrite
    │   └── UnsupportedModelError   ops that cannot be converted exactly (§3); ``.issues``
    ├── CalibrationDataError     unreadable, empty, NaN/inf, wrong shape/dtype/rank, pickles,
    │                            decompression bombs
    └── ResourceLimitError       the model or the calibration plan needs more memory than allowed
"""
from __future__ import annotations

import contextlib

__all__ = [
    "Onnx2BurstError", "ConfigError", "ModelLoadError", "ModelSaveError", "GraphError",
    "UnsupportedModelError", "CalibrationDataError", "ResourceLimitError", "onnxruntime_errors",
]


class Onnx2BurstError(Exception):
    """Base of every error onnx2burst raises on purpose."""


class ConfigError(Onnx2BurstError, ValueError):
    """An argument or configuration value is invalid; the message names it."""


class ModelLoadError(Onnx2BurstError):
    """The model file cannot be read: missing, not ONNX, truncated, or unsafe external data."""


class ModelSaveError(Onnx2BurstError):
    """The model cannot be written where asked."""


class GraphError(Onnx2BurstError):
    """The graph cannot be canonicalised or rewritten; the message names the node."""


class UnsupportedModelError(GraphError):
    """Ops between neurons that cannot be converted exactly (docs/method.md §3).

    ``issues`` is a list of ``(node name, op type, reason)``; pass ``allow_inexact=True``
    (``--allow-inexact``) to convert anyway (they then run per timestep).
    """

    def __init__(self, issues, hint: str = "pass --allow-inexact to convert anyway (they run per timestep)"):
        self.issues = list(issues)
        lines = [f"  {name} ({op}): {why}" for name, op, why in self.issues]
        super().__init__(
            f"{len(self.issues)} node(s) cannot be converted exactly to spikes:\n" + "\n".join(lines)
            + (f"\n{hint}" if hint else ""))


class CalibrationDataError(Onnx2BurstError, ValueError):
    """Calibration data that cannot be used; the message names the file/input and shows both shapes."""


class ResourceLimitError(Onnx2BurstError):
    """The model's declared sizes, its weights or the calibration plan would need more memory
    than the limit (``--max-memory``, default: the memory available); raised before anything
    runs. The message gives both numbers and the largest tensors by name."""


@contextlib.contextmanager
def onnxruntime_errors(subject: str = "the model"):
    """Report an onnxruntime failure inside the block (a model it cannot load or run: a
    dangling input, an unknown op, a batch the model does not take) as a ``GraphError``
    naming ``subject``; other exceptions pass. Also a decorator: ``@onnxruntime_errors()``."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - only onnxruntime's own errors are translated
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        detail = " ".join(str(e).split())
        raise GraphError(f"onnxruntime cannot run {subject}: {detail}") from None
