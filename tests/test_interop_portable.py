"""Portable SNN files and convert --bsr/--ssc/--portable from the CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx.reference import ReferenceEvaluator

import fixtures_models as fm
from burstif_models import one_node_model
from onnx2burst import ops
from onnx2burst.cli import main
from onnx2burst.interop.portable import fold_back, is_portable, make_portable
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


def _converted(tmp_path, model, **options):
    import onnx2burst

    x = fm.inputs(model, 48)
    snn = onnx2burst.convert(model, x, T=4, psi=3, samples=32, batch_size=16, **options)
    return snn, x


@pytest.mark.parametrize("case", ["residual", "lateral_maxpool", "per_timestep", "mixed_psi_tau"])
def test_fold_back_restores_the_snn_byte_for_byte(tmp_path, case):
    """make_portable records each neuron; fold_back puts the BurstIF nodes back exactly."""
    if case == "lateral_maxpool":
        snn, _ = _converted(tmp_path, fm.maxpool_net(seed=3), maxpool="lateral")
    elif case == "per_timestep":
        snn, _ = _converted(tmp_path, fm.residual(seed=4), per_timestep_output=True)
    elif case == "mixed_psi_tau":
        snn, _ = _converted(tmp_path, fm.residual(seed=5), layers={"relu1": {"psi": 5, "tau": 1.5}})
    else:
        snn, _ = _converted(tmp_path, fm.residual(seed=2))
    p = make_portable(snn)
    assert is_portable(p) and not any(n.domain == ops.DOMAIN for n in p.graph.node)
    assert fold_back(p).SerializeToString() == snn.SerializeToString()
    assert fold_back(snn) is snn   # not portable: unchanged


def test_every_command_reads_a_portable_file(tmp_path):
    """eval counts its spikes, search --snn, export-torch and export-nir run on it as on its SNN."""
    pytest.importorskip("torch")
    pytest.importorskip("nir")
    m = fm.residual(seed=6)
    snn, x = _converted(tmp_path, m)
    ann_p, snn_p, port_p = tmp_path / "ann.onnx", tmp_path / "m.snn.onnx", tmp_path / "m.portable.onnx"
    save_model(m, ann_p)
    save_model(snn, snn_p)
    save_model(make_portable(snn), port_p)
    np.savez(tmp_path / "d.npz", **{m.graph.input[0].name: x})
    r = CliRunner()
    outs = {}
    for name, path in (("snn", snn_p), ("portable", port_p)):
        res = r.invoke(main, ["eval", str(ann_p), str(path), "--data", str(tmp_path / "d.npz"), "--json",
                              "--threads", "1"])
        assert res.exit_code == 0, res.output
        outs[name] = json.loads(res.output)
        res = r.invoke(main, ["export-torch", str(path), "-o", str(tmp_path / f"{name}.pt")])
        assert res.exit_code == 0, res.output
        res = r.invoke(main, ["export-nir", str(path), "-o", str(tmp_path / f"{name}.nir")])
        assert res.exit_code == 0, res.output
    assert outs["portable"]["energy"] == outs["snn"]["energy"] and outs["snn"]["energy"]["spikes"] > 0
    import nir
    import torch

    feeds = torch.from_numpy(x[:8])
    y = [torch.jit.load(str(tmp_path / f"{n}.pt"))(feeds).numpy() for n in ("snn", "portable")]
    np.testing.assert_array_equal(y[0], y[1])
    g = [nir.read(str(tmp_path / f"{n}.nir")) for n in ("snn", "portable")]
    assert sorted(g[0].nodes) == sorted(g[1].nodes) and sorted(g[0].edges) == sorted(g[1].edges)
    for k, node in g[0].nodes.items():
        for field, v in vars(node).items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(v, getattr(g[1].nodes[k], field), err_msg=f"{k}.{field}")
    res = r.invoke(main, ["search", str(ann_p), "--snn", str(port_p), "--calib", str(tmp_path / "d.npz"),
                          "--T", "4", "--psi", "3", "--calib-samples", "32", "--batch-size", "16", "--bsr",
                          "--psi-max", "3", "--search-samples", "16", "--out", str(tmp_path / "s"), "-q"])
    assert res.exit_code == 0, res.output


def test_an_edited_portable_file_is_refused_in_one_line(tmp_path):
    """A node outside a neuron reading a tensor inside it: the record no longer fits the graph."""
    m = fm.residual(seed=7)
    snn, x = _converted(tmp_path, m)
    p = make_portable(snn)
    inner = next(o for n in p.graph.node for o in n.output if o.endswith("__1") and n.op_type == "Scan")
    last = p.graph.output[0].name
    for n in p.graph.node:
        n.output[:] = [f"{o}_pre" if o == last else o for o in n.output]
    p.graph.node.append(onnx.helper.make_node("Identity", [f"{last}_pre"], [last], name="spy"))
    p.graph.node.append(onnx.helper.make_node("Identity", [inner], ["peek"], name="peek"))
    save_model(m, tmp_path / "ann.onnx")
    save_model(p, tmp_path / "edited.onnx")
    np.savez(tmp_path / "d.npz", **{m.graph.input[0].name: x})
    for args in (["eval", str(tmp_path / "ann.onnx"), str(tmp_path / "edited.onnx"), "--data", str(tmp_path / "d.npz")],
                 ["export-nir", str(tmp_path / "edited.onnx"), "-o", str(tmp_path / "e.nir")]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1, res.output
        assert "reads a tensor inside the neuron" in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "e.nir").exists()
