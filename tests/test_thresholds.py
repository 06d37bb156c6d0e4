"""§4: the threshold search, streamed over batches, equals the direct computation."""
import numpy as np
import pytest

from onnx2burst.data import load_data
from onnx2burst.config import ThresholdConfig
from onnx2burst.graph import canonicalize
from onnx2burst.rewrite import analyze
from onnx2burst.tuning.thresholds import (ThresholdSearch, activation_stats, candidate_factors, quantize,
                                          search_thresholds)
from tests import fixtures_models as fm


def test_quantize_rounds_and_clips():
    a = np.array([0.0, 0.1, 0.13, 0.3749, 0.375, 1.0, 3.0, -1.0])
    q = quantize(a, 1.0, T=4, psi=2)
    np.testing.assert_allclose(q, [0, 0, 0.25, 0.25, 0.5, 1.0, 2.0, 0])  # round half up, cap psi*theta
    assert quantize(np.array([1.0]), 0.0, 4, 2)[0] == 0  # theta 0 never fires


def _direct(a_all, ref, T, psi, factors):
    """All in memory, float64, straight from the formula: [K, C] errors."""
    at = np.moveaxis(a_all, 1, 0).reshape(a_all.shape[1], -1).astype(np.float64)
    err = np.zeros((factors.size, at.shape[0]))
    for k, f in enumerate(factors):
        theta = (ref * f)[:, None]
        err[k] = ((at - quantize(at, theta, T, psi)) ** 2).sum(axis=1)
    return err


@pytest.mark.parametrize("T,psi", [(4, 2), (8, 4), (32, 1)])
def test_streaming_equals_direct(T, psi):
    r = np.random.default_rng(0)
    a = np.maximum(r.normal(size=(40, 3, 5, 5)), 0).astype(np.float32) * np.array([1, 2, 0.5], np.float32)[:, None, None]
    a[:, 2] = 0  # a dead channel
    a[:, 2, 0, 0] = 0.0
    ref = np.moveaxis(a, 1, 0).reshape(3, -1).max(axis=1).astype(np.float64)
    factors = candidate_factors()
    s = ThresholdSearch(ref, T, psi, factors)
    for chunk in np.array_split(a, 3):           # three batches of unequal size
        s.update(chunk)
    one = ThresholdSearch(ref, T, psi, factors)
    one.update(a)
    np.testing.assert_allclose(s.errors, one.errors, rtol=1e-9)
    direct = _direct(a, ref, T, psi, factors)
    np.testing.assert_allclose(s.errors, direct, rtol=2e-5, atol=1e-9)
    best = np.argmin(direct, axis=0)
    np.testing.assert_array_equal(s.best_index(), best)
    np.testing.assert_allclose(s.thresholds(), (ref * factors[best]).astype(np.float32))
    assert s.thresholds()[2] == 0.0  # the dead channel never fires


def _setup(model, n=48, samples=512):
    c = canonicalize(model)
    a = analyze(c)
    x = fm.inputs(model, n, seed=3, low=-1, high=2)
    return c, a, load_data(x, c.model, samples=samples), x


def test_conv_relu_thresholds_by_hand():
    m = fm.conv_relu(channels=2)
    c, a, data, x = _setup(m)
    w = fm.onnx.numpy_helper.to_array(m.graph.initializer[0]).reshape(-1)
    b = fm.onnx.numpy_helper.to_array(m.graph.initializer[1])
    act = np.maximum(w[None, :, None, None] * x + b[None, :, None, None], 0)   # relu(w x + b), by hand
    stats = activation_stats(c, a, data, batch_size=10)
    np.testing.assert_allclose(stats.max["relu"], act.max(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats.mean["relu"], act.mean(axis=(0, 2, 3)), rtol=1e-5)
    vth = search_thresholds(c, a, data, stats, T=4, settings={"relu": (2, 1.0)}, batch_size=10)["relu"]
    ref = act.max(axis=(0, 2, 3)).astype(np.float64)
    direct = _direct(act, ref, 4, 2, candidate_factors())
    np.testing.assert_allclose(vth, (ref * candidate_factors()[np.argmin(direct, axis=0)]).astype(np.float32), rtol=1e-6)


def test_batch_size_does_not_change_thresholds():
    c, a, data, _ = _setup(fm.residual())
    settings = {n: (2, 1.0) for n in a.neuron_names}
    s1 = activation_stats(c, a, data, batch_size=48)
    s2 = activation_stats(c, a, data, batch_size=7)
    v1 = search_thresholds(c, a, data, s1, T=4, settings=settings, batch_size=48)
    v2 = search_thresholds(c, a, data, s2, T=4, settings=settings, batch_size=7)
    for k in v1:
        np.testing.assert_allclose(v1[k], v2[k], rtol=1e-6)


def test_max_method_and_multi_settings():
    c, a, data, _ = _setup(fm.residual())
    st = activation_stats(c, a, data)
    mx = search_thresholds(c, a, data, st, T=4, settings={n: (2, 1.0) for n in a.neuron_names},
                           config=ThresholdConfig(method="max"))
    for k, v in mx.items():
        np.testing.assert_allclose(v, st.max[k].astype(np.float32))
    multi = search_thresholds(c, a, data, st, T=4, settings={n: [(1, 1.0), (4, 1.0)] for n in a.neuron_names})
    assert set(multi) == {(n, p, 1.0) for n in a.neuron_names for p in (1, 4)}
    single = search_thresholds(c, a, data, st, T=4, settings={n: (4, 1.0) for n in a.neuron_names})
    for n in a.neuron_names:
        np.testing.assert_array_equal(multi[(n, 4, 1.0)], single[n])
        assert (multi[(n, 4, 1.0)] <= multi[(n, 1, 1.0)] + 1e-7).all()  # more spikes per step: lower threshold


def test_relu6_bound_kept():
    c, a, data, _ = _setup(fm.relu6_net())
    st = activation_stats(c, a, data)
    assert st.max["relu6"].max() > 6 / 4  # the bound binds
    vth = search_thresholds(c, a, data, st, T=4, settings={"relu6": (4, 1.0)})["relu6"]
    assert (4 * vth <= 6.0 + 1e-6).all()  # psi * tau * vth <= m
