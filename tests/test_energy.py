"""Fanouts, MACs, spike counts and the energy estimate of docs/method.md §7."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2burst import ops
from onnx2burst.evaluation import energy
from onnx2burst.snn import read_snn
from snn_fixtures import ANALOG_MACS, ANN_MACS, FANOUT, ann_model, reference_run, sample_data, snn_model


@pytest.fixture(scope="module")
def snn():
    return snn_model(T=4, psi=2)


def test_fanouts_by_hand(snn):
    em = energy.energy_model(snn)
    assert em.names == ["relu1", "relu2", "relu3"]
    assert {l.name: l.fanout for l in em.layers} == FANOUT
    assert dict(em.layers[0].receivers) == {"conv2": 36.0, "relu2": 1.0}
    assert (em.layers[0].T, em.layers[0].psi, em.layers[0].tau) == (4, 2, 1.0)
    assert em.analog_macs == ANALOG_MACS
    assert em.notes == ()


def test_macs_by_hand(snn):
    assert energy.count_macs(ann_model()) == {"conv1": 2304, "conv2": 9216, "fc1": 1024, "fc2": 48}
    assert energy.ann_macs(ann_model()) == ANN_MACS
    # after the time expansion the folded batch is T samples' worth
    assert energy.count_macs(snn)["conv2"] == 4 * 9216


def test_estimate_arithmetic(snn):
    em = energy.energy_model(snn)
    spikes = {"relu1": 10.0, "relu2": 2.0, "relu3": 1.0}
    est = em.estimate(spikes, ann_macs=ANN_MACS)
    synops = 10 * 37 + 2 * 16 + 1 * 3
    assert est.synops == synops and est.spikes == 13
    assert est.e_snn_pj == pytest.approx(synops * 0.9 + ANALOG_MACS * 4.6)
    assert est.e_ann_pj == pytest.approx(ANN_MACS * 4.6)
    assert est.ratio == pytest.approx(est.e_snn_pj / est.e_ann_pj)
    est2 = em.estimate([10, 2, 1], e_ac_pj=1.0, e_mac_pj=2.0)
    assert est2.e_snn_pj == synops + 2 * ANALOG_MACS and est2.ratio is None
    assert [l.synops for l in est.layers] == [370, 32, 3]
    assert est.to_dict()["layers"][0]["fanout"] == 37
    with pytest.raises(KeyError, match="relu3"):
        em.estimate({"relu1": 1, "relu2": 1})
    with pytest.raises(ValueError, match="2 spike counts"):
        em.estimate([1, 2])


def test_spike_outputs_count_bursts_fully():
    snn = snn_model(T=4, psi=3, with_spikes=True)
    m, names = energy.with_spike_outputs(snn)
    assert names == ["relu1_spikes", "relu2_spikes", "relu3_spikes"]
    assert len(m.graph.output) == 4 and len(snn.graph.output) == 1  # a copy
    x = sample_data(16)
    _, spikes = reference_run(snn, x)
    # layer 1 by the numpy reference: conv1 (ANN part) tiled T times
    a = ann_model()
    a.graph.output.append(helper.make_empty_tensor_value_info("conv1"))
    conv1 = ort.InferenceSession(a.SerializeToString()).run(["conv1"], {"x": x})[0]
    vth = numpy_helper.to_array(next(t for t in snn.graph.initializer if t.name == "vth_relu1"))
    _, ref = ops.burst_if(np.tile(conv1, (4, 1, 1, 1)), vth, 4, 3)
    np.testing.assert_array_equal(spikes["relu1"], ref)
    assert ref.max() > 0


def test_spike_outputs_added_when_missing():
    snn = snn_model(T=2, psi=1)
    node = [n.node for n in read_snn(snn).neurons][2]
    del node.output[1]
    m, names = energy.with_spike_outputs(snn)
    assert names[2] == "relu3_spikes"
    assert [n.node for n in read_snn(m).neurons][2].output[1] == "relu3_spikes"


def _one_receiver_model(consumer_nodes, inits, cshape=(1, 4, 8, 8)):
    """x -> Tile(T=2) -> BurstIF -> consumer_nodes; reads fanout only."""
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Tile", ["x", "rep"], ["xt"]),
             ops.make_node("xt", "vth", "s", T=2, psi=1, spikes="s_spikes", name="neuron")]
    nodes += consumer_nodes
    inits = inits + [numpy_helper.from_array(np.array([2, 1, 1, 1][:len(cshape)], np.int64), "rep"),
                     numpy_helper.from_array(np.ones(cshape[1], np.float32), "vth")]
    g = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, list(cshape))],
                          [vi("out", TensorProto.FLOAT, None)], inits)
    return ops.attach_function(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_grouped_strided_conv_maxpool_matmul():
    w = numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "w")       # depthwise x2
    mm = numpy_helper.from_array(np.zeros((16, 5), np.float32), "mm")
    n = helper.make_node
    nodes = [
        n("Conv", ["s", "w"], ["c"], group=4, strides=[2, 2], pads=[1, 1, 1, 1]),   # 8/4*9/4
        n("MaxPool", ["s"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),             # x 9/4
        n("GlobalAveragePool", ["p"], ["gp"]),
        n("Reshape", ["gp", "shp"], ["r"]),
        n("Concat", ["r", "r"], ["cat"], axis=1),                                     # two paths
        n("Slice", ["cat", "st", "en", "ax"], ["sl"]),
        n("Pad", ["sl", "pd"], ["sp"]),
        n("MatMul", ["sp", "mm"], ["out"]),                                           # 5
    ]
    inits = [w, mm, numpy_helper.from_array(np.array([-1, 4], np.int64), "shp"),
             numpy_helper.from_array(np.array([0], np.int64), "st"),
             numpy_helper.from_array(np.array([16], np.int64), "en"),
             numpy_helper.from_array(np.array([1], np.int64), "ax"),
             numpy_helper.from_array(np.array([0, 0, 0, 8], np.int64), "pd")]
    em = energy.energy_model(_one_receiver_model(nodes, inits))
    assert em.layers[0].fanout == pytest.approx(8 / 4 * 9 / 4 + 2 * (9 / 4) * 5)
    assert em.analog_macs == 0


def test_gemm_transb_and_unknown_op_noted():
    n = helper.make_node
    nodes = [n("Flatten", ["s"], ["f"]), n("Gemm", ["f", "g"], ["a"]),            # B [4, 7]
             n("Sigmoid", ["s"], ["q"]), n("Flatten", ["q"], ["fq"]),
             n("Gemm", ["fq", "h"], ["out"], transB=1)]                             # B [6, 4]
    inits = [numpy_helper.from_array(np.zeros((4, 7), np.float32), "g"),
             numpy_helper.from_array(np.zeros((6, 4), np.float32), "h")]
    em = energy.energy_model(_one_receiver_model(nodes, inits, cshape=(1, 4)))
    assert em.layers[0].fanout == 7 + 6
    assert any("Sigmoid" in s for s in em.notes)


def test_not_an_snn():
    with pytest.raises(ValueError, match="no BurstIF"):
        energy.energy_model(ann_model())
