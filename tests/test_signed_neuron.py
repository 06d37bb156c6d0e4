"""The signed BurstIF neuron (attribute alpha, docs/method.md §2): the numpy reference, the C++
kernel, the standard-op fallback in onnxruntime and in onnx.reference agree bit for bit; a
hand-checked case; alpha = 0 is the ReLU neuron exactly."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnx2burst import ops
from test_ops import assert_same

KERNEL = ops.kernel_available()
needs_kernel = pytest.mark.skipif(not KERNEL, reason="the C++ kernel was not built (no onnxruntime headers)")


def signed_model(T, psi, tau, rank, alpha, opset=17):
    dims = ["TN"] + [f"d{i}" for i in range(1, rank)]
    vi = helper.make_tensor_value_info
    node = ops.make_node("X", "vth", "Y", T=T, psi=psi, tau=tau, spikes="S", name="burst", alpha=list(alpha))
    g = helper.make_graph([node], "burst_if", [vi("X", TensorProto.FLOAT, dims), vi("vth", TensorProto.FLOAT, ["C"])],
                          [vi("Y", TensorProto.FLOAT, dims), vi("S", TensorProto.FLOAT, ["N"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return ops.attach_function(m)


@functools.lru_cache(maxsize=None)
def _session(T, psi, tau, rank, alpha, kernel):
    return ops.make_session(signed_model(T, psi, tau, rank, alpha), kernel=kernel)


def _all(x, vth, T, psi, tau, alpha):
    """Y and spikes from every implementation, checked equal to the reference; the reference's."""
    alpha = tuple(float(a) for a in alpha)
    rank = x.ndim
    y, s = ops.burst_if(x, vth, T, psi, tau, alpha=np.array(alpha, np.float32))
    feeds = {"X": x, "vth": vth}
    fy, fs = _session(T, psi, tau, rank, alpha, False).run(None, feeds)
    assert_same(y, fy, "fallback in onnxruntime Y")
    assert_same(s, fs, "fallback in onnxruntime spikes")
    ry, rs = ReferenceEvaluator(signed_model(T, psi, tau, rank, alpha)).run(None, feeds)
    assert_same(y, ry, "onnx.reference Y")
    assert_same(s, rs, "onnx.reference spikes")
    if KERNEL:
        ky, ks = _session(T, psi, tau, rank, alpha, True).run(None, feeds)
        assert_same(y, ky, "kernel Y")
        assert_same(s, ks, "kernel spikes")
    return y, s


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    T=st.integers(1, 16), psi=st.integers(1, 8), tau=st.sampled_from([0.5, 1.0, 1.7]),
    rank=st.sampled_from([2, 3, 4]), N=st.integers(1, 3), C=st.integers(1, 5),
    alpha_kind=st.sampled_from(["scalar", "channel"]), scale=st.sampled_from([0.3, 1.0, 5.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_signed_implementations_agree_bit_for_bit(T, psi, tau, rank, N, C, alpha_kind, scale, seed):
    rng = np.random.default_rng(seed)
    spatial = {2: (), 3: (7,), 4: (3, 4)}[rank]
    x = (rng.normal(size=(T * N, C) + spatial) * scale).astype(np.float32)
    vth = rng.uniform(-0.3, 2.0, size=C).astype(np.float32)
    vth[rng.integers(0, C)] = 0.0
    if alpha_kind == "scalar":
        alpha = [float(rng.choice([0.1, 0.25, 1.0, 3.0]))]
    else:
        alpha = [float(a) for a in rng.choice([0.0, 0.01, 0.1, 0.5, 2.0], size=C)]
        alpha[0] = 0.1
    _all(x, vth, T, psi, tau, alpha)


def test_hand_checked_case():
    """theta = 1, alpha = 0.1 (theta_n = 10), T = 4, psi = 2, one neuron per sample, constant
    inputs, offset theta/(2T) = 1/8, w grows by 1/4 per step: -6 per step gives
    (w - u) = 6.125, 12.25 (-> one negative spike, u = -1.75), 8.375, 14.5 (-> one more):
    Y = [0, -1, 0, -1]. +0.6 per step: u = 0.725, 1.45 (fires), 1.175 (fires), 0.9: [0, 1, 1, 0].
    -0.3 per step (-1.2 in all, under theta_n - theta/2): no spike. Spike counts 2, 2, 0."""
    T = 4
    x = np.tile(np.array([[-6.0], [0.6], [-0.3]], np.float32), (T, 1))
    y, s = _all(x, np.array([1.0], np.float32), T, 2, 1.0, [0.1])
    np.testing.assert_array_equal(y.reshape(T, 3).T, [[0, -1, 0, -1], [0, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(s, [2, 2, 0])


def test_mean_output_tracks_leaky_relu():
    """Constant input per step: the mean output is within theta/T of LeakyReLU(x) (the negative
    side truncates up to one spike of theta/T) and never beyond psi*theta per step."""
    T, alpha = 32, 0.1
    xs = np.linspace(-30, 3, 67, dtype=np.float32)
    y, _ = ops.burst_if(np.tile(xs[None, :], (T, 1)), np.array([1.0], np.float32), T, 4, 1.0,
                        alpha=np.array([alpha], np.float32))
    got = y.reshape(T, -1).mean(0)
    want = np.clip(np.where(xs > 0, xs, alpha * xs), -4, 4)
    assert np.abs(got - want).max() <= 1.0 / T + 1e-6


def test_alpha_zero_is_the_relu_neuron_bit_for_bit():
    rng = np.random.default_rng(3)
    T, C = 6, 4
    x = (rng.normal(size=(T * 3, C, 5)) * 2).astype(np.float32)
    vth = np.array([0.5, 1.0, 0.0, 2.0], np.float32)
    y0, s0 = ops.burst_if(x, vth, T, 3, 1.0)
    y1, s1 = _all(x, vth, T, 3, 1.0, [0.0, 0.0, 0.0, 0.0])
    assert_same(y0, y1, "alpha 0 Y")
    assert_same(s0, s1, "alpha 0 spikes")
    # a channel with alpha 0 in a signed layer fires like the ReLU neuron too
    y2, _ = _all(x, vth, T, 3, 1.0, [0.0, 0.2, 0.0, 0.0])
    assert_same(y0[:, [0, 2, 3]], y2[:, [0, 2, 3]], "alpha 0 channels of a signed layer")
    assert (y2[:, 1] < 0).any()


def test_no_alpha_attribute_when_zero():
    assert ops.node_alpha(ops.make_node("x", "v", "y", T=2, psi=2, alpha=[0.0])) is None
    assert ops.node_alpha(ops.make_node("x", "v", "y", T=2, psi=2, alpha=[0.0, 0.5])) == [0.0, 0.5]
    m = signed_model(2, 2, 1.0, 2, [0.0])
    assert not any(a.name == "alpha" for f in m.functions for a in f.attribute_proto)


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_kernel), False])
def test_nan_and_inf(kernel):
    T = 3
    x = np.array([[np.nan], [np.inf], [-np.inf]] * T, np.float32)
    y, s = ops.burst_if(x, np.array([1.0], np.float32), T, 2, 1.0, alpha=np.array([0.1], np.float32))
    ky, ks = _session(T, 2, 1.0, 2, (0.1,), kernel).run(None, {"X": x, "vth": np.array([1.0], np.float32)})
    assert_same(y, ky, "Y")
    assert_same(s, ks, "spikes")
    np.testing.assert_array_equal(y.reshape(T, 3)[:, 0], 0)          # NaN: no spike
    np.testing.assert_array_equal(y.reshape(T, 3)[:, 1], 2)          # +inf: psi positive per step
    np.testing.assert_array_equal(y.reshape(T, 3)[:, 2], -2)         # -inf: psi negative per step


def test_bad_alpha_refused():
    with pytest.raises(ValueError, match="alpha"):
        ops.make_node("x", "v", "y", T=2, psi=2, alpha=[-0.1])
    with pytest.raises(ValueError, match="alpha"):
        ops.burst_if(np.zeros((2, 3), np.float32), np.ones(3, np.float32), 2, 2, alpha=np.ones(2, np.float32))


@needs_kernel
def test_kernel_refuses_bad_alpha_by_node_name():
    m = signed_model(2, 2, 1.0, 2, [0.5, 0.5])
    sess = ops.make_session(m, kernel=True)
    with pytest.raises(Exception, match="burst.*alpha has 2 values"):
        sess.run(None, {"X": np.zeros((2, 3), np.float32), "vth": np.ones(3, np.float32)})
    node = m.graph.node[0]
    for a in node.attribute:
        if a.name == "alpha":
            a.floats[0] = -1.0
    with pytest.raises(Exception, match="alpha must hold finite values >= 0"):
        ops.make_session(m, kernel=True).run(None, {"X": np.zeros((2, 2), np.float32),
                                                   "vth": np.ones(2, np.float32)})


@needs_kernel
@pytest.mark.parametrize("shape", [(5000,), (3, 40, 41), (64, 14, 14)])
def test_kernel_signed_across_tiles(shape):
    T, psi = 4, 3
    rng = np.random.default_rng(shape[0])
    C = shape[0]
    x = (rng.standard_normal((T * 2,) + shape) * 3).astype(np.float32)
    vth = rng.uniform(0.1, 1.5, C).astype(np.float32)
    alpha = tuple(float(a) for a in rng.choice([0.0, 0.1, 0.3], size=C))
    y, s = ops.burst_if(x, vth, T, psi, 1.0, alpha=np.array(alpha, np.float32))
    ky, ks = _session(T, psi, 1.0, len(shape) + 1, alpha, True).run(None, {"X": x, "vth": vth})
    assert_same(y, ky, "kernel Y")
    assert_same(s, ks, "kernel spikes")


def test_function_checks_with_onnx():
    onnx.checker.check_model(signed_model(3, 2, 1.0, 4, [0.1]), full_check=True)


def _leaky_residual():
    """The residual fixture with LeakyRelu(0.1) in place of every Relu (channels: two NCHWc blocks)."""
    import fixtures_models
    from onnx2burst.ops.layout import nchwc_block_size

    m = fixtures_models.residual(c=2 * nchwc_block_size())
    for n in m.graph.node:
        if n.op_type == "Relu":
            n.op_type = "LeakyRelu"
            n.attribute.append(helper.make_attribute("alpha", 0.1))
    return m, fixtures_models.inputs(m, 40), fixtures_models.inputs(m, 16, seed=7)


@pytest.fixture(scope="module")
def leaky_snn():
    import onnx2burst
    m, calib, x = _leaky_residual()
    return onnx2burst.convert(m, calib, T=4, psi=2, samples=32), x


@needs_kernel
def test_blocked_layout_runs_signed_neurons_bit_for_bit(leaky_snn):
    """The NCHWc rewrite keeps alpha (blocked steps, the fused residual addend and time Tile)."""
    from onnx2burst.ops.layout import blocked_session
    snn, x = leaky_snn
    assert all(ops.node_alpha(n) for n in snn.graph.node if n.op_type == "BurstIF")
    fast, moved = blocked_session(snn, threads=1)
    assert moved == sum(n.op_type == "BurstIF" for n in snn.graph.node) > 0
    plain = ops.make_session(snn, layout="plain")
    fallback = ops.make_session(snn, kernel=False)
    for a, b, c in zip(plain.run(None, {"x": x}), fast.run(None, {"x": x}), fallback.run(None, {"x": x})):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    from onnx2burst.calibration.augment import with_outputs
    y0 = next(n.output[0] for n in snn.graph.node if n.op_type == "BurstIF")
    assert (ops.make_session(with_outputs(snn, [y0]), layout="plain").run(None, {"x": x})[0] < 0).any()


def test_interop_supports_or_refuses_alpha_by_name(leaky_snn, tmp_path):
    from onnx2burst.interop.portable import fold_back, make_portable
    snn, x = leaky_snn
    port = make_portable(snn)
    assert not any(n.domain == ops.DOMAIN for n in port.graph.node)
    want = ops.make_session(snn, kernel=False).run(None, {"x": x})
    got = ops.make_session(port, kernel=False).run(None, {"x": x})
    for a, b in zip(want, got):
        assert np.array_equal(a, b)
    back = fold_back(port)
    assert [ops.node_alpha(n) for n in back.graph.node if n.op_type == "BurstIF"] == \
        [ops.node_alpha(n) for n in snn.graph.node if n.op_type == "BurstIF"]
    from click.testing import CliRunner

    from onnx2burst.cli import main
    onnx.save(snn, tmp_path / "leaky.snn.onnx")
    for cmd in (["export-torch"], ["export-nir"]):
        r = CliRunner().invoke(main, cmd + [str(tmp_path / "leaky.snn.onnx"), "-o", str(tmp_path / "out.x")])
        assert r.exit_code != 0 and "relu0" in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "out.x").exists()


def test_energy_counts_both_signs(leaky_snn):
    """The spikes the energy model counts are |Y| / theta summed over steps and neurons."""
    from onnx2burst.calibration.augment import with_outputs
    from onnx2burst.evaluation.energy import with_spike_outputs
    from onnx2burst.snn import read_snn
    snn, x = leaky_snn
    m, names = with_spike_outputs(snn)
    nrn = read_snn(snn).neurons[0]
    sess = ops.make_session(with_outputs(m, [nrn.y, names[0]]), kernel=False)
    y, spikes = sess.run(None, {"x": x})
    T, N = nrn.T, x.shape[0]
    theta = nrn.theta.reshape(1, 1, -1, *([1] * (y.ndim - 2)))
    counts = np.abs(y.reshape((T, N) + y.shape[1:]) / theta)
    np.testing.assert_allclose(spikes, counts.reshape(T, N, -1).sum(axis=(0, 2)), rtol=1e-5)
    assert (y < 0).any()


def test_threshold_fit_models_the_signed_neuron_exactly():
    """For inputs constant over the steps, the fit's Q is the neuron's mean output on both sides:
    the fit's squared errors equal those of the reference neuron run at each candidate."""
    from onnx2burst.tuning.thresholds import ThresholdSearch
    T, psi, alpha = 8, 2, 0.1
    x = np.random.default_rng(5).uniform(-30, 2.5, 400).astype(np.float32)
    a = np.where(x > 0, x, np.float32(alpha) * x).astype(np.float32)
    search = ThresholdSearch(np.array([1.0]), T, psi, np.array([1.0, 0.8, 0.55]), per_channel=False,
                             alpha=[alpha])
    search.update(a[None, :])
    for k, f in enumerate(search.factors):
        y, _ = ops.burst_if(np.tile(x[None, :], (T, 1)), np.array([f], np.float32), T, psi,
                            alpha=np.array([alpha], np.float32))
        want = float(((a - y.reshape(T, -1).mean(0)) ** 2).sum())
        assert search.errors[k, 0] == pytest.approx(want, rel=1e-3), (f, search.errors[k, 0], want)


@pytest.mark.parametrize("kind,value", [("tau", 2.0), ("psi", 3)])
def test_the_search_measures_signed_neurons_as_the_changed_snn(leaky_snn, kind, value):
    """S_i(k) of a signed layer equals a full run of the SNN with only that layer changed (its
    cell keeps alpha: the negative spikes count in S and in E)."""
    from onnx import numpy_helper

    from onnx2burst import search as S
    from onnx2burst.evaluation.energy import with_spike_outputs
    from onnx2burst.evaluation.metrics import symmetric_kl
    from onnx2burst.snn import read_snn

    m, calib, _ = _leaky_residual()
    snn, x = leaky_snn
    tb = getattr(S.measure(m, snn, x, psis=(1, 2, 3) if kind == "psi" else None,
                           taus=(1.0, 2.0) if kind == "tau" else None, batch_size=8, threads=1,
                           mean_correct=False), kind)
    nr = read_snn(snn).neurons[1]
    assert nr.signed
    changed = onnx.ModelProto()
    changed.CopyFrom(snn)
    node = next(n for n in changed.graph.node if n.name == nr.node.name)
    at = next(a for a in node.attribute if a.name == kind)
    if kind == "tau":
        at.f = value
    else:
        at.i = value
        init = next(t for t in changed.graph.initializer if t.name == node.input[1])
        init.CopyFrom(numpy_helper.from_array((nr.vth * np.float32(nr.psi) / np.float32(value)).astype(np.float32),
                                              init.name))
    withs, names = with_spike_outputs(changed)
    outs = dict(zip([o.name for o in withs.graph.output], ops.make_session(withs).run(None, {"x": x})))
    a = ops.make_session(m, kernel=False).run(None, {"x": x})[0]
    i, j = tb.layers.index(nr.name), tb.column(value)
    assert tb.S[i, j] == pytest.approx(symmetric_kl(a, outs[snn.graph.output[0].name]).mean(), rel=1e-4)
    assert tb.spikes[i, j] == pytest.approx(outs[nr.spikes].sum() / len(x), rel=1e-6)


def test_bsr_and_ssc_run_on_signed_neurons(tmp_path):
    """convert --bsr --ssc on a LeakyReLU model: one conversion, signed neurons kept."""
    from click.testing import CliRunner

    from onnx2burst.cli import main
    m, calib, _ = _leaky_residual()
    onnx.save(m, tmp_path / "leaky.onnx")
    np.save(tmp_path / "calib.npy", calib)
    r = CliRunner().invoke(main, ["convert", str(tmp_path / "leaky.onnx"), "--calib", str(tmp_path / "calib.npy"),
                                  "--T", "4", "--psi", "2", "--calib-samples", "32", "--bsr", "--ssc", "--psi-max", "3",
                                  "--tau-grid", "1,1.5,2", "-q", "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 0, r.output
    out = onnx.load(tmp_path / "o.onnx")
    assert all(ops.node_alpha(n) for n in out.graph.node if n.op_type == "BurstIF")
