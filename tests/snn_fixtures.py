"""A tiny hand-built ANN and its SNN (docs/method.md §1), independent of the converter.

ANN: x[N,1,8,8] -> conv1(1->4, 3x3, pad 1) -> relu1 -> conv2(4->4, 3x3, pad 1) -> + relu1
-> relu2 -> avgpool 2x2/2 -> flatten -> gemm1(64->16) -> relu3 -> gemm2(16->3).
SNN: the same weights, conv1 computed once, Tile T times, each Relu a BurstIF (naive
thresholds: per-channel max / psi), the output the mean over T.

Hand counts: fanout relu1 = conv2 4*9 + identity 1 = 37, relu2 = 16 (pool 2x2/2 folds into
gemm1), relu3 = 3. ANN MACs = 2304 + 9216 + 1024 + 48 = 12592; analog MACs (conv1) 2304.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx2burst import ops

FANOUT = {"relu1": 37.0, "relu2": 16.0, "relu3": 3.0}
ANN_MACS = 2304 + 9216 + 1024 + 48
ANALOG_MACS = 2304


def _weights(seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    f = np.float32
    return {
        "w1": (r.normal(size=(4, 1, 3, 3)) * 0.6).astype(f), "b1": (r.normal(size=4) * 0.1).astype(f),
        "w2": (r.normal(size=(4, 4, 3, 3)) * 0.25).astype(f), "b2": (r.normal(size=4) * 0.1).astype(f),
        "g1": (r.normal(size=(16, 64)) * 0.25).astype(f), "c1": (r.normal(size=16) * 0.1).astype(f),
        "g2": (r.normal(size=(3, 16)) * 0.5).astype(f), "c2": np.zeros(3, f),
    }


def ann_model(seed: int = 0) -> onnx.ModelProto:
    w = _weights(seed)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Relu", ["conv1"], ["relu1"], name="relu1"),
        n("Conv", ["relu1", "w2", "b2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Add", ["conv2", "relu1"], ["sum2"], name="add2"),
        n("Relu", ["sum2"], ["relu2"], name="relu2"),
        n("AveragePool", ["relu2"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Flatten", ["pool"], ["flat"], name="flat"),
        n("Gemm", ["flat", "g1", "c1"], ["fc1"], name="fc1", transB=1),
        n("Relu", ["fc1"], ["relu3"], name="relu3"),
        n("Gemm", ["relu3", "g2", "c2"], ["logits"], name="fc2", transB=1),
    ]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "toy_ann", [vi("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [vi("logits", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(v, k) for k, v in w.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def sample_data(n: int = 64, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 1, 8, 8)).astype(np.float32)


def relu_max(ann: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel max of every Relu output over ``x``."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(ann)
    names = ["relu1", "relu2", "relu3"]
    for r in names:
        m.graph.output.append(helper.make_empty_tensor_value_info(r))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(names, {"x": x})
    return {k: (v.max(axis=(0, 2, 3)) if v.ndim == 4 else v.max(axis=0)) for k, v in zip(names, outs)}


def snn_model(T: int = 4, psi: int = 2, seed: int = 0, vth: dict | None = None,
              tau: dict | None = None, psis: dict | None = None, with_spikes: bool = True,
              biases: dict | None = None) -> onnx.ModelProto:
    """The SNN of ``ann_model(seed)``; vth per layer defaults to channel max / psi on sample_data().
    biases: initializer name (b1, b2, c1) -> a replacement."""
    ann = ann_model(seed)
    psis = psis or {}
    tau = tau or {}
    if vth is None:
        mx = relu_max(ann, sample_data())
        vth = {k: (v / psis.get(k, psi)).astype(np.float32) for k, v in mx.items()}
    n = helper.make_node

    def burst(x, name):
        node = ops.make_node(x, f"vth_{name}", name, T=T, psi=psis.get(name, psi),
                             tau=tau.get(name, 1.0), spikes=f"{name}_spikes", name=name)
        if not with_spikes:
            del node.output[1]
        return node

    nodes = [
        n("Conv", ["x", "w1", "b1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Tile", ["conv1", "repeats"], ["conv1_t"], name="expand_time"),
        burst("conv1_t", "relu1"),
        n("Conv", ["relu1", "w2", "b2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("Add", ["conv2", "relu1"], ["sum2"], name="add2"),
        burst("sum2", "relu2"),
        n("AveragePool", ["relu2"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Flatten", ["pool"], ["flat"], name="flat"),
        n("Gemm", ["flat", "g1", "c1"], ["fc1"], name="fc1", transB=1),
        burst("fc1", "relu3"),
        n("Gemm", ["relu3", "g2", "c2"], ["logits_t"], name="fc2", transB=1),
        n("Reshape", ["logits_t", "tshape"], ["logits_tn"], name="split_time"),
        n("ReduceMean", ["logits_tn"], ["logits"], name="mean_time", axes=[0], keepdims=0),
    ]
    inits = [numpy_helper.from_array(np.asarray((biases or {}).get(k, v), np.float32), k)
             for k, v in _weights(seed).items()]
    inits += [numpy_helper.from_array(np.array([T, 1, 1, 1], np.int64), "repeats"),
              numpy_helper.from_array(np.array([T, -1, 3], np.int64), "tshape")]
    inits += [numpy_helper.from_array(np.asarray(v, np.float32), f"vth_{k}") for k, v in vth.items()]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "toy_snn", [vi("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [vi("logits", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ops.attach_function(m)
    m.metadata_props.add(key="onnx2burst.T", value=str(T))
    return m


def reference_run(snn: onnx.ModelProto, x: np.ndarray):
    """(logits [N,3], spikes per layer [N]) via onnxruntime, the kernel when built."""
    from onnx2burst.evaluation.energy import with_spike_outputs

    m, _ = with_spike_outputs(snn)
    sess = ops.make_session(m)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, {"x": x})))
    return out["logits"], {k: out[f"{k}_spikes"] for k in FANOUT}
