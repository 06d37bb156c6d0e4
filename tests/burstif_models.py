"""One-node BurstIF models for the operator tests."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from onnx2burst import ops


def one_node_model(T: int, psi: int, tau: float, rank: int, *, opset: int = 17,
                   with_function: bool = True, spikes: bool = True) -> onnx.ModelProto:
    dims = ["TN"] + [f"d{i}" for i in range(1, rank)]
    vi = helper.make_tensor_value_info
    node = ops.make_node("X", "vth", "Y", T=T, psi=psi, tau=tau, spikes="S", name="burst")
    if not spikes:
        del node.output[1]
    outputs = [vi("Y", TensorProto.FLOAT, dims)] + ([vi("S", TensorProto.FLOAT, ["N"])] if spikes else [])
    g = helper.make_graph([node], "burst_if", [vi("X", TensorProto.FLOAT, dims), vi("vth", TensorProto.FLOAT, ["C"])],
                          outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    if with_function:
        ops.attach_function(m)
    else:
        m.opset_import.append(helper.make_opsetid(ops.DOMAIN, ops.OP_VERSION))
    return m
