"""Constant pass: weights produced by ``Constant`` or ``ConstantOfShape`` nodes (and small ops
computed from constants only, e.g. a Transpose or Reshape of a weight) become initializers.

Shape paths that read a data tensor (``Shape(x)``) are never folded: they carry the batch.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .index import GraphIndex

__all__ = ["fold_constants"]

# Ops evaluated when every input is a constant (cheap, deterministic, no batch involved).
_FOLDABLE = {
    "Identity", "Cast", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Concat", "Gather", "Slice",
    "Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Reciprocal", "Flatten", "Expand", "Pow", "Range",
    "Shape", "Size", "Equal", "Where", "Tile",
}
_MAX_FOLD_ELEMENTS = 1 << 26


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0] if node.attribute else None
    if a is None:
        raise ValueError("Constant without a value")
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name == "value_float":
        return np.array(a.f, np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), np.float32)
    if a.name == "value_int":
        return np.array(a.i, np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), np.int64)
    raise ValueError(f"Constant with attribute {a.name!r} is not supported")


def _eval(node: onnx.NodeProto, inputs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" for k in range(len(inputs))]
    n = helper.make_node(node.op_type, [names[k] if x else "" for k, x in enumerate(node.input)],
                         [f"o{k}" for k in range(len(node.output))], domain=node.domain)
    n.attribute.extend(node.attribute)
    ev = ReferenceEvaluator(n, opsets={"": opset})
    feeds = {names[k]: v for k, v in enumerate(inputs) if node.input[k]}
    return ev.run(None, feeds)


def _output_too_large(node: onnx.NodeProto, inputs: list) -> bool:
    """Whether an op that can grow its input (Expand, Tile, Range) would exceed the fold cap,
    decided from the inputs before anything is allocated."""
    try:
        if node.op_type == "Expand":
            shape = np.broadcast_shapes(tuple(np.shape(inputs[0])), tuple(int(d) for d in inputs[1].reshape(-1)))
            return float(np.prod(shape, dtype=np.float64)) > _MAX_FOLD_ELEMENTS
        if node.op_type == "Tile":
            reps = np.asarray(inputs[1], np.float64).reshape(-1)
            return float(np.asarray(inputs[0]).size) * float(np.prod(reps)) > _MAX_FOLD_ELEMENTS
        if node.op_type == "Range":
            start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in inputs[:3])
            return delta == 0 or (limit - start) / delta > _MAX_FOLD_ELEMENTS
    except (ValueError, TypeError, IndexError):
        return True
    return False


def fold_constants(model: onnx.ModelProto, opset: int) -> int:
    """Fold in place; returns the number of nodes folded."""
    g = model.graph
    idx = GraphIndex(g)
    folded = []
    keep_as_output = set(idx.graph_outputs)
    for node in list(g.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        value = None
        if node.op_type == "Constant":
            try:
                value = [_constant_value(node)]
            except ValueError:
                continue
        elif node.op_type == "ConstantOfShape" and idx.is_const(node.input[0]):
            shape = [int(d) for d in idx.const(node.input[0]).reshape(-1)]
            fill = numpy_helper.to_array(node.attribute[0].t).reshape(-1) if node.attribute else np.zeros(1, np.float32)
            if int(np.prod(shape)) > _MAX_FOLD_ELEMENTS:
                continue
            value = [np.full(shape, fill[0], dtype=fill.dtype)]
        elif node.op_type in _FOLDABLE and node.input and all((not i) or idx.is_const(i) for i in node.input):
            if _output_too_large(node, [idx.const(i) if i else None for i in node.input]):
                continue  # never allocate it: onnxruntime (and the memory check) will see it
            try:
                value = _eval(node, [idx.const(i) if i else None for i in node.input], opset)
            except Exception:  # noqa: BLE001 - leave it to onnxruntime
                continue
            if any(np.asarray(v).size > _MAX_FOLD_ELEMENTS for v in value):
                continue
        if value is None:
            continue
        for name, v in zip(node.output, value):
            if name and name not in keep_as_output:
                idx.set_const(name, np.asarray(v))
        if any(o in keep_as_output for o in node.output):
            continue
        folded.append(node)
        idx.remove_nodes([node])
    return len(folded)
