"""`eval` takes what users bring: an ANN exported with its batch fixed, the tool's own
portable files; and refuses, in one line, an ANN the SNN was not converted from and models
onnxruntime cannot run on the data."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnx2burst
from onnx2burst.cli import main
from onnx2burst.evaluation import evaluate
from onnx2burst.interop.portable import make_portable
from onnx2burst.io import save_model
from tests import fixtures_models as fm


def _fix_batch(model: onnx.ModelProto, n: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in list(m.graph.input) + list(m.graph.output):
        d = v.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = n
    return m


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalin")
    ann = fm.residual()
    save_model(ann, d / "ann.onnx")
    x = fm.inputs(ann, 70)
    np.save(d / "calib.npy", x[:32])
    np.savez(d / "test.npz", x=x, labels=np.arange(70) % 3)
    res = CliRunner().invoke(main, ["convert", str(d / "ann.onnx"), "--calib", str(d / "calib.npy"), "--T", "4",
                                    "-q", "-o", str(d / "snn.onnx")])
    assert res.exit_code == 0, res.output
    return d


def test_an_ann_with_its_batch_fixed_at_1_is_evaluated(pair, tmp_path):
    fixed = _fix_batch(fm.residual(), 1)
    save_model(fixed, tmp_path / "ann1.onnx")
    snn = onnx2burst.convert(tmp_path / "ann1.onnx", np.load(pair / "calib.npy"), T=4, psi=4)
    ev = evaluate(tmp_path / "ann1.onnx", snn, pair / "test.npz", batch_size=32, threads=1)
    ref = evaluate(pair / "ann.onnx", pair / "snn.onnx", pair / "test.npz", batch_size=32, threads=1)
    assert ev.samples == 70 and ev.ann.top1 == ref.ann.top1   # same ANN, fed one by one


def test_an_ann_fixed_at_another_batch_pads_the_last_batch(pair, tmp_path):
    save_model(_fix_batch(fm.residual(), 16), tmp_path / "ann16.onnx")
    ev = evaluate(tmp_path / "ann16.onnx", pair / "snn.onnx", pair / "test.npz", threads=1, other_ann=True)
    ref = evaluate(pair / "ann.onnx", pair / "snn.onnx", pair / "test.npz", threads=1)
    assert ev.samples == 70 and ev.ann.top1 == ref.ann.top1 and ev.agreement == ref.agreement


def test_another_ann_is_refused_unless_asked(pair, tmp_path):
    save_model(fm.residual(seed=5), tmp_path / "other.onnx")
    args = ["eval", str(tmp_path / "other.onnx"), str(pair / "snn.onnx"), "--data", str(pair / "test.npz")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "converted from another model" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, args + ["--other-ann", "--json"])
    assert res.exit_code == 0, res.output
    assert any("another model" in n for n in json.loads(res.output)["notes"])


def test_the_portable_file_is_evaluated(pair, tmp_path):
    save_model(make_portable(onnx.load(pair / "snn.onnx")), tmp_path / "portable.onnx")
    res = CliRunner().invoke(main, ["eval", str(pair / "ann.onnx"), str(tmp_path / "portable.onnx"), "--data",
                                    str(pair / "test.npz"), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    ref = evaluate(pair / "ann.onnx", pair / "snn.onnx", pair / "test.npz", threads=1)
    assert d["agreement"] == ref.agreement and d["T"] == 4
    # folded back to its BurstIF nodes: the spikes of the SNN it was made from
    assert d["energy"]["spikes"] == pytest.approx(ref.energy.spikes) and ref.energy.spikes > 0


def test_a_portable_file_without_its_neuron_record_is_evaluated_without_spikes(pair, tmp_path):
    from onnx2burst.interop.portable import RECORD_KEY

    p = make_portable(onnx.load(pair / "snn.onnx"))
    keep = [m for m in p.metadata_props if m.key != RECORD_KEY]
    del p.metadata_props[:]
    p.metadata_props.extend(keep)
    save_model(p, tmp_path / "portable.onnx")
    res = CliRunner().invoke(main, ["eval", str(pair / "ann.onnx"), str(tmp_path / "portable.onnx"), "--data",
                                    str(pair / "test.npz"), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["energy"] is None and any("not counted" in n for n in d["notes"])


def test_a_model_onnxruntime_cannot_run_on_the_data_is_one_line(pair, tmp_path):
    """An SNN whose output is reshaped to a hard-coded batch of 64 fails on 70 samples."""
    from onnx import helper, numpy_helper

    broken = onnx.load(pair / "snn.onnx")
    out = broken.graph.output[0].name
    for n in broken.graph.node:
        n.output[:] = [f"{o}_pre" if o == out else o for o in n.output]
    broken.graph.initializer.append(numpy_helper.from_array(np.array([64, 3], np.int64), "fixed_shape"))
    broken.graph.node.append(helper.make_node("Reshape", [f"{out}_pre", "fixed_shape"], [out], name="fixed"))
    save_model(broken, tmp_path / "broken.onnx")
    res = CliRunner().invoke(main, ["eval", str(pair / "ann.onnx"), str(tmp_path / "broken.onnx"), "--data",
                                    str(pair / "test.npz"), "--json"])
    assert res.exit_code == 1 and "onnxruntime cannot run the SNN on the data" in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_outputs_of_different_shapes_are_not_compared(pair, tmp_path):
    other = onnx.load(pair / "snn.onnx")
    other.graph.output[0].name = other.graph.node[0].output[0]
    save_model(other, tmp_path / "other.onnx")
    res = CliRunner().invoke(main, ["eval", str(pair / "ann.onnx"), str(tmp_path / "other.onnx"), "--data",
                                    str(pair / "test.npz"), "--json"])
    assert res.exit_code == 1 and "not an ANN and its SNN" in res.output


@pytest.mark.parametrize("extra", ["time_broadcast", "channel_block"])
def test_a_file_with_the_kernels_session_extras_is_refused(pair, tmp_path, extra):
    """time_broadcast would make a node's output T times its input: around the memory estimate."""
    from onnx import helper

    snn = onnx.load(pair / "snn.onnx")
    node = next(n for n in snn.graph.node if n.op_type == "BurstIF")
    node.attribute.append(helper.make_attribute(extra, 1))
    save_model(snn, tmp_path / "crafted.onnx")
    res = CliRunner().invoke(main, ["eval", str(pair / "ann.onnx"), str(tmp_path / "crafted.onnx"), "--data",
                                    str(pair / "test.npz"), "--json"])
    assert res.exit_code == 1 and extra in res.output and "Traceback" not in res.output
