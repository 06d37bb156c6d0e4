"""Opset pass: keep the model's default opset, or upgrade it to >= 13 (the BurstIF fallback
function and the rewrites use opset-13 forms), saying so."""
from __future__ import annotations

import onnx

from ..errors import GraphError
from ..ops import MIN_OPSET
from .index import default_opset

__all__ = ["ensure_opset"]


def ensure_opset(model: onnx.ModelProto, minimum: int = MIN_OPSET) -> tuple[onnx.ModelProto, str | None]:
    """Return ``(model, note)``: the model unchanged when its opset is >= ``minimum``, else
    upgraded with ``onnx.version_converter`` and a note saying so."""
    have = default_opset(model)
    if have >= minimum:
        return model, None
    try:
        from onnx import version_converter

        up = version_converter.convert_version(model, minimum)
    except Exception as e:  # noqa: BLE001
        raise GraphError(f"the model uses opset {have}; the converter needs >= {minimum} and "
                         f"onnx.version_converter could not upgrade it: {e}") from None
    return up, f"opset upgraded from {have} to {minimum} (the BurstIF fallback needs >= {minimum})"
