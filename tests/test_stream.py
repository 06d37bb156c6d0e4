"""The streaming form of an SNN (docs/stream.md): T steps of the streaming model against the
batch SNN bit for bit (the C++ kernel and the standard-op fallback), with lateral pooling,
residual blocks and heads; run_adaptive against the exits read off one full run; bad input."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx2burst
from onnx2burst import ops
from onnx2burst.errors import ConfigError, GraphError
from onnx2burst.evaluation.energy import with_spike_outputs
from onnx2burst.stream import ExitRule, StreamSession, export_stream
from onnx2burst.stream.rule import exit_steps, scores
from tests import fixtures_models as fm
from test_ops import needs_kernel

KERNEL = [pytest.param(True, marks=needs_kernel), False]


def _global_maxpool(seed: int = 0) -> onnx.ModelProto:
    """x[N,1,8,8] -> Conv -> Relu -> GlobalMaxPool -> Flatten -> Gemm -> LogSoftmax."""
    from onnx import helper
    r = np.random.default_rng(seed)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             n("Relu", ["c0"], ["r0"], name="relu0"), n("GlobalMaxPool", ["r0"], ["p"], name="gmp"),
             n("Flatten", ["p"], ["f"], name="flat"), n("Gemm", ["f", "wf", "bf"], ["z"], name="fc", transB=1),
             n("LogSoftmax", ["z"], ["y"], name="lsm", axis=1)]
    inits = {"w0": (r.normal(size=(3, 1, 3, 3)) * 0.5).astype(np.float32), "b0": np.full(3, 0.05, np.float32),
             "wf": r.normal(size=(4, 3)).astype(np.float32), "bf": np.zeros(4, np.float32)}
    return fm._model(nodes, inits, ["N", 1, 8, 8], ["N", 4])


MODELS = {
    "residual": lambda: fm.residual(),
    "lateral_maxpool_softmax": lambda: fm.maxpool_net(softmax=True),
    "lateral_global_maxpool_logsoftmax": _global_maxpool,
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def converted(request):
    ann = MODELS[request.param]()
    snn = onnx2burst.convert(ann, fm.inputs(ann, 32, seed=3), T=5, psi=2, maxpool="lateral")
    return request.param, ann, snn, export_stream(snn)


def _steps(stream, x, T, kernel=None):
    s = StreamSession(stream, kernel=kernel)
    s.reset(len(x))
    outs = [s.step({"x": x})[0] for _ in range(T)]
    return s, outs


@pytest.mark.parametrize("kernel", KERNEL)
def test_T_steps_equal_the_batch_snn_bit_for_bit(converted, kernel):
    name, _, snn, stream = converted
    T = 5
    x = fm.inputs(snn, 7, seed=11)
    run, spike_names = with_spike_outputs(snn)
    want = ops.make_session(run, kernel=kernel).run(None, {"x": x})
    s, steps = _steps(stream, x, T, kernel)
    # with the kernel every neuron's step is one BurstIFStep node (the same bits), else standard ops
    assert s.fused == (sum(n.op_type == "BurstIF" for n in snn.graph.node) if kernel else 0)
    got = s.prediction()[0]
    assert got.dtype == want[0].dtype and got.shape == want[0].shape
    assert np.array_equal(got, want[0]), f"{name}: largest difference {np.abs(got - want[0]).max()}"
    assert not np.array_equal(steps[0], steps[-1])  # the steps differ; only their mean is the output
    if name == "residual":  # no head: the mean of the step outputs, summed in order, is the output
        acc = steps[0].copy()
        for y in steps[1:]:
            acc += y
        assert np.array_equal(acc / np.float32(T), want[0])
    # spikes: the steps' counts add up to the batch SNN's
    s2 = StreamSession(stream, kernel=kernel)
    s2.reset(len(x))
    total = 0
    for _ in range(T):
        s2.step({"x": x})
        total = total + s2.step_spikes()
    assert np.array_equal(total, np.stack([w.astype(np.float64) for w in want[1:1 + len(spike_names)]]))


def test_stream_holds_standard_ops_only_and_checks(converted):
    _, _, snn, stream = converted
    onnx.checker.check_model(stream, full_check=True)
    assert not any(n.domain for n in stream.graph.node)
    assert not stream.functions
    import onnxruntime as ort  # a stock session, no library registered
    sess = ort.InferenceSession(stream.SerializeToString(), providers=["CPUExecutionProvider"])
    assert {i.name for i in sess.get_inputs()} >= {"x", "steps"}


def test_per_timestep_output_equals_the_step_outputs():
    ann = fm.residual()
    snn = onnx2burst.convert(ann, fm.inputs(ann, 32, seed=3), T=4, psi=2, per_timestep_output=True)
    x = fm.inputs(ann, 3, seed=2)
    per_t = ops.make_session(snn, kernel=False).run(["y_per_timestep"], {"x": x})[0]
    _, steps = _steps(export_stream(snn), x, 4)
    assert np.array_equal(np.stack(steps), per_t)


@pytest.mark.parametrize("kind", ["confidence", "margin", "step-margin"])
def test_run_adaptive_matches_the_exits_of_one_full_run(converted, kind):
    name, _, snn, stream = converted
    x = fm.inputs(snn, 12, seed=5)
    s, _ = _steps(stream, x, 1)
    T = s.T
    s.reset(len(x))
    preds, own = [], []
    for _ in range(T):
        own.append(s.step({"x": x})[0])
        preds.append(s.prediction()[0])
    preds = np.stack(preds)
    sc = np.stack([scores(p, s.heads[0], kind, o) for p, o in zip(preds, own)])
    c = float(np.quantile(sc[1][sc[1] >= 0], 0.5))  # about half exit at step 2
    rule = ExitRule(c, t_min=2, kind=kind)
    want = exit_steps(sc, c, 2)
    assert 2 <= want.min() and want.max() <= T and len(set(want.tolist())) > 1
    run = s.run_adaptive({"x": x}, rule=rule)
    assert np.array_equal(run.exit_steps, want)
    assert np.array_equal(run.outputs[0], preds[want - 1, np.arange(len(x))])
    one = s.run_adaptive({"x": x[3:4]}, rule=rule)  # batch 1 agrees with the batch
    assert one.exit_steps[0] == want[3] and np.array_equal(one.spikes[:, 0], run.spikes[:, 3])


def test_states_resume_and_bad_states_are_refused(converted):
    _, _, snn, stream = converted
    x = fm.inputs(snn, 2, seed=1)
    s = StreamSession(stream)
    with pytest.raises(ConfigError, match="before reset"):
        s.step({"x": x})
    s.reset(2)
    s.step({"x": x})
    saved = s.get_state()
    a = s.step({"x": x})[0]
    s.set_state(saved)
    assert np.array_equal(s.step({"x": x})[0], a)
    bad = {k: (v[:1] if v.ndim else v) for k, v in saved.arrays.items()}
    key = next(k for k, v in saved.arrays.items() if v.ndim)
    bad[key] = np.zeros((2, 3), np.float32)
    with pytest.raises(ConfigError, match=r"has shape \[2, 3\], this model needs"):
        s.set_state(type(saved)(saved.model_id, 1, bad))
    with pytest.raises(ConfigError, match="another streaming model"):
        s.set_state(type(saved)("0123456789abcdef", 1, saved.arrays))
    with pytest.raises(ConfigError, match="reset was for batch 2"):
        s.step({"x": x[:1]})
    with pytest.raises(ConfigError, match="inputs are"):
        s.step({"input": x})


def test_state_of_another_model_is_refused():
    a = export_stream(onnx2burst.convert(fm.residual(), fm.inputs(fm.residual(), 16), T=3, psi=2))
    b = export_stream(onnx2burst.convert(fm.maxpool_net(), fm.inputs(fm.maxpool_net(), 16), T=3, psi=2))
    sa, sb = StreamSession(a), StreamSession(b)
    sa.reset(1)
    sb.reset(1)
    with pytest.raises(ConfigError, match="another streaming model"):
        sb.set_state(sa.get_state())


def test_what_is_not_an_snn_is_refused(converted):
    _, ann, snn, stream = converted
    with pytest.raises(ConfigError, match="no BurstIF"):
        export_stream(ann)
    with pytest.raises(GraphError, match="streaming model already"):
        export_stream(stream)
    with pytest.raises(ConfigError, match="not a streaming model"):
        StreamSession(snn)
    odd = onnx.ModelProto()
    odd.CopyFrom(snn)
    node = next(n for n in odd.graph.node if n.op_type == "BurstIF")
    node.attribute.append(onnx.helper.make_attribute("gain", 2.0))
    with pytest.raises(ConfigError, match="gain"):
        export_stream(odd)


@pytest.mark.parametrize("kernel", KERNEL)
def test_signed_neurons_stream_bit_for_bit(kernel):
    """LeakyRelu neurons (attribute alpha: negative spikes) carry their accumulated offset as a state
    shared by the samples; T steps equal the SNN, and samples leaving run_adaptive keep it."""
    ann = fm.residual()
    for n in ann.graph.node:
        if n.op_type == "Relu":
            n.op_type = "LeakyRelu"
            n.attribute.append(onnx.helper.make_attribute("alpha", 0.1))
    snn = onnx2burst.convert(ann, fm.inputs(ann, 32, seed=3), T=5, psi=2)
    assert any(a.name == "alpha" for n in snn.graph.node for a in n.attribute)
    stream = export_stream(snn)
    x = fm.inputs(ann, 6, seed=12)
    want = ops.make_session(snn, kernel=kernel).run(None, {"x": x})[0]
    s, _ = _steps(stream, x, 5)
    assert np.array_equal(s.prediction()[0], want)
    assert any(st["kind"] == "shared" for st in s.info["states"])
    run = s.run_adaptive({"x": x}, rule=ExitRule(0.0, t_min=2))  # everyone leaves after step 2
    assert run.exit_steps.tolist() == [2] * 6
    s.reset(6)
    s.step({"x": x})
    two = s.step({"x": x})
    assert np.array_equal(run.outputs[0], s.prediction()[0]) and two is not None
    first = s.run_adaptive({"x": x}, rule=ExitRule(float(np.median(scores(want, None))), t_min=1))
    for i in range(6):  # each sample alone gives what it gave in the batch that shrank around it
        one = s.run_adaptive({"x": x[i:i + 1]}, rule=ExitRule(float(np.median(scores(want, None))), t_min=1))
        assert one.exit_steps[0] == first.exit_steps[i]
        assert np.array_equal(one.outputs[0][0], first.outputs[0][i])


def test_a_portable_file_streams_like_its_snn(converted):
    from onnx2burst.interop.portable import make_portable

    _, _, snn, stream = converted
    x = fm.inputs(snn, 3, seed=8)
    T = StreamSession(stream).T
    a, _ = _steps(stream, x, T)
    b, _ = _steps(export_stream(make_portable(snn)), x, T)
    assert np.array_equal(a.prediction()[0], b.prediction()[0])


def test_torch_steps_agree_with_the_streaming_model(converted):
    pytest.importorskip("torch")
    from onnx2burst.stream import TorchStream

    name, _, snn, stream = converted
    x = fm.inputs(snn, 4, seed=6)
    T = StreamSession(stream).T
    ts = TorchStream(stream)
    with pytest.raises(ConfigError, match="before reset"):
        ts.step({"x": x})
    ts.reset(4)
    steps = [ts.step({"x": x})[0].numpy() for _ in range(T)]
    s, want = _steps(stream, x, T)
    np.testing.assert_allclose(np.stack(steps), np.stack(want), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ts.prediction()[0].numpy(), s.prediction()[0], rtol=1e-4, atol=1e-5)


def test_choose_rule_keeps_each_agreeing_sample():
    """Logits [T=4, N=3, K=2], the ANN says class 0 for all: sample 0 is sure from step 1; sample 1
    says class 1 at 90 % at step 1, class 0 at 95 % from step 2; sample 2 says class 1 at 55 % until
    step 3 and class 0 at step 4. The best rule that loses none exits them at 1, 2 and 4."""
    from onnx2burst.stream import choose_rule
    from onnx2burst.stream.rule import exit_steps

    lg = lambda p: [np.log(p), np.log(1 - p)]  # noqa: E731
    preds = np.array([[lg(0.99), lg(0.1), lg(0.45)]] + [[lg(0.99), lg(0.95), lg(0.45)]] * 2
                     + [[lg(0.99), lg(0.95), lg(0.6)]], np.float32)
    ann = np.zeros(3, np.int64)
    rule, summary = choose_rule(preds, ann, tol=0.0)
    ex = exit_steps(np.stack([scores(p, None) for p in preds]), rule.c, rule.t_min)
    assert ex.tolist() == [1, 2, 4]  # sample 1 may not exit at step 1, where it says class 1
    assert summary["mean_timesteps"] == pytest.approx(7 / 3) and summary["agreement"] == 1.0
    loose, _ = choose_rule(preds, ann, tol=50.0)
    assert exit_steps(np.stack([scores(p, None) for p in preds]), loose.c, loose.t_min).mean() < 7 / 3


def test_export_torch_of_a_streaming_model_is_its_step(converted, tmp_path):
    torch = pytest.importorskip("torch")
    from onnx2burst.interop.torch import export

    name, _, snn, stream = converted
    export(stream, tmp_path / "s.pt")
    step = torch.jit.load(str(tmp_path / "s.pt"))
    s = StreamSession(stream)
    x = fm.inputs(snn, 3, seed=4)
    s.reset(3)
    state = {k: torch.zeros(v) for k, v in s.state_shapes(3).items()}
    order = [i.name for i in stream.graph.input if i.name not in {t.name for t in stream.graph.initializer}]
    names = [o.name for o in stream.graph.output]
    for _ in range(s.T):
        out = dict(zip(names, step(*[torch.from_numpy(x) if n == "x" else state[n] for n in order])))
        state = {st["in"]: out[st["out"]] for st in s.info["states"]}
        s.step({"x": x})
    np.testing.assert_allclose(out[s.output_names[0]].numpy(), s.prediction()[0], rtol=1e-4, atol=1e-5)


@needs_kernel
def test_blocked_and_k_step_sessions_give_the_plain_session_bits():
    """16 channels: every step runs in the NCHWc layout, the membranes carried blocked, yet
    get_state/set_state speak plain NCHW; run_adaptive's first t_min steps run in one call of
    the k-step session: the same exits, outputs and spikes as stepping one by one."""
    ann = fm.residual(c=16)
    snn = onnx2burst.convert(ann, fm.inputs(ann, 32, seed=3), T=6, psi=2)
    stream = export_stream(snn)
    fast, plain = StreamSession(stream), StreamSession(stream, layout="plain")
    assert fast.blocked == fast.fused == sum(n.op_type == "BurstIF" for n in snn.graph.node) and plain.blocked == 0
    x = fm.inputs(snn, 5, seed=4)
    fast.reset(len(x)), plain.reset(len(x))
    for _ in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(fast.step({"x": x}), plain.step({"x": x})))
    got, want = fast.get_state(), plain.get_state()
    assert all(np.array_equal(got.arrays[k], want.arrays[k]) for k in want.arrays)
    assert any(v.ndim == 4 and np.any(v != 0) for v in want.arrays.values())
    fast.set_state(want)  # a plain state goes in blocked and steps on identically
    for _ in range(2):
        a, b = fast.step({"x": x}), plain.step({"x": x})
    assert all(np.array_equal(p, q) for p, q in zip(a + fast.prediction(), b + plain.prediction()))

    plain.reset(len(x))
    preds, own, spikes = [], [], []
    for _ in range(6):
        own.append(plain.step({"x": x})[0])
        preds.append(plain.prediction()[0])
        spikes.append(plain.step_spikes())
    sc = np.stack([scores(p, plain.heads[0], "margin", o) for p, o in zip(preds, own)])
    c = float(np.quantile(sc[3], 0.5))
    want = exit_steps(sc, c, 3)
    assert len(set(want.tolist())) > 1
    for s in (fast, plain):
        run = s.run_adaptive({"x": x}, rule=ExitRule(c, t_min=3, kind="margin"))
        assert s._chunk(3) is not None  # the first 3 steps ran in one call
        assert np.array_equal(run.exit_steps, want)
        assert np.array_equal(run.outputs[0], np.stack(preds)[want - 1, np.arange(len(x))])
        cum = np.cumsum(np.stack(spikes), axis=0)
        assert np.array_equal(run.spikes, cum[want - 1, :, np.arange(len(x))].T)


@needs_kernel
def test_a_lateral_pool_keeps_one_step_per_call():
    ann = fm.maxpool_net(softmax=True)
    snn = onnx2burst.convert(ann, fm.inputs(ann, 32, seed=3), T=5, psi=2, maxpool="lateral")
    s = StreamSession(export_stream(snn))
    assert s._chunk(2) is None  # its running sums are not carried over several steps in one call


@needs_kernel
@pytest.mark.parametrize("damage", ["wrong_count", "broken"])
def test_a_k_step_session_that_fails_its_probe_is_not_used(monkeypatch, damage):
    """A k-step graph that gives other bits than k single steps, or that onnxruntime cannot run,
    is dropped: run_adaptive then steps one step per call, with the same result."""
    from onnx2burst.stream import build

    real = build.chunk_steps

    def damaged(fused, info, k):
        m = real(fused, info, k)
        if damage == "wrong_count":  # the step count advances by k + 1
            c = next(t for t in m.graph.initializer if t.name.startswith("k_steps"))
            c.CopyFrom(onnx.numpy_helper.from_array(np.array(k + 1, np.float32), c.name))
        else:  # a node reads a tensor nobody writes
            m.graph.node[0].input[0] = "nowhere"
        return m

    ann = fm.residual(c=16)
    snn = onnx2burst.convert(ann, fm.inputs(ann, 32, seed=3), T=4, psi=2)
    s = StreamSession(export_stream(snn))
    x = fm.inputs(snn, 4, seed=4)
    want = s.run_adaptive({"x": x}, rule=ExitRule(0.0, t_min=3))
    monkeypatch.setattr(build, "chunk_steps", damaged)
    s2 = StreamSession(export_stream(snn))
    got = s2.run_adaptive({"x": x}, rule=ExitRule(0.0, t_min=3))
    assert s._chunk(3) is not None and s2._chunk(3) is None
    assert np.array_equal(got.exit_steps, want.exit_steps) and (got.exit_steps == 3).all()
    assert np.array_equal(got.outputs[0], want.outputs[0]) and np.array_equal(got.spikes, want.spikes)
