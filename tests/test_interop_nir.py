"""NIR export: onnx2burst.interop.nir and ``onnx2burst export-nir``.

Reads every export back with ``nir.read`` and checks nodes, edges and parameters against the
ONNX initializers (a spike's weight theta and an average pool's 1/k are in the next layer's
weights, the rounding offset theta/(2T) in the bias before the neuron); runs the NIR graph with
a small numpy simulator of its nodes (below) and compares with the SNN in onnxruntime: with
BurstIF's reset (by subtraction, at most psi spikes a step) the export reproduces the SNN; with
NIR's own IF (reset to zero) it does not, and the test measures by how much. The importers
themselves (Sinabs, Norse) are run in test_nir_importers.py.
"""
from __future__ import annotations

import io
import json
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

nir = pytest.importorskip("nir")

import fixtures_models as fm  # noqa: E402
import onnx2burst  # noqa: E402
import snn_fixtures  # noqa: E402
from onnx2burst import ops  # noqa: E402
from onnx2burst.cli import main  # noqa: E402
from onnx2burst.errors import GraphError, ModelLoadError, ModelSaveError, UnsupportedModelError  # noqa: E402
from onnx2burst.interop.nir import NIRExportWarning, export_nir, to_nir  # noqa: E402
from onnx2burst.interop.nir_io import NEVER  # noqa: E402
from onnx2burst.io import save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# -- a numpy simulator of the NIR nodes the exporter writes -------------------------------------

def _conv(x, w, b, stride, pad, dil, groups):
    nd = w.ndim - 2
    stride, pad, dil = (np.broadcast_to(np.asarray(v).reshape(-1), (nd,)) for v in (stride, pad, dil))
    x = np.pad(x, [(0, 0), (0, 0)] + [(int(p), int(p)) for p in pad])
    k = [int(d) * (s - 1) + 1 for d, s in zip(dil, w.shape[2:])]
    win = sliding_window_view(x, k, axis=tuple(range(2, 2 + nd)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, int(s)) for s in stride)
              + tuple(slice(None, None, int(d)) for d in dil)]          # N, C, *out, *kernel
    G, cin, cout = int(groups), w.shape[1], w.shape[0] // int(groups)
    ys = []
    for g in range(G):
        y = np.tensordot(win[:, g * cin:(g + 1) * cin], w[g * cout:(g + 1) * cout],
                         axes=([1] + list(range(2 + nd, 2 + 2 * nd)), [1] + list(range(2, 2 + nd))))
        ys.append(np.moveaxis(y, -1, 1))
    return (np.concatenate(ys, 1) + np.asarray(b, np.float32).reshape((1, -1) + (1,) * nd)).astype(np.float32)


def simulate(graph, x, T, reset="zero", fire="gt", psi=False):
    """Run ``graph`` for T steps on the constant input ``x`` [N, ...]; return {output: [T, N, ...]}.

    Each node gets the sum of its predecessors' outputs at this step. IF: ``v += r*I``; a spike
    where ``v > v_threshold`` (``fire="ge"``: ``>=``, as BurstIF); then ``v = 0`` (NIR) or, with
    ``reset="subtract"``, ``v -= s*v_threshold`` (BurstIF, docs/method.md §2). ``psi``: emit
    ``clip(floor(v/v_threshold), 0, psi)`` spikes, psi from the IF's metadata (BurstIF).
    """
    preds = defaultdict(list)
    for s, d in graph.edges:
        preds[d].append(s)
    order, done = [], set()
    while len(order) < len(graph.nodes):
        ready = [n for n in graph.nodes if n not in done and all(p in done for p in preds[n])]
        assert ready, "cycle"
        order += ready
        done.update(ready)
    mem, outs = {}, defaultdict(list)
    for _ in range(T):
        val = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                val[name] = x
                continue
            i = val[preds[name][0]]
            for p in preds[name][1:]:
                i = i + val[p]                                      # a NIR node sums its inputs
            if isinstance(node, nir.Output):
                outs[name].append(i.reshape(len(i), -1))
            elif isinstance(node, (nir.Conv1d, nir.Conv2d)):
                val[name] = _conv(i, node.weight, node.bias, node.stride, node.padding, node.dilation, node.groups)
            elif isinstance(node, nir.Affine):
                val[name] = (i @ node.weight.T + node.bias).astype(np.float32)
            elif isinstance(node, nir.Flatten):
                val[name] = i.reshape(i.shape[0], -1)
            elif isinstance(node, nir.SumPool2d):
                k = [int(v) for v in node.kernel_size]
                C = i.shape[1]
                w = np.ones((C, 1, *k), np.float32)
                val[name] = _conv(i, w, np.zeros(C, np.float32), node.stride, node.padding, 1, C)
            elif isinstance(node, nir.IF):
                thr = node.v_threshold
                v = mem.get(name, np.zeros_like(i)) + node.r * i
                if psi:
                    z = np.clip(np.floor(v / thr), 0, int(node.metadata.get("psi", 1))).astype(np.float32)
                else:
                    z = ((v >= thr) if fire == "ge" else (v > thr)).astype(np.float32)
                v = np.where(z > 0, np.float32(0), v) if reset == "zero" else v - z * thr
                mem[name] = v.astype(np.float32)
                val[name] = z
            else:
                raise TypeError(f"simulator: no {type(node).__name__}")
    return {k: np.stack(v) for k, v in outs.items()}


def _mean_output(graph, x, T, **kw):
    outs = simulate(graph, x, T, **kw)
    assert len(outs) == 1
    return next(iter(outs.values())).mean(0)


def _burstif(graph, x, T):
    """The graph run as BurstIF: reset by subtraction, at most psi spikes a step."""
    return _mean_output(graph, x, T, reset="subtract", psi=True)


def _export(model, tmp_path, name="m", **kw):
    out = tmp_path / f"{name}.nir"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NIRExportWarning)
        res = export_nir(model, out, **kw)
    return res, nir.read(out)


def _described(graph) -> dict:
    return json.loads(graph.metadata["nodes"])


def _by_onnx(graph, label, kind):
    """The node of type ``kind`` that comes from ONNX node ``label`` (graph metadata ``nodes``)."""
    info = _described(graph)
    found = [k for k, v in graph.nodes.items() if isinstance(v, kind) and info.get(k, {}).get("onnx_node") == label]
    assert len(found) == 1, (label, kind, found)
    return found[0], graph.nodes[found[0]]


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _in_edges(graph, name):
    return [s for s, d in graph.edges if d == name]


def _kinds(graph):
    return sorted(type(n).__name__ for n in graph.nodes.values())


def _per_channel(a):
    """[C, ...] constant over the trailing axes -> [C]."""
    a = np.asarray(a)
    flat = a.reshape(a.shape[0], -1)
    assert (flat == flat[:, :1]).all()
    return flat[:, 0]


# -- the hand-built SNN of snn_fixtures (residual Add, AvgPool, Flatten, Gemm, T=4) --------------

@pytest.fixture(scope="module")
def toy():
    snn = snn_fixtures.snn_model(T=4, psi=1)
    x = snn_fixtures.sample_data(24, seed=5)
    ref = ops.make_session(snn).run(None, {"x": x})[0]
    return snn, x, ref


def test_toy_nodes_edges_parameters(toy, tmp_path):
    snn, x, _ = toy
    res, g = _export(snn, tmp_path)
    inits = _inits(snn)
    T = 4
    assert int(g.metadata["T"]) == T and g.metadata["source"] == "onnx2burst"
    # only node types both importers know: no Scale, AvgPool2d, Flatten or Linear
    assert _kinds(g) == sorted(["Input", "Conv2d", "IF", "Conv2d", "IF", "SumPool2d", "Conv2d", "IF", "Conv2d",
                                "Output"])
    (inp,) = [n for n in g.nodes.values() if isinstance(n, nir.Input)]
    (out_name, out), = [(k, n) for k, n in g.nodes.items() if isinstance(n, nir.Output)]
    np.testing.assert_array_equal(inp.input_type["input"], [1, 8, 8])
    np.testing.assert_array_equal(out.output_type["output"], [3, 1, 1])     # fc2 became a 1x1 conv
    assert _described(g)[out_name]["readout"] == "mean_over_T" and _described(g)[out_name]["onnx_output"] == "logits"
    theta = {k: inits[f"vth_{k}"] for k in ("relu1", "relu2", "relu3")}            # tau = 1
    off = {k: np.where(v > 0, v / np.float32(2 * T), 0).astype(np.float32) for k, v in theta.items()}
    gain = np.where(theta["relu1"] > 0, 1 / np.where(theta["relu1"] > 0, theta["relu1"], 1), 1).astype(np.float32)
    names = {}
    for label in ("relu1", "relu2", "relu3"):
        name, f = _by_onnx(g, label, nir.IF)
        names[label] = name
        np.testing.assert_array_equal(f.r, np.ones_like(f.r))
        assert (int(f.metadata["psi"]), float(f.metadata["tau"]), int(f.metadata["T"])) == (1, 1.0, T)
        np.testing.assert_array_equal(f.metadata["vth"], theta[label])
        assert f.metadata["reset"] == "subtract" and not np.any(getattr(f, "v_reset", 0))
    thr = {k: _per_channel(g.nodes[n].v_threshold) for k, n in names.items()}
    np.testing.assert_array_equal(thr["relu1"], np.where(theta["relu1"] > 0, theta["relu1"], NEVER))
    np.testing.assert_array_equal(thr["relu3"], np.where(theta["relu3"] > 0, theta["relu3"], NEVER))
    # relu2 reads relu1's spikes unweighted (the identity shortcut): its input and threshold are in
    # units of relu1's theta
    np.testing.assert_allclose(thr["relu2"], np.where(theta["relu2"] > 0, theta["relu2"] * gain, NEVER), rtol=1e-6)
    c1, c2 = _by_onnx(g, "conv1", nir.Conv2d), _by_onnx(g, "conv2", nir.Conv2d)
    f1, f2 = _by_onnx(g, "fc1", nir.Conv2d), _by_onnx(g, "fc2", nir.Conv2d)
    np.testing.assert_array_equal(c1[1].weight, inits["w1"])
    np.testing.assert_array_equal(c1[1].bias, inits["b1"] + off["relu1"])
    w2 = inits["w2"] * theta["relu1"][None, :, None, None] * gain[:, None, None, None]
    np.testing.assert_allclose(c2[1].weight, w2, rtol=1e-6)
    np.testing.assert_allclose(c2[1].bias, (inits["b2"] + off["relu2"]) * gain, rtol=1e-6)
    # fc1 over the pooled 4x4 map: a conv whose kernel is the map, weights times theta2 / 4
    np.testing.assert_allclose(f1[1].weight, inits["g1"].reshape(16, 4, 4, 4)
                               * (theta["relu2"] * np.float32(0.25))[None, :, None, None], rtol=1e-6)
    np.testing.assert_array_equal(f1[1].bias, inits["c1"] + off["relu3"])
    np.testing.assert_allclose(f2[1].weight[:, :, 0, 0], inits["g2"] * theta["relu3"][None, :], rtol=1e-6)
    np.testing.assert_array_equal(f2[1].bias, inits["c2"])              # analog output layer: no offset
    assert tuple(c1[1].padding) == (1, 1) and tuple(c1[1].stride) == (1, 1)
    pool = next(k for k, n in g.nodes.items() if isinstance(n, nir.SumPool2d))
    assert list(g.nodes[pool].kernel_size) == [2, 2] and list(g.nodes[pool].stride) == [2, 2]
    # the residual Add is fan-in: conv2 and relu1's spikes both go into relu2; relu1 feeds conv2
    # first (nirtorch runs the nodes depth-first in edge order)
    assert sorted(_in_edges(g, names["relu2"])) == sorted([c2[0], names["relu1"]])
    assert [d for s, d in g.edges if s == names["relu1"]] == [c2[0], names["relu2"]]
    assert len(g.edges) == 10
    assert not res.notes
    assert res.losses and all("reset to zero" in why for _, why in res.losses)


def test_toy_simulation_reproduces_the_snn(toy, tmp_path):
    snn, x, ref = toy
    _, g = _export(snn, tmp_path)
    # with BurstIF's reset (by subtraction, fire at >=): the same output up to float rounding
    np.testing.assert_allclose(_burstif(g, x, 4), ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(_mean_output(g, x, 4, reset="subtract", fire="ge"), ref, atol=1e-5, rtol=1e-5)
    # NIR's IF (reset to zero, fire at >): it differs, by the charge lost at each reset
    y0 = _mean_output(g, x, 4, reset="zero", fire="gt")
    assert np.abs(y0 - ref).max() > 1e-3


def test_silent_channels_never_fire(tmp_path):
    vth = {k: v.copy() for k, v in snn_fixtures.relu_max(snn_fixtures.ann_model(), snn_fixtures.sample_data()).items()}
    vth["relu1"][1] = 0.0                      # a channel that never fired during calibration
    vth["relu2"][2] = -1.0
    snn = snn_fixtures.snn_model(T=4, psi=1, vth=vth)
    x = snn_fixtures.sample_data(16, seed=2)
    ref = ops.make_session(snn).run(None, {"x": x})[0]
    _, g = _export(snn, tmp_path)
    assert _per_channel(_by_onnx(g, "relu1", nir.IF)[1].v_threshold)[1] == NEVER
    assert _per_channel(_by_onnx(g, "relu2", nir.IF)[1].v_threshold)[2] == NEVER
    np.testing.assert_allclose(_burstif(g, x, 4), ref, atol=1e-5, rtol=1e-5)


def test_nir_to_nir_roundtrip_is_in_memory_too(toy):
    res = to_nir(toy[0])
    assert isinstance(res.graph, nir.NIRGraph) and res.T == 4 and not res.approximations
    back = nir.read(io.BytesIO(res.data))
    assert list(back.nodes) == list(res.graph.nodes) and back.edges == res.graph.edges


def test_file_layout_reads_in_nir_104_to_108(toy, tmp_path):
    """What nir 1.0.4 (Sinabs' newest) cannot read is not in the file: no IF v_reset, node metadata
    only on node types whose 1.0.4 class takes it."""
    import h5py

    res, _ = _export(toy[0], tmp_path)
    with h5py.File(tmp_path / "m.nir", "r") as f:
        nodes = f["node"]["nodes"]
        for name in nodes:
            kind = nodes[name]["type"][()].decode()
            assert "v_reset" not in nodes[name]
            assert ("metadata" in nodes[name]) <= (kind in ("IF", "Affine", "SumPool2d", "Conv1d", "Flatten")), name


# -- the bundled VGG converted at psi=1 (few calibration samples) --------------------------------

@pytest.fixture(scope="module")
def vgg_p1(tmp_path_factory):
    d = tmp_path_factory.mktemp("vgg")
    snn = onnx2burst.convert(str(ROOT / "models/zoo/vgg_fmnist.onnx"), str(ROOT / "models/data/fmnist_calib.npz"),
                             T=8, psi=1, samples=32)
    path = d / "vgg_p1.snn.onnx"
    save_model(snn, path)
    data = np.load(ROOT / "models/data/fmnist_test.npz")
    x, labels = data["input"][:48].astype(np.float32), data["labels"][:48]
    ref = ops.make_session(snn).run(None, {snn.graph.input[0].name: x})[0]
    return path, snn, x, labels, ref


def test_vgg_psi1_export(vgg_p1, tmp_path):
    path, snn, x, labels, ref = vgg_p1
    out = tmp_path / "vgg.nir"
    with pytest.warns(NIRExportWarning, match="reset to zero"):
        res = export_nir(path, out)
    g = nir.read(out)
    inits = _inits(snn)
    burst = [n for n in snn.graph.node if n.op_type == "BurstIF"]
    assert len(res.losses) == 7 and not res.notes
    assert _kinds(g) == sorted(["Input", "Output"] + ["IF"] * 7 + ["Conv2d"] * 8 + ["SumPool2d"] * 3)
    for bn in burst:
        vth = inits[bn.input[1]]
        thr = _per_channel(_by_onnx(g, bn.name, nir.IF)[1].v_threshold)
        np.testing.assert_array_equal(thr, np.where(vth > 0, vth, NEVER))     # no shortcut: no gain
    first = next(n for n in snn.graph.node if n.op_type == "Conv")
    np.testing.assert_array_equal(_by_onnx(g, first.name, nir.Conv2d)[1].weight, inits[first.input[1]])
    # the graph is a chain, in order
    assert all(len(_in_edges(g, k)) <= 1 for k in g.nodes) and len(g.edges) == len(g.nodes) - 1

    # the measured comparison with the SNN in onnxruntime
    y_sub = _burstif(g, x, 8)
    y_nir = _mean_output(g, x, 8, reset="zero", fire="gt")
    agree = lambda y: float((y.argmax(1) == ref.argmax(1)).mean())  # noqa: E731
    same = lambda y: float((np.abs(y - ref).max(1) <= 1e-4).mean())  # noqa: E731
    print(f"\nvgg_fmnist T=8 psi=1, {len(x)} test images: ORT SNN acc {(ref.argmax(1) == labels).mean():.3f}; "
          f"NIR graph as BurstIF: max|diff| {np.abs(y_sub - ref).max():.3g}, samples equal to 1e-4 "
          f"{same(y_sub):.3f}, argmax agree {agree(y_sub):.3f}; with NIR's IF (reset to zero): max|diff| "
          f"{np.abs(y_nir - ref).max():.3g}, argmax agree {agree(y_nir):.3f}, "
          f"acc {(y_nir.argmax(1) == labels).mean():.3f}")
    # exact but for float rounding: sums run in another order, so a membrane within an ulp of the
    # threshold can fire a step apart (one spike, one sample)
    assert same(y_sub) >= 0.9 and agree(y_sub) >= 0.97
    assert agree(y_nir) >= 0.6


def test_vgg_cli(vgg_p1, tmp_path):
    path = vgg_p1[0]
    out = tmp_path / "cli.nir"
    res = CliRunner().invoke(main, ["export-nir", str(path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "wrote" in res.stdout and "T=8" in res.stdout
    assert "reset to zero" in res.stderr and "/features/features.2/Relu" in res.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    g = nir.read(out)
    assert int(g.metadata["T"]) == 8


# -- residual fan-in, conv shortcuts, psi > 1 warnings, refusals ----------------------------------

def test_residual_fan_in(tmp_path):
    m = fm.residual()
    snn = onnx2burst.convert(m, fm.inputs(m, 40), T=4, psi=1, samples=32)
    res, g = _export(snn, tmp_path)
    relu0, relu2 = _by_onnx(g, "relu0", nir.IF)[0], _by_onnx(g, "relu2", nir.IF)[0]
    conv2 = _by_onnx(g, "conv2", nir.Conv2d)[0]
    assert sorted(_in_edges(g, relu2)) == sorted([relu0, conv2])     # relu0's spikes go straight in
    assert "theta of relu0" in g.nodes[relu2].metadata["input_gain"]
    gap = next(n for n in g.nodes.values() if isinstance(n, nir.SumPool2d))
    assert list(gap.kernel_size) == [6, 6]          # GlobalAveragePool over the 6x6 map
    assert not res.notes
    x = fm.inputs(m, 16, seed=3)
    ref = ops.make_session(snn).run(None, {"x": x})[0]
    np.testing.assert_allclose(_burstif(g, x, 4), ref, atol=1e-4, rtol=1e-4)


def _conv_shortcut(k_short: int = 1, seed: int = 0, c: int = 3) -> onnx.ModelProto:
    """x[N,2,8,8] -> conv0 -> relu0 -> conv1 (stride 2, c -> 2c) -> relu1 -> conv2 -> Add(shortcut:
    a k_short x k_short stride-2 conv of relu0) -> relu2 -> GlobalAveragePool -> Flatten -> Gemm."""
    r = np.random.default_rng(seed)
    w = lambda *s, scale=0.5: (r.normal(size=s) * scale).astype(np.float32)  # noqa: E731
    n = helper.make_node
    p = (k_short - 1) // 2
    nodes = [n("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("Relu", ["c0"], ["r0"], name="relu0"),
             n("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
               strides=[2, 2]),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("Conv", ["r0", "ws", "bs"], ["cs"], name="shortcut", kernel_shape=[k_short] * 2, pads=[p] * 4,
               strides=[2, 2]),
             n("Add", ["c2", "cs"], ["s2"], name="add"),
             n("Relu", ["s2"], ["r2"], name="relu2"),
             n("GlobalAveragePool", ["r2"], ["gp"], name="gap"),
             n("Flatten", ["gp"], ["f"], name="flatten"),
             n("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    inits = {"w0": w(c, 2, 3, 3), "b0": w(c, scale=0.1), "w1": w(2 * c, c, 3, 3, scale=0.3),
             "b1": w(2 * c, scale=0.1), "w2": w(2 * c, 2 * c, 3, 3, scale=0.2), "b2": w(2 * c, scale=0.1),
             "ws": w(2 * c, c, k_short, k_short), "bs": w(2 * c, scale=0.1), "wf": w(3, 2 * c, scale=1.0),
             "bf": np.zeros(3, np.float32)}
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "shortcut", [vi("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
                          [vi("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_conv_shortcut_becomes_a_chain(tmp_path):
    """A 1x1-conv shortcut: conv1 and relu1 get 3 more channels that copy relu0's spikes, and conv2
    applies the shortcut's weights to them; no node has two inputs, so nirtorch's order is right."""
    m = _conv_shortcut()
    snn = onnx2burst.convert(m, fm.inputs(m, 40, low=0.0), T=6, psi=1, samples=32)
    res, g = _export(snn, tmp_path)
    assert not res.notes
    assert all(len(_in_edges(g, k)) <= 1 for k in g.nodes)
    assert not [k for k, v in _described(g).items() if v.get("onnx_node") == "shortcut"]
    (_, c1), (_, r1), (_, c2) = (_by_onnx(g, "conv1", nir.Conv2d), _by_onnx(g, "relu1", nir.IF),
                                 _by_onnx(g, "conv2", nir.Conv2d))
    assert c1.weight.shape[0] == 9 and r1.v_threshold.shape[0] == 9 and c2.weight.shape[1] == 9
    assert "copy the spikes of relu0" in r1.metadata["passthrough"]
    np.testing.assert_array_equal(_per_channel(r1.v_threshold)[6:], np.float32(1 - 2.0 ** -4))   # 2*(T+1) <= 16
    x = fm.inputs(m, 24, seed=3, low=0.0)
    ref = ops.make_session(snn).run(None, {"x": x})[0]
    np.testing.assert_allclose(_burstif(g, x, 6), ref, atol=1e-4, rtol=1e-4)
    # and under reset to zero (NIR's IF, Norse) the copies are exact too: only the real neurons lose
    _mean_output(g, x, 6, reset="zero", fire="gt")


def test_a_shortcut_that_cannot_be_chained_is_a_note(tmp_path):
    """A 3x3 shortcut conv stays a branch: the export says nirtorch would run the block out of order."""
    m = _conv_shortcut(k_short=3)
    snn = onnx2burst.convert(m, fm.inputs(m, 40, low=0.0), T=4, psi=1, samples=32)
    with pytest.warns(NIRExportWarning, match="importers: nirtorch runs"):
        res = export_nir(snn, tmp_path / "s3.nir")
    assert res.notes and not res.exact
    g = nir.read(tmp_path / "s3.nir")
    x = fm.inputs(m, 16, seed=3, low=0.0)
    ref = ops.make_session(snn).run(None, {"x": x})[0]
    np.testing.assert_allclose(_burstif(g, x, 4), ref, atol=1e-4, rtol=1e-4)   # the graph itself is right


def test_psi_above_one_warns_per_layer(tmp_path):
    snn = snn_fixtures.snn_model(T=4, psi=2, psis={"relu3": 1}, tau={"relu2": 1.5})
    with pytest.warns(NIRExportWarning) as rec:
        res = export_nir(snn, tmp_path / "p2.nir")
    msg = str(rec[0].message)
    lines = {ln.split(":")[0].strip(): ln for ln in msg.splitlines() if ln.startswith("  ")}
    assert "psi=2" in lines["relu1"] and "psi=2" in lines["relu2"] and "psi" not in lines["relu3"]
    assert all("reset to zero" in ln for ln in lines.values())
    g = nir.read(tmp_path / "p2.nir")
    f2 = _by_onnx(g, "relu2", nir.IF)[1]
    assert int(f2.metadata["psi"]) == 2 and float(f2.metadata["tau"]) == 1.5
    inits = _inits(snn)
    vth, theta1 = inits["vth_relu2"], inits["vth_relu1"]
    gain = np.where(theta1 > 0, 1 / np.where(theta1 > 0, theta1, 1), 1).astype(np.float32)
    np.testing.assert_allclose(_per_channel(f2.v_threshold), np.where(vth > 0, np.float32(1.5) * vth * gain, NEVER),
                               rtol=1e-6)
    assert len(res.losses) == 3
    # run as BurstIF (at most psi spikes a step, metadata psi), the graph reproduces the SNN
    x = snn_fixtures.sample_data(16, seed=4)
    ref = ops.make_session(snn).run(None, {"x": x})[0]
    np.testing.assert_allclose(_burstif(g, x, 4), ref, atol=1e-5, rtol=1e-5)


def test_cubalif_export(toy, tmp_path):
    """``neuron="cubalif"``: each IF a CubaLIF that integrates like it under Euler steps of dt
    (tau_syn = dt, no leak float32 sees, r*dt/tau_mem = 1), the rest unchanged; psi = 1 loses nothing
    (Norse's reset_subtract keeps BurstIF's reset), psi = 2 one spike a step."""
    snn = toy[0]
    ref_res, ref_g = _export(snn, tmp_path, "if")
    res, g = _export(snn, tmp_path, "cuba", neuron="cubalif")
    assert not res.losses and res.exact and g.metadata["neuron"] == "cubalif"
    assert "reset_subtract" in g.metadata["import"] and float(g.metadata["dt"]) == 1e-3
    assert _kinds(g) == sorted(k if k != "IF" else "CubaLIF" for k in _kinds(ref_g))
    for k, n in g.nodes.items():
        if isinstance(n, nir.CubaLIF):
            np.testing.assert_array_equal(n.v_threshold, ref_g.nodes[k].v_threshold)
            np.testing.assert_allclose(n.tau_syn, 1e-3)
            np.testing.assert_allclose(n.r * np.float32(1e-3) / n.tau_mem, 1.0, rtol=1e-6)
            assert (n.tau_mem >= 1e6).all() and not n.v_leak.any() and (n.w_in == 1).all()
            assert int(n.metadata["psi"]) == 1
    p2 = snn_fixtures.snn_model(T=4, psi=2, psis={"relu3": 1})
    with pytest.warns(NIRExportWarning, match="psi=2: Norse's CubaLIF spikes once a step"):
        res2 = to_nir(p2, neuron="cubalif")
        export_nir(p2, tmp_path / "p2c.nir", neuron="cubalif")
    assert [layer for layer, _ in res2.losses] == ["relu1", "relu2"]
    with pytest.raises(onnx2burst.errors.ConfigError, match="neuron must be one of"):
        to_nir(snn, neuron="lif")
    out = tmp_path / "cli_cuba.nir"
    r = CliRunner().invoke(main, ["export-nir", str(_save(snn, tmp_path)), "-o", str(out), "--neuron", "cubalif"])
    assert r.exit_code == 0, r.output
    assert not r.stderr and isinstance(next(iter(v for v in nir.read(out).nodes.values()
                                                   if not isinstance(v, (nir.Input, nir.Output, nir.Conv2d,
                                                                         nir.SumPool2d)))), nir.CubaLIF)


def _save(model, tmp_path):
    path = tmp_path / "toy.snn.onnx"
    onnx.save(model, path)
    return path


def test_lateral_pooling_refused_even_lossy(tmp_path):
    """The default --maxpool lateral has no NIR form: one issue naming the pool and the way out."""
    m = fm.maxpool_net()
    snn = onnx2burst.convert(m, fm.inputs(m, 32), T=4, psi=1, samples=32)
    for lossy in (False, True):
        with pytest.raises(UnsupportedModelError, match=r"pool0 \(MaxPool, --maxpool lateral\).*--maxpool spikes") as e:
            export_nir(snn, tmp_path / "lat.nir", lossy=lossy)
        assert [i[0] for i in e.value.issues] == ["pool0"]
    assert not (tmp_path / "lat.nir").exists()


def test_maxpool_refused_then_lossy(tmp_path):
    m = fm.maxpool_net(softmax=True)
    snn = onnx2burst.convert(m, fm.inputs(m, 32), T=4, psi=1, samples=32, maxpool="spikes")
    with pytest.raises(UnsupportedModelError, match=r"pool0 \(MaxPool\).*--lossy") as e:
        export_nir(snn, tmp_path / "mp.nir")
    assert {op for _, op, _ in e.value.issues} == {"MaxPool", "Softmax"}
    assert not (tmp_path / "mp.nir").exists()
    with pytest.warns(NIRExportWarning, match="pool0 .*SumPool2d"):
        res = export_nir(snn, tmp_path / "mp.nir", lossy=True)
    assert {op for _, op, _ in res.approximations} == {"MaxPool", "Softmax"}
    g = nir.read(tmp_path / "mp.nir")
    assert sum(isinstance(n, nir.SumPool2d) for n in g.nodes.values()) == 1
    (out,) = [k for k, n in g.nodes.items() if isinstance(n, nir.Output)]
    assert _described(g)[out]["dropped"] == "Softmax" and g.metadata["lossy"]


def _concat_snn():
    T = 2
    n = helper.make_node
    nodes = [n("Gemm", ["x", "w", "b"], ["h"], name="fc0", transB=1),
             n("Tile", ["h", "reps"], ["ht"], name="tile"),
             ops.make_node("ht", "vth", "s", T=T, psi=1, name="relu0"),
             n("Concat", ["s", "s"], ["cat"], name="cat", axis=1),
             n("Gemm", ["cat", "w2", "b2"], ["y_t"], name="fc1", transB=1),
             n("Reshape", ["y_t", "tshape"], ["y_tn"], name="unfold"),
             n("ReduceMean", ["y_tn"], ["y"], name="mean", axes=[0], keepdims=0)]
    r = np.random.default_rng(0)
    inits = {"w": r.normal(size=(3, 2)).astype(np.float32), "b": np.zeros(3, np.float32),
             "reps": np.array([T, 1], np.int64), "vth": np.ones(3, np.float32),
             "w2": r.normal(size=(2, 6)).astype(np.float32), "b2": np.zeros(2, np.float32),
             "tshape": np.array([T, -1, 2], np.int64)}
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "cat", [vi("x", TensorProto.FLOAT, ["N", 2])], [vi("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return ops.attach_function(m)


def test_concat_refused_even_lossy(tmp_path):
    snn = _concat_snn()
    for lossy in (False, True):
        with pytest.raises(UnsupportedModelError, match=r"cat \(Concat\)"):
            to_nir(snn, lossy=lossy)


def test_not_an_snn_and_bad_paths(tmp_path):
    ann = fm.residual()
    with pytest.raises(GraphError, match="not an SNN"):
        to_nir(ann)
    with pytest.raises(ModelLoadError, match="not found"):
        export_nir(tmp_path / "missing.snn.onnx", tmp_path / "o.nir")
    src = tmp_path / "toy.snn.onnx"
    onnx.save(snn_fixtures.snn_model(T=2, psi=1), src)
    with pytest.raises(ModelSaveError, match="is the input"):
        export_nir(src, src)
    with pytest.raises(ModelSaveError, match="does not exist"):
        export_nir(src, tmp_path / "nodir" / "o.nir")


def test_cli_help_and_errors(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["export-nir", "--help"])
    assert res.exit_code == 0 and "Example:" in res.output and "--lossy" in res.output
    assert "export-nir" in r.invoke(main, ["--help"]).output
    res = r.invoke(main, ["export-nir", str(tmp_path / "missing.onnx")])
    assert res.exit_code != 0 and "missing.onnx" in res.output
    ann = tmp_path / "ann.onnx"
    onnx.save(fm.residual(), ann)
    res = r.invoke(main, ["export-nir", str(ann), "-o", str(tmp_path / "a.nir")])
    assert res.exit_code != 0 and "not an SNN" in res.output and not (tmp_path / "a.nir").exists()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all")
    res = r.invoke(main, ["export-nir", str(junk)])
    assert res.exit_code != 0 and "not a readable ONNX" in res.output
    snn = tmp_path / "mp.snn.onnx"
    m = fm.maxpool_net()
    onnx.save(onnx2burst.convert(m, fm.inputs(m, 16), T=2, psi=1, samples=16, maxpool="spikes"), snn)
    res = r.invoke(main, ["export-nir", str(snn)])
    assert res.exit_code != 0 and "pool0 (MaxPool)" in res.output and "--lossy" in res.output
    res = r.invoke(main, ["export-nir", str(snn), "--lossy"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "mp.snn.nir").is_file() and "SumPool2d" in res.stderr
