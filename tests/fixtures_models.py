"""Small ONNX models built in Python for the converter's tests (others may import them).

Every builder returns an ``onnx.ModelProto`` (opset 17 unless said otherwise) with input
``x`` and output ``y``; weights are seeded. ``inputs(model, n)`` makes matching data.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT
vi = helper.make_tensor_value_info
node = helper.make_node


def _model(nodes, inits, x_shape, y_shape, opset=17, extra_outputs=()):
    g = helper.make_graph(nodes, "fixture", [vi("x", F, x_shape)], [vi("y", F, y_shape), *extra_outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = min(m.ir_version, 8 if opset < 19 else m.ir_version)
    return m


def _rng(seed):
    return np.random.default_rng(seed)


def _w(r, *shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (r.normal(size=shape) * (scale or np.sqrt(2.0 / fan_in))).astype(np.float32)


def inputs(model: onnx.ModelProto, n: int, seed: int = 1, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """Uniform random data for the model's input ``x`` with batch ``n`` (fixed dims kept)."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return _rng(seed).uniform(low, high, size=[n] + dims[1:]).astype(np.float32)


def conv_relu(seed: int = 0, channels: int = 2) -> onnx.ModelProto:
    """x[N,1,4,4] -> Conv 1x1 (1 -> C, bias) -> Relu = y. Small enough to check by hand:
    channel c of the pre-activation is ``w_c * x + b_c``."""
    r = _rng(seed)
    w = (r.uniform(0.5, 1.5, size=(channels, 1, 1, 1))).astype(np.float32)
    b = r.uniform(-0.2, 0.2, size=channels).astype(np.float32)
    nodes = [node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[1, 1]),
             node("Relu", ["c"], ["y"], name="relu")]
    return _model(nodes, {"w": w, "b": b}, ["N", 1, 4, 4], ["N", channels, 4, 4])


def residual(seed: int = 0, c: int = 4, classes: int = 3) -> onnx.ModelProto:
    """x[N,2,6,6] -> conv0 -> relu0 -> conv1 -> relu1 -> conv2 -> Add(relu0) -> relu2
    -> GlobalAveragePool -> Flatten -> Gemm (transB) = y[N,3]. conv2 is the main branch."""
    r = _rng(seed)
    nodes = [
        node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Relu", ["c0"], ["r0"], name="relu0"),
        node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"], name="relu1"),
        node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Add", ["r0", "c2"], ["s2"], name="add"),
        node("Relu", ["s2"], ["r2"], name="relu2"),
        node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        node("Flatten", ["p"], ["f"], name="flatten"),
        node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = {"w0": _w(r, c, 2, 3, 3), "b0": (r.normal(size=c) * 0.1).astype(np.float32),
             "w1": _w(r, c, c, 3, 3), "b1": (r.normal(size=c) * 0.1).astype(np.float32),
             "w2": _w(r, c, c, 3, 3, scale=0.3), "b2": (r.normal(size=c) * 0.1).astype(np.float32),
             "wf": _w(r, classes, c, scale=1.0), "bf": np.zeros(classes, np.float32)}
    return _model(nodes, inits, ["N", 2, 6, 6], ["N", classes])


def batchnorm(seed: int = 0, decomposed: bool = False) -> onnx.ModelProto:
    """Conv (no bias) -> BatchNormalization (or Mul/Add by per-channel constants) -> Relu ->
    Conv -> BatchNormalization -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> BN1d = y."""
    r = _rng(seed)
    c = 3
    nodes = [node("Conv", ["x", "w0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = {"w0": _w(r, c, 1, 3, 3), "w1": _w(r, c, c, 3, 3), "b1": np.full(c, 0.05, np.float32),
             "wf": _w(r, 4, c), "bf": np.zeros(4, np.float32)}

    def bn(x, y, name, k):
        inits.update({f"{name}_g": r.uniform(0.5, 2, k).astype(np.float32),
                      f"{name}_b": r.normal(size=k).astype(np.float32) * 0.3,
                      f"{name}_m": r.normal(size=k).astype(np.float32) * 0.2,
                      f"{name}_v": r.uniform(0.5, 2, k).astype(np.float32)})
        return node("BatchNormalization", [x, f"{name}_g", f"{name}_b", f"{name}_m", f"{name}_v"], [y],
                    name=name, epsilon=1e-3)

    if decomposed:
        inits["mul0"] = r.uniform(0.5, 2, (1, c, 1, 1)).astype(np.float32)
        inits["add0"] = r.normal(size=(c, 1, 1)).astype(np.float32) * 0.3
        nodes += [node("Mul", ["c0", "mul0"], ["m0"], name="mul0"), node("Add", ["add0", "m0"], ["n0"], name="add0")]
    else:
        nodes.append(bn("c0", "n0", "bn0", c))
    nodes += [node("Relu", ["n0"], ["r0"], name="relu0"),
              node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
              bn("c1", "n1", "bn1", c),
              node("Relu", ["n1"], ["r1"], name="relu1"),
              node("GlobalAveragePool", ["r1"], ["p"], name="gap"),
              node("Flatten", ["p"], ["f"], name="flatten"),
              node("Gemm", ["f", "wf", "bf"], ["g"], name="fc", transB=1),
              bn("g", "y", "bn_fc", 4)]
    return _model(nodes, inits, ["N", 1, 5, 5], ["N", 4])


def fixed_batch_reshape(seed: int = 0) -> onnx.ModelProto:
    """Input fixed at batch 1: x[1,1,4,4] -> Conv -> Relu -> Reshape([1, -1]) -> Gemm -> Relu
    -> Gemm = y[1,3] (the Reshape hard-codes the batch)."""
    r = _rng(seed)
    nodes = [node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c0"], ["r0"], name="relu0"),
             node("Reshape", ["r0", "shape"], ["f"], name="reshape"),
             node("Gemm", ["f", "w1", "b1"], ["g1"], name="fc1", transB=1),
             node("Relu", ["g1"], ["r1"], name="relu1"),
             node("Gemm", ["r1", "w2"], ["y"], name="fc2", transB=1)]
    inits = {"w0": _w(r, 2, 1, 3, 3), "b0": np.full(2, 0.1, np.float32), "shape": np.array([1, -1], np.int64),
             "w1": _w(r, 8, 32), "b1": np.full(8, 0.05, np.float32), "w2": _w(r, 3, 8, scale=1.0)}
    return _model(nodes, inits, [1, 1, 4, 4], [1, 3])


def gemm_mlp(seed: int = 0, trans_b: bool = True) -> onnx.ModelProto:
    """x[N,6] -> Gemm (transB) -> Relu -> Gemm (no transB, beta 0.5) -> Relu -> MatMul+Add = y[N,3]."""
    r = _rng(seed)
    w0 = _w(r, 10, 6)
    nodes = [node("Gemm", ["x", "w0", "b0"], ["g0"], name="fc0", transB=int(trans_b)),
             node("Relu", ["g0"], ["r0"], name="relu0"),
             node("Gemm", ["r0", "w1", "b1"], ["g1"], name="fc1", beta=0.5),
             node("Relu", ["g1"], ["r1"], name="relu1"),
             node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
             node("Add", ["m2", "b2"], ["y"], name="fc2_bias")]
    inits = {"w0": w0 if trans_b else np.ascontiguousarray(w0.T), "b0": np.full(10, 0.1, np.float32),
             "w1": _w(r, 8, 10).T.copy(), "b1": np.full((1, 8), 0.1, np.float32),
             "w2": _w(r, 3, 8, scale=1.0).T.copy(), "b2": np.zeros(3, np.float32)}
    return _model(nodes, inits, ["N", 6], ["N", 3])


def maxpool_net(seed: int = 0, softmax: bool = False) -> onnx.ModelProto:
    """x[N,1,8,8] -> Conv -> Relu -> MaxPool 2x2 -> Conv -> Relu -> Flatten -> Gemm [-> Softmax] = y."""
    r = _rng(seed)
    nodes = [node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c0"], ["r0"], name="relu0"),
             node("MaxPool", ["r0"], ["p0"], name="pool0", kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p0", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"], name="relu1"),
             node("Flatten", ["r1"], ["f"], name="flatten"),
             node("Gemm", ["f", "wf", "bf"], ["logits" if softmax else "y"], name="fc", transB=1)]
    if softmax:
        nodes.append(node("Softmax", ["logits"], ["y"], name="softmax", axis=-1))
    inits = {"w0": _w(r, 3, 1, 3, 3), "b0": np.full(3, 0.05, np.float32), "w1": _w(r, 4, 3, 3, 3),
             "b1": np.full(4, 0.05, np.float32), "wf": _w(r, 5, 64, scale=0.5), "bf": np.zeros(5, np.float32)}
    return _model(nodes, inits, ["N", 1, 8, 8], ["N", 5])


def constant_weights(seed: int = 0) -> onnx.ModelProto:
    """Weights from Constant nodes, a bias from ConstantOfShape, an Identity and a Dropout."""
    r = _rng(seed)
    w0 = _w(r, 2, 1, 3, 3)
    wf = _w(r, 3, 2 * 16, scale=0.5)
    nodes = [node("Constant", [], ["w0"], name="const_w0", value=numpy_helper.from_array(w0)),
             node("ConstantOfShape", ["b0_shape"], ["b0"], name="const_b0",
                  value=helper.make_tensor("v", F, [1], [0.1])),
             node("Identity", ["x"], ["xi"], name="ident"),
             node("Conv", ["xi", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c0"], ["r0"], name="relu0"),
             node("Dropout", ["r0"], ["d0"], name="dropout"),
             node("Flatten", ["d0"], ["f"], name="flatten"),
             node("Constant", [], ["wf"], name="const_wf", value=numpy_helper.from_array(wf)),
             node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    return _model(nodes, {"b0_shape": np.array([2], np.int64)}, ["N", 1, 4, 4], ["N", 3])


def with_op_between(op: str = "Sigmoid", seed: int = 0) -> onnx.ModelProto:
    """conv0 -> Relu -> ``op`` -> conv1 -> Relu -> GAP -> Flatten -> Gemm: ``op`` sits between neurons."""
    r = _rng(seed)
    nodes = [node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[1, 1]),
             node("Relu", ["c0"], ["r0"], name="relu0"),
             node(op, ["r0"], ["s0"], name=f"mid_{op.lower()}"),
             node("Conv", ["s0", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             node("Relu", ["c1"], ["r1"], name="relu1"),
             node("GlobalAveragePool", ["r1"], ["p"], name="gap"),
             node("Flatten", ["p"], ["f"], name="flatten"),
             node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    inits = {"w0": _w(r, 2, 1, 1, 1), "b0": np.zeros(2, np.float32), "w1": _w(r, 2, 2, 1, 1),
             "b1": np.zeros(2, np.float32), "wf": _w(r, 3, 2, scale=1.0)}
    return _model(nodes, inits, ["N", 1, 4, 4], ["N", 3])


def relu6_net(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """conv0 -> Clip(0, 6) -> GAP -> Flatten -> Gemm (ReLU6 as a neuron)."""
    r = _rng(seed)
    nodes = [node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Clip", ["c0", "lo", "hi"], ["r0"], name="relu6"),
             node("GlobalAveragePool", ["r0"], ["p"], name="gap"),
             node("Flatten", ["p"], ["f"], name="flatten"),
             node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    inits = {"w0": _w(r, 3, 1, 3, 3, scale=4.0), "b0": np.full(3, 0.5, np.float32),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32), "wf": _w(r, 3, 3, scale=1.0)}
    return _model(nodes, inits, ["N", 1, 4, 4], ["N", 3], opset=opset)


def old_opset(seed: int = 0) -> onnx.ModelProto:
    """The conv_relu-like net written for opset 11 (to be upgraded)."""
    r = _rng(seed)
    nodes = [node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c0"], ["r0"], name="relu0"),
             node("Flatten", ["r0"], ["f"], name="flatten"),
             node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    inits = {"w0": _w(r, 2, 1, 3, 3), "b0": np.full(2, 0.1, np.float32), "wf": _w(r, 3, 32, scale=0.5)}
    return _model(nodes, inits, ["N", 1, 4, 4], ["N", 3], opset=11)


def run(model: onnx.ModelProto, x: np.ndarray, outputs=None) -> list[np.ndarray]:
    """Run a plain (ANN) model with stock onnxruntime."""
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(outputs, {s.get_inputs()[0].name: x})
