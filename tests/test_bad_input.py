"""Bad input, in one table: every way a conversion can be asked to do something it
cannot, through the command line and through the Python API.

Each row: how it is run (``cli``: ``onnx2burst convert`` in-process with click's runner;
``api``: a Python call; ``sigint``: a real ``onnx2burst convert`` process interrupted during
calibration), the substring its message must contain, and the checks every row gets: the
command fails (a non-zero exit, or an ``Onnx2BurstError``), with a message and no traceback,
and nothing is written: the working folder (model, data, output) lists the same files before
and after, hidden temporary files included. Rows that must fail before any calibration data
is read use a data file that would fail with another message if it were read, or a reader
that records being called.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnx2burst
from onnx2burst.cli import main
from onnx2burst.errors import Onnx2BurstError
from onnx2burst.io import save_model
from tests import fixtures_models as fm
from tests.signals import signal_when

X_SHAPE = (2, 6, 6)          # fm.residual(): x [N, 2, 6, 6] float32


def _x(n=8, seed=0, dtype=np.float32, shape=X_SHAPE):
    return np.random.default_rng(seed).normal(size=(n,) + tuple(shape)).astype(dtype)


def two_inputs() -> onnx.ModelProto:
    """x1, x2 [N, 1, 4, 4] -> conv each -> Add -> Relu -> GAP -> Flatten -> Gemm = y [N, 3]."""
    r = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Conv", ["x1", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             n("Conv", ["x2", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             n("Add", ["c1", "c2"], ["s"], name="add"), n("Relu", ["s"], ["r"], name="relu"),
             n("GlobalAveragePool", ["r"], ["p"], name="gap"), n("Flatten", ["p"], ["f"], name="flatten"),
             n("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(r.normal(size=s).astype(np.float32), k)
             for k, s in (("w1", (2, 1, 1, 1)), ("w2", (2, 1, 1, 1)), ("wf", (3, 2)))]
    vi = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "two_inputs", [vi("x1", TensorProto.FLOAT, ["N", 1, 4, 4]),
                                                vi("x2", TensorProto.FLOAT, ["N", 1, 4, 4])],
                          [vi("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def no_relu() -> onnx.ModelProto:
    m = fm.residual()
    for node in m.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Identity"
    return m


class Spy:
    """A calibration reader that records being asked for data."""

    def __init__(self):
        self.calls = 0

    def get_next(self):
        self.calls += 1
        return None


@dataclass
class W:
    """The working folder of a row: the model, good calibration data, a poisoned data file."""

    root: Path

    def __post_init__(self):
        self.spy = Spy()                                 # a reader that must never be read
        self.saved: list[str] = []
        self.model = save_model(fm.residual(), self.root / "model.onnx")
        self.calib = self.root / "calib.npy"
        np.save(self.calib, _x())
        self.poison = self.root / "poison.npy"          # reading it fails with "not a readable numpy file"
        self.poison.write_bytes(b"\x93NUMPY garbage, not an array")
        os.symlink(self.model, self.root / "alias.onnx")      # another name for the model

    def save(self, name, data) -> Path:
        p = self.root / name
        self.saved.append(name)
        if isinstance(data, onnx.ModelProto):
            save_model(data, p)
        elif isinstance(data, bytes):
            p.write_bytes(data)
        elif isinstance(data, dict):
            np.savez(p, **data)
        else:
            np.save(p, data)
        return p


@dataclass
class Case:
    id: str
    via: str                                  # "cli", "api" or "sigint"
    run: Callable[[W], object]                # cli: argument list; api: a callable; sigint: argument list
    expect: str                               # substring of the message
    unexpected: str = "Traceback"             # must not be in the message
    root_skip: bool = False                   # meaningless when running as root


def _cli(model=None, calib=None, *extra):
    def build(w: W):
        return ["convert", str(model(w) if model else w.model), "--calib", str(calib(w) if calib else w.calib),
                "-q", *extra]
    return build


def _lrn() -> onnx.ModelProto:
    m = fm.with_op_between("LRN")
    m.graph.node[2].attribute.append(helper.make_attribute("size", 3))
    return m


def _edit(fn) -> onnx.ModelProto:
    m = fm.residual()
    fn(m)
    return m


def _no_opset(m):
    del m.opset_import[:]


def _dangling(m):
    m.graph.node[2].input[0] = "ghost"          # conv1 reads a tensor nothing produces


def _unknown_op(m):
    m.graph.node.insert(0, helper.make_node("FooBar", ["x"], ["xf"], name="foo"))
    m.graph.node[1].input[0] = "xf"


def _cycle(m):
    m.graph.node[0].input[0] = "r2"             # conv0 reads the output of relu2


def _bad_weight(m):
    for t in m.graph.initializer:
        if t.name == "w1":                      # conv1: 4 input channels, the weight says 3
            t.CopyFrom(numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w1"))


def _external_without_data(w: W) -> Path:
    """A model saved with external data whose data file is gone."""
    p = w.root / "ext.onnx"
    onnx.save_model(fm.residual(), str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.weights", size_threshold=0)
    (w.root / "ext.weights").unlink()
    w.saved.append("ext.onnx")
    return p


def _objects() -> np.ndarray:
    a = np.empty(3, dtype=object)
    a[:] = [1, "a", None]
    return a


def _model_bytes():
    return fm.residual().SerializeToString()


def _readonly(w: W) -> Path:
    d = w.root / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


CASES = [
    # --- the model file
    Case("missing-model", "cli", _cli(lambda w: w.root / "nope.onnx"), "model file not found"),
    Case("missing-model", "api", lambda w: onnx2burst.convert(w.root / "nope.onnx", w.calib), "model file not found"),
    Case("not-onnx", "cli", _cli(lambda w: w.save("text.onnx", b"definitely not onnx\n" * 20)),
         "is not a readable ONNX model"),
    Case("not-onnx", "api", lambda w: onnx2burst.convert(w.save("text.onnx", b"not onnx at all" * 9), w.calib),
         "is not a readable ONNX model"),
    Case("truncated", "cli", _cli(lambda w: w.save("cut.onnx", _model_bytes()[: len(_model_bytes()) // 2])),
         "truncated"),
    Case("truncated", "api", lambda w: onnx2burst.convert(w.save("cut.onnx", _model_bytes()[:-9]), w.calib),
         "truncated"),
    Case("empty-file", "cli", _cli(lambda w: w.save("empty.onnx", b"")), "not an ONNX model"),
    Case("model-is-a-folder", "api", lambda w: onnx2burst.convert(w.root, w.spy), "is a folder"),
    Case("model-is-a-folder", "cli", _cli(lambda w: w.root), "is a directory"),
    Case("not-a-model", "cli", _cli(lambda w: w.save("tensor.onnx", numpy_helper.from_array(
        np.zeros(64, np.float32), "t").SerializeToString())), "is not a readable ONNX model"),
    Case("no-opset", "api", lambda w: onnx2burst.convert(w.save("noopset.onnx", _edit(_no_opset)), w.spy),
         "imports no opset"),
    Case("dangling-input", "cli", _cli(lambda w: w.save("dangling.onnx", _edit(_dangling)), lambda w: w.poison),
         "input 'ghost' of node: name: conv1", unexpected="numpy"),
    Case("dangling-input", "api", lambda w: onnx2burst.convert(_edit(_dangling), w.spy), "not a valid ONNX graph"),
    Case("unknown-op", "cli", _cli(lambda w: w.save("foo.onnx", _edit(_unknown_op)), lambda w: w.poison),
         "No Op registered for FooBar", unexpected="numpy"),
    Case("cycle", "api", lambda w: onnx2burst.convert(_edit(_cycle), w.spy), "cycle through node 'conv0'"),
    Case("wrong-weight-shape", "cli", _cli(lambda w: w.save("badw.onnx", _edit(_bad_weight))),
         "onnxruntime cannot run the model"),
    Case("wrong-weight-shape", "api", lambda w: onnx2burst.convert(_edit(_bad_weight), w.calib, T=2),
         "kernel channels"),
    Case("external-data-missing", "cli", _cli(lambda w: _external_without_data(w)), "no such file"),
    Case("external-data-missing", "api", lambda w: onnx2burst.convert(_external_without_data(w), w.spy),
         "no such file"),
    Case("no-relu", "cli", _cli(lambda w: w.save("norelu.onnx", no_relu()), lambda w: w.poison), "no Relu or Clip"),
    Case("no-relu", "api", lambda w: onnx2burst.convert(no_relu(), w.spy), "no Relu or Clip"),
    # --- ops that cannot be converted exactly: named, before any data is read
    Case("unconvertible-op", "cli", _cli(lambda w: w.save("sig.onnx", fm.with_op_between("Sigmoid")),
                                         lambda w: w.poison), "mid_sigmoid (Sigmoid)", unexpected="numpy"),
    Case("unconvertible-op", "api", lambda w: onnx2burst.convert(_lrn(), w.spy, T=4),
         "mid_lrn (LRN)"),
    # --- calibration data
    Case("calib-missing", "cli", _cli(None, lambda w: w.root / "nope.npy"), "calibration data not found"),
    Case("calib-not-numpy", "cli", _cli(None, lambda w: w.poison), "not a readable numpy file"),
    Case("calib-some-inputs", "cli", _cli(lambda w: w.save("two.onnx", two_inputs()),
                                          lambda w: w.save("part.npz", {"x1": _x(4, shape=(1, 4, 4))})),
         "missing: ['x2']"),
    Case("calib-some-inputs", "api", lambda w: onnx2burst.convert(two_inputs(), {"x2": _x(4, shape=(1, 4, 4))}),
         "missing: ['x1']"),
    Case("calib-npy-for-two-inputs", "cli", _cli(lambda w: w.save("two.onnx", two_inputs())),
         "the model has 2 inputs"),
    Case("calib-unsupported-format", "cli", _cli(None, lambda w: w.save("calib.csv", b"1,2,3\n")),
         "unsupported calibration file"),
    Case("calib-broken-npz", "cli", _cli(None, lambda w: w.save("broken.npz", b"PK\x03\x04garbage")), "broken.npz"),
    Case("calib-object-npz", "api", lambda w: onnx2burst.convert(w.model, w.save("obj.npz", {"x": _objects()})),
         "pickled"),
    Case("calib-shape", "cli", _cli(None, lambda w: w.save("bad.npy", _x(4, shape=(3, 6, 6)))),
         "[4, 3, 6, 6]"),
    Case("calib-shape", "api", lambda w: onnx2burst.convert(w.model, _x(4, shape=(2, 5, 6))), "[N, 2, 6, 6]"),
    Case("calib-dtype", "cli", _cli(None, lambda w: w.save("f64.npy", _x(4, dtype=np.float64))), "float64"),
    Case("calib-dtype", "api", lambda w: onnx2burst.convert(w.model, _x(4).astype(np.int32)), "int32"),
    Case("calib-rank", "cli", _cli(None, lambda w: w.save("flat.npy", _x(4).reshape(4, -1))), "rank 2"),
    Case("calib-rank", "api", lambda w: onnx2burst.convert(w.model, _x(4)[None]), "rank 5"),
    Case("calib-empty", "cli", _cli(None, lambda w: w.save("empty.npy", _x(0))), "empty"),
    Case("calib-empty", "api", lambda w: onnx2burst.convert(w.model, iter([])), "empty"),
    Case("calib-nan", "cli", _cli(None, lambda w: w.save("nan.npy", np.where(np.arange(8)[:, None, None, None] == 5,
                                                                               np.nan, _x()).astype(np.float32))),
         "NaN or inf values in 1 sample(s) (first: sample 5)"),
    Case("calib-inf", "api", lambda w: onnx2burst.convert(w.model, np.where(_x() > 2.5, np.inf, _x()).astype("f4")),
         "NaN or inf"),
    Case("calib-pickle", "cli", _cli(None, lambda w: w.save("obj.npy", b"\x80\x04K\x01.")), "pickled"),
    # --- settings out of range (the CLI refuses them while parsing; the API with a ConfigError)
    Case("T-zero", "cli", _cli(None, None, "--T", "0"), "Invalid value for '--T'"),
    Case("T-zero", "api", lambda w: onnx2burst.convert(w.model, w.calib, T=0), "T must be an integer >= 1"),
    Case("T-float", "api", lambda w: onnx2burst.convert(w.model, w.calib, T=2.5), "T must be an integer >= 1"),
    Case("psi-zero", "cli", _cli(None, None, "--psi", "0"), "Invalid value for '--psi'"),
    Case("psi-zero", "api", lambda w: onnx2burst.convert(w.model, w.calib, psi=0), "psi must be an integer >= 1"),
    Case("tau-zero", "cli", _cli(None, None, "--tau", "0"), "Invalid value for '--tau'"),
    Case("tau-inf", "cli", _cli(None, None, "--tau", "inf"), "--tau must be a finite number > 0"),
    Case("tau-inf", "api", lambda w: onnx2burst.convert(w.model, w.spy, tau=float("inf")), "tau must be a finite"),
    Case("T-huge", "cli", _cli(None, None, "--T", str(10**12)), "Invalid value for '--T'"),
    Case("tau-negative", "api", lambda w: onnx2burst.convert(w.model, w.spy, tau=-1.0), "tau must be a finite"),
    Case("tau-nan", "api", lambda w: onnx2burst.convert(w.model, w.spy, tau=float("nan")), "tau must be a finite"),
    Case("batch-size-zero", "cli", _cli(None, None, "--batch-size", "0"), "Invalid value for '--batch-size'"),
    Case("batch-size-zero", "api", lambda w: onnx2burst.convert(w.model, w.calib, batch_size=0),
         "batch-size must be an integer >= 1"),
    Case("calib-samples-zero", "cli", _cli(None, None, "--calib-samples", "0"), "Invalid value for '--calib-samples'"),
    Case("unknown-option", "api", lambda w: onnx2burst.convert(w.model, w.calib, timesteps=8), "unknown option"),
    # --- the output
    Case("output-missing-folder", "cli", _cli(None, None, "-o", "{root}/missing/out.onnx"), "does not exist"),
    Case("output-missing-folder", "api", lambda w: save_model(fm.residual(), w.root / "missing" / "out.onnx"),
         "does not exist"),
    Case("output-read-only-folder", "cli", lambda w: _cli(None, None, "-o", str(_readonly(w) / "out.onnx"))(w),
         "ro", root_skip=True),
    Case("output-read-only-folder", "api", lambda w: save_model(fm.residual(), _readonly(w) / "out.onnx"),
         "Permission denied", root_skip=True),
    Case("output-is-a-folder", "cli", _cli(None, None, "-o", "{root}"), "is a directory"),
    Case("output-is-input", "cli", _cli(None, None, "-o", "{root}/model.onnx"), "is the input model"),
    Case("output-is-input-via-symlink", "cli", _cli(None, None, "-o", "{root}/alias.onnx"), "is the input model"),
    Case("output-is-input", "api", lambda w: save_model(fm.residual(), w.model, source=w.model), "is the input model"),
    # --- an interrupted run (SIGINT during calibration) leaves nothing behind
    Case("interrupted", "sigint", lambda w: None, "interrupted: nothing was written"),
]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _interrupt(w: W) -> tuple[int, str]:
    """``onnx2burst convert`` on a model and data big enough that calibration takes seconds;
    SIGINT once the first calibration pass has finished (its progress line is printed)."""
    from tests import corpus

    m = corpus.by_name("resnet_sum_op8").build()
    model = w.save("big.onnx", m)
    data = w.save("big.npy", corpus.inputs(m, 512, seed=1)["x"])
    exe = Path(sys.executable).with_name("onnx2burst")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from onnx2burst.cli import main; main()"]
    # a shell without job control starts background commands with SIGINT ignored, and Python then
    # keeps it ignored (as it should): the child gets SIGINT's default back, as a terminal gives it
    p = subprocess.Popen(cmd + ["convert", str(model), "--calib", str(data), "--T", "32", "--batch-size", "16",
                                "-o", str(w.root / "big.snn.onnx")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return signal_when(p, "activation ranges", signal.SIGINT)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.via}-{c.id}" for c in CASES])
def test_bad_input(case: Case, tmp_path: Path):
    if case.root_skip and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    w = W(tmp_path)
    before = _listing(tmp_path)
    if case.via == "api":
        with pytest.raises(Onnx2BurstError) as e:
            case.run(w)
        message = str(e.value)
    elif case.via == "cli":
        args = [a.replace("{root}", str(tmp_path)) for a in case.run(w)]
        res = CliRunner().invoke(main, args)
        assert isinstance(res.exception, SystemExit), repr(res.exception)   # handled, not a crash
        assert res.exit_code != 0
        message = res.output
    else:
        code, message = _interrupt(w)
        assert code == 130, (code, message)                                 # 128 + SIGINT
        assert len(message.strip().splitlines()[-1]) < 80, message          # a short message
    assert case.expect in message, message
    assert case.unexpected not in message and "Traceback" not in message, message
    assert w.spy.calls == 0                                                 # no data was read
    assert _listing(tmp_path) == sorted(set(before) | set(w.saved) | ({"ro"} if case.root_skip else set()))
