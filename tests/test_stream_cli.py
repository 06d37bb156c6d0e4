"""The command line of streaming and adaptive timesteps (docs/stream.md): export-stream writes a
model StreamSession steps; convert --adaptive stores an exit rule; eval --adaptive reports it
(--json: adaptive.mean_timesteps, adaptive.top1); a streaming file given to eval or convert,
an SNN without a rule, a model without class scores: one line, non-zero exit."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx2burst.cli import main
from onnx2burst.io import save_model
from onnx2burst.stream import ExitRule, StreamSession
from tests import fixtures_models as fm


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream_cli")
    ann = fm.maxpool_net(seed=2)
    save_model(ann, d / "ann.onnx")
    x = fm.inputs(ann, 96, seed=4)
    from onnx2burst import ops
    labels = ops.make_session(ann, kernel=False).run(None, {"x": x})[0].argmax(1)
    labels[::7] = (labels[::7] + 1) % 5  # some wrong, so top-1 is not the agreement
    np.save(d / "calib.npy", fm.inputs(ann, 64, seed=9))
    np.savez(d / "data.npz", x=x, labels=labels)
    res = CliRunner().invoke(main, ["convert", str(d / "ann.onnx"), "--calib", str(d / "calib.npy"), "--T", "6",
                                    "--psi", "2", "--adaptive", "-q", "-o", str(d / "snn.onnx")])
    assert res.exit_code == 0, res.output
    assert "adaptive    : exit after the first step >=" in res.output
    res = CliRunner().invoke(main, ["convert", str(d / "ann.onnx"), "--calib", str(d / "calib.npy"), "--T", "6",
                                    "--psi", "2", "-q", "-o", str(d / "plain.onnx")])
    assert res.exit_code == 0, res.output
    return d


def _error(res) -> str:
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def test_convert_adaptive_stores_a_rule(kit):
    meta = {p.key: p.value for p in onnx.load(kit / "snn.onnx").metadata_props}
    rule = ExitRule.from_metadata(meta)
    assert rule is not None and 0 <= rule.c <= 1 and 1 <= rule.t_min <= 6 and rule.tol == 0.0
    assert "onnx2burst.adaptive" not in {p.key for p in onnx.load(kit / "plain.onnx").metadata_props}


def test_convert_chooses_the_rule_on_exit_data(kit, tmp_path):
    """--exit-data: the rule is chosen on those inputs (here noisier ones: a stricter or equal
    rule than on the calibration samples is what it is for), the same as attach_exit_rule on them;
    without --adaptive it is one line naming the option, nothing written."""
    from onnx2burst.evaluation.adaptive import attach_exit_rule

    x = np.load(kit / "data.npz")["x"]
    np.save(tmp_path / "held.npy", x[:48])
    res = CliRunner().invoke(main, ["convert", str(kit / "ann.onnx"), "--calib", str(kit / "calib.npy"), "--T", "6",
                                    "--psi", "2", "--adaptive", "--exit-data", str(tmp_path / "held.npy"), "-q",
                                    "-o", str(tmp_path / "snn.onnx")])
    assert res.exit_code == 0, res.output
    assert "on the 48 exit samples" in res.output
    got = ExitRule.from_metadata({p.key: p.value for p in onnx.load(tmp_path / "snn.onnx").metadata_props})
    plain = onnx.load(kit / "plain.onnx")
    want, _ = attach_exit_rule(plain, onnx.load(kit / "ann.onnx"), tmp_path / "held.npy")
    assert got == want
    res = CliRunner().invoke(main, ["convert", str(kit / "ann.onnx"), "--calib", str(kit / "calib.npy"),
                                    "--exit-data", str(tmp_path / "held.npy"), "-q", "-o", str(tmp_path / "o.onnx")])
    assert "--exit-data" in _error(res) and not (tmp_path / "o.onnx").exists()


def test_export_stream_writes_a_model_that_steps(kit):
    res = CliRunner().invoke(main, ["export-stream", str(kit / "snn.onnx"), "-o", str(kit / "s.onnx")])
    assert res.exit_code == 0, res.output
    s = StreamSession(kit / "s.onnx")
    assert s.rule == ExitRule.from_metadata({p.key: p.value for p in onnx.load(kit / "snn.onnx").metadata_props})
    x = np.load(kit / "data.npz")["x"][:4]
    from onnx2burst import ops
    want = ops.make_session(onnx.load(kit / "snn.onnx")).run(None, {"x": x})[0]
    s.reset(4)
    for _ in range(6):
        s.step({"x": x})
    assert np.array_equal(s.prediction()[0], want)
    run = s.run_adaptive({"x": x})
    assert run.exit_steps.shape == (4,) and run.exit_steps.max() <= 6


def test_eval_adaptive_json(kit):
    res = CliRunner().invoke(main, ["eval", str(kit / "ann.onnx"), str(kit / "snn.onnx"), "--data",
                                    str(kit / "data.npz"), "--adaptive", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    a = d["adaptive"]
    assert 1 <= a["mean_timesteps"] <= 6 and sum(a["timesteps"].values()) == 96
    assert a["top1_full_T"] == pytest.approx(100 * d["snn"]["top1"])      # all T steps: the SNN itself
    assert a["agreement_full_T"] == pytest.approx(100 * d["agreement"])
    assert a["spikes_full_T"] == pytest.approx(d["energy"]["spikes"], rel=1e-9)
    assert a["spikes"] <= a["spikes_full_T"] and 0 <= a["top1"] <= 100
    # c = 1 never exits early unless a probability is exactly 1: all T steps
    res = CliRunner().invoke(main, ["eval", str(kit / "ann.onnx"), str(kit / "plain.onnx"), "--data",
                                    str(kit / "data.npz"), "--exit-confidence", "1", "--exit-min-steps", "6",
                                    "--json"])
    assert res.exit_code == 0, res.output
    a = json.loads(res.output)["adaptive"]
    assert a["mean_timesteps"] == 6 and a["top1"] == a["top1_full_T"]
    res = CliRunner().invoke(main, ["eval", str(kit / "ann.onnx"), str(kit / "plain.onnx"), "--data",
                                    str(kit / "data.npz"), "--adaptive"])
    assert "no exit rule" in _error(res)


def test_streaming_files_are_refused_as_snns(kit, tmp_path):
    res = CliRunner().invoke(main, ["export-stream", str(kit / "plain.onnx"), "-o", str(tmp_path / "s.onnx")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["eval", str(kit / "ann.onnx"), str(tmp_path / "s.onnx"), "--data",
                                    str(kit / "data.npz")])
    assert "streaming model" in _error(res)
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "s.onnx"), "--calib", str(kit / "calib.npy"), "-q",
                                    "-o", str(tmp_path / "x.onnx")])
    assert "streaming model" in _error(res)
    res = CliRunner().invoke(main, ["export-stream", str(tmp_path / "s.onnx"), "-o", str(tmp_path / "t.onnx")])
    assert "streaming model already" in _error(res)
    res = CliRunner().invoke(main, ["export-stream", str(kit / "ann.onnx"), "-o", str(tmp_path / "t.onnx")])
    assert "no BurstIF" in _error(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx"]


def test_a_model_without_class_scores_gets_no_rule(tmp_path):
    ann = fm.residual()
    two = onnx.ModelProto()
    two.CopyFrom(ann)  # a second output: not one vector of class scores
    two.graph.output.append(onnx.helper.make_tensor_value_info("r2", onnx.TensorProto.FLOAT, None))
    save_model(two, tmp_path / "two.onnx")
    np.save(tmp_path / "calib.npy", fm.inputs(ann, 32))
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "two.onnx"), "--calib", str(tmp_path / "calib.npy"),
                                    "--T", "3", "--adaptive", "-q", "-o", str(tmp_path / "snn.onnx")])
    assert res.exit_code == 0, res.output
    assert "adaptive    : no exit rule: it has 2 outputs" in res.output
    assert "onnx2burst.adaptive" not in {p.key for p in onnx.load(tmp_path / "snn.onnx").metadata_props}
