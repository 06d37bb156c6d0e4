"""``StreamSession``: run a streaming model one timestep per call, and stop each sample early.

::

    from onnx2burst.stream import StreamSession
    s = StreamSession("vgg.stream.onnx")
    s.reset(batch_size=1)
    for frame in frames:                      # a static image: the same x at every step
        y_t = s.step({"input": frame})        # this step's outputs, in the SNN's output order
    anytime = s.prediction()                  # the mean of the steps so far (head applied)

    run = s.run_adaptive({"input": x})        # steps until every sample has exited
    run.outputs, run.exit_steps, run.spikes

docs/stream.md describes the model and the exit rule.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import ConfigError, Onnx2BurstError, onnxruntime_errors
from ..ops.layout import from_blocked, to_blocked
from .build import SHARED_KINDS
from .rule import ExitRule

__all__ = ["StreamSession", "StreamState", "AdaptiveRun"]


@dataclass(frozen=True)
class StreamState:
    """The carried state of a ``StreamSession`` (``get_state``/``set_state``): the arrays by
    state input name, the number of steps run, and the id of the model they belong to."""

    model_id: str
    steps: int
    arrays: dict


@dataclass(frozen=True)
class AdaptiveRun:
    """What ``run_adaptive`` returns, per sample: the any-time outputs at its exit step (in the
    SNN's output order), the step it exited after (1..max steps), and its spikes per layer
    over the steps it ran (``[layers, N]``, layer order of ``StreamSession.layers``)."""

    outputs: list
    exit_steps: np.ndarray
    spikes: np.ndarray


class StreamSession:
    """An onnxruntime session of a streaming model (``onnx2burst export-stream``) and its state.

    model: a path or ModelProto. kernel/threads: as ``ops.make_session``; spinning (default True):
    pool threads spin while a step runs and stop at its end (False: they never spin). The streaming model
    holds standard ops only and runs on a stock onnxruntime; with the kernel (None: when built)
    the session runs each ReLU neuron's step as one ``BurstIFStep`` node instead (``fuse_steps``,
    the same bits; ``fused`` says how many). layout "auto" (default) also runs those steps in
    onnxruntime's blocked NCHWc layout where it can, their membranes kept blocked between steps
    (no layout reorder around them; ``blocked`` says how many; ``get_state``/``set_state``
    convert, so a state is always plain NCHW outside); "plain" never does.
    """

    def __init__(self, model, *, threads: int | None = None, kernel: bool | None = None, layout: str = "auto",
                 spinning: bool = True):
        from ..io import load_model
        from ..ops import kernel_available
        from .build import fuse_steps, stream_info

        what = "the model" if isinstance(model, onnx.ModelProto) else os.fspath(model)
        m = model if isinstance(model, onnx.ModelProto) else load_model(model)
        info = stream_info(m)
        if info is None:
            raise ConfigError(f"{what} is not a streaming model: make one with `onnx2burst export-stream SNN.onnx "
                              "-o STREAM.onnx`")
        self.info = info
        self.model = m
        self.T = int(info["T"])
        self.inputs = list(info["inputs"])
        self.output_names = [o["name"] for o in info["outputs"]]
        self.heads = [o.get("head") for o in info["outputs"]]
        self.layers = [s["layer"] for s in info["spikes"]]
        self.id = info.get("id", "")
        meta = {p.key: p.value for p in m.metadata_props}
        self.rule = ExitRule.from_metadata(meta)
        self._states = info["states"]
        self._state_in = [s["in"] for s in self._states]
        self._shared = {s["in"] for s in self._states if s["kind"] in SHARED_KINDS}
        self._zeros: dict[int, dict] = {}  # batch -> the zero state (read only: runs replace states)
        self._fetch = ([o["step"] for o in info["outputs"]] + self.output_names + [s["name"] for s in info["spikes"]]
                       + [s["out"] for s in self._states])
        if layout not in ("auto", "plain"):
            raise ConfigError(f"layout must be 'auto' or 'plain', got {layout!r}")
        use_kernel = kernel_available() if kernel is None else bool(kernel)
        run, self.fused = fuse_steps(m, info) if use_kernel else (m, 0)
        self._use_kernel, self._threads, self._layout, self._fused_model = use_kernel, threads, layout, run
        self._spinning = spinning
        self._chunks: dict[int, tuple | None] = {}  # k -> (session, blocks) running k steps per call
        with onnxruntime_errors(f"the streaming model {what}"):
            #: membranes the session carries in the NCHWc layout: state input -> channel block
            self._sess, self._blocks = self._open(run)
        import onnxruntime as ort

        self._quiet = ort.RunOptions()
        self._quiet.log_severity_level = 4  # a failed run is raised as one error, not also logged
        self._state: dict | None = None
        self._batch = 0
        self._steps = 0
        self._pred: list | None = None
        self._spikes: list | None = None

    def _open(self, model, probe=None):
        """(onnxruntime session, blocked membranes) for ``model`` with the kernel, layout and threads
        this StreamSession was opened with.
        Spinning pool threads stop at the end of each run: the one-step and the k-step sessions
        take turns, and one's spinning threads would take the cores from the other's run."""
        from ..ops import make_session
        from ..ops.layout import blocked_stream_session

        spinning = "run" if self._spinning else False
        if self.fused and self._layout == "auto":
            sess, states = blocked_stream_session(model, threads=self._threads, probe=probe, spinning=spinning)
            return sess, {k: b for k, (_, b) in states.items()}
        return make_session(model, kernel=self._use_kernel, threads=self._threads, layout="plain",
                            spinning=spinning), {}

    # ------------------------------------------------------------------ state
    @property
    def steps(self) -> int:
        """Steps run since the last ``reset``."""
        return self._steps

    @property
    def blocked(self) -> int:
        """How many neuron steps run in the blocked NCHWc layout."""
        return len(self._blocks)

    @property
    def batch_size(self) -> int:
        return self._batch

    def state_shapes(self, batch_size: int) -> dict[str, tuple]:
        """Shape of each state input at ``batch_size``."""
        return {s["in"]: tuple(s["shape"]) if s["kind"] in SHARED_KINDS else (batch_size, *s["shape"])
                for s in self._states}

    def reset(self, batch_size: int = 1) -> None:
        """Zero every state for a batch of ``batch_size`` samples (before the first step)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"reset: batch_size must be an integer >= 1, got {batch_size!r}")
        self._batch = int(batch_size)
        if self._batch not in self._zeros:
            if len(self._zeros) > 8:
                self._zeros.clear()
            self._zeros[self._batch] = {k: np.zeros(v, np.float32) for k, v in self.state_shapes(self._batch).items()}
        self._state = dict(self._zeros[self._batch])
        self._steps = 0
        self._pred = None
        self._spikes = None

    def get_state(self) -> StreamState:
        """A copy of the carried state (to resume later with ``set_state``)."""
        self._require_reset("get_state")
        return StreamState(self.id, self._steps, {k: from_blocked(v, self._blocks[k]) if k in self._blocks else v.copy()
                                                  for k, v in self._state.items()})

    def set_state(self, state: StreamState) -> None:
        """Resume from a state ``get_state`` returned, for this model; checked by name and shape."""
        if not isinstance(state, StreamState):
            raise ConfigError(f"set_state needs a StreamState from get_state(), got {type(state).__name__}")
        if state.model_id != self.id:
            raise ConfigError(f"the state belongs to another streaming model (id {state.model_id}), not to this one "
                              f"(id {self.id})")
        want = set(self.state_shapes(1))
        if set(state.arrays) != want:
            raise ConfigError(f"the state's tensors {sorted(state.arrays)} are not this model's {sorted(want)}")
        first = next(s for s in self._states if s["kind"] not in SHARED_KINDS)
        batch = np.shape(state.arrays[first["in"]])[0] if np.ndim(state.arrays[first["in"]]) else 0
        shapes = self.state_shapes(batch)
        for k, v in state.arrays.items():
            if tuple(np.shape(v)) != shapes[k]:
                raise ConfigError(f"state {k!r} has shape {list(np.shape(v))}, this model needs {list(shapes[k])} "
                                  f"(batch {batch})")
        self._state = {k: to_blocked(np.asarray(v, np.float32), self._blocks[k]) if k in self._blocks
                       else np.asarray(v, np.float32).copy() for k, v in state.arrays.items()}
        self._batch, self._steps = int(batch), int(state.steps)
        self._pred = None
        self._spikes = None

    def _require_reset(self, what: str) -> None:
        if self._state is None:
            raise ConfigError(f"{what} before reset(): call reset(batch_size) first")

    # ------------------------------------------------------------------ stepping
    def _check_feeds(self, feeds) -> dict:
        if not isinstance(feeds, dict):
            raise ConfigError(f"step needs a dict of inputs {self.inputs}, got {type(feeds).__name__}")
        missing = [k for k in self.inputs if k not in feeds]
        extra = [k for k in feeds if k not in self.inputs]
        if missing or extra:
            raise ConfigError(f"step: the model's inputs are {self.inputs}; missing {missing}, unknown {extra}")
        out = {}
        for k in self.inputs:
            v = np.asarray(feeds[k], np.float32)
            if v.ndim == 0 or v.shape[0] != self._batch:
                raise ConfigError(f"step: input {k!r} has shape {list(v.shape)}; reset was for batch {self._batch}")
            out[k] = v
        return out

    def step(self, feeds: dict) -> list[np.ndarray]:
        """Run one timestep on ``feeds`` (each model input at the reset's batch size); returns this
        step's outputs in the SNN's output order (their mean over the steps so far is the
        any-time prediction, ``prediction()``)."""
        self._require_reset("step")
        return self._run(self._check_feeds(feeds))

    def _run(self, feeds: dict, steps: int = 1) -> list[np.ndarray]:
        """One step on checked ``feeds`` (or ``steps`` > 1 steps of the same input in one call of
        the k-step session, ``_chunk``): the state advances; returns the last step's outputs."""
        sess = self._sess
        if steps > 1:
            sess = self._chunk(steps)[0]
            feeds = {k: np.concatenate([v] * steps) for k, v in feeds.items()}
        feeds.update(self._state)
        with onnxruntime_errors("the streaming model"):
            res = sess.run(self._fetch, feeds, self._quiet)
        k = len(self.output_names)
        step = [v[-self._batch:] if steps > 1 and len(v) == steps * self._batch else v for v in res[:k]]
        self._pred = res[k:2 * k]
        self._spikes = res[2 * k:2 * k + len(self.layers)]
        self._state = dict(zip(self._state_in, res[2 * k + len(self.layers):]))
        self._steps += steps
        return step

    def _chunk(self, k: int) -> tuple | None:
        """The session running ``k`` steps per call (``build.chunk_steps``) and its blocked
        membranes, or None where it cannot (no kernel, a state it cannot carry, other blocked
        membranes than the one-step session's, or a probe on random states that does not give
        exactly what k single steps give). Built once per k."""
        if k not in self._chunks:
            self._chunks[k] = self._make_chunk(k)
        return self._chunks[k]

    def _make_chunk(self, k: int) -> tuple | None:
        from .build import chunk_steps

        model = chunk_steps(self._fused_model, self.info, k) if self.fused else None
        shapes = {i.name: i.shape for i in self._sess.get_inputs()}
        if model is None or any(not isinstance(d, int) for name in self.inputs for d in shapes[name][1:]):
            return None
        rng = np.random.default_rng(0)
        x = {name: rng.standard_normal([2, *shapes[name][1:]]).astype(np.float32) for name in self.inputs}
        plain = {n: (rng.standard_normal(shp) if s["kind"] != "steps" else np.zeros(shp)).astype(np.float32)
                 for s, (n, shp) in zip(self._states, self.state_shapes(2).items())}
        probe = {**{n: np.concatenate([v] * k) for n, v in x.items()}, **plain}
        try:
            with onnxruntime_errors("the streaming model"):
                sess, blocks = self._open(model, probe=probe)
            if blocks != self._blocks:
                return None
            saved = (self._state, self._batch, self._steps, self._pred, self._spikes)
            try:
                self._batch, self._steps = 2, 0
                start = {n: to_blocked(v, blocks[n]) if n in blocks else v for n, v in plain.items()}
                self._state = start
                self._chunks[k] = (sess, blocks)
                got = self._run(dict(x), k) + self._pred + list(self._spikes) + list(self._state.values())
                self._state = start  # runs read states, never write them
                spikes = 0
                for _ in range(k):
                    want = self._run(dict(x))
                    spikes = spikes + np.stack(self._spikes)
                want = want + self._pred + list(spikes) + list(self._state.values())
            finally:
                self._state, self._batch, self._steps, self._pred, self._spikes = saved
                self._chunks.pop(k, None)
        except Onnx2BurstError:  # onnxruntime cannot load or run it: one step per call it is
            return None
        same = len(got) == len(want) and all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want))
        return (sess, blocks) if same else None

    def prediction(self) -> list[np.ndarray]:
        """The any-time outputs after the last step: the mean of the steps run, with the SNN's
        head (Softmax, ...) applied; after T steps, the batch SNN's outputs bit for bit."""
        if self._pred is None:
            raise ConfigError("prediction() before the first step")
        return list(self._pred)

    def step_spikes(self) -> np.ndarray:
        """Spikes of the last step, ``[layers, N]``."""
        if self._spikes is None:
            raise ConfigError("step_spikes() before the first step")
        return np.stack([np.asarray(s, np.float64).reshape(-1) for s in self._spikes])

    # ------------------------------------------------------------------ adaptive
    def run_adaptive(self, feeds: dict, *, rule: ExitRule | None = None, max_steps: int | None = None) -> AdaptiveRun:
        """Step ``feeds`` (the same input at every step) until every sample has exited by ``rule``
        (default: the one stored by ``convert --adaptive``) or ``max_steps`` (default T) were run.
        A sample that exits leaves the batch; the others go on."""
        rule = rule or self.rule
        if rule is None:
            raise ConfigError("no exit rule: the SNN was converted without --adaptive; pass rule=ExitRule(...)")
        if self.heads[0] == "ArgMax" or len(self.output_names) != 1:
            raise ConfigError("adaptive timesteps need one output of class scores; this model has "
                              f"{self.output_names} (head {self.heads[0]}): no exit rule applies")
        feeds = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
        n = len(next(iter(feeds.values()))) if feeds else 0
        self.reset(n)
        self._check_feeds(feeds)
        limit = int(max_steps or self.T)
        active = np.arange(n)
        exits = np.zeros(n, np.int64)
        spikes = np.zeros((len(self.layers), n))
        outs: list | None = None
        now = dict(feeds)
        shared = self._shared
        # no sample can exit before t_min: its first steps run in one call where the session can
        first = min(rule.t_min, limit)
        first = first if first > 1 and self._chunk(first) is not None else 1
        while len(active):
            step = self._run(dict(now), first if self._steps == 0 else 1)
            spikes[:, active] += np.stack(self._spikes).reshape(len(self._spikes), -1)
            pred = self._pred
            if outs is None:
                outs = [np.zeros((n,) + p.shape[1:], p.dtype) for p in pred]
            if self._steps < rule.t_min and self._steps < limit:
                continue
            done = rule.exits(pred[0], self._steps, head=self.heads[0], step=step[0]) | (self._steps >= limit)
            if done.any():
                for o, p in zip(outs, pred):
                    o[active[done]] = p[done]
                exits[active[done]] = self._steps
                keep = ~done
                active = active[keep]
                if len(active):
                    self._state = {k: (v if k in shared else v[keep]) for k, v in self._state.items()}
                    self._batch = len(active)
                    now = {k: v[active] for k, v in feeds.items()}
        return AdaptiveRun(outs or [], exits, spikes)
