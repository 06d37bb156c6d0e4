"""Batch pass: the batch axis (axis 0 of every graph input and output) becomes symbolic, and
a Reshape whose constant shape hard-codes the batch size gets -1 (or 0 when the shape
already has a -1) there (and in a batch-1 model, Flatten(axis=0) becomes Flatten(axis=1)), so that the graph runs on any batch, and on the time-folded
batch ``T*N`` of the SNN (§1).

Assumes axis 0 of each input is the batch, as in every image classifier export.
"""
from __future__ import annotations

import numpy as np
import onnx

from .index import GraphIndex

__all__ = ["free_batch", "fix_batch_reshapes", "BATCH_SYMBOL"]

BATCH_SYMBOL = "N"


def _first_dim(vi: onnx.ValueInfoProto):
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = vi.type.tensor_type.shape.dim
    return dims[0] if len(dims) else None


def free_batch(model: onnx.ModelProto) -> set[int]:
    """Make axis 0 of graph inputs/outputs symbolic; returns the fixed batch sizes replaced."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    fixed: set[int] = set()
    for vi in list(g.input) + list(g.output):
        if vi.name in inits:
            continue
        d = _first_dim(vi)
        if d is None:
            continue
        if d.HasField("dim_value"):
            fixed.add(int(d.dim_value))
            d.Clear()
            d.dim_param = BATCH_SYMBOL
        elif not d.HasField("dim_param"):
            d.dim_param = BATCH_SYMBOL
    return fixed


def fix_batch_reshapes(model: onnx.ModelProto, info: dict, batch_sizes: set[int]) -> list[str]:
    """Rewrite Reshape shape constants that hard-code one of ``batch_sizes`` at axis 0 of a
    tensor whose axis 0 is the (now symbolic) batch. Returns the names of nodes changed."""
    if not batch_sizes:
        return []
    g = model.graph
    idx = GraphIndex(g)
    changed = []
    for node in g.node:
        if node.op_type == "Flatten" and batch_sizes == {1}:
            # Flatten(axis=0) of a batch-1 model is Flatten(axis=1) there; only axis=1 keeps a batch
            dims = info.get(node.input[0], (0, None))[1]
            axis = [a for a in node.attribute if a.name == "axis"]
            if axis and axis[0].i == 0 and dims and not isinstance(dims[0], int):
                axis[0].i = 1
                changed.append(node.name)
            continue
        if node.op_type != "Reshape" or not idx.is_const(node.input[1]):
            continue
        dims = info.get(node.input[0], (0, None))[1]
        if not dims or isinstance(dims[0], int):
            continue  # axis 0 is not the symbolic batch here
        shape = np.array(idx.const(node.input[1]), dtype=np.int64).reshape(-1)
        if shape.size == 0 or int(shape[0]) not in batch_sizes:
            continue
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if (shape[1:] == -1).any():
            if allowzero:
                continue
            shape[0] = 0
        else:
            shape[0] = -1
        name = idx.private_const(node, 1, node.name + "_shape")
        idx.set_const(name, shape)
        changed.append(node.name)
    return changed
