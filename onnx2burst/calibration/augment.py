"""Graph augmentation for calibration (as onnxruntime's calibrator does): copies of a model
that expose intermediate tensors as outputs, reduce them per channel inside the graph
(so only ``[C]`` vectors come back), or keep only the part of the graph between given
tensors (so a run computes only what is needed)."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import GraphError
from ..graph import GraphIndex
from ..graph.index import make_reduce

__all__ = ["with_outputs", "add_channel_reduce", "extract"]


def with_outputs(model: onnx.ModelProto, names: Iterable[str], *, keep_outputs: bool = False,
                 elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``names`` (after the original ones if ``keep_outputs``)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if not keep_outputs:
        del g.output[:]
    have = {o.name for o in g.output}
    for n in names:
        if n not in have:
            g.output.append(helper.make_tensor_value_info(n, elem_type, None))
            have.add(n)
    return m


def add_channel_reduce(model: onnx.ModelProto, idx: GraphIndex, x: str, op: str, axis: int | None, *,
                       rank: int | None, opset: int, tag: str) -> str:
    """Add ``op`` (ReduceMax/ReduceMean/ReduceSum) of tensor ``x`` over every axis but ``axis``
    (1, or -1 = the last; None = over everything, giving ``[1]``). Returns the output name;
    the caller exposes it with ``with_outputs``."""
    g = model.graph
    out = idx.fresh(f"{x}__{tag}")
    flat = idx.fresh(f"{x}__{tag}_flat")
    if axis == 1:
        shape = idx.set_const(idx.fresh(f"{x}__{tag}_shape"), np.array([0, 0, -1], np.int64))
        nodes = [helper.make_node("Reshape", [x, shape], [flat], name=idx.fresh(flat))]
        axes = [0, 2]
    elif axis == -1:
        if rank is None:
            raise GraphError(f"tensor {x!r}: unknown rank; cannot reduce over all but its last axis")
        nodes = [helper.make_node("Flatten", [x], [flat], axis=rank - 1, name=idx.fresh(flat))]
        axes = [0]
    else:
        shape = idx.set_const(idx.fresh(f"{x}__{tag}_shape"), np.array([1, -1], np.int64))
        nodes = [helper.make_node("Reshape", [x, shape], [flat], name=idx.fresh(flat))]
        axes = [1]
    nodes += make_reduce(op, flat, out, axes, keepdims=0, opset=opset, name=idx.fresh(out), index=idx)
    g.node.extend(nodes)
    return out


def extract(model: onnx.ModelProto, inputs: Iterable[str], outputs: Iterable[str],
            ranks: dict[str, int | None] | None = None) -> onnx.ModelProto:
    """The part of ``model`` that computes ``outputs`` from the tensors ``inputs`` (which become
    float graph inputs; ``ranks`` gives their ranks when known) and the graph's own inputs."""
    inputs, outputs = list(inputs), list(outputs)
    idx = GraphIndex(model.graph)
    cut = set(inputs)
    need, todo = set(), list(outputs)
    while todo:
        t = todo.pop()
        if t in need:
            continue
        need.add(t)
        if t in cut or idx.is_const(t):
            continue
        p = idx.producer.get(t)
        if p is not None:
            todo.extend(i for i in p.input if i)
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    nodes = [n for n in model.graph.node if any(o in need and o not in cut for o in n.output)]
    g = m.graph
    g.name = model.graph.name + "_part"
    g.node.extend(nodes)
    g.initializer.extend(t for t in model.graph.initializer if t.name in need)
    ranks = ranks or {}
    for i in inputs:
        r = ranks.get(i)
        g.input.append(helper.make_tensor_value_info(i, TensorProto.FLOAT, None if r is None else [None] * r))
    g.input.extend(vi for vi in model.graph.input if vi.name in need and vi.name not in cut
                   and not idx.is_const(vi.name))
    outs = {o.name: o for o in model.graph.output}
    for o in outputs:
        g.output.append(outs[o] if o in outs else helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
    return m
