"""Symmetric KL of docs/method.md §6."""
from __future__ import annotations

import numpy as np
import pytest

from onnx2burst.evaluation.metrics import KLMeter, log_softmax, mean_symmetric_kl, symmetric_kl


def direct(a, b):
    """Straight from the definition, float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    p = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    kl_pq = (p * np.log(p / q)).sum(-1)
    kl_qp = (q * np.log(q / p)).sum(-1)
    return 0.5 * (kl_pq + kl_qp)


def test_equals_direct_float64():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 10)).astype(np.float32) * 3
    b = a + rng.normal(size=a.shape).astype(np.float32)
    np.testing.assert_allclose(symmetric_kl(a, b), direct(a, b), rtol=1e-10, atol=1e-14)
    assert mean_symmetric_kl(a, b) == pytest.approx(direct(a, b).mean(), rel=1e-12)


def test_zero_for_identical():
    a = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32)
    assert np.all(symmetric_kl(a, a) == 0.0)
    assert mean_symmetric_kl(a, a) == 0.0


def test_large_logits_do_not_overflow():
    a = np.array([[1e4, 0.0, -1e4], [3e38, 0.0, 0.0]], np.float32)
    b = np.array([[0.0, 1e4, -1e4], [0.0, 3e38, 0.0]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        kl = symmetric_kl(a, b)
    assert np.all(np.isfinite(kl))
    assert kl[0] == pytest.approx(0.5 * 2e4)  # (1 - 0)*(0 - (-1e4)) + (0 - 1)*(-1e4 - 0), halved
    ls = log_softmax(np.array([[1000.0, 0.0]]))
    assert np.all(np.isfinite(ls)) and ls[0, 0] == 0.0


def test_never_negative_and_symmetric():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200, 7)) * 1e-4  # nearly equal: rounding would go negative elsewhere
    b = a + rng.normal(size=a.shape) * 1e-12
    kl = symmetric_kl(a, b)
    assert np.all(kl >= 0)
    np.testing.assert_array_equal(kl, symmetric_kl(b, a))


def test_meter_streams():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 100, 10))
    m = KLMeter()
    for s in range(0, 100, 32):
        m.update(a[s:s + 32], b[s:s + 32])
    assert m.count == 100
    assert m.value == pytest.approx(mean_symmetric_kl(a, b), rel=1e-12)
    with pytest.raises(ValueError):
        KLMeter().value


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        symmetric_kl(np.zeros((2, 3)), np.zeros((2, 4)))
