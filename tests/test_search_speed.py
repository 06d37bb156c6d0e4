"""The faster search chooses what the reference implementation chose: exact pruning, the shared
threshold fit, Ray workers (docs/method.md §8)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import search_choices
from onnx2burst import search as S
from onnx2burst.errors import ConfigError
from onnx2burst.search.prune import Prune, Pruner, open_layers
from onnx2burst.tuning.thresholds import ThresholdSearch, candidate_factors
from snn_fixtures import ann_model, sample_data, snn_model

T, PSI = 4, 2
PSIS = (1, 2, 3, 4)
TAUS = (1.0, 1.25, 1.5, 2.0, 3.0, 6.0, 10.0)


@pytest.fixture(scope="module")
def toy():
    ann, snn = ann_model(), snn_model(T=T, psi=PSI)
    x = sample_data(64, seed=5)
    full = S.measure(ann, snn, x, psis=PSIS, taus=TAUS, batch_size=16, threads=1)
    return ann, snn, x, full


@pytest.mark.parametrize("name", ["vgg_T4_small", "resnet20_T4_small"])
def test_choices_are_the_recorded_ones(name, tmp_path, monkeypatch):
    """convert --bsr --ssc on a bundled model: the psi/tau per layer and both budgets are those
    the reference implementation chose (tests/data/search_choices.json)."""
    monkeypatch.chdir(search_choices.ROOT)
    want = json.loads(search_choices.RECORD.read_text())[name]
    got = search_choices.choices(name, tmp_path)
    assert got["settings"] == want["settings"]
    assert (got["bsr_budget"], got["ssc_budget"]) == (want["bsr_budget"], want["ssc_budget"])


def _same_ssc_choices(full, pruned, r, z, frontier=False):
    """SSC on the pruned table chooses what it chooses on the full one, at r and at 0.7 r (a
    budget no larger), or both refuse."""
    for rr in (r, r * 0.7):
        try:
            a = S.choose_ssc(full, r=rr, z=z)
        except S.InfeasibleBudgetError:
            with pytest.raises(S.InfeasibleBudgetError):
                S.choose_ssc(pruned, r=rr, z=z)
            continue
        b = S.choose_ssc(pruned, r=rr, z=z)
        assert a.choice == b.choice and a.budget == b.budget
        assert not frontier or a.frontier == b.frontier


@pytest.mark.parametrize("r,z", [(1.0, 0.0), (1.3, 0.0), (3.0, 0.0), (1.0, 1.0), (2.0, 2.0)])
def test_pruned_tau_table_gives_the_same_choice(toy, r, z):
    """Pruning for r prunes some cells, keeps the rest bit for bit, and SSC chooses the same at
    r and below (a budget that is no larger)."""
    ann, snn, x, full = toy
    m = S.measure(ann, snn, x, psis=None, taus=TAUS, batch_size=16, threads=1, prune=Prune("tau", r, 1.0))
    live = np.isfinite(m.tau.S)
    assert np.array_equal(m.tau.S[live], full.tau.S[live]) and np.array_equal(m.tau.spikes[live], full.tau.spikes[live])
    if r == 1.0 and z == 0.0:
        assert not live.all(), "nothing pruned: the test would not see a wrong pruning"
    _same_ssc_choices(full.tau, m.tau, r, z, frontier=True)


@pytest.mark.parametrize("r,z", [(1.0, 0.0), (1.3, 0.0), (3.0, 0.0), (1.0, 1.0), (2.0, 2.0)])
def test_ascending_tau_table_gives_the_same_choice(toy, r, z):
    """SSC measured in increasing tau, each layer stopped two taus past its slack: at r = 1 fewer
    cells than the exact pruning, the measured ones bit for bit, and the same choice at r and below."""
    ann, snn, x, full = toy
    m = S.measure(ann, snn, x, psis=None, taus=TAUS, batch_size=16, threads=1,
                  prune=Prune("tau", r, 1.0, ascending=True))
    exact = S.measure(ann, snn, x, psis=None, taus=TAUS, batch_size=16, threads=1, prune=Prune("tau", r, 1.0))
    live = np.isfinite(m.tau.S)
    assert np.array_equal(m.tau.S[live], full.tau.S[live]) and np.array_equal(m.tau.spikes[live], full.tau.spikes[live])
    if r == 1.0 and z == 0.0:  # (a loose budget may run a round more than the exact pruning)
        assert m.timings["cells run"] < exact.timings["cells run"]
    _same_ssc_choices(full.tau, m.tau, r, z)


def test_open_layers_by_hand():
    """limit 3.0, three layers at 1.0 by default: layer 0 is past its slack at both measured
    taus (1.6 and 1.7 > 3.0 - 0.9 - 1.0 = 1.1): closed; layer 1 has one measured tau: open;
    layer 2's second tau (1.05) still fits: open. When layer 1's minimum falls to 0.2 the slack
    of layer 0 grows to 1.8 and it opens again; a layer measured to the end is closed."""
    inf = np.inf
    S_ = np.array([[1.0, 1.6, 1.7, inf], [1.0, 0.9, inf, inf], [1.0, 1.5, 1.05, inf]])
    measured = np.isfinite(S_)
    assert open_layers(S_, measured, 3.0).tolist() == [False, True, True]
    S_[1, 2], measured[1, 2] = 0.2, True
    assert open_layers(S_, measured, 3.0).tolist() == [True, True, True]
    measured[2] = True
    assert open_layers(S_, measured, 3.0)[2] == False  # noqa: E712


@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.5])
def test_pruned_psi_table_gives_the_same_choice(toy, ratio):
    ann, snn, x, full = toy
    m = S.measure(ann, snn, x, psis=PSIS, taus=None, batch_size=16, threads=1, prune=Prune("psi", ratio, PSI))
    live = np.isfinite(m.psi.S)
    assert np.array_equal(m.psi.S[live], full.psi.S[live])
    if ratio == 0.5:
        assert not live.all()
    a, b = S.choose_bsr(full.psi, ratio=ratio), S.choose_bsr(m.psi, ratio=ratio)
    assert a.choice == b.choice and a.budget == b.budget and a.frontier == b.frontier


def test_pruner_drops_only_what_cannot_fit():
    """Two layers, budget 1.0 * (0.5 + 0.5): layer 0's candidate at 0.9 still fits beside layer
    1's 0.1, its candidate at 1.2 cannot fit beside anything."""
    p = Pruner(Prune("tau", 1.0, 1.0), (1.0, 2.0, 3.0), (1.0, 1.0), np.array([0.5, 0.5]), n=10, scale=np.ones(2))
    for j, v in ((1, 9.0), (2, 12.0)):
        p.add(0, j, v)
    p.add(1, 1, 1.0)
    p.add(1, 2, 4.0)
    assert p.update() == 1 and p.dead[0].tolist() == [False, False, True] and not p.dead[1].any()
    held = Pruner(Prune("tau", 1.0, 1.0), (1.0, 2.0), (1.0, 1.5), np.array([0.5, 0.5]), n=10, scale=np.ones(2))
    held.add(0, 1, 1e9)
    assert not held.enabled and held.update() == 0   # a layer not at the reference: nothing pruned


def test_held_out_budget_refuses_a_pruned_table(toy):
    ann, snn, x, _ = toy
    m = S.measure(ann, snn, x, psis=None, taus=TAUS, batch_size=16, threads=1, prune=Prune("tau", 1.0, 1.0))
    with pytest.raises(ConfigError, match="without pruning"):
        S.choose_ssc(m.tau, folds=2)


@pytest.mark.parametrize("per_channel", [True, False])
def test_threshold_fit_for_many_psi_is_bit_exact(per_channel):
    """One neuron's psi candidates fitted together give the errors of one fit per psi, with
    and without values reaching the caps."""
    rng = np.random.default_rng(3)
    a = np.maximum(rng.standard_normal((12, 5, 6, 6)), 0).astype(np.float32) * np.float32(2.5)
    ref = a.max(axis=(0, 2, 3)) * np.float32(0.6) if per_channel else np.array([a.max() * 0.6], np.float32)
    if per_channel:
        ref[1] = 0
    f = candidate_factors()
    one = [ThresholdSearch(ref, 4, p, f, per_channel) for p in (1, 2, 3, 6)]
    many = [ThresholdSearch(ref, 4, p, f, per_channel) for p in (1, 2, 3, 6)]
    for batch in (a[:5], a[5:]):
        for s in one:
            s.update(batch)
        ThresholdSearch.update_group(many, batch)
    for s, t in zip(one, many):
        assert np.array_equal(s.errors, t.errors)
    assert not np.array_equal(one[0].errors, one[3].errors)  # the caps did bite


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), T=st.sampled_from([1, 2, 4, 8, 16]), per_channel=st.booleans(),
       spread=st.sampled_from([0.3, 0.6, 1.0, 1.7]), quantised=st.booleans())
def test_sorted_threshold_fit_agrees_with_the_value_by_value_fit(seed, T, per_channel, spread, quantised):
    """The fit from sorted values gives each candidate's error of the value-by-value fit (to
    float rounding) and the same thresholds: caps biting or not, values above the reference
    (a Clip neuron's cap), a dead channel, negative values, values on the level edges (where
    two candidates may tie exactly, either is right)."""
    rng = np.random.default_rng(seed)
    a = np.maximum(rng.standard_normal((6, 4, 5, 5)), 0).astype(np.float32) * np.float32(2.0)
    a[:, 3] = 0                                            # a dead channel
    a[0, 0, 0, :2] = -1.0                                   # never counted
    if quantised:   # many values on exact multiples: ties at the level edges
        a = (np.round(a * 8) / 8).astype(np.float32)
    ref = (a.max(axis=(0, 2, 3)) if per_channel else np.array([a.max()])).astype(np.float32) * np.float32(spread)
    f = candidate_factors()
    psis = (1, 2, 5)
    sorted_fit = [ThresholdSearch(ref, T, p, f, per_channel) for p in psis]
    by_value = [ThresholdSearch(ref, T, p, f, per_channel) for p in psis]
    for batch in (a[:2], a[2:]):
        ThresholdSearch.update_group(sorted_fit, batch)
        for s in by_value:
            s.update_elementwise(batch)
    for s, t in zip(sorted_fit, by_value):
        np.testing.assert_allclose(s.errors, t.errors, rtol=1e-6, atol=1e-12)
        # the same threshold, or one whose error ties the best to float rounding (equal in
        # exact arithmetic: only values on a grid, as here when quantised, make such ties)
        chans = np.arange(ref.size)
        best, chosen = t.errors.min(axis=0), t.errors[s.best_index(), chans]
        same = s.best_index() == t.best_index()
        assert (same | (chosen <= best * (1 + 1e-6) + 1e-12)).all()
        assert quantised or same.all()


def test_ray_is_not_imported_without_workers():
    code = ("import sys, onnx2burst, onnx2burst.search, onnx2burst.cli.convert, onnx2burst.cli.search\n"
            "from onnx2burst.search import cells, prune, tables\n"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr


def test_conversion_fits_bsr_candidates_in_its_own_pass(monkeypatch):
    """``convert --bsr`` fits BSR's psi candidates in the conversion's threshold pass: the search
    then runs no pass of its own, the SNN is the plain conversion's bit for bit, and each
    candidate's thresholds are those of a fit of that psi alone."""
    import importlib

    from onnx2burst.config import CalibrationConfig, ConvertConfig, SearchConfig

    C = importlib.import_module("onnx2burst.convert")   # the module (the package's `convert` is the function)
    x = sample_data(48, seed=2)
    cfg = ConvertConfig(T=T, psi=PSI, calibration=CalibrationConfig(threads=1, batch_size=16))
    plain = C.Converter(ann_model(), cfg)
    want = plain.run(x).model
    conv = C.Converter(ann_model(), cfg)
    data = conv.load_data(x)
    passes = []
    real = C.search_thresholds
    monkeypatch.setattr(C, "search_thresholds", lambda *a, **k: passes.append(k["settings"]) or real(*a, **k))
    got = conv.run(data, also_fit=S.search_fits(conv, SearchConfig(bsr=True, psi_max=4))).model
    assert len(passes) == 1 and got.SerializeToString() == want.SerializeToString()
    provider = S.thresholds_from_converter(conv, data, range(1, 5))
    fitted = {(name, psi): provider(name, psi) for name in conv.settings() for psi in (1, 3, 4)}
    assert len(passes) == 1   # the search's provider ran no pass
    for psi in (1, 3, 4):
        alone = plain.fit_thresholds(plain.load_data(x), None, {n: (psi, t) for n, (_, t) in plain.settings().items()})
        assert all(np.array_equal(fitted[name, psi], alone[name]) for name in conv.settings())
    assert S.search_fits(conv, SearchConfig(ssc=True)) is None
