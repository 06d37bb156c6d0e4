"""The sessions behind the sensitivity tables (docs/method.md §6): one baseline run per batch,
one tail session per neuron, one neuron session per (rank, T, psi).

1. The *baseline* session runs the SNN once per batch and exposes every neuron's input
   ``X_i``, its output, its spikes, and every tensor that the layers after neuron ``i`` read
   from before it (the *boundary*).
2. A candidate of layer ``i`` changes only what neuron ``i`` computes from ``X_i``: tau only
   scales ``theta = tau*vth`` and psi changes the clip and the refit threshold. A one-node
   BurstIF *cell* session with ``tau = 1`` and ``vth = theta`` fed at run time computes neuron
   ``i`` for any candidate, bit for bit as the real node would (the kernel forms
   ``theta = tau*vth`` in float32, as the caller does).
3. The *tail* session of layer ``i`` (the nodes downstream of neuron ``i``, everything upstream
   fed from the baseline) turns the candidate's output into the model's outputs (those it does not reach
   are the baseline's). Upstream layers run once
   per batch, never once per candidate.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import ops
from ..errors import ConfigError
from ..snn import read_snn

__all__ = ["SearchGraphs", "search_session", "channel_mean", "mean_corrected"]


def search_session(model: onnx.ModelProto, threads, kernel):
    """A session for one of the search's many small graphs: idle threads sleep, and its tensors
    come from the process's shared arena (``ops.session_options(arena="shared")``): the many
    tail sessions take turns, so one arena holding the largest run's tensors serves them all."""
    import onnxruntime as ort

    so = ops.session_options(kernel=kernel, threads=threads, arena="shared")
    # many sessions take turns: idle pools must not spin on the cores the next one needs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class SearchGraphs:
    """The baseline session, one tail session per neuron, one neuron session per (rank, psi)."""

    def __init__(self, snn: onnx.ModelProto, threads, kernel):
        self.snn = snn
        self.threads, self.kernel = threads, kernel
        view = read_snn(snn, require_vth=True)
        self.neurons = view.neurons
        g = snn.graph
        self.inputs = view.inputs
        self.outputs = [o.name for o in g.output]
        missing = [nr.name for nr in self.neurons if not nr.spikes]
        if missing:
            raise ConfigError(f"BurstIF layer(s) {missing} declare no spikes output")
        nodes = list(g.node)
        inits = {t.name for t in g.initializer}
        self.tail_nodes: list[list[onnx.NodeProto]] = []
        self.boundary: list[list[str]] = []   # tensors from before neuron i that its tail reads
        self.tail_outputs: list[list[str]] = []   # the model outputs neuron i reaches
        for nr in self.neurons:
            reached, tail = {nr.y}, []
            for n in nodes[nr.index + 1:]:
                if any(i in reached for i in n.input):
                    tail.append(n)
                    reached.update(o for o in n.output if o)
            outs = [o for o in self.outputs if o in reached]
            if not outs:
                raise ConfigError(f"no output of the model depends on neuron {nr.name}")
            produced = {o for n in tail for o in n.output}
            b = []
            for n in tail:
                for i in n.input:
                    if i and i not in produced and i not in inits and i != nr.y and i not in b:
                        b.append(i)
                if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
                    raise ConfigError(f"node {n.name or n.op_type} after {nr.name} has a subgraph; not supported by the search")
            self.tail_nodes.append(tail)
            self.boundary.append(b)
            self.tail_outputs.append(outs)
        base = onnx.ModelProto()
        base.CopyFrom(snn)
        have = {o.name for o in base.graph.output}
        self.base_outputs = list(self.outputs)
        want = [nr.spikes for nr in self.neurons] + [nr.x for nr in self.neurons] + \
               [nr.y for nr in self.neurons] + [t for b in self.boundary for t in b]
        for t in want:
            if t and t not in self.inputs and t not in self.base_outputs:
                self.base_outputs.append(t)
                if t not in have:
                    base.graph.output.append(helper.make_empty_tensor_value_info(t))
        self.base_model = base
        self._base = None
        self._tails: dict[int, object] = {}
        self._cells: dict[tuple, object] = {}

    @property
    def base(self):
        """The baseline session (built on first use: a worker that runs only cells and tails
        never builds it)."""
        if self._base is None:
            self._base = search_session(self.base_model, self.threads, self.kernel)
        return self._base

    def run_base(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One baseline run: every exposed tensor (and the inputs) by name."""
        env = dict(zip(self.base_outputs, self.base.run(self.base_outputs, dict(feeds))))
        env.update(feeds)
        return env

    def tail(self, i: int, env: Mapping[str, np.ndarray]):
        """The session that runs the nodes after neuron ``i`` (built on first use)."""
        s = self._tails.get(i)
        if s is None:
            nr = self.neurons[i]
            g = self.snn.graph
            used = {x for n in self.tail_nodes[i] for x in n.input}
            inputs = [helper.make_tensor_value_info(nr.y, TensorProto.FLOAT, None)]
            for b in self.boundary[i]:
                inputs.append(helper.make_tensor_value_info(
                    b, helper.np_dtype_to_tensor_dtype(env[b].dtype), None))
            outs = [o for o in g.output if o.name in self.tail_outputs[i]]
            graph = helper.make_graph(self.tail_nodes[i], f"tail_{i}", inputs, outs,
                                      [t for t in g.initializer if t.name in used])
            m = helper.make_model(graph, opset_imports=list(self.snn.opset_import),
                                  ir_version=self.snn.ir_version)
            m.functions.extend(self.snn.functions)
            s = self._tails[i] = search_session(m, self.threads, self.kernel)
        return s

    def outputs_after(self, i: int, env: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]) -> list:
        """The model's outputs, in order, with neuron ``i``'s output as in ``feeds``: its tail's
        outputs computed, every output it does not reach as in the baseline ``env``."""
        names = self.tail_outputs[i]
        got = dict(zip(names, self.tail(i, env).run(names, dict(feeds))))
        return [got[o] if o in got else env[o] for o in self.outputs]

    def cell(self, rank: int, T: int, psi: int, alpha: np.ndarray | None = None):
        """A one-node BurstIF session (tau = 1, vth fed at run time) for inputs of ``rank``;
        alpha: a signed neuron's negative slope (§2), None or all 0 for a ReLU neuron."""
        a = None if alpha is None or not np.any(alpha) else tuple(float(v) for v in np.asarray(alpha).reshape(-1))
        key = (rank, T, psi, a)
        s = self._cells.get(key)
        if s is None:
            dims = ["TN"] + [f"d{j}" for j in range(1, rank)]
            vi = helper.make_tensor_value_info
            node = ops.make_node("X", "vth", "Y", T=T, psi=psi, tau=1.0, spikes="S", name=f"cell_psi{psi}",
                                 alpha=a)
            g = helper.make_graph([node], "cell", [vi("X", TensorProto.FLOAT, dims), vi("vth", TensorProto.FLOAT, ["C"])],
                                  [vi("Y", TensorProto.FLOAT, dims), vi("S", TensorProto.FLOAT, ["N"])])
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", max(ops.default_opset(self.snn), ops.MIN_OPSET))],
                                  ir_version=self.snn.ir_version)
            ops.attach_function(m)
            s = self._cells[key] = search_session(m, self.threads, self.kernel)
        return s


def channel_mean(y: np.ndarray) -> np.ndarray:
    """Per channel (axis 1), the float64 mean over every other axis (keepdims)."""
    return y.mean(axis=tuple(a for a in range(y.ndim) if a != 1), keepdims=True, dtype=np.float64)


def mean_corrected(y: np.ndarray, base: np.ndarray, target: np.ndarray | None = None, *,
                   base_mean: np.ndarray | None = None) -> np.ndarray:
    """``target`` (default ``y``) minus, per channel (axis 1), the difference of ``y``'s and
    ``base``'s means over every other axis: the step of §5 bias calibration. Applied to ``y``
    it gives the layer's output the baseline's mean; applied to the layer's input it is the
    bias change in front of the neuron. base_mean: ``channel_mean(base)``, when known."""
    shift = channel_mean(y) - (channel_mean(base) if base_mean is None else base_mean)
    return ((y if target is None else target) - shift.astype(np.float32)).astype(np.float32, copy=False)
