"""SSC's decision guard (onnx2burst.search.guard): the probe against the changed SNN, the
loop against brute force over what it leaves allowed, and the CLI."""
from __future__ import annotations

import itertools
import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnx2burst.cli import main
from onnx2burst.errors import ConfigError
from onnx2burst import search as S
from onnx2burst.config import GuardConfig, SearchConfig
from onnx2burst.search.guard import AgreementProbe, ModelProbe, backed_off_ssc, guarded_ssc, masked
from snn_fixtures import ann_model, reference_run, sample_data, snn_model

T, PSI = 4, 2


def _table(rng, L, K, with_kl=False):
    cands = tuple([1.0] + sorted(rng.choice(np.arange(5, 40) / 4, size=K - 1, replace=False).tolist()))  # distinct, > 1
    n = 8
    kl = rng.uniform(0, 1, size=(L, K, n))
    kl[:, 0, :] = kl[0, 0, :]                        # tau = 1 is the baseline for every layer
    Sm = kl.mean(-1)
    E = np.sort(rng.uniform(1, 10, size=(L, K)), axis=1)[:, ::-1].copy()   # larger tau, fewer spikes
    se = np.abs(rng.normal(0, 0.05, size=(L, K)))
    se[:, 0] = 0
    return S.Table("tau", tuple(f"l{i}" for i in range(L)), cands, (1.0,) * L, Sm, E, E * 2.0,
                   (2.0,) * L, se, kl if with_kl else None)


def _brute_allowed(tb, forbid, budget):
    best = None
    for ks in itertools.product(range(tb.S.shape[1]), repeat=tb.S.shape[0]):
        if any(forbid[i, k] for i, k in enumerate(ks)):
            continue
        c = sum(tb.S[i, k] for i, k in enumerate(ks))
        e = sum(tb.spikes[i, k] for i, k in enumerate(ks))
        if c <= budget * (1 + 1e-9) and (best is None or e < best):
            best = e
    return best


@pytest.mark.parametrize("seed", range(12))
def test_masked_candidates_are_never_chosen(seed):
    rng = np.random.default_rng(seed)
    tb = _table(rng, int(rng.integers(2, 5)), int(rng.integers(2, 5)), with_kl=True)
    forbid = rng.uniform(size=tb.S.shape) < 0.4
    forbid[:, 0] = False
    for kw in ({}, {"z": 1.0}, {"folds": 2}, {"r": 3.0}):
        c = S.choose_ssc(masked(tb, forbid), **kw)
        for i, name in enumerate(tb.layers):
            assert not forbid[i, tb.column(c.choice[name])], (kw, name)
    # the plain rule over the allowed candidates is the brute-force optimum over them
    c = S.choose_ssc(masked(tb, forbid), r=1.5)
    assert c.budget == pytest.approx(1.5 * tb.S[:, 0].sum())
    assert c.chosen[0] == pytest.approx(_brute_allowed(tb, forbid, c.budget))


@pytest.mark.parametrize("seed", range(20))
def test_guard_loop_against_brute_force(seed):
    """The final choice: no changed layer flagged, every forbidden tau is at or beyond a tau
    that was flagged for its layer, and the least energy over what stays allowed."""
    rng = np.random.default_rng(100 + seed)
    tb = _table(rng, int(rng.integers(3, 6)), int(rng.integers(2, 6)))
    # a decision-loss oracle that grows with tau, with one noise level per layer
    slope = rng.uniform(-0.5, 2.0, size=len(tb.layers))
    se = rng.uniform(0.05, 0.3, size=len(tb.layers))
    calls = []

    def losses(pairs):
        calls.append(list(pairs))
        return {(n, t): (float(slope[int(n[1:])] * (t - 1) * 0.2), float(se[int(n[1:])])) for n, t in pairs}

    z = 1.5
    g = guarded_ssc(tb, losses, lambda t: S.choose_ssc(t, r=1.3), z=z, samples=99)
    assert g.samples == 99 and len(calls) == sum(1 for rd in g.rounds if rd.losses)
    final = g.rounds[-1]
    assert not final.flagged
    assert dict(final.choice) == dict(g.choice.choice)
    flagged = [p for rd in g.rounds for p in rd.flagged]
    for name, tau in flagged:
        L, s = losses([(name, tau)])[name, tau]
        assert L > z * s
    cands = np.asarray(tb.candidates)
    forbid = np.zeros(tb.S.shape, bool)
    for name, tau in flagged:
        forbid[int(name[1:])] |= cands >= tau - 1e-12
    assert not forbid[:, 0].any()
    assert {tb.layers[i]: float(cands[forbid[i]].min()) for i in range(len(tb.layers)) if forbid[i].any()} \
        == dict(g.forbidden)
    for i, name in enumerate(tb.layers):
        assert not forbid[i, tb.column(g.choice.choice[name])]
        t = g.choice.choice[name]
        if t != 1.0:
            L, s = losses([(name, t)])[name, t]
            assert not (L > 0 and L > z * s)
    assert g.choice.chosen[0] == pytest.approx(_brute_allowed(tb, forbid, g.choice.budget))
    # without any loss the guard is the plain rule, in one round
    g0 = guarded_ssc(tb, lambda pairs: {p: (0.0, 0.1) for p in pairs}, lambda t: S.choose_ssc(t, r=1.3))
    assert len(g0.rounds) == 1 and dict(g0.choice.choice) == dict(S.choose_ssc(tb, r=1.3).choice)


def _pareto_points(tb, budget):
    """Brute force: every configuration's (E, S, choice) within the budget, and the Pareto set of
    them (least E for its S), energy increasing."""
    allc = []
    for ks in itertools.product(range(tb.S.shape[1]), repeat=tb.S.shape[0]):
        c = sum(tb.S[i, k] for i, k in enumerate(ks))
        e = sum(tb.spikes[i, k] for i, k in enumerate(ks))
        if c <= budget * (1 + 1e-9):
            allc.append((e, c, ks))
    allc.sort()
    front, best_s = [], np.inf
    for e, c, ks in allc:
        if c < best_s - 1e-12:
            front.append((e, c, ks))
            best_s = c
    return front


@pytest.mark.parametrize("seed", range(20))
def test_backoff_against_brute_force(seed):
    """Mode "model": with a loss that grows with the compression, and checks enough to finish, the
    kept choice is the least-energy point of the (brute-force) frontier whose loss is within tol,
    or the starting SNN when none is; every check is a frontier point; the choice is in layer order."""
    rng = np.random.default_rng(300 + seed)
    tb = _table(rng, int(rng.integers(3, 6)), int(rng.integers(2, 5)))
    E0 = float(tb.spikes[:, 0].sum())
    slope = rng.uniform(0.02, 0.3)
    calls = []

    def loss_of(choice):
        e = sum(tb.spikes[i, tb.column(choice[n])] for i, n in enumerate(tb.layers))
        return slope * (E0 - e) / E0, 0.01

    def loss(choice):
        assert list(choice) == list(tb.layers)
        calls.append(dict(choice))
        return loss_of(choice)

    def choose(t, budget=None):
        return S.choose_ssc(t, r=1.3, budget=budget)

    tol = float(rng.uniform(0, 0.6) * slope)
    g = backed_off_ssc(tb, choose, loss, tol=tol, checks=64, samples=7)
    front = _pareto_points(tb, 1.3 * tb.S[:, 0].sum())
    ok = [(e, c) for e, c, ks in front if slope * (E0 - e) / E0 <= tol]
    assert g.samples == 7 and len(calls) == len(g.steps) >= 1
    assert g.points == len(front)
    if ok:
        assert g.point < g.points
        assert g.choice.chosen[0] == pytest.approx(min(ok)[0])
        assert loss_of(g.choice.choice)[0] <= tol
    else:
        assert g.point == g.points and all(v == 1.0 for v in g.choice.choice.values())
        assert g.choice.chosen[0] == pytest.approx(E0)
    energies = [e for e, _, _ in front]
    for st in g.steps:
        assert st.energy == pytest.approx(energies[st.point])
        assert st.passed == (st.loss <= tol)
    # the first check is SSC's own choice; when it passes, nothing else is checked
    assert g.steps[0].point == 0
    g1 = backed_off_ssc(tb, choose, loss, tol=1.0, checks=64)
    assert len(g1.steps) == 1 and not g1.backed_off and dict(g1.choice.choice) == dict(choose(tb).choice)


@pytest.mark.parametrize("seed", range(8))
def test_backoff_with_few_checks_keeps_a_checked_point(seed):
    """Out of checks, the guard keeps the least compressed point it has seen pass, or the starting
    SNN: never an unchecked point."""
    rng = np.random.default_rng(400 + seed)
    tb = _table(rng, 5, 4)
    E0 = float(tb.spikes[:, 0].sum())

    def loss(choice):
        e = sum(tb.spikes[i, tb.column(choice[n])] for i, n in enumerate(tb.layers))
        return 0.5 * (E0 - e) / E0, 0.01

    for checks in (1, 2, 3):
        g = backed_off_ssc(tb, lambda t, budget=None: S.choose_ssc(t, r=1.5, budget=budget), loss,
                           tol=0.02, checks=checks)
        assert len(g.steps) <= checks
        kept = [st for st in g.steps if st.point == g.point]
        assert (kept and kept[0].passed) or g.point == g.points


def test_backoff_rejects_bad_settings():
    tb = _table(np.random.default_rng(0), 2, 3)
    with pytest.raises(ConfigError, match="tolerance"):
        backed_off_ssc(tb, lambda t, budget=None: S.choose_ssc(t), lambda c: (0.0, 0.0), tol=-0.1)
    with pytest.raises(ConfigError, match="checks"):
        backed_off_ssc(tb, lambda t, budget=None: S.choose_ssc(t), lambda c: (0.0, 0.0), checks=0)


def test_guard_rejects_negative_z():
    tb = _table(np.random.default_rng(0), 2, 3)
    with pytest.raises(ConfigError, match="guard z"):
        guarded_ssc(tb, lambda p: {}, lambda t: S.choose_ssc(t), z=-1)


@pytest.fixture(scope="module")
def toy():
    ann, snn = ann_model(), snn_model(T=T, psi=PSI)
    x = sample_data(96, seed=5)
    vth = {t.name[4:]: numpy_helper.to_array(t) for t in snn.graph.initializer if t.name.startswith("vth_")}
    cls = ort.InferenceSession(ann.SerializeToString()).run(None, {"x": x})[0].argmax(-1)
    return ann, snn, x, vth, cls


@pytest.mark.parametrize("layer,tau", [("relu1", 3.0), ("relu2", 2.5), ("relu3", 4.0)])
def test_probe_matches_the_changed_snn(toy, layer, tau):
    """Without the mean correction, L and SE are those of the SNN with only that layer's tau
    changed, run whole, against the SNN as it is (paired over the samples)."""
    ann, snn, x, vth, cls = toy
    probe = AgreementProbe(ann, snn, x, samples=80, batch_size=24, threads=1, mean_correct=False)
    assert probe.samples == 80
    base, _ = reference_run(snn, x[:80])
    changed, _ = reference_run(snn_model(T=T, psi=PSI, vth=vth, tau={layer: tau}), x[:80])
    d = (base.argmax(-1) == cls[:80]).astype(float) - (changed.argmax(-1) == cls[:80])
    L, se = probe.losses([(layer, tau)])[layer, tau]
    assert L == pytest.approx(d.mean(), abs=1e-12)
    assert se == pytest.approx(d.std(ddof=1) / np.sqrt(80), abs=1e-12)
    # cached: asking again runs nothing
    t = probe.seconds
    assert probe.losses([(layer, tau)])[layer, tau] == (L, se) and probe.seconds == t


def test_model_probe_matches_a_direct_run(toy):
    """ModelProbe.loss: the starting SNN loses nothing; another SNN's L and SE are its paired
    loss of agreement with the ANN's class, computed here from the reference run."""
    ann, snn, x, vth, cls = toy
    probe = ModelProbe(ann, snn, x, samples=90, batch_size=32, threads=1)
    assert probe.samples == 90
    assert probe.loss(snn) == (0.0, 0.0)
    other = snn_model(T=T, psi=PSI, vth=vth, tau={"relu1": 3.0, "relu2": 2.5})
    base, _ = reference_run(snn, x[:90])
    changed, _ = reference_run(other, x[:90])
    d = (base.argmax(-1) == cls[:90]).astype(float) - (changed.argmax(-1) == cls[:90])
    assert d.any(), "the changed SNN should change some decision"
    L, se = probe.loss(other)
    assert L == pytest.approx(d.mean(), abs=1e-12)
    assert se == pytest.approx(d.std(ddof=1) / np.sqrt(90), abs=1e-12)
    with pytest.raises(ConfigError, match="at least 2 samples"):
        ModelProbe(ann, snn, x[:1])


def test_cli_search_with_the_model_guard(tmp_path, toy):
    """search --guard-data (mode "model", tol 0): the tuned SNN written with -o loses no agreement
    with the ANN on the guard data, checked here with an independent run; the report shows the
    checks."""
    import onnx

    ann, snn, x, *_ = toy
    out = _search_files(tmp_path, ann, x)
    res = CliRunner().invoke(main, ["search", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "calib.npz"),
                                    "--T", str(T), "--psi", str(PSI), "--out", str(out), "--ssc",
                                    "--tau-grid", "1,1.5,2,3,4,6", "--search-samples", "32", "--r", "3", "--r-sweep", "",
                                    "--guard-data", str(tmp_path / "guard.npz"), "--guard-tol", "0",
                                    "-o", str(tmp_path / "tuned.onnx"), "-q"])
    assert res.exit_code == 0, res.output
    assert "SSC guard: loss of agreement with the ANN of the rebuilt SNN" in res.output
    doc = json.loads((out / "search.json").read_text())
    g = doc["guard"]
    assert g["mode"] == "model" and g["samples"] == 96 and g["tol"] == 0 and g["steps"]
    kept = [st for st in g["steps"] if st["point"] == g["point"]]
    assert (kept and kept[0]["loss"] <= 0) or g["point"] == g["points"]
    tuned = onnx.load(tmp_path / "tuned.onnx")
    from onnx2burst.search.guard import ModelProbe as MP

    meta = {p.key: p.value for p in tuned.metadata_props}
    assert json.loads(meta["onnx2burst.search"])["ssc"]["guard"]["mode"] == "model"
    # independent check: the tuned SNN against the SNN SSC started from (BS), on the guard data
    from onnx2burst.config import ConvertConfig
    from onnx2burst.convert import Converter

    conv = Converter(tmp_path / "ann.onnx", ConvertConfig(T=T, psi=PSI))
    bs = conv.run(conv.load_data(tmp_path / "calib.npz")).model
    L, _ = MP(ann, bs, x, samples=None, threads=1).loss(tuned)
    assert L <= 0
    # r = 3 with tol 0: SSC's own choice lost decisions here, so the guard had to back off
    assert g["steps"][0]["loss"] > 0 and g["point"] > 0


def test_tune_rejects_bad_guard_settings_before_measuring(tmp_path, toy):
    """A bad guard mode, tolerance or check count is an error before any table is measured."""
    import onnx

    from onnx2burst.config import ConvertConfig
    from onnx2burst.convert import Converter

    ann, snn, x, *_ = toy
    onnx.save(ann, tmp_path / "ann.onnx")
    np.savez(tmp_path / "calib.npz", x=sample_data(16, seed=1))
    conv = Converter(tmp_path / "ann.onnx", ConvertConfig(T=T, psi=PSI))
    data = conv.load_data(tmp_path / "calib.npz")
    for kw, msg in (({"mode": "nope"}, "--guard-mode"), ({"tol": -0.1}, "--guard-tol"),
                    ({"checks": 0}, "--guard-checks")):
        with pytest.raises(ConfigError, match=msg):
            S.tune(conv, data, SearchConfig(ssc=True, tau_grid=(1.0, 2.0), guard=GuardConfig(data=x, **kw)), snn=snn)


def test_probe_errors(toy):
    ann, snn, x, *_ = toy
    with pytest.raises(ConfigError, match="at least 2 samples"):
        AgreementProbe(ann, snn, x[:1])
    probe = AgreementProbe(ann, snn, x[:8], threads=1)
    with pytest.raises(ConfigError, match="unknown layer"):
        probe.losses([("nope", 2.0)])


def _search_files(tmp_path, ann, x):
    """ann.onnx, calib.npz (64 samples) and guard.npz (``x``) in tmp_path; returns the report dir."""
    import onnx

    onnx.save(ann, tmp_path / "ann.onnx")
    np.savez(tmp_path / "calib.npz", x=sample_data(64, seed=1))
    np.savez(tmp_path / "guard.npz", x=x)
    return tmp_path / "rep"


def test_cli_search_with_a_guard(tmp_path, toy):
    ann, snn, x, *_ = toy
    out = _search_files(tmp_path, ann, x)
    res = CliRunner().invoke(main, ["search", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "calib.npz"),
                                    "--T", str(T), "--psi", str(PSI), "--out", str(out), "--ssc", "--tau-grid", "1,2,4",
                                    "--search-samples", "32", "--r-sweep", "1", "--guard-data", str(tmp_path / "guard.npz"),
                                    "--guard-samples", "64", "--guard-mode", "layer", "--guard-z", "0", "-q"])
    assert res.exit_code == 0, res.output
    assert "SSC guard" in res.output
    doc = json.loads((out / "search.json").read_text())
    g = doc["guard"]
    assert g["samples"] == 64 and g["z"] == 0 and g["rounds"]
    last = g["rounds"][-1]
    assert not last["flagged"] and last["choice"] == doc["choices"]["ssc"]["choice"]
    for rd in g["rounds"]:
        for e in rd["losses"]:
            if {"layer": e["layer"], "tau": e["tau"]} in rd["flagged"]:
                assert e["loss"] > 0
    # z = 0 flags any loss: the final choice loses no decision on the guard data
    assert all(e["loss"] <= 0 for e in last["losses"])
    bad = CliRunner().invoke(main, ["search", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "calib.npz"),
                                    "--out", str(out), "--guard-data", str(tmp_path / "missing.npz")])
    assert bad.exit_code != 0 and "missing.npz" in bad.output
    np.savez(tmp_path / "wrong.npz", foo=np.zeros(3))
    bad = CliRunner().invoke(main, ["search", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "calib.npz"),
                                    "--out", str(out), "--ssc", "--tau-grid", "1,2", "--search-samples", "8", "--r-sweep", "",
                                    "--guard-data", str(tmp_path / "wrong.npz"), "-q"])
    assert bad.exit_code == 1 and "wrong.npz: input 'x' has shape [3]" in bad.output and "Traceback" not in bad.output


def test_cli_convert_with_a_guard(tmp_path, toy):
    """convert --ssc --guard-data: the file's search metadata names the guard."""
    import onnx

    ann, snn, x, *_ = toy
    onnx.save(ann, tmp_path / "ann.onnx")
    np.savez(tmp_path / "calib.npz", x=sample_data(64, seed=1))
    np.save(tmp_path / "guard.npy", x)
    out = tmp_path / "ann.snn.onnx"
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "calib.npz"),
                                    "--T", str(T), "--psi", str(PSI), "--ssc", "--tau-grid", "1,2,4",
                                    "--search-samples", "32", "--guard-data", str(tmp_path / "guard.npy"),
                                    "--guard-mode", "layer", "--guard-z", "1", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "SSC guard" in res.output and "on 96 samples, z = 1" in res.output
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    g = json.loads(meta["onnx2burst.search"])["ssc"]["guard"]
    assert g["samples"] == 96 and g["z"] == 1.0


def test_fmnist_guard_images_are_not_calibration_images(tmp_path):
    """models.data.load_fmnist_guard: deterministic, normalised, and none of its images is one of
    the calibration images (the guard must not see the search samples). A synthetic idx
    "dataset" of 1200 images, each image's pixels encoding its index, stands in for the Debian one."""
    from models import data as D

    n = 1200
    idx = np.arange(n)
    images = np.stack([np.full((28, 28), 0, np.uint8)] * n)
    images[:, 0, 0], images[:, 0, 1] = idx // 256, idx % 256
    for name, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", (idx % 10).astype(np.uint8))):
        head = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (tmp_path / name).write_bytes(head + arr.tobytes())
    with np.load(D.CALIB_NPZ) as z:
        taken = set(z["index"].tolist())
    free = n - len(taken & set(idx.tolist()))
    g = D.load_fmnist_guard(free - 5, root=tmp_path)
    assert g.shape == (free - 5, 1, 28, 28) and g.dtype == np.float32
    np.testing.assert_array_equal(g, D.load_fmnist_guard(free - 5, root=tmp_path))
    raw = np.rint((g[:, 0] * np.float32(D.FMNIST_STD) + np.float32(D.FMNIST_MEAN)) * 255).astype(int)
    got = raw[:, 0, 0] * 256 + raw[:, 0, 1]
    assert len(set(got.tolist())) == len(got) and not set(got.tolist()) & taken
    assert np.all(np.diff(got) > 0)  # in file order
    with pytest.raises(ValueError, match="not calibration images"):
        D.load_fmnist_guard(free + 1, root=tmp_path)
