"""The search's sensitivity on any outputs (docs/method.md §6): the symmetric KL of class scores,
the normalised squared error of every other output, summed; BSR/SSC on a two-output model and
on the bundled detector; the SSC guard's task-neutral loss."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnx2burst
from onnx2burst import ops
from onnx2burst import search as S
from onnx2burst.cli import main
from onnx2burst.config import SearchConfig
from onnx2burst.errors import ConfigError
from onnx2burst.evaluation.metrics import log_softmax, symmetric_kl
from onnx2burst.evaluation.sensitivity import Sensitivity, Term, fit_sensitivity, plan_sensitivity
from onnx2burst.search.guard import AgreementProbe, ModelProbe
from onnx2burst.snn import read_snn

T, PSI = 4, 2
ROOT = Path(__file__).resolve().parents[1]


def _two_output_ann(seed: int = 0) -> onnx.ModelProto:
    """x [N,2,6,6] -> conv, relu (r1) -> conv, relu (r2) -> conv: ``heat`` [N,3,6,6] (raw map);
    r1 -> global pool -> gemm -> softmax: ``cls`` [N,4]. r2 reaches ``heat`` only."""
    rng = np.random.default_rng(seed)
    w = {"w1": rng.normal(0, 0.5, (4, 2, 3, 3)), "b1": rng.normal(0.1, 0.1, 4),
         "w2": rng.normal(0, 0.4, (4, 4, 3, 3)), "b2": rng.normal(0.05, 0.1, 4),
         "w3": rng.normal(0, 0.4, (3, 4, 1, 1)), "b3": rng.normal(0, 0.1, 3),
         "g": rng.normal(0, 0.8, (4, 4)), "c": rng.normal(0, 0.1, 4)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             n("Relu", ["c2"], ["r2"], name="relu2"),
             n("Conv", ["r2", "w3", "b3"], ["heat"], name="head"),
             n("GlobalAveragePool", ["r1"], ["gp"], name="gap"),
             n("Flatten", ["gp"], ["flat"], name="flat"),
             n("Gemm", ["flat", "g", "c"], ["z"], name="fc", transB=1),
             n("Softmax", ["z"], ["cls"], name="softmax", axis=-1)]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "two_outputs", [vi("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                          [vi("heat", TensorProto.FLOAT, ["N", 3, 6, 6]), vi("cls", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in w.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _data(n=40, seed=3):
    return np.random.default_rng(seed).normal(0.3, 1.0, (n, 2, 6, 6)).astype(np.float32)


def _run(model, x, kernel=False):
    sess = ops.make_session(model, kernel=kernel)
    return sess.run([o.name for o in model.graph.output], {"x": x})


def _direct(ann_out, snn_out, var_heat):
    """S per sample written out: KL of the softmax outputs + the heat map's squared error / Var."""
    (ha, ca), (hs, cs) = ann_out, snn_out
    kl = 0.5 * ((ca - cs) * (np.log(ca.astype(np.float64)) - np.log(cs.astype(np.float64)))).sum(axis=1)
    mse = ((hs.astype(np.float64) - ha) ** 2).reshape(len(ha), -1).mean(axis=1) / var_heat
    return kl + mse


@pytest.fixture(scope="module")
def toy():
    ann, x = _two_output_ann(), _data()
    snn = onnx2burst.convert(ann, x, T=T, psi=PSI, threads=1)
    return ann, snn, x


def test_terms_against_a_direct_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 2, (7, 5)), rng.normal(0, 2, (7, 5))
    pa, pb = np.exp(log_softmax(a)), np.exp(log_softmax(b))
    assert np.allclose(Term("p", "kl", "probs")(pa, pb), symmetric_kl(a, b), rtol=1e-9)
    assert np.allclose(Term("l", "kl", "logprobs")(log_softmax(a), log_softmax(b)), symmetric_kl(a, b), rtol=1e-9)
    assert np.array_equal(Term("z", "kl")(a, b), symmetric_kl(a, b))
    # a class axis other than the last: the KL per position, averaged per sample
    a4, b4 = rng.normal(0, 1, (3, 5, 2, 2)), rng.normal(0, 1, (3, 5, 2, 2))
    want = symmetric_kl(a4, b4, axis=1).reshape(3, -1).mean(axis=1)
    assert np.allclose(Term("m", "kl", axis=1)(a4, b4), want)
    h, g = rng.normal(1, 3, (6, 2, 3)), rng.normal(1, 3, (6, 2, 3))
    sens = fit_sensitivity(Sensitivity((Term("h", "mse"),)), [[h[:4]], [h[4:]]])
    assert sens.terms[0].scale == pytest.approx(1.0 / h.var())
    assert np.allclose(sens([h], [g]), ((g - h) ** 2).reshape(6, -1).mean(axis=1) / h.var())
    assert np.array_equal(sens([h], [h]), np.zeros(6))


def test_auto_picks_kl_for_class_scores_and_the_error_otherwise(toy):
    ann, snn, _ = toy
    plan = plan_sensitivity(ann, "auto")
    assert [(t.output, t.kind, t.form) for t in plan.terms] == [("heat", "mse", "logits"), ("cls", "kl", "probs")]
    assert [t.kind for t in plan_sensitivity(ann, "mse").terms] == ["mse", "mse"]
    assert [t.kind for t in plan_sensitivity(ann, "kl").terms] == ["kl", "kl"]
    assert [t.kind for t in plan_sensitivity(snn, "auto").terms] == ["mse", "kl"]  # the SNN keeps the head
    # a classifier's [N, K] logits: the paper's KL; a single regression value: the error
    from snn_fixtures import ann_model
    assert [(t.kind, t.form) for t in plan_sensitivity(ann_model()).terms] == [("kl", "logits")]
    one = ann_model()
    one.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    assert plan_sensitivity(one).terms[0].kind == "mse"
    unknown = ann_model()
    unknown.graph.output[0].type.tensor_type.ClearField("shape")  # decided on the data
    assert plan_sensitivity(unknown).terms[0].kind == "auto"
    rng = np.random.default_rng(0)
    assert fit_sensitivity(plan_sensitivity(unknown), [[rng.normal(size=(5, 3))]]).terms[0].kind == "kl"
    assert fit_sensitivity(plan_sensitivity(unknown), [[rng.normal(size=(5, 3, 2))]]).terms[0].kind == "mse"
    with pytest.raises(ConfigError, match="--sensitivity"):
        plan_sensitivity(ann, "l2")
    with pytest.raises(ConfigError, match="--sensitivity"):
        SearchConfig(bsr=True, sensitivity="l2")


def test_guard_loss_is_a_changed_class_or_the_error():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (50, 4)), rng.normal(0, 1, (50, 4))
    cls = Sensitivity((Term("z", "kl"),))
    assert np.array_equal(cls.loss([a], [b]), (a.argmax(1) != b.argmax(1)).astype(float))
    both = fit_sensitivity(Sensitivity((Term("z", "kl"), Term("h", "mse"))), [[a, a]])
    assert np.allclose(both.loss([a, a], [b, b]), both([a, a], [b, b]))


@pytest.mark.parametrize("layer,kind,value", [("relu1", "tau", 2.0), ("relu2", "tau", 3.0),
                                              ("relu1", "psi", 1), ("relu2", "psi", 3)])
def test_tables_equal_the_changed_snn_on_every_output(toy, layer, kind, value):
    """S_i(k) is the direct sum over both outputs of a full run with only layer i changed;
    relu2 reaches one output, the other keeps the baseline's value."""
    ann, snn, x = toy
    view = {n.name: n for n in read_snn(snn).neurons}
    name = next(k for k in view if k.startswith(layer))
    m = S.measure(ann, snn, x, psis=(1, 2, 3) if kind == "psi" else None, taus=(1.0, 2.0, 3.0) if kind == "tau" else None,
                  batch_size=16, threads=1, mean_correct=False)
    changed = onnx.ModelProto()
    changed.CopyFrom(snn)
    node = next(nd for nd in changed.graph.node if nd.name == view[name].node.name)
    for at in node.attribute:
        if at.name == kind:
            if kind == "tau":
                at.f = float(value)
            else:
                at.i = int(value)
    if kind == "psi":  # measure's default threshold refit: vth * psi / k
        vth_name = node.input[1]
        for t in changed.graph.initializer:
            if t.name == vth_name:
                v = numpy_helper.to_array(t)
                t.CopyFrom(numpy_helper.from_array((v * np.float32(PSI) / np.float32(value)).astype(np.float32),
                                                   vth_name))
    a_out = _run(ann, x)
    s_out = _run(changed, x, kernel=None)
    var = float(np.var(a_out[0].astype(np.float64)))
    want = _direct(a_out, s_out, var).mean()
    tb = m.psi if kind == "psi" else m.tau
    assert m.sensitivity.summary() == "symmetric KL of cls + normalised squared error of heat"
    assert tb.S[tb.layers.index(name), tb.column(value)] == pytest.approx(want, rel=1e-4)
    assert m.baseline_S == pytest.approx(_direct(a_out, _run(snn, x, kernel=None), var).mean(), rel=1e-4)


def test_guard_probes_measure_the_error_of_a_detector_like_model(toy):
    ann, snn, x = toy
    mp = ModelProbe(ann, snn, x, samples=None, batch_size=16, threads=1)
    assert not mp.sens.classes_only
    L, se = mp.loss(snn)
    assert L == 0.0 and se == 0.0
    name = read_snn(snn).neurons[1].name
    ap = AgreementProbe(ann, snn, x, samples=None, batch_size=16, threads=1, mean_correct=False,
                        sensitivity=mp.sens)
    (L, se), = ap.losses([(name, 4.0)]).values()
    assert L > 0  # a much higher threshold: a larger normalised error than the SNN's
    changed = onnx.ModelProto()
    changed.CopyFrom(snn)
    node = next(nd for nd in changed.graph.node if nd.name == read_snn(snn).neurons[1].node.name)
    next(at for at in node.attribute if at.name == "tau").f = 4.0
    assert mp.loss(changed)[0] == pytest.approx(L, rel=1e-4)


def test_bsr_and_ssc_run_on_the_bundled_detector(tmp_path):
    """The real detector (4 outputs: two raw head maps, decoded boxes and scores): BSR and SSC
    choose, the SNN keeps every output close to the ANN's."""
    ann = ROOT / "models" / "zoo" / "det_fmnist.onnx"
    calib = ROOT / "models" / "data" / "det_fmnist_calib.npz"
    out = tmp_path / "det.snn.onnx"
    r = CliRunner().invoke(main, ["convert", str(ann), "--T", "4", "--psi", "2", "--calib", str(calib),
                                  "--calib-samples", "64", "--bsr", "--ssc", "--psi-max", "3", "--tau-grid", "1,1.5,2",
                                  "--search-samples", "16", "--threads", "1", "-q", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "normalised squared error of head_s4, head_s8, boxes, scores" in r.output
    model = onnx.load(str(out))
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == "onnx2burst.search"))
    assert meta["bsr"] is not None and meta["ssc"] is not None
    assert {s["psi"] for s in meta["settings"].values()} <= {1, 2, 3}
    x = np.load(calib)["input"][64:96]
    a_onnx = onnx.load(str(ann))
    feed = a_onnx.graph.input[0].name
    a = ops.make_session(a_onnx, kernel=False).run(None, {feed: x})
    s = ops.make_session(model).run(None, {feed: x})
    sens = fit_sensitivity(plan_sensitivity(a_onnx, "auto"), [a])
    # on unseen canvases, every output's error well below its variance (an SNN that outputs the
    # ANN's mean scores 1.0; the plain conversion at T=4, psi=2 scores 0.06, 0.07, 0.002, 0.42)
    for t, av, sv in zip(sens.terms, a, s):
        assert t.kind == "mse" and float(t(av, sv).mean()) < 0.5, t.output


def test_search_on_a_detector_skips_the_class_r_sweep(tmp_path):
    """`search` reports the sensitivity it used; its r sweep (top-1, class agreement) is skipped
    with a note for outputs that are not class scores, and the SSC choice is still written."""
    ann = ROOT / "models" / "zoo" / "det_fmnist.onnx"
    calib = ROOT / "models" / "data" / "det_fmnist_calib.npz"
    r = CliRunner().invoke(main, ["search", str(ann), "--T", "4", "--psi", "2", "--calib", str(calib),
                                  "--calib-samples", "32", "--ssc", "--tau-grid", "1,2", "--search-samples", "8",
                                  "--r-sweep", "1,2", "--threads", "1", "-q", "--out", str(tmp_path / "rep"),
                                  "-o", str(tmp_path / "det.snn.onnx")])
    assert r.exit_code == 0, r.output
    assert "no r sweep" in r.output and "normalised squared error of head_s4" in r.output
    assert not (tmp_path / "rep" / "r_sweep.png").exists() and (tmp_path / "det.snn.onnx").exists()
    doc = json.loads((tmp_path / "rep" / "search.json").read_text())
    assert doc["r_sweep"] is None
    assert [t["kind"] for t in doc["measurements"]["ssc"]["sensitivity"]["terms"]] == ["mse"] * 4
