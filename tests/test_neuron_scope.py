"""What becomes a neuron: only a Relu/Clip on data that reaches it from a model input, also
through If/Loop/Scan bodies reading the outer scope (docs/method.md §3)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnx2burst
from onnx2burst.cli import main
from onnx2burst.errors import UnsupportedModelError
from onnx2burst.evaluation import evaluate
from tests import fixtures_models as fm

vi, node = helper.make_tensor_value_info, helper.make_node


def _model(nodes, inits, opset=17):
    g = helper.make_graph(nodes, "scope", [vi("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                          [vi("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def relu_on_weights(seed: int = 0, op: str = "Relu") -> onnx.ModelProto:
    """x -> Conv(x, Relu(W)) -> Relu -> GAP -> Flatten -> Gemm: the first Relu acts on a weight."""
    r = np.random.default_rng(seed)
    act = node("Relu", ["w_raw"], ["w"], name="relu_w") if op == "Relu" else \
        node("Clip", ["w_raw", "zero"], ["w"], name="relu_w")
    nodes = [act,
             node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c"], ["r"], name="relu"),
             node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             node("Flatten", ["p"], ["f"], name="flat"),
             node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    inits = {"w_raw": r.normal(size=(4, 2, 3, 3)).astype(np.float32), "b": np.zeros(4, np.float32),
             "wf": r.normal(size=(3, 4)).astype(np.float32), "zero": np.zeros((), np.float32)}
    return _model(nodes, inits)


def relu_in_subgraph(op: str = "If") -> onnx.ModelProto:
    """x -> Conv -> Relu(r0) -> <op whose body reads r0 from the outer scope> -> GAP -> Gemm."""
    r = np.random.default_rng(1)
    body_out = vi("b_out", TensorProto.FLOAT, None)
    then_g = helper.make_graph([node("Relu", ["r0"], ["b_out"], name="inner_relu")], "then", [], [body_out])
    else_g = helper.make_graph([node("Identity", ["r0"], ["b_out"], name="inner_id")], "else", [], [body_out])
    inner = node("If", ["cond"], ["s"], name="branch", then_branch=then_g, else_branch=else_g)
    nodes = [node("Conv", ["x", "w0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c0"], ["r0"], name="relu0"), inner,
             node("GlobalAveragePool", ["s"], ["p"], name="gap"), node("Flatten", ["p"], ["f"], name="flat"),
             node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    inits = {"w0": r.normal(size=(4, 2, 3, 3)).astype(np.float32), "wf": r.normal(size=(3, 4)).astype(np.float32),
             "cond": np.array(True)}
    return _model(nodes, inits)


@pytest.mark.parametrize("op", ["Relu", "Clip"])
def test_a_relu_on_weights_is_not_a_neuron(op, tmp_path):
    ann = relu_on_weights(op=op)
    onnx.checker.check_model(ann)
    x = fm.inputs(ann, 256, seed=3)
    conv = onnx2burst.Converter(ann, onnx2burst.ConvertConfig(T=16, psi=4))
    assert conv.analysis.neuron_names == ["relu"]
    snn = conv.run(x[:128]).model
    ev = evaluate(ann, snn, x[128:], threads=1)
    assert ev.agreement >= 0.9, ev.agreement   # the SNN runs and tracks the ANN


def test_relu_in_a_subgraph_reading_spikes_is_refused_by_name(tmp_path):
    ann = relu_in_subgraph()
    onnx.checker.check_model(ann)
    with pytest.raises(UnsupportedModelError, match="branch") as e:
        onnx2burst.Converter(ann, onnx2burst.ConvertConfig(T=4, psi=4))
    assert "inner_relu" in str(e.value) and "per timestep" in str(e.value)
    onnx.save(ann, tmp_path / "ann.onnx")
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "ann.onnx")])
    assert "branch" in res.output and "inner_relu" in res.output, res.output
    np.save(tmp_path / "x.npy", fm.inputs(ann, 16))
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "x.npy"),
                                    "-o", str(tmp_path / "snn.onnx")])
    assert res.exit_code != 0 and "branch" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "snn.onnx").exists()


def test_subgraph_on_spikes_is_refused_even_with_allow_inexact():
    """Run per timestep its body would not give a runnable or a correct SNN: always refused."""
    with pytest.raises(UnsupportedModelError, match="branch"):
        onnx2burst.convert(relu_in_subgraph(), fm.inputs(relu_in_subgraph(), 16), T=4, psi=4, allow_inexact=True)
