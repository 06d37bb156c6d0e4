"""The whole pipeline: onnx2burst.convert and the CLI."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

import onnx2burst
from onnx2burst import ops
from onnx2burst.cli import main
from onnx2burst.config import ConvertConfig, LayerConfig
from onnx2burst.convert import Converter
from onnx2burst.errors import ConfigError, UnsupportedModelError
from onnx2burst.io import file_sha256, load_model, save_model
from tests import fixtures_models as fm


def _calib(model, n=64, seed=7):
    return fm.inputs(model, n, seed=seed, low=-1, high=2)


def test_snn_converges_to_ann_at_large_T():
    m = fm.residual(seed=1)
    snn = onnx2burst.convert(m, _calib(m, 128), T=64, psi=8)
    x = fm.inputs(m, 200, seed=11, low=-1, high=2)
    ann = fm.run(m, x)[0]
    y = ops.make_session(snn).run(None, {"x": x})[0]
    rel = np.abs(y - ann).mean() / np.abs(ann).mean()
    agree = (y.argmax(1) == ann.argmax(1)).mean()
    assert rel < 0.03 and agree > 0.95, (rel, agree)


def test_output_file_checks_and_runs_without_kernel(tmp_path):
    m = fm.maxpool_net(softmax=True)
    src = save_model(m, tmp_path / "ann.onnx")
    snn = onnx2burst.convert(src, _calib(m), T=4, psi=2, per_timestep_output=True, batch_size=16)
    out = save_model(snn, tmp_path / "ann.snn.onnx", source=src)
    back = load_model(out)
    onnx.checker.check_model(back, full_check=True)
    x = _calib(m, 9, seed=2)
    with_kernel = ops.make_session(back, kernel=True).run(None, {"x": x})
    stock = ops.make_session(back, kernel=False).run(None, {"x": x})
    for a, b in zip(with_kernel, stock):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert with_kernel[0].shape == (9, 5) and with_kernel[1].shape == (4, 9, 5)
    meta = {p.key: p.value for p in back.metadata_props}
    assert meta["onnx2burst.T"] == "4" and meta["onnx2burst.calibration_samples"] == "64"
    assert meta["onnx2burst.source_sha256"] == file_sha256(src)
    assert meta["onnx2burst.version"] == onnx2burst.__version__
    layers = json.loads(meta["onnx2burst.layers"])
    assert [layer["name"] for layer in layers] == ["relu0", "relu1"]
    assert all(layer["psi"] == 2 and layer["tau"] == 1.0 and layer["vth_max"] > 0 for layer in layers)
    assert [o.name for o in back.graph.output] == ["y", "y_per_timestep"]


def test_per_layer_settings_and_options():
    m = fm.residual()
    cfg = ConvertConfig(T=4, psi=2, tau=1.5, layers={"relu1": LayerConfig(psi=5, tau=2.0)})
    r = Converter(m, cfg).run(_calib(m))
    attrs = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute}
             for n in r.model.graph.node if n.op_type == "BurstIF"}
    assert attrs["relu1"] == {"T": 4, "psi": 5, "tau": 2.0}
    assert attrs["relu0"] == {"T": 4, "psi": 2, "tau": 1.5}
    assert set(r.deltas) == {"relu0", "relu1", "relu2"}
    with pytest.raises(ConfigError, match="unknown option"):
        onnx2burst.convert(m, _calib(m), T=4, bogus=1)
    with pytest.raises(ConfigError, match="relu9"):
        Converter(m, ConvertConfig(layers={"relu9": LayerConfig(psi=2)}))
    with pytest.raises(ConfigError, match="--psi"):
        ConvertConfig(psi=0)
    plain = onnx2burst.convert(m, _calib(m), T=4, psi=2, bias_calibration=False)
    meta = {p.key: p.value for p in plain.metadata_props}
    assert meta["onnx2burst.bias_calibration"] == "false"


def test_unsupported_reported_before_data_is_read():
    m = fm.with_op_between("Tanh")
    with pytest.raises(UnsupportedModelError, match="mid_tanh"):
        onnx2burst.convert(m, "/nonexistent/data.npz", T=4)
    snn = onnx2burst.convert(m, _calib(m), T=4, psi=2, allow_inexact=True)
    assert [n.op_type for n in snn.graph.node].count("BurstIF") == 2


@pytest.mark.parametrize("mode", ["spikes", "avg", "lateral"])
def test_maxpool_modes(mode):
    m = fm.maxpool_net()
    snn = onnx2burst.convert(m, _calib(m), T=8, psi=4, maxpool=mode)
    types = [n.op_type for n in snn.graph.node]
    assert ("MaxPool" in types) == (mode in ("spikes", "lateral")) and ("AveragePool" in types) == (mode == "avg")
    assert ("CumSum" in types) == (mode == "lateral")


def test_relu6_fixed_batch_and_old_opset_convert():
    for m in (fm.relu6_net(), fm.fixed_batch_reshape(), fm.old_opset(), fm.constant_weights(), fm.gemm_mlp(),
              fm.batchnorm(decomposed=True)):
        snn = onnx2burst.convert(m, _calib(m, 16), T=4, psi=2)  # fixed_batch_reshape: batch 1 in the ANN
        onnx.checker.check_model(snn)
        x = fm.inputs(m, 1, seed=9)
        y = ops.make_session(snn).run(None, {"x": x})[0]
        assert y.shape == fm.run(m, x)[0].shape and np.isfinite(y).all()


# ------------------------------------------------------------------ CLI
def test_cli_help_has_examples():
    r = CliRunner()
    for cmd in ("convert", "inspect"):
        res = r.invoke(main, [cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output and f"onnx2burst {cmd}" in res.output


def test_cli_convert_and_inspect(tmp_path):
    m = fm.residual()
    src = save_model(m, tmp_path / "res.onnx")
    np.savez(tmp_path / "calib.npz", x=_calib(m, 40), labels=np.zeros(40, np.int64))
    r = CliRunner()
    res = r.invoke(main, ["convert", str(src), "--T", "4", "--psi", "2", "--calib", str(tmp_path / "calib.npz"),
                          "--calib-samples", "32", "--batch-size", "16", "-q"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "res.snn.onnx"
    assert out.is_file() and "3 neuron layer(s)" in res.output and str(out) in res.output
    meta = {p.key: p.value for p in load_model(out).metadata_props}
    assert meta["onnx2burst.calibration_samples"] == "32"
    res = r.invoke(main, ["inspect", str(src)])
    assert res.exit_code == 0 and "relu2" in res.output and "conv2" in res.output and "fc" in res.output


def test_cli_errors_are_clean(tmp_path):
    m = fm.residual()
    src = save_model(m, tmp_path / "res.onnx")
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 6, 6), np.float32))
    r = CliRunner()
    res = r.invoke(main, ["convert", str(src), "--calib", str(tmp_path / "bad.npy"), "-q"])
    assert res.exit_code == 1 and "[4, 3, 6, 6]" in res.output and "Traceback" not in res.output
    res = r.invoke(main, ["convert", str(src), "--calib", str(tmp_path / "bad.npy"), "-o", str(src)])
    assert res.exit_code == 1 and "is the input model" in res.output
    bad = save_model(fm.with_op_between("Sigmoid"), tmp_path / "sig.onnx")
    res = r.invoke(main, ["convert", str(bad), "--calib", str(tmp_path / "bad.npy"), "-q"])
    assert res.exit_code == 1 and "mid_sigmoid" in res.output


def test_a_subcommand_that_fails_to_import_is_reported_not_fatal(monkeypatch):
    from onnx2burst import cli

    monkeypatch.setitem(cli.COMMANDS, "broken-cmd", "onnx2burst.no_such_module:command")
    r = CliRunner()
    res = r.invoke(main, ["--help"])
    assert res.exit_code == 0 and "broken-cmd" in res.output
    res = r.invoke(main, ["broken-cmd"])
    assert res.exit_code != 0 and "subcommand 'broken-cmd' failed to load" in res.output
    assert "no_such_module" in res.output
