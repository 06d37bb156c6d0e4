"""Shape inference pass and shape lookups.

``infer_shapes`` clears stale ``value_info`` and runs onnx's shape inference (with data
propagation, so shape paths fold); ``tensor_info`` reads the result as
``{name: (elem_type, dims)}`` with each dim an int, a symbol (str) or None.
"""
from __future__ import annotations

import onnx

__all__ = ["infer_shapes", "tensor_info", "Dims"]

Dims = "tuple[int | str | None, ...] | None"


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with fresh ``value_info`` from onnx shape inference (non-strict: a failure
    leaves shapes unknown, later passes cope)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is an aid, not a requirement
        return m


def _dims(t: onnx.TypeProto):
    if not t.HasField("tensor_type"):
        return 0, None
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type, None
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tt.elem_type, tuple(dims)


def tensor_info(model: onnx.ModelProto) -> dict:
    """``{tensor name: (elem_type, dims or None)}`` for inputs, outputs, value_info, initializers."""
    g = model.graph
    out = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        out[vi.name] = _dims(vi.type)
    for t in g.initializer:
        out[t.name] = (t.data_type, tuple(int(d) for d in t.dims))
    return out
