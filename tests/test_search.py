"""Sensitivity tables and the BSR/SSC searches (docs/method.md §6-§8) on the toy SNN."""
from __future__ import annotations

import itertools
import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from onnx2burst.cli import main
from onnx2burst.errors import ConfigError
from onnx2burst import search as S
from onnx2burst.config import SearchConfig, parse_grid
from onnx2burst.search import DEFAULT_TAUS
from onnx2burst.search.graphs import mean_corrected
from onnx2burst.snn import read_snn
from onnx2burst.evaluation.metrics import mean_symmetric_kl
from snn_fixtures import ann_model, reference_run, sample_data, snn_model


def _burst_nodes(model):
    return [n.node for n in read_snn(model).neurons]

T, PSI = 4, 2
PSIS = (1, 2, 3)
TAUS = (1.0, 1.5, 3.0)


@pytest.fixture(scope="module")
def setup():
    ann, snn = ann_model(), snn_model(T=T, psi=PSI)
    x = sample_data(48, seed=11)
    m = S.measure(ann, snn, x, psis=PSIS, taus=TAUS, batch_size=20, threads=1, mean_correct=False)
    vth = {t.name[4:]: numpy_helper.to_array(t) for t in snn.graph.initializer if t.name.startswith("vth_")}
    a = ort.InferenceSession(ann.SerializeToString()).run(None, {"x": x})[0]
    return ann, snn, x, m, vth, a


@pytest.mark.parametrize("layer,kind,value", [("relu1", "psi", 1), ("relu2", "psi", 3), ("relu3", "psi", 1),
                                              ("relu1", "tau", 3.0), ("relu2", "tau", 1.5), ("relu3", "tau", 3.0)])
def test_matches_the_changed_snn(setup, layer, kind, value):
    """S_i(k) and E_i(k) equal a full run of the SNN with only layer i changed."""
    ann, snn, x, m, vth, a = setup
    if kind == "psi":
        v = dict(vth)
        v[layer] = (vth[layer] * np.float32(PSI) / np.float32(value)).astype(np.float32)  # scaled_vth
        changed = snn_model(T=T, psi=PSI, vth=v, psis={layer: value})
    else:
        changed = snn_model(T=T, psi=PSI, vth=vth, tau={layer: value})
    logits, spikes = reference_run(changed, x)
    table = m.psi if kind == "psi" else m.tau
    i, j = table.layers.index(layer), table.column(value)
    assert table.S[i, j] == pytest.approx(mean_symmetric_kl(a, logits), rel=1e-5, abs=1e-12)
    assert table.spikes[i, j] == pytest.approx(spikes[layer].mean(), rel=1e-6)
    assert table.synops[i, j] == pytest.approx(table.spikes[i, j] * table.fanout[i])


@pytest.mark.parametrize("layer,value", [("relu1", 3.0), ("relu2", 1.5)])
def test_standard_error_of_the_paired_difference(setup, layer, value):
    """se[i, k]: std of (sample KL with layer i changed - sample KL of the baseline) / sqrt(n)."""
    from onnx2burst.evaluation.metrics import symmetric_kl

    ann, snn, x, m, vth, a = setup
    base, _ = reference_run(snn, x)
    changed, _ = reference_run(snn_model(T=T, psi=PSI, vth=vth, tau={layer: value}), x)
    d = symmetric_kl(a, changed) - symmetric_kl(a, base)
    i, j = m.tau.layers.index(layer), m.tau.column(value)
    assert m.tau.se[i, j] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=1e-4, abs=1e-12)
    assert np.all(m.tau.se[:, m.tau.column(1.0)] == 0)


def test_ssc_with_a_noise_margin(setup):
    """z > 0: the DP optimum over S + z*SE, never cheaper than z = 0, and z = 0 is the plain rule."""
    *_, m, _, _ = setup
    E = m.tau.energy("spikes")
    plain = S.choose_ssc(m.tau, r=1.5)
    assert S.choose_ssc(m.tau, r=1.5, z=0.0).choice == plain.choice
    for z in (0.5, 2.0):
        c = S.choose_ssc(m.tau, r=1.5, z=z)
        assert c.budget == pytest.approx(plain.budget)  # the baseline column has SE 0
        assert c.chosen[0] == pytest.approx(_brute(m.tau.S + z * m.tau.se, E, c.budget))
        assert c.chosen[0] >= plain.chosen[0] - 1e-9
    with pytest.raises(ConfigError, match="z must be >= 0"):
        S.choose_ssc(m.tau, z=-1)


def test_per_sample_kl_is_recorded(setup, layer="relu1", value=3.0):
    """Table.kl[i, k, n]: sample n's KL with layer i at candidate k; its mean is S."""
    from onnx2burst.evaluation.metrics import symmetric_kl

    ann, snn, x, m, vth, a = setup
    changed, _ = reference_run(snn_model(T=T, psi=PSI, vth=vth, tau={layer: value}), x)
    i, j = m.tau.layers.index(layer), m.tau.column(value)
    assert m.tau.kl.shape == m.tau.S.shape + (len(x),)
    np.testing.assert_allclose(m.tau.kl[i, j], symmetric_kl(a, changed), rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(m.tau.kl.mean(-1), m.tau.S, rtol=1e-9, atol=1e-15)


def _kl_table(kl, spikes):
    from onnx2burst.search import Table

    L, J, _ = kl.shape
    return Table("tau", tuple(f"l{i}" for i in range(L)), (1.0, 2.0, 3.0)[:J], (1.0,) * L, kl.mean(-1), spikes,
                 spikes, (1.0,) * L, None, kl)


def test_held_out_budget_is_r_when_the_samples_agree():
    """No sample-to-sample noise: the held-out folds see what the whole set sees, r stays."""
    kl = np.repeat(np.array([[[1.0], [0.9], [1.3]], [[1.0], [1.2], [1.1]], [[1.0], [0.95], [1.4]]]), 8, axis=2)
    spikes = np.array([[10.0, 6.0, 3.0]] * 3)
    t = _kl_table(kl, spikes)
    for r in (1.0, 1.1):
        assert S.held_out_r(t, r=r, folds=4) == r
        assert S.choose_ssc(t, r=r, folds=4).choice == S.choose_ssc(t, r=r).choice


def test_held_out_budget_removes_the_selection_bias():
    """Every compressing candidate truly costs sensitivity (+0.05) but is measured with noise:
    the paper's rule spends the budget on the ones whose noise came out low, so its choice
    breaks the budget in truth. The held-out budget is lower in most draws, its choice never
    cheaper, and it breaks the true budget less on average."""
    L, n, cost = 10, 40, 0.05
    spikes = np.tile([10.0, 6.0, 3.0], (L, 1))
    lowered, true_plain, true_held = 0, [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        kl = np.ones((L, 3, n))
        kl[:, 1:] += cost + rng.normal(0, 0.3, (L, 2, n))
        t = _kl_table(kl, spikes)
        r_eff = S.held_out_r(t, folds=4)
        plain, held = S.choose_ssc(t), S.choose_ssc(t, folds=4)
        assert r_eff <= 1.0 and held.chosen[0] >= plain.chosen[0]
        assert held.budget == pytest.approx(r_eff * kl[:, 0].mean(-1).sum())
        lowered += r_eff < 1.0
        true_plain.append(cost * sum(v != 1.0 for v in plain.choice.values()))
        true_held.append(cost * sum(v != 1.0 for v in held.choice.values()))
    assert "held out over 4 folds" in held.budget_rule
    assert lowered >= 6 and np.mean(true_held) < np.mean(true_plain)
    with pytest.raises(ConfigError, match="folds"):
        S.choose_ssc(t, folds=1)
    with pytest.raises(ConfigError, match="one of"):
        S.choose_ssc(t, folds=4, z=1.0)
    no_kl = _kl_table(kl, spikes)
    object.__setattr__(no_kl, "kl", None)
    with pytest.raises(ConfigError, match="per-sample"):
        S.held_out_r(no_kl)


def test_defaults_are_the_baseline(setup):
    ann, snn, x, m, vth, a = setup
    logits, spikes = reference_run(snn, x)
    assert m.baseline_S == pytest.approx(mean_symmetric_kl(a, logits), rel=1e-6)
    j = m.psi.column(PSI)
    assert np.all(m.psi.S[:, j] == m.baseline_S)
    assert list(m.psi.spikes[:, j]) == pytest.approx([spikes[k].mean() for k in ("relu1", "relu2", "relu3")])
    assert np.all(m.tau.S[:, m.tau.column(1.0)] == m.baseline_S)
    assert m.psi.defaults == (PSI,) * 3 and m.tau.defaults == (1.0,) * 3
    assert m.samples == 48 and m.T == T
    for k in ("prepare", "ann_logits", "thresholds", "baseline", "neurons", "tails", "total"):
        assert m.timings[k] >= 0
    # spikes grow with psi when thresholds shrink as psi/k, shrink with tau
    assert np.all(np.diff(m.psi.spikes, axis=1) > 0) and np.all(np.diff(m.tau.spikes, axis=1) < 0)


def _brute(cost, profit, budget):
    best = None
    for ks in itertools.product(range(cost.shape[1]), repeat=cost.shape[0]):
        c = sum(cost[i, k] for i, k in enumerate(ks))
        p = sum(profit[i, k] for i, k in enumerate(ks))
        if c <= budget * (1 + 1e-9) and (best is None or p < best):
            best = p
    return best


@pytest.mark.parametrize("energy", ["spikes", "synops"])
def test_bsr_and_ssc_choices(setup, energy):
    *_, m, _, _ = setup
    b = S.choose_bsr(m.psi, energy=energy, ratio=0.8)
    E = m.psi.energy(energy)
    assert b.budget == pytest.approx(0.8 * E[:, m.psi.column(PSI)].sum())
    assert set(b.choice) == set(m.psi.layers) and all(v in PSIS for v in b.choice.values())
    idx = [m.psi.column(b.choice[n]) for n in m.psi.layers]
    assert b.chosen[0] == pytest.approx(sum(E[i, j] for i, j in enumerate(idx)))
    assert b.chosen[0] <= b.budget * (1 + 1e-9)
    assert b.chosen[1] == pytest.approx(_brute(E, m.psi.S, b.budget))
    assert b.uniform[PSI] == pytest.approx((E[:, 1].sum(), m.psi.S[:, 1].sum()))
    s = S.choose_ssc(m.tau, r=1.5, energy=energy)
    E = m.tau.energy(energy)
    assert s.chosen[0] == pytest.approx(_brute(m.tau.S, E, s.budget))
    assert s.chosen[1] <= s.budget * (1 + 1e-9)
    assert all(a[0] <= b_[0] for a, b_ in zip(s.frontier, s.frontier[1:]))
    json.dumps(b.to_dict()), json.dumps(s.to_dict()), json.dumps(m.to_dict())


def test_search_functions_and_layers_subset(setup):
    ann, snn, x, *_ = setup
    choice, m = S.search_bsr(ann, snn, x, psi_max=3, samples=16, batch_size=16, threads=1,
                             layers=["relu2", "relu3"])
    assert m.tau is None and m.psi.layers == ("relu2", "relu3") and set(choice.choice) == {"relu2", "relu3"}
    choice, m = S.search_ssc(ann, snn, x, taus=(1.0, 2.0), samples=16, threads=1)
    assert m.psi is None and set(choice.choice.values()) <= {1.0, 2.0}


def test_errors(setup):
    ann, snn, x, m, *_ = setup
    with pytest.raises(ConfigError, match="include 1.0"):
        S.search_ssc(ann, snn, x, taus=(1.5, 2.0))
    with pytest.raises(ConfigError, match="not among the candidates"):
        S.choose_bsr(m.psi, psi_target=7)
    with pytest.raises(ConfigError, match="unknown layer"):
        S.measure(ann, snn, x, layers=["nope"], samples=4)
    with pytest.raises(ConfigError, match="no BurstIF"):
        S.measure(ann, ann, x, samples=4)
    with pytest.raises(ConfigError, match="energy"):
        S.choose_bsr(m.psi, energy="joules")
    mixed = snn_model(T=T, psi=PSI, psis={"relu1": 3})
    mm = S.measure(ann, mixed, x, psis=(1, 2, 3), taus=None, samples=8, threads=1)
    with pytest.raises(ConfigError, match="psi-target"):
        S.choose_bsr(mm.psi)
    assert S.choose_bsr(mm.psi, psi_target=2).budget > 0


def test_parse_grid():
    assert parse_grid("1:10:0.5") == DEFAULT_TAUS and len(DEFAULT_TAUS) == 19
    assert parse_grid("2, 1,1.5") == (1.0, 1.5, 2.0)
    fine = parse_grid("1:2:0.25,3:4:0.5, 7")
    assert fine == (1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 3.5, 4.0, 7.0)
    for bad in ("1:0:1", "a,b", "0,1", "1:2:0", "1:2:0.5,x", ""):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def test_tune_with_the_converter(tmp_path):
    """BSR then SSC through the converter's stages, as `convert --bsr --ssc` will run them."""
    from onnx2burst.config import CalibrationConfig, ConvertConfig
    from onnx2burst.convert import Converter

    conv = Converter(ann_model(), ConvertConfig(T=T, psi=PSI, calibration=CalibrationConfig(samples=64, batch_size=32,
                                                                                               threads=1)))
    data = conv.load_data(sample_data(64, seed=5))
    res = S.tune(conv, data, SearchConfig(bsr=True, ssc=True, psi_max=3, tau_grid=(1.0, 1.5, 2.0), samples=32))
    names = conv.analysis.neuron_names
    assert set(res.settings) == set(names) == set(res.bsr.choice) == set(res.ssc.choice)
    assert all(res.settings[n] == (res.bsr.choice[n], res.ssc.choice[n]) for n in names)
    assert res.measurements["bsr"].tau is None and res.measurements["ssc"].psi is None
    # SSC measured the SNN that BSR produced: its defaults are BSR's choice
    assert res.measurements["ssc"].tau.defaults == (1.0,) * len(names)
    got = {n.name: next(a.i for a in n.attribute if a.name == "psi") for n in _burst_nodes(res.model)}
    assert got == {n: res.bsr.choice[n] for n in names}
    # thresholds in the file: the §4 fit for the chosen settings
    fit = conv.fit_thresholds(data, None, res.settings)
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    for n in _burst_nodes(res.model):
        np.testing.assert_array_equal(inits[n.input[1]], fit[n.name])
    # BSR alone reuses the thresholds fitted for the table: they must be the same fit
    bsr_only = S.tune(conv, data, SearchConfig(bsr=True, psi_max=3, samples=32))
    assert bsr_only.ssc is None and bsr_only.bsr.choice == res.bsr.choice
    # the SNN tune kept between BSR and SSC is the one BSR alone returns
    assert res.after_bsr.graph.SerializeToString() == bsr_only.model.graph.SerializeToString()
    fit = conv.fit_thresholds(data, None, bsr_only.settings)
    inits = {t.name: numpy_helper.to_array(t) for t in bsr_only.model.graph.initializer}
    for n in _burst_nodes(bsr_only.model):
        np.testing.assert_array_equal(inits[n.input[1]], fit[n.name])
    meta = {p.key: p.value for p in res.model.metadata_props}
    assert json.loads(meta["onnx2burst.search"])["settings"][names[0]]["psi"] == res.bsr.choice[names[0]]
    for k in ("bsr thresholds", "bsr measure", "bsr rebuild", "bsr check", "ssc measure", "ssc rebuild", "ssc check",
              "total"):
        assert res.timings[k] >= 0
    # the joint checks: the rebuilt SNN's S on the search samples, next to the tables' sum
    from onnx2burst.evaluation import evaluate

    for k, model in (("bsr", res.after_bsr), ("ssc", res.model)):
        ck, m, c = res.checks[k], res.measurements[k], getattr(res, k)
        tb = m.psi if k == "bsr" else m.tau
        assert ck.before == m.baseline_S
        want = m.baseline_S + sum(tb.S[i, tb.column(c.choice[n])] - m.baseline_S for i, n in enumerate(tb.layers))
        assert ck.predicted == pytest.approx(want, rel=1e-12)
        assert ck.measured == pytest.approx(evaluate(conv.source, model, data, limit=32).sym_kl, rel=1e-6)
    assert res.to_dict()["checks"]["ssc"]["S_measured"] == res.checks["ssc"].measured
    json.dumps(res.to_dict())


def test_cli(tmp_path):
    import onnx

    onnx.save(ann_model(), tmp_path / "ann.onnx")
    np.savez(tmp_path / "calib.npz", x=sample_data(48, seed=2))
    out = tmp_path / "report"
    args = ["search", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "calib.npz"), "--out", str(out),
            "--T", "4", "--psi", "2", "--search-samples", "16", "--psi-max", "3", "--tau-grid", "1:2:0.5",
            "--threads", "1", "-q"]
    res = CliRunner().invoke(main, args + ["-o", str(tmp_path / "tuned.onnx")])
    assert res.exit_code == 0, res.output
    assert "BSR" in res.output and "SSC" in res.output and "time split" in res.output
    assert "the SNN rebuilt with this choice" in res.output
    doc = json.loads((out / "search.json").read_text())
    assert set(doc["choices"]) == {"bsr", "ssc"} and doc["T"] == 4
    assert len(doc["measurements"]["bsr"]["psi"]["S"]) == 3
    assert doc["measurements"]["ssc"]["tau"]["candidates"] == [1.0, 1.5, 2.0]
    assert (out / "sensitivity.png").stat().st_size > 0 and (out / "frontier.png").stat().st_size > 0
    assert (tmp_path / "tuned.onnx").is_file()
    # the r sweep: every budget rebuilt and evaluated (no labels in calib.npz: agreement only)
    sw = doc["r_sweep"]
    assert [p["r"] for p in sw["points"]] == [0.5, 1.0, 2.0, 4.0] and sw["before_ssc"]["r"] == 0.0
    assert all(p["top1"] is None and 0 <= p["agreement"] <= 1 and p["spikes"] > 0 for p in sw["points"])
    assert all(0 < p["sym_kl"] < np.inf for p in sw["points"] + [sw["before_ssc"]])
    assert "r sweep" in res.output and "sym. KL" in res.output and (out / "r_sweep.png").stat().st_size > 0
    y = np.argmax(ort.InferenceSession(ann_model().SerializeToString()).run(None, {"x": sample_data(24, seed=5)})[0], 1)
    np.savez(tmp_path / "test.npz", x=sample_data(24, seed=5), labels=y)
    res = CliRunner().invoke(main, args + ["--ssc", "--r-sweep", "1,3", "--eval-data", str(tmp_path / "test.npz")])
    assert res.exit_code == 0, res.output
    pts = json.loads((out / "search.json").read_text())["r_sweep"]["points"]
    assert [p["r"] for p in pts] == [1.0, 3.0] and all(p["top1"] == pytest.approx(p["agreement"]) for p in pts)
    res = CliRunner().invoke(main, args + ["--ssc", "--r-sweep", "", "--ssc-z", "1"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "search.json").read_text())
    assert "+ 1 SE" in doc["choices"]["ssc"]["budget_rule"] and doc["measurements"]["ssc"]["tau"]["se"]
    res = CliRunner().invoke(main, args + ["--ssc", "--ssc-z", "-1"])
    assert res.exit_code != 0 and "--ssc-z" in res.output
    res = CliRunner().invoke(main, args + ["--ssc", "--r-sweep", "", "--ssc-folds", "2"])
    assert res.exit_code == 0, res.output
    assert "held out over 2 folds" in json.loads((out / "search.json").read_text())["choices"]["ssc"]["budget_rule"]
    res = CliRunner().invoke(main, args + ["--ssc", "--ssc-folds", "1"])
    assert res.exit_code != 0 and "folds" in res.output
    res = CliRunner().invoke(main, args + ["--ssc", "--r-sweep", "0,1"])
    assert res.exit_code != 0 and "--r-sweep" in res.output
    res = CliRunner().invoke(main, args + ["--ssc", "--r-sweep", ""])
    assert res.exit_code == 0 and json.loads((out / "search.json").read_text())["r_sweep"] is None
    res = CliRunner().invoke(main, args + ["--ssc", "--tau-grid", "1.5,2"])
    assert res.exit_code != 0 and "1.0" in res.output
    res = CliRunner().invoke(main, args + ["--psi-max", "65"])
    assert res.exit_code != 0 and "--psi-max" in res.output
    res = CliRunner().invoke(main, args + ["--bsr", "--json", "--energy", "synops"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["choices"]["bsr"]["energy"] == "synops" and "ssc" not in d["choices"]


def test_fallback_function_gives_the_same_tables(setup):
    """Without the C++ kernel the tails and cells run the standard-op function: same numbers."""
    ann, snn, x, m, *_ = setup
    fb = S.measure(ann, snn, x, psis=PSIS, taus=TAUS, batch_size=20, threads=1, kernel=False, mean_correct=False)
    np.testing.assert_allclose(fb.psi.S, m.psi.S, rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(fb.psi.spikes, m.psi.spikes)
    np.testing.assert_array_equal(fb.tau.spikes, m.tau.spikes)


def test_mean_correction_moves_each_channel_mean_to_the_baseline():
    """The §5-anticipating shift of measure(mean_correct=True): per channel (axis 1), the
    changed output gets the baseline's mean over every other axis; nothing else changes."""
    rng = np.random.default_rng(0)
    for shape in [(12, 3, 4, 5), (10, 7)]:
        y = rng.normal(size=shape).astype(np.float32)
        base = (rng.normal(size=shape) + 2).astype(np.float32)
        c = mean_corrected(y, base)
        axes = tuple(a for a in range(len(shape)) if a != 1)
        assert c.dtype == np.float32 and c.shape == y.shape
        np.testing.assert_allclose(c.mean(axis=axes), base.mean(axis=axes), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c - y, (c - y).mean(axis=axes, keepdims=True) + 0 * y, atol=1e-5)


def test_mean_correction_changes_only_changed_layers(setup):
    ann, snn, x, m, *_ = setup
    for mode in ("output", "input", True):
        mc = S.measure(ann, snn, x, psis=PSIS, taus=TAUS, batch_size=20, threads=1, mean_correct=mode)
        assert mc.baseline_S == pytest.approx(m.baseline_S)
        assert not np.allclose(mc.tau.S, m.tau.S)                     # the tails saw corrected outputs
        for t, tm in ((mc.psi, m.psi), (mc.tau, m.tau)):
            for i, d in enumerate(t.defaults):                         # the layer's own value: the baseline
                j = t.column(d)
                assert t.S[i, j] == tm.S[i, j] and t.spikes[i, j] == tm.spikes[i, j]
        if mode != "input":                                            # True: "output"
            np.testing.assert_array_equal(mc.psi.spikes, m.psi.spikes)   # only the output moves
        else:
            assert not np.array_equal(mc.tau.spikes, m.tau.spikes)      # the input moves: new spikes
    with pytest.raises(ConfigError, match="mean_correct must be one of"):
        S.measure(ann, snn, x, psis=None, taus=TAUS, mean_correct="bias")


def _outputs(model, x, names):
    from onnx2burst import ops
    from onnx2burst.evaluation.energy import with_spike_outputs

    m, _ = with_spike_outputs(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    sess = ops.make_session(m)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))


@pytest.mark.parametrize("layer,bias,value", [("relu1", "b1", 3.0), ("relu2", "b2", 1.5), ("relu3", "c1", 3.0)])
def test_input_correction_is_one_bias_calibration_step(setup, layer, bias, value):
    """mean_correct="input" on one batch equals a full run of the SNN with layer i changed and
    the bias in front of it lowered by the channel-mean difference of its output to the
    baseline's (§5's one step): the same S and the same spikes."""
    from snn_fixtures import _weights

    ann, snn, x, _, vth, a = setup
    m = S.measure(ann, snn, x, psis=None, taus=TAUS, batch_size=len(x), threads=1, mean_correct="input")
    changed = snn_model(T=T, psi=PSI, vth=vth, tau={layer: value})
    y0, y1 = _outputs(snn, x, [layer])[layer], _outputs(changed, x, [layer])[layer]
    axes = tuple(k for k in range(y0.ndim) if k != 1)
    delta = y1.mean(axis=axes, dtype=np.float64) - y0.mean(axis=axes, dtype=np.float64)
    assert np.abs(delta).max() > 1e-3                                    # the step does something
    b = (_weights(0)[bias] - delta).astype(np.float32)
    out = _outputs(snn_model(T=T, psi=PSI, vth=vth, tau={layer: value}, biases={bias: b}), x, [layer])
    i, j = m.tau.layers.index(layer), m.tau.column(value)
    assert m.tau.S[i, j] == pytest.approx(mean_symmetric_kl(a, out["logits"]), rel=1e-4, abs=1e-9)
    assert m.tau.spikes[i, j] == pytest.approx(out[f"{layer}_spikes"].mean(), rel=1e-5)
