"""Opset pass: keep the model's default opset, or upgrade it to >= 13 (the BurstIF fallback
function and the rewrites use opset-13 forms), saying so. The IR version is raised to what
the opsets and the fallback function need, and weights listed among the graph inputs
(IR 3 exporters) stop being inputs."""
from __future__ import annotations

import onnx

from ..errors import GraphError
from ..ops.schema import MIN_OPSET
from .index import default_opset

__all__ = ["ensure_opset"]


def ensure_opset(model: onnx.ModelProto, minimum: int = MIN_OPSET) -> tuple[onnx.ModelProto, str | None]:
    """Return ``(model, note)``: the model unchanged when its opset is >= ``minimum``, else
    upgraded with ``onnx.version_converter`` and a note saying so."""
    have = default_opset(model)
    if have >= minimum:
        return _modern_ir(model), None
    try:
        from onnx import version_converter

        up = version_converter.convert_version(model, minimum)
    except Exception as e:  # noqa: BLE001
        raise GraphError(f"the model uses opset {have}; the converter needs >= {minimum} and "
                         f"onnx.version_converter could not upgrade it: {e}") from None
    return _modern_ir(up), f"opset upgraded from {have} to {minimum} (the BurstIF fallback needs >= {minimum})"


def _modern_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    """IR version at least what the opsets (and model-local functions, IR 8) need; weights that
    old exporters (IR 3) listed among the graph inputs are constants, not inputs, from here on."""
    try:
        need = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except Exception:  # noqa: BLE001 - an opset newer than this onnx knows: keep what the model says
        need = model.ir_version
    model.ir_version = max(model.ir_version, need, 8)
    inits = {t.name for t in model.graph.initializer}
    if any(i.name in inits for i in model.graph.input):
        keep = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(keep)
    return model
