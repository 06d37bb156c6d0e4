"""BatchNorm folding pass (§3): a BatchNormalization after a Conv or Gemm, and the same
affine map written as Mul/Add/Sub/Div by per-channel constants, are folded into the
weights and bias of the Conv/Gemm. The layer must be the only consumer of the Conv/Gemm's
output; a shared weight is copied first. BatchNormalization elsewhere stays (it is linear
per channel and runs unchanged on the time-folded batch)."""
from __future__ import annotations

import numpy as np
import onnx

from .index import GraphIndex
from .index import attr as _attr

__all__ = ["fold_batchnorm"]


def _layer_rank(idx: GraphIndex, layer: onnx.NodeProto) -> int | None:
    if layer.op_type == "Gemm":
        return 2
    w = idx.const(layer.input[1])
    return None if w is None else w.ndim


def _channels(idx: GraphIndex, layer: onnx.NodeProto) -> int | None:
    w = idx.const(layer.input[1])
    if w is None:
        return None
    if layer.op_type == "Conv":
        return int(w.shape[0])
    return int(w.shape[0] if _attr(layer, "transB", 0) else w.shape[1])


def _per_channel(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``c`` as a vector of ``channels`` values when it broadcasts along axis 1 only."""
    c = np.asarray(c, np.float64)
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(s != 1 for k, s in enumerate(shape) if k != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).copy()


def _gemm_bias(idx: GraphIndex, layer: onnx.NodeProto, k: int) -> np.ndarray | None:
    if len(layer.input) < 3 or not layer.input[2]:
        return np.zeros(k)
    c = idx.const(layer.input[2])
    if c is None or c.size not in (1, k) or (c.ndim == 2 and c.shape[0] != 1):
        return None
    return np.broadcast_to(c.reshape(-1), (k,)).astype(np.float64)


def _apply(idx: GraphIndex, layer: onnx.NodeProto, scale: np.ndarray, shift: np.ndarray) -> bool:
    """layer output <- layer output * scale + shift (per output channel), in the weights."""
    k = scale.shape[0]
    w = idx.const(layer.input[1]).astype(np.float64)
    if layer.op_type == "Conv":
        b = idx.const(layer.input[2]).astype(np.float64) if len(layer.input) > 2 and layer.input[2] else np.zeros(k)
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        b = b * scale + shift
        beta = 1.0
    else:
        b = _gemm_bias(idx, layer, k)
        if b is None:
            return False
        beta = float(_attr(layer, "beta", 1.0))
        if beta == 0:
            b = np.zeros(k)
            beta = 1.0
            for a in layer.attribute:
                if a.name == "beta":
                    a.f = 1.0
        w = w * (scale.reshape(-1, 1) if _attr(layer, "transB", 0) else scale.reshape(1, -1))
        b = b * scale + shift / beta
    dtype = idx.const(layer.input[1]).dtype
    wname = idx.private_const(layer, 1, layer.name + "_weight")
    idx.set_const(wname, w.astype(dtype))
    if len(layer.input) > 2 and layer.input[2]:
        bname = idx.private_const(layer, 2, layer.name + "_bias")
    else:
        bname = idx.fresh(layer.name + "_bias")
        while len(layer.input) < 3:
            layer.input.append("")
        layer.input[2] = bname
    idx.set_const(bname, b.astype(dtype))
    return True


def _affine_of(idx: GraphIndex, node: onnx.NodeProto, layer_out: str, rank: int, k: int):
    """(scale, shift) when ``node`` is a per-channel affine map of ``layer_out``, else None."""
    op = node.op_type
    if op == "BatchNormalization":
        if node.input[0] != layer_out or len(node.output) > 1 and any(node.output[1:]):
            return None
        vals = [idx.const(i) for i in node.input[1:5]]
        if any(v is None for v in vals):
            return None
        gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in vals)
        if any(v.size != k for v in (gamma, beta, mean, var)):
            return None
        s = gamma / np.sqrt(var + float(_attr(node, "epsilon", 1e-5)))
        return s, beta - mean * s
    if op not in ("Mul", "Add", "Sub", "Div") or len(node.input) != 2:
        return None
    other = node.input[1] if node.input[0] == layer_out else node.input[0]
    if other == layer_out or not idx.is_const(other):
        return None
    if op in ("Sub", "Div") and node.input[0] != layer_out:
        return None
    c = _per_channel(idx.const(other), rank, k)
    if c is None:
        return None
    one, zero = np.ones(k), np.zeros(k)
    return {"Mul": (c, zero), "Div": (1.0 / c, zero), "Add": (one, c), "Sub": (one, -c)}[op]


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold in place; returns the number of nodes folded away."""
    g = model.graph
    idx = GraphIndex(g)
    folded = 0
    changed = True
    while changed:
        changed = False
        for layer in list(g.node):
            if layer.op_type not in ("Conv", "Gemm") or layer.domain not in ("", "ai.onnx"):
                continue
            if not idx.is_const(layer.input[1]):
                continue
            if layer.op_type == "Gemm" and (_attr(layer, "transA", 0) or float(_attr(layer, "alpha", 1.0)) == 0):
                continue
            nxt = idx.single_consumer(layer.output[0])
            rank, k = _layer_rank(idx, layer), _channels(idx, layer)
            if nxt is None or rank is None or k is None:
                continue
            aff = _affine_of(idx, nxt, layer.output[0], rank, k)
            if aff is None or not np.all(np.isfinite(aff[0])) or not np.all(np.isfinite(aff[1])):
                continue
            if not _apply(idx, layer, *aff):
                continue
            layer.output[0] = nxt.output[0]
            idx.remove_nodes([nxt])
            idx.rebuild()
            folded += 1
            changed = True
    return folded
