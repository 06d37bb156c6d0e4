"""Portable SNN files and convert --bsr/--ssc/--portable from the CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx.reference import ReferenceEvaluator

import fixtures_models as fm
from burstif_models import one_node_model
from onnx2burst import ops
from onnx2burst.cli import main
from onnx2burst.interop.portable import is_portable, make_portable
from onnx2burst.io import load_model, save_model


def test_portable_one_node_is_bit_exact():
    m = one_node_model(4, 3, 1.7, 4)
    p = make_portable(m)
    assert is_portable(p) and not is_portable(m)
    x = np.random.default_rng(0).normal(size=(8, 3, 4, 4)).astype(np.float32)
    vth = np.array([0.3, 0.0, 1.0], np.float32)
    ry, rs = ops.burst_if(x, vth, 4, 3, 1.7)
    for y, s in (ops.make_session(p, kernel=False).run(None, {"X": x, "vth": vth}),
                 ReferenceEvaluator(p).run(None, {"X": x, "vth": vth})):
        np.testing.assert_array_equal(y.view(np.int32), ry.view(np.int32))
        np.testing.assert_array_equal(s, rs)


def test_cli_convert_search_and_portable(tmp_path):
    m = fm.residual()
    src = save_model(m, tmp_path / "res.onnx")
    x = fm.inputs(m, 40)
    np.savez(tmp_path / "calib.npz", **{m.graph.input[0].name: x})
    out = tmp_path / "res.snn.onnx"
    r = CliRunner()
    res = r.invoke(main, ["convert", str(src), "--T", "4", "--psi", "2", "--calib", str(tmp_path / "calib.npz"),
                          "--calib-samples", "32", "--batch-size", "16", "--bsr", "--ssc", "--psi-max", "3",
                          "--tau-grid", "1:2:0.5", "--ssc-z", "1", "--search-samples", "16", "--portable", "-q",
                          "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "psi/tau" in res.output and "BSR check" in res.output and "SSC check" in res.output
    meta = {p.key: p.value for p in load_model(out).metadata_props}
    assert "+ 1 SE" in json.loads(meta["onnx2burst.search"])["ssc"]["rule"]
    snn = load_model(out)
    assert is_portable(snn)
    onnx.checker.check_model(snn, full_check=True)
    feeds = {m.graph.input[0].name: x[:8]}
    y_ort = ops.make_session(snn, kernel=False).run(None, feeds)[0]
    y_ref = ReferenceEvaluator(snn).run(None, feeds)[0]
    np.testing.assert_allclose(y_ort, y_ref, rtol=1e-5, atol=1e-6)
    # the portable file equals the kernel-run file it was inlined from
    res = r.invoke(main, ["convert", str(src), "--T", "4", "--psi", "2", "--calib", str(tmp_path / "calib.npz"),
                          "--calib-samples", "32", "--batch-size", "16", "-q", "-o", str(tmp_path / "k.onnx")])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["portable", str(tmp_path / "k.onnx")])
    assert res.exit_code == 0, res.output
    k = load_model(tmp_path / "k.onnx")
    p = load_model(tmp_path / "k.portable.onnx")
    yk = ops.make_session(k, kernel=None).run(None, feeds)[0]
    yp = ops.make_session(p, kernel=False).run(None, feeds)[0]
    np.testing.assert_allclose(yk, yp, rtol=1e-6, atol=1e-7)
