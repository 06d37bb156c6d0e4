"""BurstIF in onnxruntime's blocked NCHWc layout (onnx2burst.ops.layout): the kernel's
``channel_block`` against the reference, and the rewritten CPU session against the plain one."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import fixtures_models
import onnx2burst
from burstif_models import one_node_model
from onnx2burst import ops
from onnx2burst.ops.layout import NCHWC_DOMAIN, blocked_session, nchwc_block_size, rewrite_blocked

pytestmark = pytest.mark.skipif(not ops.kernel_available(), reason="the BurstIF kernel is not built")


def _block(x: np.ndarray, b: int) -> np.ndarray:
    """[M, C, H, W] in NCHW -> the same logical shape holding the NCHWc byte order."""
    m, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(m, c // b, b, h, w).transpose(0, 1, 3, 4, 2)).reshape(m, c, h, w)


def _unblock(x: np.ndarray, b: int) -> np.ndarray:
    m, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(m, c // b, h, w, b).transpose(0, 1, 4, 2, 3)).reshape(m, c, h, w)


def _blocked_model(T, psi, tau, b):
    m = one_node_model(T, psi, tau, 4, with_function=False)
    m.graph.node[0].attribute.append(helper.make_attribute("channel_block", b))
    return m


@pytest.mark.parametrize("b", [2, 4, 8, 16])  # 4/8/16: the vectorised blocks; 2: the generic path
@pytest.mark.parametrize("T,psi,tau,hw", [(4, 2, 1.0, (5, 3)), (8, 4, 1.7, (7, 7)), (1, 1, 0.5, (1, 1)),
                                          (3, 8, 4.0, (40, 45))])
def test_channel_block_matches_reference(b, T, psi, tau, hw):
    rng = np.random.default_rng(b * 100 + T)
    N, C = 3, 2 * b
    x = (rng.standard_normal((T * N, C) + hw) * 2).astype(np.float32)
    vth = rng.uniform(0.1, 1.5, C).astype(np.float32)
    vth[1] = 0.0
    vth[-1] = -0.3  # never fires
    y_ref, s_ref = ops.burst_if(x, vth, T, psi, tau)
    sess = ops.make_session(_blocked_model(T, psi, tau, b), kernel=True, layout="plain")
    y, s = sess.run(None, {"X": _block(x, b), "vth": vth})
    assert np.array_equal(_unblock(y, b).view(np.uint32), y_ref.view(np.uint32))
    assert np.array_equal(s, s_ref)


def test_channel_block_must_divide_the_channels():
    sess = ops.make_session(_blocked_model(2, 1, 1.0, 8), kernel=True, layout="plain")
    with pytest.raises(Exception, match="not a multiple of channel_block=8"):
        sess.run(None, {"X": np.zeros((2, 12, 3, 3), np.float32), "vth": np.ones(12, np.float32)})


def test_channel_block_range_is_checked():
    with pytest.raises(Exception, match="channel_block must be in 1..64"):
        ops.make_session(_blocked_model(2, 1, 1.0, 0), kernel=True, layout="plain")


def _fused_model(T, psi, tau, b, *, addend=False, once=False):
    m = _blocked_model(T, psi, tau, b)
    node = m.graph.node[0]
    if addend:
        node.input.append("R")
        m.graph.input.append(helper.make_tensor_value_info("R", onnx.TensorProto.FLOAT, ["TN", "C", "H", "W"]))
    if once:
        node.attribute.append(helper.make_attribute("time_broadcast", 1))
    return m


@pytest.mark.parametrize("b", [1, 2, 16])  # plain runs of one channel, per-neuron copies, vectorised blocks
def test_addend_input_is_a_fused_add(b):
    """BurstIF(X, vth, R) integrates fl(X + R): bit for bit an Add node feeding BurstIF."""
    T, psi, tau, N, C = 4, 3, 1.3, 3, 2 * max(b, 8)
    rng = np.random.default_rng(b)
    x = rng.standard_normal((T * N, C, 5, 7)).astype(np.float32)
    r = rng.standard_normal((T * N, C, 5, 7)).astype(np.float32)
    vth = rng.uniform(0.1, 1.5, C).astype(np.float32)
    y_ref, s_ref = ops.burst_if(x + r, vth, T, psi, tau)
    sess = ops.make_session(_fused_model(T, psi, tau, b, addend=True), kernel=True, layout="plain")
    y, s = sess.run(None, {"X": _block(x, b), "vth": vth, "R": _block(r, b)})
    assert np.array_equal(_unblock(y, b).view(np.uint32), y_ref.view(np.uint32))
    assert np.array_equal(s, s_ref)


@pytest.mark.parametrize("b", [1, 16])
@pytest.mark.parametrize("addend", [False, True])
def test_time_broadcast_is_a_fused_tile(b, addend):
    """time_broadcast=1: X is one step [N, ...] fed at every t, like Tile(X, [T, 1, 1, 1])."""
    T, psi, tau, N, C = 5, 2, 1.0, 2, 32
    rng = np.random.default_rng(3)
    x1 = rng.standard_normal((N, C, 6, 6)).astype(np.float32)
    r = rng.standard_normal((T * N, C, 6, 6)).astype(np.float32)
    vth = rng.uniform(0.2, 1.0, C).astype(np.float32)
    xt = np.tile(x1, (T, 1, 1, 1))
    y_ref, s_ref = ops.burst_if(xt + r if addend else xt, vth, T, psi, tau)
    sess = ops.make_session(_fused_model(T, psi, tau, b, addend=addend, once=True), kernel=True, layout="plain")
    feeds = {"X": _block(x1, b), "vth": vth} | ({"R": _block(r, b)} if addend else {})
    y, s = sess.run(None, feeds)
    assert y.shape == (T * N, C, 6, 6)
    assert np.array_equal(_unblock(y, b).view(np.uint32), y_ref.view(np.uint32))
    assert np.array_equal(s, s_ref)


def test_addend_and_time_broadcast_are_checked():
    x = np.zeros((8, 16, 3, 3), np.float32)
    sess = ops.make_session(_fused_model(4, 2, 1.0, 1, addend=True), kernel=True, layout="plain")
    with pytest.raises(Exception, match=r"the addend R has shape \[4, 16, 3, 3\], Y has \[8, 16, 3, 3\]"):
        sess.run(None, {"X": x, "vth": np.ones(16, np.float32), "R": x[:4]})
    m = _fused_model(4, 2, 1.0, 1)
    m.graph.node[0].attribute.append(helper.make_attribute("time_broadcast", 2))
    with pytest.raises(Exception, match="time_broadcast must be 0 or 1, got 2"):
        ops.make_session(m, kernel=True, layout="plain")


@pytest.fixture(scope="module")
def residual_snn():
    model = fixtures_models.residual(c=2 * nchwc_block_size())
    snn = onnx2burst.convert(model, fixtures_models.inputs(model, 40), T=4, psi=2, samples=32)
    return snn, fixtures_models.inputs(model, 16, seed=7)


def test_blocked_session_equals_plain_session(residual_snn):
    snn, x = residual_snn
    name = snn.graph.input[0].name
    fast, moved = blocked_session(snn, threads=1)
    assert moved == sum(n.op_type == "BurstIF" for n in snn.graph.node) > 0
    plain = ops.make_session(snn, layout="plain")
    for a, b in zip(plain.run(None, {name: x}), fast.run(None, {name: x})):
        assert np.array_equal(a, b)
    auto = ops.make_session(snn)  # layout="auto" is the default
    assert np.array_equal(auto.run(None, {name: x})[0], plain.run(None, {name: x})[0])


def test_rewrite_removes_the_reorders_around_neurons(residual_snn, tmp_path):
    import onnxruntime as ort

    snn, _ = residual_snn
    so = ops.session_options(kernel=True, optimization="all")
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(snn.SerializeToString(), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(so.optimized_model_filepath)

    def reorders(m):
        return sum(n.domain == NCHWC_DOMAIN and n.op_type.startswith("Reorder") for n in m.graph.node)

    new, moved = rewrite_blocked(opt, nchwc_block_size())
    assert moved > 0
    assert reorders(new) < reorders(opt)
    blocked = [n for n in new.graph.node if n.op_type == "BurstIF"]
    assert all(any(a.name == "channel_block" for a in n.attribute) for n in blocked)
    # the residual Add and the time Tile each feed one neuron only: folded into the kernel
    assert sum(len(n.input) == 3 for n in blocked) == 1
    assert sum(any(a.name == "time_broadcast" for a in n.attribute) for n in blocked) == 1
    assert not any(n.op_type in ("Add", "Tile") for n in new.graph.node)
    unfused, _ = rewrite_blocked(opt, nchwc_block_size(), fuse=False)
    assert sum(n.op_type in ("Add", "Tile") for n in unfused.graph.node) == 2


def test_layout_argument_is_checked():
    with pytest.raises(ValueError, match="layout must be"):
        ops.make_session(one_node_model(2, 1, 1.0, 2), layout="nhwc")
