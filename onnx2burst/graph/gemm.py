"""MatMul pass: ``MatMul(A, W)`` with a constant 2-D weight and a 2-D input, and its
``Add(bias)``, become one ``Gemm`` (so that a neuron's bias has one obvious home)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .index import GraphIndex

__all__ = ["matmul_to_gemm"]


def matmul_to_gemm(model: onnx.ModelProto, info: dict) -> int:
    """Rewrite in place; ``info`` is ``shapes.tensor_info(model)``. Returns nodes rewritten."""
    g = model.graph
    idx = GraphIndex(g)
    done = 0
    for node in list(g.node):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        a, w = node.input
        wv = idx.const(w)
        dims = info.get(a, (0, None))[1]
        if wv is None or wv.ndim != 2 or dims is None or len(dims) != 2 or wv.dtype != np.float32:
            continue
        out = node.output[0]
        inputs = [a, w]
        add = idx.single_consumer(out)
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == out else add.input[0]
            c = idx.const(other)
            if c is not None and c.size == wv.shape[1] and c.ndim <= 2 and (c.ndim < 2 or c.shape[0] == 1):
                inputs.append(idx.fresh(node.name + "_bias"))
                idx.set_const(inputs[-1], c.reshape(-1).astype(np.float32))
                out = add.output[0]
                idx.remove_nodes([add])
            else:
                add = None
        gemm = helper.make_node("Gemm", inputs, [out], name=node.name)
        node.CopyFrom(gemm)
        idx.rebuild()
        done += 1
    return done
