"""§5: bias calibration, layer by layer, folded into the bias initializers."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx2burst import ops
from onnx2burst.convert import Converter
from onnx2burst.config import ConvertConfig
from onnx2burst.tuning.bias import articulation_points, calibrate_biases
from tests import fixtures_models as fm


def _prepare(model, T=4, psi=2, n=32):
    conv = Converter(model, ConvertConfig(T=T, psi=psi))
    x = fm.inputs(model, n, seed=5, low=-1, high=2)
    data = conv.load_data(x)
    stats = conv.activation_stats(data)
    vth = conv.fit_thresholds(data, stats)
    return conv, data, stats, vth, conv.build(vth), x


def _init(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_conv_relu_correction_by_hand():
    m = fm.conv_relu(channels=2)
    T, psi = 4, 2
    conv, data, stats, vth, snn, x = _prepare(m, T, psi)
    res = conv.calibrate(snn, data, stats, neurons=None)
    w = _init(m, "w").reshape(-1)[None, :, None, None]
    b = _init(m, "b")
    pre = w * x + b[None, :, None, None]                             # the conv, by hand
    ann = np.maximum(pre, 0).mean(axis=(0, 2, 3))
    y, _ = ops.burst_if(np.tile(pre, (T, 1, 1, 1)).astype(np.float32), vth["relu"], T, psi)
    delta = y.mean(axis=(0, 2, 3)) - ann
    np.testing.assert_allclose(res.deltas["relu"], delta, atol=1e-5)
    bias_name = snn.neuron("relu").bias
    np.testing.assert_allclose(_init(res.model, bias_name), b - delta, atol=1e-5)
    assert len(res.model.graph.node) == len(snn.model.graph.node)  # no extra node


def _naive(snn, ann_means, x):
    """Layer by layer on the whole graph, each layer seeing the earlier corrections."""
    model = onnx.ModelProto()
    model.CopyFrom(snn.model)
    deltas = {}
    for n in snn.neurons:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        m.graph.output.append(helper.make_empty_tensor_value_info(n.output))
        y = ops.make_session(m).run([n.output], {"x": x})[0]
        d = y.mean(axis=(0, 2, 3)) if y.ndim == 4 else y.mean(axis=0)
        deltas[n.name] = d - ann_means[n.name]
        b = next(t for t in model.graph.initializer if t.name == n.bias)
        b.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(b) - deltas[n.name] / n.bias_scale)
                                           .astype(np.float32), n.bias))
    return model, deltas


@pytest.mark.parametrize("cache_mb", [0, 64])
def test_layer_by_layer_matches_naive(cache_mb):
    conv, data, stats, vth, snn, x = _prepare(fm.residual(), T=4, psi=2)
    res = calibrate_biases(snn, stats.mean, data, batch_size=10, cache_mb=cache_mb)
    ref_model, ref = _naive(snn, stats.mean, x)
    for k in ref:
        np.testing.assert_allclose(res.deltas[k], ref[k], atol=1e-5, err_msg=k)
    assert snn.neuron("relu2").bias.startswith("b2") or "conv2" in snn.neuron("relu2").bias
    # the residual neuron is corrected on conv2 (the main branch), not on the shortcut's conv0
    conv0_bias = snn.neuron("relu0").bias
    assert not np.allclose(_init(res.model, snn.neuron("relu2").bias), _init(snn.model, snn.neuron("relu2").bias))
    assert conv0_bias != snn.neuron("relu2").bias


def test_cache_gives_identical_result():
    conv, data, stats, vth, snn, x = _prepare(fm.maxpool_net(), T=4, psi=2)
    assert articulation_points(snn.model, {n.output for n in snn.neurons}) == {"r0", "r1"}
    a = calibrate_biases(snn, stats.mean, data, batch_size=8, cache_mb=0)
    b = calibrate_biases(snn, stats.mean, data, batch_size=8, cache_mb=64)
    for k in a.deltas:
        np.testing.assert_array_equal(a.deltas[k], b.deltas[k])


def test_cache_spilled_to_disk_gives_identical_result(tmp_path, monkeypatch):
    """Spike counts over the memory budget go to a temporary folder (removed at the end), not
    back to recomputing every layer from the input; the corrections are the same bits."""
    import tempfile

    import onnx2burst.tuning.bias as bias

    conv, data, stats, vth, snn, x = _prepare(fm.maxpool_net(), T=4, psi=2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spilled = []
    real = bias._Cache.spill
    monkeypatch.setattr(bias._Cache, "spill", lambda self, folder: (spilled.append(folder), real(self, folder)))
    a = calibrate_biases(snn, stats.mean, data, batch_size=8, cache_mb=0)
    b = calibrate_biases(snn, stats.mean, data, batch_size=8, cache_mb=1e-6)
    assert spilled, "a budget of a few bytes spills the cache"
    for k in a.deltas:
        np.testing.assert_array_equal(a.deltas[k], b.deltas[k])
    assert list(tmp_path.iterdir()) == []
    # no room on disk either: recompute, same result
    monkeypatch.setattr(bias, "_disk_room", lambda folder: 0)
    spilled.clear()
    c = calibrate_biases(snn, stats.mean, data, batch_size=8, cache_mb=1e-6)
    assert not spilled
    for k in a.deltas:
        np.testing.assert_array_equal(a.deltas[k], c.deltas[k])


def test_gemm_beta_and_created_bias():
    m = fm.gemm_mlp()
    conv, data, stats, vth, snn, x = _prepare(m, T=4, psi=2)
    res = conv.calibrate(snn, data, stats)
    assert set(res.deltas) == {"relu0", "relu1"}
    ref_model, ref = _naive(snn, stats.mean, x)
    for k in ref:
        np.testing.assert_allclose(res.deltas[k], ref[k], atol=1e-5)
    nobias = fm.fixed_batch_reshape()   # fc2 has no bias but is analog; fc1's exists
    conv = Converter(nobias, ConvertConfig(T=2, psi=2))
    m2 = conv.run(fm.inputs(nobias, 8)).model
    assert any(t.name.endswith("_bias") or t.name == "b1" for t in m2.graph.initializer)


def test_conv_without_bias_gets_one():
    m = fm.conv_relu()
    del m.graph.node[0].input[2]
    m.graph.initializer.pop()  # drop b
    conv = Converter(m, ConvertConfig(T=2, psi=2))
    r = conv.run(fm.inputs(m, 16, low=-1, high=2))
    names = [t.name for t in r.model.graph.initializer]
    assert "conv_bias" in names and r.model.graph.node[0].input[2] == "conv_bias"
    assert np.abs(_init(r.model, "conv_bias")).max() > 0


def test_arena_kept_or_handed_back_gives_the_same_biases():
    """Calibration's runs keep their memory arena from run to run, or hand it back after every
    run where the memory budget has no room for it: the same deltas bit for bit, and a
    converter whose budget is tight hands it back."""
    m = fm.residual()
    conv, data, stats, vth, snn, _ = _prepare(m, n=40)
    kw = dict(batch_size=8, threads=1, cache_mb=1)
    kept = calibrate_biases(snn, stats.mean, data, keep_arena=True, **kw)
    back = calibrate_biases(snn, stats.mean, data, keep_arena=False, **kw)
    assert kept.deltas and kept.deltas.keys() == back.deltas.keys()
    assert all(np.array_equal(kept.deltas[k], back.deltas[k]) for k in kept.deltas)
    assert conv._arena_fits()
    tight = Converter(m, ConvertConfig(T=4, psi=2))
    tight.ARENA_FACTOR = 1e9   # no budget holds this
    assert not tight._arena_fits()
