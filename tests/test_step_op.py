"""BurstIFStep, the one-timestep form of BurstIF that streaming sessions run with the kernel
(docs/stream.md): the numpy step against the numpy BurstIF, the C++ step against the numpy step,
bit for bit, and its errors."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnx2burst import ops
from onnx2burst.ops.reference import burst_if_step
from onnx2burst.ops.schema import DOMAIN, STEP_OP_TYPE
from test_ops import assert_same, needs_kernel

_CASES = dict(T=st.integers(1, 12), psi=st.integers(1, 8), tau=st.sampled_from([0.5, 1.0, 1.7]),
              rank=st.sampled_from([2, 3, 4]), N=st.integers(1, 3), C=st.integers(1, 5),
              K=st.sampled_from([1, 3, 17, 40]), scale=st.sampled_from([0.3, 1.0, 5.0]),
              seed=st.integers(0, 2**31 - 1))


def _case(T, rank, N, C, K, scale, seed):
    rng = np.random.default_rng(seed)
    tail = {2: (), 3: (K,), 4: (K, 2)}[rank]
    x = (rng.normal(size=(T * N, C) + tail) * scale).astype(np.float32)
    vth = rng.uniform(-0.3, 2.0, size=C).astype(np.float32)
    vth[rng.integers(0, C)] = 0.0  # a channel that never fires
    return x, vth


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(**_CASES)
def test_t_steps_are_the_batch_neuron(T, psi, tau, rank, N, C, K, scale, seed):
    """Stepping T times from a zero membrane is BurstIF over the T steps stacked, bit for bit."""
    x, vth = _case(T, rank, N, C, K, scale, seed)
    y, spikes = ops.burst_if(x, vth, T, psi, tau)
    u = np.zeros_like(x[:N])
    total = np.zeros(N, np.float32)
    for t in range(T):
        yt, s, u = burst_if_step(x[t * N:(t + 1) * N], u, vth, T, psi, tau)
        assert_same(yt, y[t * N:(t + 1) * N], f"Y step {t}")
        total += s
    assert_same(total, spikes, "spikes")


@functools.lru_cache(maxsize=None)
def _step_session(T, psi, tau, rank, threads=None, block=1, addend=False):
    dims = ["N", "C"] + [f"d{j}" for j in range(2, rank)]
    xdims = ["kN"] + dims[1:]  # X may hold k steps of U's N samples
    vi = helper.make_tensor_value_info
    extra = {"channel_block": block} if block > 1 else {}
    node = helper.make_node(STEP_OP_TYPE, ["X", "vth", "U"] + (["R"] if addend else []), ["Y", "S", "U_next"],
                            domain=DOMAIN, name="step0", T=T, psi=psi, tau=tau, **extra)
    g = helper.make_graph([node], "step", [vi("X", TensorProto.FLOAT, xdims), vi("vth", TensorProto.FLOAT, ["C"]),
                                           vi("U", TensorProto.FLOAT, dims)]
                          + ([vi("R", TensorProto.FLOAT, xdims)] if addend else []),
                          [vi("Y", TensorProto.FLOAT, xdims), vi("S", TensorProto.FLOAT, ["N"]),
                           vi("U_next", TensorProto.FLOAT, dims)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    return ops.make_session(m, kernel=True, threads=threads, layout="plain")


@needs_kernel
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(**_CASES, threads=st.sampled_from([1, 2]))
def test_the_kernel_step_is_the_reference_step(T, psi, tau, rank, N, C, K, scale, seed, threads):
    """Any membrane (not only one T steps can reach), NaN and inf included."""
    x, vth = _case(1, rank, N, C, K, scale, seed)
    rng = np.random.default_rng(seed + 1)
    u = (rng.normal(size=x.shape) * scale * 2).astype(np.float32)
    x.reshape(-1)[rng.integers(0, x.size)] = np.nan
    u.reshape(-1)[rng.integers(0, u.size)] = np.inf
    want = burst_if_step(x, u, vth, T, psi, tau)
    got = _step_session(T, psi, tau, rank, threads).run(None, {"X": x, "vth": vth, "U": u})
    for a, b, what in zip(got, want, ("Y", "spikes", "U_next")):
        assert_same(a, b, what)


@needs_kernel
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(**_CASES, k=st.integers(1, 5), block=st.sampled_from([1, 4, 8, 16]), threads=st.sampled_from([1, 2]),
       addend=st.booleans())
def test_k_steps_in_one_call_are_k_reference_steps(T, psi, tau, rank, N, C, K, scale, seed, k, block, threads,
                                                   addend):
    """X of k steps [k*N, ...] against U [N, ...]: Y of each step, the spikes summed, U after the
    last, bit for bit as k single steps; also in the blocked NCHWc layout (X, U and U_next
    blocked, channels a multiple of the block) and with the addend R (the steps of fl(X + R))."""
    from onnx2burst.ops.layout import from_blocked, to_blocked

    if block > 1:
        rank, C = max(rank, 3), block * (1 + C % 2)
    x, vth = _case(k, rank, N, C, K, scale, seed)
    rng = np.random.default_rng(seed + 1)
    u0 = (rng.normal(size=x[:N].shape) * scale).astype(np.float32)
    r = (rng.normal(size=x.shape) * scale).astype(np.float32)
    u, ys, total = u0, [], np.zeros(N, np.float32)
    for t in range(k):
        xt = x[t * N:(t + 1) * N] + r[t * N:(t + 1) * N] if addend else x[t * N:(t + 1) * N]
        yt, s, u = burst_if_step(xt, u, vth, T, psi, tau)
        ys.append(yt)
        total += s
    sess = _step_session(T, psi, tau, rank, threads, block, addend)
    if block > 1:
        def blk(a):
            return np.concatenate([to_blocked(a[t * N:(t + 1) * N], block) for t in range(k)])
        feeds = {"X": blk(x), "vth": vth, "U": to_blocked(u0, block), **({"R": blk(r)} if addend else {})}
        y, spikes, u_next = sess.run(None, feeds)
        y = np.concatenate([from_blocked(y[t * N:(t + 1) * N], block) for t in range(k)])
        u_next = from_blocked(u_next, block)
    else:
        y, spikes, u_next = sess.run(None, {"X": x, "vth": vth, "U": u0, **({"R": r} if addend else {})})
    assert_same(y, np.concatenate(ys), "Y")
    assert_same(spikes, total, "spikes")
    assert_same(u_next, u, "U_next")


def test_blocked_layout_round_trip():
    from onnx2burst.ops.layout import from_blocked, to_blocked

    a = np.arange(2 * 16 * 3 * 5, dtype=np.float32).reshape(2, 16, 3, 5)
    b = to_blocked(a, 8)
    # channel c of position k of sample n at ((c // 8) * K + k) * 8 + c % 8
    assert b.reshape(2, -1)[1, ((9 // 8) * 15 + 7) * 8 + 9 % 8] == a[1, 9].reshape(-1)[7]
    assert np.array_equal(from_blocked(b, 8), a)


@needs_kernel
def test_bad_step_inputs_name_the_node():
    sess = _step_session(4, 2, 1.0, 4)
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(Exception, match="step0.*membrane U has shape"):
        sess.run(None, {"X": x, "vth": np.ones(3, np.float32), "U": np.zeros((2, 3, 4, 5), np.float32)})
    with pytest.raises(Exception, match=r"step0.*membrane U has shape \[3, 3, 4, 4\].*k >= 1 steps"):
        sess.run(None, {"X": x, "vth": np.ones(3, np.float32), "U": np.zeros((3, 3, 4, 4), np.float32)})
    with pytest.raises(Exception, match="step0.*vth has 2 values"):
        sess.run(None, {"X": x, "vth": np.ones(2, np.float32), "U": x})
    node = helper.make_node(STEP_OP_TYPE, ["X", "vth", "U"], ["Y", "S", "U_next"], domain=DOMAIN, name="signed0",
                            T=4, psi=2, alpha=[0.1])
    vi = helper.make_tensor_value_info
    g = helper.make_graph([node], "step", [vi("X", TensorProto.FLOAT, None), vi("vth", TensorProto.FLOAT, None),
                                           vi("U", TensorProto.FLOAT, None)],
                          [vi(n, TensorProto.FLOAT, None) for n in ("Y", "S", "U_next")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    with pytest.raises(Exception, match="signed0.*no time_broadcast or alpha"):
        ops.make_session(m, kernel=True, layout="plain").run(None, {"X": x, "vth": np.ones(3, np.float32), "U": x})
