"""BurstIF (docs/method.md §2): the numpy reference, the C++ kernel, the standard-op fallback in
onnxruntime and in onnx.reference must agree bit for bit."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

from burstif_models import one_node_model
from onnx2burst import ops

KERNEL = ops.kernel_available()
needs_kernel = pytest.mark.skipif(not KERNEL, reason="the C++ kernel was not built (no onnxruntime headers)")


@functools.lru_cache(maxsize=None)
def _model(T, psi, tau, rank):
    m = one_node_model(T, psi, tau, rank)
    onnx.checker.check_model(m, full_check=True)
    return m


@functools.lru_cache(maxsize=None)
def _session(T, psi, tau, rank, kernel, threads=None, opt=None):
    return ops.make_session(_model(T, psi, tau, rank), kernel=kernel, threads=threads, optimization=opt)


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32)


def assert_same(a, b, what):
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    diff = np.flatnonzero(bits(a).ravel() != bits(b).ravel())
    assert diff.size == 0, f"{what}: {diff.size} elements differ, first at {diff[0]}: {a.ravel()[diff[0]]} vs {b.ravel()[diff[0]]}"


def _case(draw_shape, T, C, seed, vth_kind, scale):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(T * draw_shape[0], C) + draw_shape[1:]) * scale).astype(np.float32)
    if vth_kind == "scalar":
        vth = np.array([rng.uniform(0.05, 2.0)], np.float32)
    else:
        vth = rng.uniform(-0.3, 2.0, size=C).astype(np.float32)
        vth[rng.integers(0, C)] = 0.0  # a channel that never fired in calibration
    return x, vth


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    T=st.integers(1, 16), psi=st.integers(1, 8), tau=st.sampled_from([0.5, 1.0, 1.7, 4.0]),
    rank=st.sampled_from([2, 3, 4]), N=st.integers(1, 3), C=st.integers(1, 5),
    vth_kind=st.sampled_from(["scalar", "channel"]), scale=st.sampled_from([0.3, 1.0, 5.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_all_implementations_agree_bit_for_bit(T, psi, tau, rank, N, C, vth_kind, scale, seed):
    spatial = {2: (), 3: (7,), 4: (3, 4)}[rank]
    x, vth = _case((N,) + spatial, T, C, seed, vth_kind, scale)
    y, s = ops.burst_if(x, vth, T, psi, tau)
    feeds = {"X": x, "vth": vth}
    fy, fs = _session(T, psi, tau, rank, False).run(None, feeds)
    assert_same(y, fy, "fallback in onnxruntime Y")
    assert_same(s, fs, "fallback in onnxruntime spikes")
    ry, rs = ReferenceEvaluator(_model(T, psi, tau, rank)).run(None, feeds)
    assert_same(y, ry, "onnx.reference Y")
    assert_same(s, rs, "onnx.reference spikes")
    if KERNEL:
        ky, ks = _session(T, psi, tau, rank, True).run(None, feeds)
        assert_same(y, ky, "kernel Y")
        assert_same(s, ks, "kernel spikes")


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(5000,), (1000, 3, 3), (700, 2, 3), (3, 40, 41), (64, 14, 14), (7, 5, 5),
                                   (3, 4, 17)])
def test_kernel_paths_across_tiles(shape, threads):
    """Layers wider than one tile (4096 neurons), so that tiles start inside a channel's run or
    list: the per-neuron path (a Gemm's [C]: K = 1; K < 16) and the runs of one channel; and
    runs (K = 196, 25, 68) whose ends fall inside a 16-neuron vector, and a tile of 175."""
    T, psi, tau = 4, 3, 1.0
    rng = np.random.default_rng(len(shape) * 10 + shape[0])
    C = shape[0]
    x = (rng.standard_normal((T * 2,) + shape) * 2).astype(np.float32)
    vth = rng.uniform(0.1, 1.5, C).astype(np.float32)
    vth[rng.integers(0, C, 3)] = 0.0
    vth[-1] = -0.4  # never fires
    y, s = ops.burst_if(x, vth, T, psi, tau)
    ky, ks = _session(T, psi, tau, len(shape) + 1, True, threads).run(None, {"X": x, "vth": vth})
    assert_same(y, ky, "kernel Y")
    assert_same(s, ks, "kernel spikes")


@needs_kernel
def test_kernel_paths_without_avx512():
    """The same checks with the hand-written AVX-512 runs switched off, so that the
    multiversioned loop that machines without AVX-512 use is tested here too."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, ONNX2BURST_KERNEL_NO_AVX512="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                        "paths_across_tiles or agree_bit_for_bit"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_kernel), False])
@pytest.mark.parametrize("T", [1, 4, 8, 13])
def test_constant_input_gives_round_T_x_spikes(kernel, T):
    """theta = 1, constant x, no clipping: total spikes = round(T * x) (§2)."""
    xs = np.array([0.0, 0.05, 0.26, 0.5, 0.74, 1.0, 1.3, 2.49], np.float32)
    C = xs.size
    x = np.tile(xs, (T, 1))  # N = 1, one neuron per channel
    vth = np.ones(C, np.float32)
    psi = 8
    y, s = _session(T, psi, 1.0, 2, kernel).run(None, {"X": x, "vth": vth})
    counts = y.sum(axis=0)  # theta = 1: Y is the spike count
    np.testing.assert_array_equal(counts, np.floor(T * xs + 0.5))
    assert s[0] == counts.sum()


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_kernel), False])
def test_clipping_at_psi_per_step(kernel):
    T, psi = 4, 3
    x = np.full((T, 1), 10.0, np.float32)  # wants 10 spikes per step, gets psi
    y, s = _session(T, psi, 1.0, 2, kernel).run(None, {"X": x, "vth": np.ones(1, np.float32)})
    np.testing.assert_array_equal(y[:, 0], [psi] * T)
    assert s[0] == psi * T


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_kernel), False])
def test_tau_scales_the_spike(kernel):
    """tau = 2: the neuron fires at 2*vth and each spike carries 2*vth (§4, Eq. 13)."""
    T = 4
    x = np.full((T, 1), 1.0, np.float32)
    y, s = _session(T, 8, 2.0, 2, kernel).run(None, {"X": x, "vth": np.ones(1, np.float32)})
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert s[0] == 2 and y.sum() == 4.0


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_kernel), False])
def test_spike_count_per_sample(kernel):
    T, N = 3, 2
    x = np.zeros((T * N, 2, 2), np.float32)
    x[np.arange(T) * N + 1] = 1.0  # only sample 1 gets input
    y, s = _session(T, 2, 1.0, 3, kernel).run(None, {"X": x, "vth": np.ones(2, np.float32)})
    np.testing.assert_array_equal(s, [0.0, T * 4])


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_kernel), False])
def test_nonpositive_threshold_never_fires(kernel):
    T = 4
    x = np.full((T, 3), 5.0, np.float32)
    y, s = _session(T, 4, 1.0, 2, kernel).run(None, {"X": x, "vth": np.array([0.0, -1.0, 1.0], np.float32)})
    assert np.all(y[:, :2] == 0) and not np.any(np.signbit(y[:, :2]))
    assert np.all(np.isfinite(y))


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("opt", ["disable", "basic", "extended", "all"])
@pytest.mark.parametrize("kernel", [True, False])
def test_threads_and_optimization_levels(threads, opt, kernel):
    T, psi, tau = 8, 4, 1.7
    rng = np.random.default_rng(1)
    x = rng.normal(size=(T * 5, 16, 9, 9)).astype(np.float32)  # many tiles: the thread pool splits them
    vth = rng.uniform(0.1, 1.0, 16).astype(np.float32)
    y, s = ops.burst_if(x, vth, T, psi, tau)
    sess = ops.make_session(_model(T, psi, tau, 4), kernel=kernel, threads=threads, optimization=opt)
    ky, ks = sess.run(None, {"X": x, "vth": vth})
    assert_same(y, ky, f"Y threads={threads} opt={opt}")
    assert_same(s, ks, "spikes")


def test_spinning_off_reaches_the_session_options():
    assert ops.session_options(kernel=False, spinning=False).get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
    with pytest.raises(Exception):  # not set: onnxruntime spins by default
        ops.session_options(kernel=False).get_session_config_entry("session.intra_op.allow_spinning")


@needs_kernel
def test_kernel_is_used_when_registered():
    """With the library registered the node runs as the custom kernel, not the inlined function."""
    so = ops.session_options(kernel=True)
    so.enable_profiling = False
    m = _model(2, 1, 1.0, 2)
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    # a model WITHOUT the function only loads when the kernel is registered
    bare = one_node_model(2, 1, 1.0, 2, with_function=False)
    ort.InferenceSession(bare.SerializeToString(), ops.session_options(kernel=True), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):
        ort.InferenceSession(bare.SerializeToString(), ops.session_options(kernel=False), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"X": np.ones((2, 1), np.float32), "vth": np.ones(1, np.float32)})[1][0] == 2


@needs_kernel
def test_kernel_spikes_output_is_optional():
    m = one_node_model(2, 2, 1.0, 2, with_function=False, spikes=False)
    (y,) = ops.make_session(m, kernel=True).run(None, {"X": np.ones((4, 3), np.float32), "vth": np.ones(3, np.float32)})
    np.testing.assert_array_equal(y, ops.burst_if(np.ones((4, 3), np.float32), np.ones(3, np.float32), 2, 2)[0])


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_kernel), False])
@pytest.mark.parametrize("shape", [(0, 3), (0, 2, 4, 4), (4, 0)])
def test_empty_batch_or_channels(kernel, shape):
    """N = 0 or C = 0: empty outputs from every implementation, the numpy reference included."""
    C = shape[1]
    x, vth = np.zeros(shape, np.float32), np.ones(max(C, 1), np.float32)
    y, s = _session(2, 2, 1.0, len(shape), kernel).run(None, {"X": x, "vth": vth})
    assert y.shape == shape and s.shape == (shape[0] // 2,)
    ry, rs = ops.burst_if(x, vth, 2, 2, 1.0)
    assert_same(y, ry, f"Y of an empty {shape}")
    assert_same(s, rs, f"spikes of an empty {shape}")


@needs_kernel
@pytest.mark.parametrize("x_shape, vth_len, message", [
    ((7, 3), 3, "not a multiple of T=2"),
    ((4, 3), 2, "vth has 2 values"),
    ((4,), 1, "rank >= 2"),
])
def test_kernel_bad_shapes_raise_with_message(x_shape, vth_len, message):
    rank = len(x_shape)
    m = one_node_model(2, 2, 1.0, max(rank, 2), with_function=False)
    if rank == 1:
        m.graph.input[0].type.tensor_type.shape.dim.pop()
        m.graph.output[0].type.tensor_type.shape.dim.pop()
    sess = ops.make_session(m, kernel=True)
    with pytest.raises(Exception, match=message) as e:
        sess.run(None, {"X": np.ones(x_shape, np.float32), "vth": np.ones(vth_len, np.float32)})
    assert "BurstIF node 'burst'" in str(e.value)


@needs_kernel
@pytest.mark.parametrize("attrs, message", [
    ({"psi": 0}, "psi must be >= 1"), ({"psi": 70000}, "psi must be <= 65536"), ({"T": 0}, "T must be >= 1"),
    ({"tau": 0.0}, "tau must be a finite number > 0"), ({"tau": -1.0}, "tau must be a finite number > 0"),
])
def test_kernel_bad_attributes_raise_with_message(attrs, message):
    m = one_node_model(2, 2, 1.0, 2, with_function=False)
    for a in m.graph.node[0].attribute:
        if a.name in attrs:
            if a.type == onnx.AttributeProto.INT:
                a.i = attrs[a.name]
            else:
                a.f = attrs[a.name]
    with pytest.raises(Exception, match=message):
        sess = ops.make_session(m, kernel=True)
        sess.run(None, {"X": np.ones((2, 1), np.float32), "vth": np.ones(1, np.float32)})


@needs_kernel
def test_kernel_rejects_non_float_input():
    m = one_node_model(2, 2, 1.0, 2, with_function=False)
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    with pytest.raises(Exception, match="(?i)type|float"):
        ops.make_session(m, kernel=True).run(None, {"X": np.ones((2, 1)), "vth": np.ones(1, np.float32)})


def test_reference_rejects_bad_input():
    with pytest.raises(ValueError, match="not a multiple of T=3"):
        ops.burst_if(np.ones((4, 2), np.float32), np.ones(2, np.float32), 3, 1)
    with pytest.raises(ValueError, match="vth has 3 values"):
        ops.burst_if(np.ones((4, 2), np.float32), np.ones(3, np.float32), 2, 1)
    with pytest.raises(ValueError, match="psi >= 1"):
        ops.burst_if(np.ones((4, 2), np.float32), np.ones(2, np.float32), 2, 0)
    with pytest.raises(ValueError, match="tau > 0"):
        ops.make_node("x", "v", "y", T=2, psi=1, tau=0.0)


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_kernel), False])
def test_nan_and_inf_inputs(kernel):
    """Documented: a NaN membrane emits no spike; +inf fires psi per step; -inf never fires.
    All implementations agree here too."""
    T = 2
    x = np.array([[np.nan, np.inf, -np.inf, 1.0]] * T, np.float32)
    vth = np.ones(4, np.float32)
    y, s = _session(T, 2, 1.0, 2, kernel).run(None, {"X": x, "vth": vth})
    ry, rs = ops.burst_if(x, vth, T, 2, 1.0)
    assert_same(y, ry, "Y with NaN/inf")
    assert_same(s, rs, "spikes with NaN/inf")
    np.testing.assert_array_equal(y[:, 0], 0)   # NaN: silent
    np.testing.assert_array_equal(y[:, 1], 2)   # +inf: psi spikes of theta = 1
    np.testing.assert_array_equal(y[:, 2], 0)   # -inf: silent


def test_function_needs_opset_13():
    with pytest.raises(ValueError, match="opset >= 13"):
        ops.make_function(11)


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_fallback_runs_at_every_supported_opset(opset):
    m = one_node_model(3, 2, 1.0, 4, opset=opset)
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(0).normal(size=(6, 2, 3, 3)).astype(np.float32)
    vth = np.array([0.5, 0.8], np.float32)
    y, s = ops.make_session(m, kernel=False).run(None, {"X": x, "vth": vth})
    ry, rs = ops.burst_if(x, vth, 3, 2, 1.0)
    assert_same(y, ry, f"opset {opset}")
