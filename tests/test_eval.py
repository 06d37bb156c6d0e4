"""``onnx2burst eval`` and ``report.evaluate`` on the hand-built toy pair."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnx2burst.cli import main
from onnx2burst.data import load_data
from onnx2burst.evaluation import evaluate
from onnx2burst.evaluation.metrics import mean_symmetric_kl
from snn_fixtures import ANALOG_MACS, ANN_MACS, FANOUT, ann_model, reference_run, sample_data, snn_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    onnx.save(ann_model(), d / "ann.onnx")
    onnx.save(snn_model(T=4, psi=2), d / "snn.onnx")
    x = sample_data(100, seed=7)
    y = np.random.default_rng(0).integers(0, 3, 100)
    np.savez(d / "data.npz", input=x, labels=y)
    np.savez(d / "nolabels.npz", x=x)
    return d, x, y


def test_evaluate_matches_direct(files):
    d, x, y = files
    r = evaluate(d / "ann.onnx", d / "snn.onnx", d / "data.npz", batch_size=32, threads=1)
    a = ort.InferenceSession(str(d / "ann.onnx")).run(None, {"x": x})[0]
    s, spikes = reference_run(snn_model(T=4, psi=2), x)
    assert r.samples == 100 and r.T == 4 and r.batch_size == 32
    assert r.ann.top1 == pytest.approx((a.argmax(1) == y).mean())
    assert r.snn.top1 == pytest.approx((s.argmax(1) == y).mean())
    assert r.agreement == pytest.approx((a.argmax(1) == s.argmax(1)).mean())
    assert r.sym_kl == pytest.approx(mean_symmetric_kl(a, s), rel=1e-6)
    e = r.energy
    assert [l.name for l in e.layers] == list(FANOUT)
    for l in e.layers:
        assert l.spikes == pytest.approx(spikes[l.name].mean(), rel=1e-6)
    assert e.synops == pytest.approx(sum(spikes[k].mean() * f for k, f in FANOUT.items()), rel=1e-6)
    assert e.ann_macs == ANN_MACS and e.analog_macs == ANALOG_MACS
    assert e.e_snn_pj == pytest.approx(e.synops * 0.9 + ANALOG_MACS * 4.6)
    assert r.ann.ms_per_sample > 0 and r.snn.ms_per_sample > 0


def test_without_labels_and_limit(files):
    d, x, _ = files
    r = evaluate(ann_model(), snn_model(T=4, psi=2), d / "nolabels.npz", limit=10)
    assert r.samples == 10 and r.ann.top1 is None and r.snn.top1 is None
    assert 0 <= r.agreement <= 1


def test_cli_json(files):
    d, *_ = files
    res = CliRunner().invoke(main, ["eval", str(d / "ann.onnx"), str(d / "snn.onnx"), "--data",
                                    str(d / "data.npz"), "--batch-size", "64", "--json", "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["samples"] == 100 and set(out["ann"]) == {"top1", "ms_per_sample"}
    assert len(out["energy"]["layers"]) == 3 and out["energy"]["ratio"] > 0


def test_cli_table(files):
    d, *_ = files
    res = CliRunner().invoke(main, ["eval", str(d / "ann.onnx"), str(d / "snn.onnx"), "--data",
                                    str(d / "data.npz"), "--limit", "20"])
    assert res.exit_code == 0, res.output
    assert "top-1 agreement" in res.output and "relu2" in res.output


def test_cli_errors(files, tmp_path):
    d, *_ = files
    np.savez(tmp_path / "bad.npz", a=np.zeros(3), b=np.zeros(3))
    res = CliRunner().invoke(main, ["eval", str(d / "ann.onnx"), str(d / "snn.onnx"),
                                    "--data", str(tmp_path / "bad.npz")])
    assert res.exit_code != 0 and "bad.npz: has arrays ['a', 'b']" in res.output and "missing: ['x']" in res.output
    res = CliRunner().invoke(main, ["eval", str(d / "ann.onnx"), str(d / "ann.onnx"),
                                    "--data", str(d / "data.npz")])
    assert res.exit_code != 0 and "no BurstIF" in res.output
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    res = CliRunner().invoke(main, ["eval", str(d / "ann.onnx"), str(tmp_path / "junk.onnx"),
                                    "--data", str(d / "data.npz")])
    assert res.exit_code == 1 and "not a readable ONNX model" in res.output


def test_load_data_forms(files):
    """Evaluation reads its data through the one data path: pairs, arrays, .npz with labels."""
    d, x, y = files
    ann = onnx.load(d / "ann.onnx")
    assert (load_data((x, y), ann).labels == y).all()
    assert load_data(x, ann).labels is None
    ds = load_data(d / "data.npz", ann)
    assert [next(iter(b.values())).shape[0] for b in ds.batches(40)] == [40, 40, 20]
    assert len(load_data(d / "data.npz", ann, samples=30)) == 30
