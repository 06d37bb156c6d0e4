"""Stages 2-3: the analysis (registry) and the SNN graph rewrite."""
import numpy as np
import onnx
import pytest
from onnx import helper

from onnx2burst import ops
from onnx2burst.errors import UnsupportedModelError
from onnx2burst.graph import canonicalize
from onnx2burst.rewrite import Kind, NeuronParams, analyze, build_snn, supported_ops
from tests import fixtures_models as fm


def _snn(model, T=4, psi=2, vth=0.5, **kw):
    c = canonicalize(model)
    a = analyze(c)
    params = {n.name: NeuronParams(np.full(n.channels if n.per_channel else 1, vth, np.float32), psi)
              for n in a.neurons}
    return c, a, build_snn(c, a, params, T=T, **kw)


def test_residual_analysis():
    a = analyze(canonicalize(fm.residual()))
    assert [n.name for n in a.neurons] == ["relu0", "relu1", "relu2"]
    assert [n.layer for n in a.neurons] == ["conv0", "conv1", "conv2"]  # relu2: the main branch, not r0
    assert a.analog_layers == [("fc", "Gemm")]
    assert a.expansion == ["c0"]
    assert not a.inexact and all(n.per_channel and n.channels == 4 for n in a.neurons)


def test_gemm_bias_targets_and_beta():
    a = analyze(canonicalize(fm.gemm_mlp()))
    t = {n.name: n.bias for n in a.neurons}
    assert t["relu0"].node == "fc0" and t["relu0"].scale == 1.0
    assert t["relu1"].node == "fc1" and t["relu1"].scale == 0.5


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Elu", "LRN", "Softmax"])
def test_inexact_ops_named(op):
    m = fm.with_op_between(op)
    if op == "LRN":
        m.graph.node[2].attribute.append(helper.make_attribute("size", 3))
    a = analyze(canonicalize(m))
    assert [(i.node, i.op_type) for i in a.inexact] == [(f"mid_{op.lower()}", op)]
    with pytest.raises(UnsupportedModelError, match=f"mid_{op.lower()}"):
        _snn(m)
    _snn(m, allow_inexact=True)


def test_nonlinear_op_before_first_neuron_is_fine():
    m = fm.conv_relu()
    m.graph.node.insert(0, helper.make_node("Sigmoid", ["x"], ["xs"], name="pre"))
    m.graph.node[1].input[0] = "xs"
    a = analyze(canonicalize(m))
    assert not a.inexact


def test_unknown_op_between_neurons_is_reported():
    a = analyze(canonicalize(fm.with_op_between("Erf")))
    assert a.inexact and a.inexact[0].node == "mid_erf"
    assert "Relu" in supported_ops() and "MaxPool" in supported_ops()


def test_snn_graph_structure_and_outputs():
    c, a, snn = _snn(fm.residual(), T=4, per_timestep_output=True)
    m = snn.model
    onnx.checker.check_model(m, full_check=True)
    types = [n.op_type for n in m.graph.node]
    assert types.count("BurstIF") == 3 and "Relu" not in types
    tile = next(n for n in m.graph.node if n.op_type == "Tile")
    assert tile.input[0] == "c0"  # after the first conv: computed once
    conv0 = next(n for n in m.graph.node if n.name == "conv0")
    assert conv0.input[0] == "x"
    vth = {t.name for t in m.graph.initializer if t.name.endswith("_vth")}
    assert vth == {"relu0_vth", "relu1_vth", "relu2_vth"}
    burst = next(n for n in m.graph.node if n.op_type == "BurstIF")
    attrs = {x.name: helper.get_attribute_value(x) for x in burst.attribute}
    assert attrs["T"] == 4 and attrs["psi"] == 2 and attrs["tau"] == 1.0 and burst.domain == ops.DOMAIN
    assert [o.name for o in m.graph.output] == ["y", "y_per_timestep"]
    x = fm.inputs(fm.residual(), 3)
    y, per_t = ops.make_session(m).run(None, {"x": x})
    assert y.shape == (3, 3) and per_t.shape == (4, 3, 3)
    np.testing.assert_allclose(per_t.mean(axis=0), y, rtol=1e-5, atol=1e-6)
    y2, per_t2 = ops.make_session(m, kernel=False).run(None, {"x": x})
    np.testing.assert_array_equal(y2, y)


def test_trailing_softmax_moves_after_mean():
    c, a, snn = _snn(fm.maxpool_net(softmax=True), T=4)
    assert a.output_tail == ["softmax"] and a.maxpools == ["pool0"]
    m = snn.model
    soft = next(n for n in m.graph.node if n.op_type == "Softmax")
    assert soft.output[0] == "y"
    mean = next(n for n in m.graph.node if n.op_type == "ReduceMean")
    assert soft.input[0] == mean.output[0]
    assert "MaxPool" in [n.op_type for n in m.graph.node]
    y = ops.make_session(m).run(None, {"x": fm.inputs(fm.maxpool_net(), 2)})[0]
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_fixed_batch_reshape_runs_on_folded_batch():
    m = fm.fixed_batch_reshape()
    c, a, snn = _snn(m, T=5)
    x = fm.inputs(m, 1)
    y = ops.make_session(snn.model).run(None, {"x": np.concatenate([x, x, x])})[0]
    assert y.shape == (3, 3)
    np.testing.assert_allclose(y[0], y[2], rtol=1e-6)


def test_relu6_is_a_neuron_with_its_bound():
    a = analyze(canonicalize(fm.relu6_net()))
    assert a.neurons[0].op_type == "Clip" and a.neurons[0].clip_max == 6.0
    assert a.marks["relu6"].kind is Kind.NEURON


def test_wrong_threshold_count_is_an_error():
    c = canonicalize(fm.residual())
    a = analyze(c)
    params = {n.name: NeuronParams(np.ones(3, np.float32), 2) for n in a.neurons}
    with pytest.raises(Exception, match="relu0.*3 thresholds"):
        build_snn(c, a, params, T=2)
