"""Detectors: graphs with several outputs, raw regression heads and a decoding after the last
neuron (the analog tail, docs/method.md §1), LeakyReLU/PReLU as signed neurons (§2), and the
detection scoring (NMS + COCO mAP)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx2burst
from onnx2burst import ops
from onnx2burst.errors import UnsupportedModelError
from onnx2burst.evaluation.detection import coco_map, detections, nms
from onnx2burst.graph import canonicalize
from onnx2burst.rewrite import analyze
from onnx2burst.snn import read_snn

vi = helper.make_tensor_value_info
F = TensorProto.FLOAT


def toy_detector(act: str = "Relu", seed: int = 0, slope=None) -> onnx.ModelProto:
    """x[N,1,8,8] -> conv-act -> conv(stride 2)-act -> head conv (6 ch, 4x4) = output ``raw``;
    decoding after it: Reshape [N,6,16] -> Transpose -> Slice -> Sigmoid / Exp -> Concat = ``decoded``."""
    r = np.random.default_rng(seed)
    w = {"w0": r.normal(size=(4, 1, 3, 3)) * 0.6, "b0": r.normal(size=4) * 0.1,
         "w1": r.normal(size=(6, 4, 3, 3)) * 0.3, "b1": r.normal(size=6) * 0.1,
         "wh": r.normal(size=(6, 6, 1, 1)) * 0.5, "bh": r.normal(size=6) * 0.1,
         "shape": np.array([0, 6, -1], np.int64), "a0": np.array([0], np.int64), "a2": np.array([2], np.int64),
         "a6": np.array([6], np.int64), "ax": np.array([2], np.int64)}
    n = helper.make_node

    def act_node(i, o, name, ch):
        if act == "PRelu":
            w[f"slope_{name}"] = np.asarray(slope if slope is not None else r.uniform(0.05, 0.3, (ch, 1, 1)))
            return n("PRelu", [i, f"slope_{name}"], [o], name=name)
        return n(act, [i], [o], name=name, **({"alpha": 0.1} if act == "LeakyRelu" else {}))
    nodes = [n("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             act_node("c0", "a0_", "act0", 4),
             n("Conv", ["a0_", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             act_node("c1", "a1_", "act1", 6),
             n("Conv", ["a1_", "wh", "bh"], ["raw"], name="head"),
             n("Reshape", ["raw", "shape"], ["flat"], name="flatten"),
             n("Transpose", ["flat"], ["cells"], perm=[0, 2, 1], name="cells_last"),
             n("Slice", ["cells", "a0", "a2", "ax"], ["txy"], name="slice_xy"),
             n("Slice", ["cells", "a2", "a6", "ax"], ["twh"], name="slice_wh"),
             n("Sigmoid", ["txy"], ["xy"], name="sigmoid_xy"),
             n("Exp", ["twh"], ["size"], name="exp_wh"),
             n("Concat", ["xy", "size"], ["decoded"], axis=2, name="decode")]
    g = helper.make_graph(nodes, "toy_detector", [vi("x", F, ["N", 1, 8, 8])],
                          [vi("raw", F, ["N", 6, 4, 4]), vi("decoded", F, ["N", 16, 6])],
                          [numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f"
                                                              else np.int64), k) for k, v in w.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _data(n, seed):
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)


def _run(model, x, names):
    return ops.make_session(model, kernel=ops.kernel_available()).run(names, {"x": x})


def _rel(a, b):
    return float(np.abs(a - b).mean() / (np.abs(b).mean() + 1e-9))


def test_decoding_after_the_last_neuron_runs_once_on_the_mean():
    a = analyze(canonicalize(toy_detector()))
    assert a.analog_tail == ["sigmoid_xy", "exp_wh", "decode"] and not a.inexact
    assert a.tail_inputs == ["txy", "twh"]
    snn = onnx2burst.convert(toy_detector(), _data(64, 1), T=16, psi=4, per_timestep_output=True)
    x = _data(16, 2)
    raw, dec, raw_t, dec_t = _run(snn, x, ["raw", "decoded", "raw_per_timestep", "decoded_per_timestep"])
    # the decoding ran on the SNN's mean head, analog: exactly the ANN's decoding of it
    cells = raw.reshape(16, 6, 16).transpose(0, 2, 1)
    np.testing.assert_allclose(dec, np.concatenate([1 / (1 + np.exp(-cells[..., :2])), np.exp(cells[..., 2:])], 2),
                               rtol=1e-5, atol=1e-6)
    # every output tracks the ANN
    araw, adec = _run(toy_detector(), x, ["raw", "decoded"])
    assert _rel(raw, araw) < 0.1 and _rel(dec, adec) < 0.1
    # per timestep: the raw head per step; the decoding on the running mean (its last row: the output)
    assert raw_t.shape == (16, 16, 6, 4, 4) and dec_t.shape == (16, 16, 16, 6)
    np.testing.assert_allclose(raw_t.mean(0), raw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dec_t[-1], dec, rtol=1e-4, atol=1e-5)
    assert _rel(dec_t[3], adec) > _rel(dec_t[-1], adec)  # converging over the steps
    meta = {p.key: p.value for p in snn.metadata_props}
    assert "decoded_per_timestep" in meta["onnx2burst.outputs"]


def test_more_steps_track_the_ann_better_on_every_output():
    x = _data(32, 3)
    ann = _run(toy_detector(), x, ["raw", "decoded"])
    errs = []
    for T in (4, 32):
        snn = onnx2burst.convert(toy_detector(), _data(64, 1), T=T, psi=4)
        errs.append([_rel(s, a) for s, a in zip(_run(snn, x, ["raw", "decoded"]), ann)])
    assert all(e32 < e4 for e4, e32 in zip(*errs)), errs


def test_sigmoid_between_neurons_is_still_refused():
    m = toy_detector()
    # put a Sigmoid between the two layers: it feeds a neuron, so it is not in the analog tail
    m.graph.node.insert(2, helper.make_node("Sigmoid", ["a0_"], ["s0"], name="mid_sigmoid"))
    m.graph.node[3].input[0] = "s0"
    a = analyze(canonicalize(m))
    assert [i.node for i in a.inexact] == ["mid_sigmoid"]
    with pytest.raises(UnsupportedModelError, match="mid_sigmoid"):
        onnx2burst.convert(m, _data(16, 1), T=4, psi=2)


@pytest.mark.parametrize("act", ["LeakyRelu", "PRelu"])
def test_signed_neurons_convert_by_default_and_track_the_ann(act):
    ann = toy_detector(act)
    a = analyze(canonicalize(ann))
    assert [n.name for n in a.neurons] == ["act0", "act1"] and not a.inexact
    assert a.neurons[0].alpha == ((float(np.float32(0.1)),) if act == "LeakyRelu" else tuple(numpy_helper.to_array(
        next(t for t in ann.graph.initializer if t.name == "slope_act0")).reshape(-1).tolist()))
    x = _data(32, 3)
    want = _run(ann, x, ["raw", "decoded"])
    snn = onnx2burst.convert(ann, _data(64, 1), T=32, psi=4)
    view = read_snn(snn)
    assert all(n.signed for n in view.neurons)
    got = _run(snn, x, ["raw", "decoded"])
    relu_only = onnx2burst.convert(ann, _data(64, 1), T=32, psi=4, signed=False, allow_inexact=True)
    assert not any(n.signed for n in read_snn(relu_only).neurons)
    worse = _run(relu_only, x, ["raw", "decoded"])
    for s, w, a_ in zip(got, worse, want):
        assert _rel(s, a_) < 0.1
        assert _rel(s, a_) < _rel(w, a_)  # what the negative spikes buy
    # the fallback (no kernel) gives the same bits
    fb = ops.make_session(snn, kernel=False).run(["raw"], {"x": x})[0]
    np.testing.assert_array_equal(fb, got[0])


def test_relu_only_conversion_of_leaky_relu_is_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="act0.*negative slope"):
        onnx2burst.convert(toy_detector("LeakyRelu"), _data(16, 1), T=4, psi=2, signed=False)


def test_prelu_slope_off_the_channel_axis_is_refused_by_name():
    m = toy_detector("PRelu", slope=np.linspace(0.1, 0.2, 8, dtype=np.float32))  # varies along W
    a = analyze(canonicalize(m))
    assert [i.node for i in a.inexact][:1] == ["act0"] and "channel axis" in a.inexact[0].reason


def test_negative_slope_is_not_a_neuron():
    m = toy_detector("LeakyRelu")
    m.graph.node[1].attribute[0].f = -0.2
    a = analyze(canonicalize(m))
    assert "act0" not in [n.name for n in a.neurons]


def test_nms_and_map_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5)
    assert keep.tolist() == [0, 2]
    gt = {"images": [{"id": 0, "width": 64, "height": 64}],
          "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
                          {"id": 2, "image_id": 0, "category_id": 2, "bbox": [20, 20, 10, 10], "area": 100,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    scores = np.zeros((1, 3, 2), np.float32)
    scores[0, 0, 0], scores[0, 1, 0], scores[0, 2, 1] = 0.9, 0.8, 0.7
    res = detections(boxes[None], scores)
    assert len(res) == 2  # the duplicate box is suppressed
    m50, m = coco_map(gt, res)
    assert m50 == pytest.approx(100.0) and m == pytest.approx(100.0)
    scores[0, 2, 1] = 0.0  # the second object missed: half the classes found
    m50, _ = coco_map(gt, detections(boxes[None], scores))
    assert m50 == pytest.approx(50.0)


# ------------------------------------------------------------------ the bundled task and eval --task detection
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
DET = ROOT / "models" / "zoo" / "det_fmnist.onnx"
DET_TEST = ROOT / "models" / "data" / "det_fmnist_test.npz"


def test_canvases_are_deterministic_and_boxes_fit():
    from models import detect_data as DD
    imgs = np.random.default_rng(0).integers(0, 255, (50, 28, 28)).astype(np.uint8)
    labels = np.arange(50) % 10
    a, oa = DD.make_canvases(imgs, labels, 30, 5)
    b, ob = DD.make_canvases(imgs, labels, 30, 5)
    assert np.array_equal(a, b) and oa == ob
    assert all(1 <= len(o) <= DD.MAX_ITEMS for o in oa)
    for canvas, objs in zip(a, oa):
        for x1, y1, x2, y2, c in objs:
            assert 0 <= x1 < x2 <= DD.CANVAS and 0 <= y1 < y2 <= DD.CANVAS and 0 <= c < 10
            assert canvas[y1:y2, x1:x2].max() > DD.PIXEL_ON
    x, gt = DD.load_test(DET_TEST)
    assert x.shape[1:] == (1, 64, 64) and len(gt["images"]) == len(x)


def test_bundled_decoding_matches_numpy():
    from models.detect import decode
    x = np.load(DET_TEST)["input"][:8]
    h4, h8, b, s = ops.make_session(onnx.load(DET)).run(["head_s4", "head_s8", "boxes", "scores"], {"input": x})
    nb, ns = decode([h4, h8])
    np.testing.assert_allclose(b, nb, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(s, ns, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def det_snn(tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    snn = onnx2burst.convert(str(DET), str(ROOT / "models" / "data" / "det_fmnist_calib.npz"), T=4, psi=4,
                             samples=32)
    onnx.save(snn, d / "det.snn.onnx")
    return d


def test_eval_scores_a_detector_in_map(det_snn):
    import json

    from click.testing import CliRunner

    from onnx2burst.cli import main
    png = det_snn / "det.png"
    r = CliRunner().invoke(main, ["eval", str(DET), str(det_snn / "det.snn.onnx"), "--data", str(DET_TEST),
                                  "--limit", "40", "--json", "--figure", str(png)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["task"] == "detection" and out["samples"] == 40 and out["T"] == 4
    assert 30 < out["ann"]["map50"] <= 100 and 0 < out["snn"]["map50"] <= 100
    assert out["ann"]["map50_95"] < out["ann"]["map50"] and out["energy"]["spikes"] > 0
    assert out["ann"]["map50_se"] > 0 and out["diff_se"]["map50"] >= 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_detection_bad_input_is_one_line(det_snn, tmp_path):
    from click.testing import CliRunner

    from onnx2burst.cli import main
    snn = str(det_snn / "det.snn.onnx")
    fm = str(ROOT / "models" / "data" / "fmnist_test.npz")
    cases = [
        (["eval", str(DET), snn, "--data", fm, "--task", "detection"], "no COCO annotations"),
        (["eval", str(DET), snn, "--data", str(DET_TEST), "--figure", str(DET_TEST)], "--figure"),
        (["eval", str(ROOT / "models" / "zoo" / "resnet20_fmnist.onnx"), snn, "--data", str(DET_TEST), "--limit", "4",
          "--other-ann"], None),
    ]
    for args, want in cases:
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
        if want:
            assert want in r.output, r.output


def test_upsampled_spikes_count_their_copies(det_snn):
    """SynOps (docs/method.md §7): a spike upsampled 2x by the neck's Resize reaches 4 positions of
    the 1x1 fuse conv (32 outputs each), and the 1x1 head (15): fanout 4 * 32 + 15."""
    from onnx2burst.evaluation.energy import energy_model
    em = energy_model(onnx.load(det_snn / "det.snn.onnx"))
    fan = {layer.name.split("/")[-2]: layer.fanout for layer in em.layers}
    assert fan["s8.1.2"] == 4 * 32 + 15 and fan["fuse.1.2"] == 15 and not em.notes
