"""Stage 3 of a conversion: the canonical ANN becomes the SNN graph (§1).

``build_snn(canonical, analysis, params, T=...)`` applies the analysis in one place:

- every neuron becomes ``BurstIF(x, <neuron>_vth)`` with attributes T/psi/tau, its
  output keeping the Relu's output name, and a spike-count output ``<output>_spikes``
  ``[N]`` (unused by the graph; expose it to count spikes); the standard-op fallback
  function is attached;
- time starts right before the first neuron: each static tensor read by the spiking part
  goes through ``Tile`` (T copies along axis 0, time-major), so everything before the
  first neuron (the first layer) is computed once;
- every spiking graph output ``[T*N, K]`` becomes ``[T, N, K]`` then its mean over T,
  under the ANN's output name; a trailing Softmax/LogSoftmax/ArgMax is moved after the
  mean; ``per_timestep_output`` adds ``<name>_per_timestep`` ``[T, N, K]`` (before any
  trailing Softmax);
- each neuron's bias target gets a bias initializer of its own (created with zeros
  where the layer had none) for the bias calibration (§5) to correct.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import ops
from ..errors import GraphError, UnsupportedModelError
from ..graph import Canonical, GraphIndex, topological_sort
from ..graph.index import make_reduce
from .analysis import Analysis

__all__ = ["NeuronParams", "SpikingNeuron", "SNN", "build_snn"]


@dataclass(frozen=True)
class NeuronParams:
    """Per-neuron settings of the SNN: thresholds ``vth`` (float32 ``[C]`` or ``[1]``), psi, tau."""

    vth: np.ndarray
    psi: int
    tau: float = 1.0


@dataclass(frozen=True)
class SpikingNeuron:
    """A BurstIF of the built SNN and the names that refer to it."""

    name: str            # BurstIF node name (= the neuron's name in the ANN)
    input: str           # X: the pre-activation [T*N, C, ...]
    output: str          # Y [T*N, C, ...]
    spikes: str          # spike counts [N], summed over T and the layer's neurons
    vth: str             # threshold initializer
    psi: int
    tau: float
    bias: str | None     # bias initializer the bias calibration corrects (None: none found)
    bias_axis: int = 1   # axis of the layer output the bias runs along
    bias_scale: float = 1.0


@dataclass
class SNN:
    """The SNN ``model`` with its ``T``, its neurons in topological order, and its outputs."""

    model: onnx.ModelProto
    T: int
    neurons: list[SpikingNeuron]
    outputs: list[str]
    per_timestep_outputs: list[str] = field(default_factory=list)

    def neuron(self, name: str) -> SpikingNeuron:
        for n in self.neurons:
            if n.name == name:
                return n
        raise KeyError(name)


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _private_bias(idx: GraphIndex, analysis_neuron) -> tuple[str, int, float] | None:
    t = analysis_neuron.bias
    node = idx.nodes_by_name.get(t.node)
    if node is None:
        return None
    if t.op_type in ("Conv", "Gemm"):
        w = idx.const(node.input[1])
        k = int(w.shape[0] if t.op_type == "Conv" or _attr(node, "transB", 0) else w.shape[1])
        if len(node.input) > 2 and node.input[2]:
            c = np.asarray(idx.const(node.input[2]))
            if c.size not in (1, k):
                return None
            name = idx.private_const(node, 2, node.name + "_bias")
            idx.set_const(name, np.broadcast_to(c.reshape(-1), (k,)).astype(np.float32))
        else:
            name = idx.fresh(node.name + "_bias")
            idx.set_const(name, np.zeros(k, np.float32))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
        return name, 1, t.scale
    # Add of MatMul + constant: the constant runs along the last axis
    name = idx.private_const(node, list(node.input).index(t.bias), node.name + "_bias")
    return name, -1, 1.0


def _output_means(g, idx: GraphIndex, analysis: Analysis, T: int, opset: int, per_timestep: bool, info: dict):
    outputs, per_t_outputs = [], []
    i64 = lambda name, vals: idx.set_const(idx.fresh(name), np.array(vals, np.int64))  # noqa: E731
    for vi in list(g.output):
        out = vi.name
        if out not in analysis.temporal:
            continue
        tail, src = [], out
        p = idx.producer.get(src)
        while p is not None and p.name in analysis.output_tail:
            tail.insert(0, p)
            src = p.input[0]
            p = idx.producer.get(src)
        if not tail:
            steps = idx.fresh(out + "_steps")
            for k, o in enumerate(p.output):
                if o == out:
                    p.output[k] = steps
            idx.rename_uses(out, steps)
            src = steps
        base = out
        shp, rest, newshape = idx.fresh(base + "_shape"), idx.fresh(base + "_dims"), idx.fresh(base + "_tshape")
        per_t = idx.fresh(base + "_per_timestep")
        mean = out if not tail else idx.fresh(src + "_mean")
        nodes = [
            helper.make_node("Shape", [src], [shp], name=idx.fresh(base + "_shape_of")),
            helper.make_node("Slice", [shp, i64(base + "_one", [1]), i64(base + "_end", [2**62])], [rest],
                             name=idx.fresh(base + "_dims_of")),
            helper.make_node("Concat", [i64(base + "_T_minus1", [T, -1]), rest], [newshape], axis=0,
                             name=idx.fresh(base + "_tshape_of")),
            helper.make_node("Reshape", [src, newshape], [per_t], name=idx.fresh(base + "_unfold_time")),
        ]
        nodes += make_reduce("ReduceMean", per_t, mean, [0], keepdims=0, opset=opset,
                             name=idx.fresh(base + "_mean_over_T"), index=idx)
        prev = mean
        for k, tnode in enumerate(tail):
            new = onnx.NodeProto()
            new.CopyFrom(tnode)
            new.input[0] = prev
            if k < len(tail) - 1:
                new.output[0] = idx.fresh(tnode.output[0] + "_after_mean")
            prev = new.output[0]
            nodes.append(new)
        idx.remove_nodes(tail)
        g.node.extend(nodes)
        idx.rebuild()
        outputs.append(out)
        if per_timestep:
            elem, dims = info.get(src, (TensorProto.FLOAT, None))
            dims = info.get(out, (0, None))[1] if dims is None else dims
            shape = None if dims is None else [T] + [d if d is not None else None for d in dims]
            g.output.append(helper.make_tensor_value_info(per_t, elem or TensorProto.FLOAT, shape))
            per_t_outputs.append(per_t)
    return outputs, per_t_outputs


def build_snn(canonical: Canonical, analysis: Analysis, params: dict, *, T: int,
              per_timestep_output: bool = False, allow_inexact: bool = False) -> SNN:
    """The SNN graph of ``canonical`` (see the module docstring).

    params: neuron name -> ``NeuronParams`` (every neuron must have one).
    """
    if analysis.shape_issues:
        raise UnsupportedModelError([(i.node, i.op_type, i.reason) for i in analysis.shape_issues],
                                    hint="rewrite the model to compute shapes from the tensor itself")
    if analysis.inexact and not allow_inexact:
        raise UnsupportedModelError([(i.node, i.op_type, i.reason) for i in analysis.inexact])
    if not analysis.neurons:
        raise GraphError("the model has no ReLU (Relu or Clip(min=0)) to convert into spiking neurons")
    missing = [n.name for n in analysis.neurons if n.name not in params]
    if missing:
        raise GraphError(f"no thresholds for neuron(s) {missing}")
    model = onnx.ModelProto()
    model.CopyFrom(canonical.model)
    g = model.graph
    del g.value_info[:]
    idx = GraphIndex(g)
    opset = canonical.opset

    # biases of the layers the bias calibration corrects
    biases: dict[str, tuple[str, int, float] | None] = {}
    seen_layers: set[str] = set()
    for n in analysis.neurons:
        if n.bias is None or n.bias.node in seen_layers:
            biases[n.name] = None
            continue
        seen_layers.add(n.bias.node)
        biases[n.name] = _private_bias(idx, n)
        idx.rebuild()

    # neurons -> BurstIF
    spiking = []
    for n in analysis.neurons:
        p = params[n.name]
        vth = np.asarray(p.vth, np.float32).reshape(-1)
        want = n.channels if n.per_channel else 1
        if vth.size != want:
            raise GraphError(f"neuron {n.name!r}: {vth.size} thresholds given, it needs {want}")
        vname = idx.set_const(idx.fresh(f"{n.name}_vth"), vth)
        spikes = idx.fresh(f"{n.output}_spikes")
        node = idx.nodes_by_name[n.name]
        node.CopyFrom(ops.make_node(n.input, vname, n.output, T=T, psi=p.psi, tau=p.tau, spikes=spikes, name=n.name))
        b = biases[n.name]
        spiking.append(SpikingNeuron(n.name, n.input, n.output, spikes, vname, int(p.psi), float(p.tau),
                                     b[0] if b else None, b[1] if b else 1, b[2] if b else 1.0))
    idx.rebuild()

    # time expansion right before the first neurons
    info = canonical.info
    for t in analysis.expansion:
        dims = info.get(t, (0, None))[1]
        if dims is None:
            raise GraphError(f"the rank of tensor {t!r} (where time starts) is unknown; "
                             "cannot build the Tile (export the model with static ranks)")
        reps = idx.set_const(idx.fresh(f"time_repeats_{len(dims)}d"), np.array([T] + [1] * (len(dims) - 1), np.int64))
        tiled = idx.fresh(f"{t}_T")
        readers = [c for c in idx.consumers.get(t, []) if c.name in analysis.marks]
        for c in readers:
            for k, i in enumerate(c.input):
                if i == t:
                    c.input[k] = tiled
        g.node.append(helper.make_node("Tile", [t, reps], [tiled], name=idx.fresh(f"{t}_time_tile")))
    idx.rebuild()

    outputs, per_t = _output_means(g, idx, analysis, T, opset, per_timestep_output, info)
    topological_sort(g)
    GraphIndex(g).prune()  # e.g. the min/max constants of a Clip that became a BurstIF
    ops.attach_function(model)
    return SNN(model=model, T=int(T), neurons=spiking, outputs=outputs, per_timestep_outputs=per_t)
