"""onnx2burst.torch: the torch mapper of an SNN ONNX file, bit-exact BurstIF, TorchScript export."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

import fixtures_models
import onnx2burst
from burstif_models import one_node_model
from onnx2burst import ops
from onnx2burst import torch as otorch


def _run(mod, *xs):
    with torch.no_grad():
        out = mod(*[torch.from_numpy(np.asarray(x)) for x in xs])
    return [o.numpy() for o in out] if isinstance(out, tuple) else out.numpy()


@pytest.mark.parametrize("T,psi,tau,rank", [(1, 1, 1.0, 2), (4, 2, 1.0, 4), (3, 5, 0.7, 3), (8, 3, 1.3, 4)])
def test_burstif_bit_exact(T, psi, tau, rank):
    r = np.random.default_rng(T * 10 + rank)
    N, C = 3, 5
    shape = (T * N, C) + (4,) * (rank - 2)
    x = (r.standard_normal(shape) * 2).astype(np.float32)
    x.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, 1e30]
    vth = np.array([0.5, 0.0, -1.0, 1.7, 1e-3], np.float32)
    mod = otorch.load(one_node_model(T, psi, tau, rank))
    y, s = _run(mod, x, vth)
    y_ref, s_ref = ops.burst_if(x, vth, T, psi, tau)
    assert y.dtype == np.float32 and s.dtype == np.float32
    np.testing.assert_array_equal(y.view(np.int32), y_ref.view(np.int32))
    np.testing.assert_array_equal(s.view(np.int32), s_ref.view(np.int32))


def test_burstif_scalar_vth():
    T, psi = 4, 2
    x = np.random.default_rng(0).standard_normal((T * 2, 3, 5)).astype(np.float32)
    vth = np.array([0.8], np.float32)
    y, s = _run(otorch.BurstIF(T, psi), x, vth)
    y_ref, s_ref = ops.burst_if(x, vth, T, psi)
    np.testing.assert_array_equal(y.view(np.int32), y_ref.view(np.int32))
    np.testing.assert_array_equal(s.view(np.int32), s_ref.view(np.int32))


@pytest.fixture(scope="module")
def residual_snn():
    model = fixtures_models.residual()
    x_calib = fixtures_models.inputs(model, 40)
    snn = onnx2burst.convert(model, x_calib, T=4, psi=2, samples=32)
    x = fixtures_models.inputs(model, 16, seed=7)
    name = snn.graph.input[0].name
    ref = ops.make_session(snn).run(None, {name: x})[0]
    return snn, x, ref


def _check_close(y, ref):
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_array_equal(y.argmax(-1), ref.argmax(-1))


def test_residual_matches_onnxruntime(residual_snn):
    snn, x, ref = residual_snn
    _check_close(_run(otorch.load(snn), x), ref)


def test_torchscript_export(residual_snn, tmp_path):
    snn, x, ref = residual_snn
    src = tmp_path / "r.snn.onnx"
    onnx.save(snn, src)
    out = tmp_path / "r.pt"
    otorch.export(src, out)
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    j = torch.jit.load(str(out))
    _check_close(_run(j, x), ref)          # batch differs from the trace's example batch
    _check_close(_run(j, x[:5]), ref[:5])


def test_cli_export_torch(residual_snn, tmp_path):
    from onnx2burst.cli import main
    snn, x, ref = residual_snn
    src = tmp_path / "r.snn.onnx"
    onnx.save(snn, src)
    out = tmp_path / "cli.pt"
    res = CliRunner().invoke(main, ["export-torch", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    _check_close(_run(torch.jit.load(str(out)), x), ref)
    res = CliRunner().invoke(main, ["export-torch", str(tmp_path / "missing.onnx"), "-o", str(out)])
    assert res.exit_code != 0 and "missing.onnx" in res.output


def test_unsupported_op_named():
    vi = helper.make_tensor_value_info
    g = helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="weird")], "g",
                          [vi("x", TensorProto.FLOAT, [2])], [vi("y", TensorProto.FLOAT, [2])])
    with pytest.raises(NotImplementedError, match="weird.*Erf"):
        otorch.load(helper.make_model(g))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda(residual_snn):
    snn, x, ref = residual_snn
    mod = otorch.load(snn).to("cuda")
    with torch.no_grad():
        y = mod(torch.from_numpy(x).cuda()).cpu().numpy()
    _check_close(y, ref)


def test_anytime_output_from_torch_and_onnxruntime():
    """README's any-time use: per-timestep outputs [T, N, K] whose running mean ends at the output."""
    model = fixtures_models.residual()
    snn = onnx2burst.convert(model, fixtures_models.inputs(model, 40), T=4, psi=2, samples=32,
                             per_timestep_output=True)
    x = fixtures_models.inputs(model, 8, seed=3)
    name = snn.graph.input[0].name
    mean, per_t = ops.make_session(snn).run(None, {name: x})
    assert per_t.shape == (4,) + mean.shape
    running = np.cumsum(per_t, axis=0) / np.arange(1, 5, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(running[-1], mean, rtol=1e-5, atol=1e-6)
    t_mean, t_per = otorch.load(snn)(torch.from_numpy(x))
    np.testing.assert_allclose(t_per.numpy(), per_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t_mean.numpy(), mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["spikes", "lateral"])
def test_maxpool_snn_matches_onnxruntime(mode):
    """Per-step MaxPool and lateral pooling (CumSum, MaxPool Indices over the flat tensor, Gather)."""
    m = fixtures_models.maxpool_net()
    snn = onnx2burst.convert(m, fixtures_models.inputs(m, 32, seed=7), T=4, psi=2, samples=32, maxpool=mode)
    x = fixtures_models.inputs(m, 5, seed=3)
    _check_close(_run(otorch.load(snn), x), ops.make_session(snn).run(None, {"x": x})[0])
