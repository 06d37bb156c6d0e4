"""Stage 1: the canonicalisation passes keep the ANN's function and reach the canonical form."""
import numpy as np
import onnx
import pytest

from onnx2burst.graph import canonicalize
from tests import fixtures_models as fm


def _same(a: onnx.ModelProto, b: onnx.ModelProto, x: np.ndarray, atol=1e-5):
    ya, yb = fm.run(a, x)[0], fm.run(b, x)[0]
    np.testing.assert_allclose(yb, ya, atol=atol, rtol=1e-5)


def _ops(m):
    return [n.op_type for n in m.graph.node]


@pytest.mark.parametrize("decomposed", [False, True])
def test_batchnorm_folding_keeps_outputs(decomposed):
    m = fm.batchnorm(decomposed=decomposed)
    c = canonicalize(m)
    assert "BatchNormalization" not in _ops(c.model) and "Mul" not in _ops(c.model)
    assert _ops(c.model).count("Conv") == 2 and "Gemm" in _ops(c.model)
    assert any(f"folded {4 if decomposed else 3} BatchNormalization" in n for n in c.notes), c.notes
    _same(m, c.model, fm.inputs(m, 7, low=-2, high=2))


def test_constants_identity_dropout_folded():
    m = fm.constant_weights()
    c = canonicalize(m)
    ops = _ops(c.model)
    assert not {"Constant", "ConstantOfShape", "Identity", "Dropout"} & set(ops), ops
    inits = {t.name for t in c.model.graph.initializer}
    assert {"w0", "b0", "wf"} <= inits
    _same(m, c.model, fm.inputs(m, 3))


def test_opset_upgraded_and_said():
    m = fm.old_opset()
    c = canonicalize(m)
    assert c.opset == 13
    assert any("opset upgraded from 11 to 13" in n for n in c.notes)
    _same(m, c.model, fm.inputs(m, 2))


def test_fixed_batch_made_symbolic_and_reshape_rewritten():
    m = fm.fixed_batch_reshape()
    c = canonicalize(m)
    assert c.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    shape = next(t for t in c.model.graph.initializer if t.name.startswith("shape") or t.name.startswith("reshape"))
    assert onnx.numpy_helper.to_array(shape).tolist() == [0, -1]
    x = fm.inputs(m, 1)
    _same(m, c.model, x)
    x5 = np.concatenate([x] * 5)
    np.testing.assert_allclose(fm.run(c.model, x5)[0], np.repeat(fm.run(m, x)[0], 5, axis=0), atol=1e-6)


def test_matmul_add_becomes_gemm():
    m = fm.gemm_mlp()
    c = canonicalize(m)
    assert _ops(c.model).count("Gemm") == 3 and "MatMul" not in _ops(c.model)
    _same(m, c.model, fm.inputs(m, 4))


def test_maxpool_avg_replacement():
    m = fm.maxpool_net()
    c = canonicalize(m, maxpool="avg")
    assert "MaxPool" not in _ops(c.model) and "AveragePool" in _ops(c.model)
    assert any("AveragePool" in n for n in c.notes)
    assert "MaxPool" in _ops(canonicalize(m).model)


def test_nodes_get_unique_names():
    m = fm.residual()
    for n in m.graph.node:
        n.name = ""
    c = canonicalize(m)
    names = [n.name for n in c.model.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_constant_subgraphs_folded_with_onnx_reference():
    """A weight computed from constants (Reshape of a Constant, here) becomes an initializer;
    an Expand to 10^12 elements is left alone, never allocated."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx2burst.graph.constants import fold_constants

    w = np.arange(2 * 1 * 3 * 3, dtype=np.float32)
    nodes = [
        helper.make_node("Constant", [], ["wflat"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["wshape"], value=numpy_helper.from_array(np.array([2, 1, 3, 3], np.int64))),
        helper.make_node("Reshape", ["wflat", "wshape"], ["w"]),
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Constant", [], ["big"], value=numpy_helper.from_array(np.array([10**6, 10**6], np.int64))),
        helper.make_node("Expand", ["one", "big"], ["huge"]),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                          [vi("y", TensorProto.FLOAT, None), vi("huge", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    fold_constants(m, 17)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    np.testing.assert_array_equal(inits["w"], w.reshape(2, 1, 3, 3))
    assert "huge" not in inits and any(n.op_type == "Expand" for n in m.graph.node)
    assert not any(n.op_type == "Reshape" for n in m.graph.node)
