"""Lateral-inhibition max pooling (``--maxpool lateral``, docs/method.md §3): the standard-op
subgraph against a numpy statement of the rule, and the converted SNN against the ANN."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx2burst
from onnx2burst import ops
from onnx2burst.graph import GraphIndex
from onnx2burst.rewrite.rewriter import _lateral_pool
from tests import fixtures_models as fm


def _reference(x, T, k, s, pad=0):
    """Y[t] = X[t] at the argmax (first on ties) of sum_{u<=t} X[u] in each k x k window, stride s
    (padding never wins: its sum is -inf)."""
    N = x.shape[0] // T
    sums = np.cumsum(x.reshape((T, N) + x.shape[1:]), axis=0).reshape(x.shape)
    if pad:
        sums = np.pad(sums, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    TN, C, H, W = x.shape
    Ho, Wo = (H - k) // s + 1, (W - k) // s + 1
    y = np.zeros((TN, C, Ho, Wo), x.dtype)
    for i in range(Ho):
        for j in range(Wo):
            win = sums[:, :, i * s:i * s + k, j * s:j * s + k].reshape(TN, C, -1)
            arg = win.argmax(axis=2)
            xs = x[:, :, i * s:i * s + k, j * s:j * s + k].reshape(TN, C, -1)
            y[:, :, i, j] = np.take_along_axis(xs, arg[..., None], axis=2)[..., 0]
    return y


def _pool_model(op, T, **attrs):
    vi = helper.make_tensor_value_info
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="pool", **attrs)], "pool",
                          [vi("x", TensorProto.FLOAT, ["TN", "C", "H", "W"])], [vi("y", TensorProto.FLOAT, ["TN", "C", "Ho", "Wo"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    idx = GraphIndex(m.graph)
    _lateral_pool(m.graph, idx, idx.nodes_by_name["pool"], T)
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("k,s,pad", [(2, 2, 0), (3, 1, 0), (3, 2, 0), (3, 2, 1)])
def test_maxpool_subgraph_matches_the_rule(k, s, pad):
    T, N, C = 6, 2, 3
    rng = np.random.default_rng(k * 10 + s)
    x = (rng.integers(0, 4, size=(T * N, C, 7, 8)) * 0.5).astype(np.float32)  # spike-like: ties happen
    attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4)
    y = ops.make_session(_pool_model("MaxPool", T, **attrs)).run(None, {"x": x})[0]
    assert np.array_equal(y, _reference(x, T, k, s, pad))


def test_global_maxpool_subgraph_matches_the_rule():
    T, N, C = 5, 3, 4
    x = (np.random.default_rng(1).integers(0, 3, size=(T * N, C, 5, 5)) * 0.25).astype(np.float32)
    y = ops.make_session(_pool_model("GlobalMaxPool", T)).run(None, {"x": x})[0]
    assert y.shape == (T * N, C, 1, 1)
    assert np.array_equal(y, _reference(x, T, 5, 5))


def test_lateral_pooling_converges_where_per_step_maxpool_does_not():
    """At large T the lateral SNN's logits approach the ANN's; MaxPool per step keeps a bias."""
    m = fm.maxpool_net()
    calib, x = fm.inputs(m, 64, seed=7), fm.inputs(m, 32, seed=3)
    want = fm.run(m, x)[0]
    err = {}
    for mode in ("spikes", "lateral"):
        snn = onnx2burst.convert(m, calib, T=64, psi=4, maxpool=mode)
        types = [n.op_type for n in snn.graph.node]
        assert ("CumSum" in types) == (mode == "lateral")
        got = ops.make_session(snn).run(None, {"x": x})[0]
        err[mode] = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err["lateral"] < 0.05
    assert err["lateral"] < err["spikes"]


def test_lateral_pooling_runs_without_the_kernel_and_in_the_reference_evaluator():
    from onnx.reference import ReferenceEvaluator

    m = fm.maxpool_net()
    snn = onnx2burst.convert(m, fm.inputs(m, 32, seed=7), T=4, psi=2, maxpool="lateral")
    x = fm.inputs(m, 3, seed=5)
    a = ops.make_session(snn, kernel=False).run(None, {"x": x})[0]
    b = ReferenceEvaluator(snn).run(None, {"x": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lateral_pooling_counts_synops_like_maxpool():
    """The running sums are indices, not spikes: the fanout equals the per-step MaxPool's."""
    from onnx2burst.evaluation.energy import energy_model

    m = fm.maxpool_net()
    calib = fm.inputs(m, 32, seed=7)
    fan = {}
    for mode in ("spikes", "lateral"):
        em = energy_model(onnx2burst.convert(m, calib, T=4, psi=2, samples=32, maxpool=mode))
        fan[mode] = [(layer.name, layer.fanout) for layer in em.layers]
        assert not em.notes
    assert fan["lateral"] == fan["spikes"]
