"""A model with two inputs goes through every stage that feeds data: calibration, BSR/SSC with
the guard, evaluation and the CLI (one data path, ``onnx2burst.data``)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnx2burst.cli import main
from onnx2burst.config import CalibrationConfig, ConvertConfig, GuardConfig, SearchConfig
from onnx2burst.convert import Converter
from onnx2burst.evaluation import evaluate
from onnx2burst.search import tune
from onnx2burst.snn import read_snn


def two_input_ann(seed: int = 0) -> onnx.ModelProto:
    """a[N,1,8,8], b[N,2,8,8] -> conv each -> add -> relu -> conv -> relu -> pool -> gemm."""
    r = np.random.default_rng(seed)
    f = np.float32
    w = {"wa": r.normal(size=(4, 1, 3, 3)) * 0.5, "wb": r.normal(size=(4, 2, 3, 3)) * 0.4, "bb": r.normal(size=4) * 0.1,
         "w2": r.normal(size=(4, 4, 3, 3)) * 0.3, "b2": r.normal(size=4) * 0.1, "g": r.normal(size=(3, 64)) * 0.4,
         "c": np.zeros(3)}
    n = helper.make_node
    nodes = [n("Conv", ["a", "wa"], ["ca"], name="conv_a", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             n("Conv", ["b", "wb", "bb"], ["cb"], name="conv_b", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             n("Add", ["ca", "cb"], ["s"], name="add"),
             n("Relu", ["s"], ["r1"], name="relu1"),
             n("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             n("Relu", ["c2"], ["r2"], name="relu2"),
             n("AveragePool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             n("Flatten", ["p"], ["fl"], name="flat"),
             n("Gemm", ["fl", "g", "c"], ["logits"], name="fc", transB=1)]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "two_inputs", [vi("a", TensorProto.FLOAT, ["N", 1, 8, 8]),
                                                vi("b", TensorProto.FLOAT, ["N", 2, 8, 8])],
                          [vi("logits", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(v.astype(f), k) for k, v in w.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def two_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {"a": r.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32), "b": r.uniform(0, 1, (n, 2, 8, 8)).astype(np.float32)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("two")
    onnx.save(two_input_ann(), d / "ann.onnx")
    np.savez(d / "calib.npz", **two_inputs(64, 1))
    np.savez(d / "guard.npz", **two_inputs(48, 2))
    test = two_inputs(40, 3)
    np.savez(d / "test.npz", **test, labels=np.zeros(40, np.int64))
    return d


def test_search_guard_and_evaluation_take_two_inputs(files):
    conv = Converter(files / "ann.onnx", ConvertConfig(T=8, psi=4, calibration=CalibrationConfig(samples=64,
                                                                                                threads=1)))
    data = conv.load_data(files / "calib.npz")
    cfg = SearchConfig(bsr=True, ssc=True, psi_max=4, tau_grid="1,1.5,2", samples=32,
                       guard=GuardConfig(data=files / "guard.npz", samples=48, tol=100.0))
    res = tune(conv, data, cfg)
    names = [n.name for n in read_snn(res.model).neurons]
    assert set(res.settings) == set(names) == {"relu1", "relu2"}
    assert res.guard is not None and res.guard.samples == 48
    ev = evaluate(files / "ann.onnx", res.model, files / "test.npz", batch_size=16, threads=1)
    assert ev.samples == 40 and ev.ann.top1 is not None
    assert ev.agreement >= 0.8, ev.agreement   # the SNN tracks its ANN through both inputs


def test_cli_convert_and_eval_with_two_inputs(files, tmp_path):
    out = tmp_path / "snn.onnx"
    res = CliRunner().invoke(main, ["convert", str(files / "ann.onnx"), "--calib", str(files / "calib.npz"),
                                    "--T", "4", "--ssc", "--tau-grid", "1,2", "--search-samples", "16", "-q",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["eval", str(files / "ann.onnx"), str(out), "--data", str(files / "test.npz"),
                                    "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["samples"] == 40


def test_bsr_budget_above_psi_max_names_both_options(files):
    conv = Converter(files / "ann.onnx", ConvertConfig(T=4, psi=4))
    data = conv.load_data(files / "calib.npz")
    with pytest.raises(Exception, match="--psi-max 2") as e:
        tune(conv, data, SearchConfig(bsr=True, psi_max=2))
    assert "--psi" in str(e.value)
