"""Stage 3 of a conversion: the canonical ANN becomes the SNN graph (§1).

``build_snn(canonical, analysis, params, T=...)`` applies the analysis in one place:

- every neuron becomes ``BurstIF(x, <neuron>_vth)`` with attributes T/psi/tau, its
  output keeping the Relu's output name, and a spike-count output ``<output>_spikes``
  ``[N]`` (unused by the graph; expose it to count spikes); the standard-op fallback
  function is attached;
- time starts right before the first neuron: each static tensor read by the spiking part
  goes through ``Tile`` (T copies along axis 0, time-major), so everything before the
  first neuron (the first layer) is computed once;
- with ``--maxpool lateral``, every MaxPool in the spiking part pools by lateral inhibition;
- every spiking graph output ``[T*N, K]`` becomes ``[T, N, K]`` then its mean over T,
  under the ANN's output name; a trailing Softmax/LogSoftmax/ArgMax is moved after the
  mean; ``per_timestep_output`` adds ``<name>_per_timestep`` ``[T, N, K]`` (before any
  trailing Softmax);
- the analog tail (non-linear ops after the last neuron, e.g. a detector's decoding) reads the
  mean over T of each spiking tensor it reads and runs once, per sample; its graph outputs'
  ``<name>_per_timestep`` ``[T, N, ...]`` hold, in row t, the tail run on the mean of steps 0..t;
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
from ..graph.index import attr as _attr
from ..graph.index import attrs as all_attrs

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
    alpha: tuple | None = None   # signed neuron: negative slope (1 or C values); None: ReLU


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


def _per_sample_shape(shape: str, T: int, idx: GraphIndex, nodes: list, i64) -> str:
    """``shape`` (of a ``[T*N, ...]`` tensor) with its first entry divided by T: ``[N, ...]``."""
    first, rest, n, out = (idx.fresh(shape + s) for s in ("_batch", "_rest", "_per_sample", "_after_mean"))
    nodes += [
        helper.make_node("Slice", [shape, i64(shape + "_zero", [0]), i64(shape + "_one", [1])], [first],
                         name=idx.fresh(shape + "_batch_of")),
        helper.make_node("Slice", [shape, i64(shape + "_one_", [1]), i64(shape + "_end", [2**62])], [rest],
                         name=idx.fresh(shape + "_rest_of")),
        helper.make_node("Div", [first, i64(shape + "_T", [T])], [n], name=idx.fresh(shape + "_over_T")),
        helper.make_node("Concat", [n, rest], [out], axis=0, name=idx.fresh(shape + "_per_sample_of")),
    ]
    return out


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
            for j in range(1, len(new.input)):  # a shape read off a time-folded tensor: per sample
                p = idx.producer.get(new.input[j])
                if p is not None and p.op_type == "Shape" and not p.attribute and p.input[0] in analysis.temporal:
                    new.input[j] = _per_sample_shape(new.input[j], T, idx, nodes, i64)
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


def _unfold(src: str, T: int, idx: GraphIndex, nodes: list, i64, base: str) -> str:
    """``src`` ``[T*N, ...]`` reshaped to ``[T, N, ...]``."""
    shp, rest, newshape, out = (idx.fresh(base + s) for s in ("_shape", "_dims", "_tshape", "_by_step"))
    nodes += [
        helper.make_node("Shape", [src], [shp], name=idx.fresh(base + "_shape_of")),
        helper.make_node("Slice", [shp, i64(base + "_one", [1]), i64(base + "_end", [2**62])], [rest],
                         name=idx.fresh(base + "_dims_of")),
        helper.make_node("Concat", [i64(base + "_T_minus1", [T, -1]), rest], [newshape], axis=0,
                         name=idx.fresh(base + "_tshape_of")),
        helper.make_node("Reshape", [src, newshape], [out], name=idx.fresh(base + "_unfold_time")),
    ]
    return out


def _analog_tail(g, idx: GraphIndex, analysis: Analysis, T: int, opset: int, per_timestep: bool):
    """The analog tail (§1) on the mean over T of the spiking tensors it reads; with
    ``per_timestep`` also a copy on the running means (row t: the mean of steps 0..t), whose graph
    outputs become ``<name>_per_timestep`` ``[T, N, ...]``. Returns (tail outputs, per-timestep outputs)."""
    if not analysis.analog_tail:
        return [], []
    i64 = lambda name, vals: idx.set_const(idx.fresh(name), np.array(vals, np.int64))  # noqa: E731
    tail = [idx.nodes_by_name[name] for name in analysis.analog_tail]
    made = {o for n in tail for o in n.output if o}
    graph_outs = [o.name for o in g.output if o.name in made]
    nodes: list = []
    copies = []
    if per_timestep:
        run = {}
        steps = idx.set_const(idx.fresh("running_mean_steps"), np.arange(1, T + 1, dtype=np.float32).reshape(T, 1))
        for b in analysis.tail_inputs:
            flat, cs, cm, shp = (idx.fresh(b + s) for s in ("_steps_flat", "_running_sum", "_running_mean_flat",
                                                             "_shape_for_running"))
            run[b] = idx.fresh(b + "_running_mean")
            nodes += [
                helper.make_node("Reshape", [b, i64(b + "_T_flat", [T, -1])], [flat], name=idx.fresh(b + "_by_step_flat")),
                helper.make_node("CumSum", [flat, idx.set_const(idx.fresh(b + "_axis0"), np.array(0, np.int64))], [cs],
                                 name=idx.fresh(b + "_running_sum_of")),
                helper.make_node("Div", [cs, steps], [cm], name=idx.fresh(b + "_running_mean_of")),
                helper.make_node("Shape", [b], [shp], name=idx.fresh(b + "_shape_of_running")),
                helper.make_node("Reshape", [cm, shp], [run[b]], name=idx.fresh(b + "_running_mean_fold")),
            ]
        renamed = {o: idx.fresh(o + "_running") for o in made}
        for n in tail:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.name = idx.fresh(n.name + "_running")
            for j, i in enumerate(c.input):
                c.input[j] = run.get(i, renamed.get(i, i))
            for j, o in enumerate(c.output):
                if o:
                    c.output[j] = renamed[o]
            copies.append(c)
    means = {}
    for b in analysis.tail_inputs:
        per_t = _unfold(b, T, idx, nodes, i64, b + "_tail")
        means[b] = idx.fresh(b + "_mean")
        nodes += make_reduce("ReduceMean", per_t, means[b], [0], keepdims=0, opset=opset,
                             name=idx.fresh(b + "_mean_over_T"), index=idx)
    for n in tail:
        for j, i in enumerate(n.input):
            p = idx.producer.get(i)
            if i in means:
                n.input[j] = means[i]
            elif p is not None and p.op_type == "Shape" and not p.attribute and p.input[0] in analysis.temporal:
                n.input[j] = _per_sample_shape(i, T, idx, nodes, i64)  # a shape of a time-folded tensor
    per_t_outputs = []
    if per_timestep:
        nodes += copies
        for o in graph_outs:
            name = idx.fresh(o + "_per_timestep")
            src = _unfold(renamed[o], T, idx, nodes, i64, o + "_running")
            nodes.append(helper.make_node("Identity", [src], [name], name=idx.fresh(o + "_per_timestep_of")))
            ov = next(v for v in g.output if v.name == o).type.tensor_type
            dims = [d.dim_value or None for d in ov.shape.dim] if ov.HasField("shape") else None
            g.output.append(helper.make_tensor_value_info(name, ov.elem_type or TensorProto.FLOAT,
                                                          None if dims is None else [T, None] + dims[1:]))
            per_t_outputs.append(name)
    g.node.extend(nodes)
    idx.rebuild()
    return graph_outs, per_t_outputs


#: doc_string prefix of every node of a lateral pool (then the MaxPool's name), for exporters
LATERAL_TAG = "onnx2burst lateral pooling: "


def _lateral_pool(g, idx: GraphIndex, node: onnx.NodeProto, T: int) -> None:
    """Lateral-inhibition max pooling (§3), in standard ops, in place of ``node``.

    Per timestep, each window passes the value of its input with the largest sum so far
    (steps 0..t, time-major over the batch axis): ``Y[t] = X[t][argmax_window CumSum(X)[t]]``.
    Once the sums separate, the winner is the input with the highest rate, so the mean
    output converges to the max of the mean inputs -- unlike MaxPool per timestep, whose mean
    is the mean of the maxima (too high by the spread of the spike trains). Ties go to the
    first input of the window, as in MaxPool's Indices.

    MaxPool: ``Indices`` of MaxPool over the running sums, then ``Gather`` from the flat
    input. GlobalMaxPool: ``ArgMax`` over the flattened spatial axes, ``GatherElements``.
    """
    x, y = node.input[0], node.output[0]
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        raise GraphError(f"MaxPool {node.name!r}: its Indices output is used; lateral pooling cannot provide it")
    i64 = lambda base, vals: idx.set_const(idx.fresh(f"{node.name}_{base}"), np.array(vals, np.int64))  # noqa: E731
    f = lambda base: idx.fresh(f"{node.name}_{base}")  # noqa: E731
    shape, by_t, run, sums = f("shape"), f("by_time"), f("running"), f("sums")
    nodes = [
        helper.make_node("Shape", [x], [shape], name=f("shape_of")),
        helper.make_node("Reshape", [x, i64("T_rest", [T, -1])], [by_t], name=f("unfold_time")),
        helper.make_node("CumSum", [by_t, idx.set_const(idx.fresh(f"{node.name}_axis0"), np.array(0, np.int64))],
                         [run], name=f("sum_so_far")),
        helper.make_node("Reshape", [run, shape], [sums], name=f("fold_time")),
    ]
    if node.op_type == "MaxPool":
        attrs = {k: v for k, v in all_attrs(node).items() if k != "storage_order"}
        win, flat = f("winners"), f("flat")
        nodes += [
            helper.make_node("MaxPool", [sums], [f("max_sums"), win], name=f("winner"), **attrs),
            helper.make_node("Reshape", [x, i64("flat_shape", [-1])], [flat], name=f("flatten")),
            helper.make_node("Gather", [flat, win], [y], name=node.name, axis=0),
        ]
    else:  # GlobalMaxPool: [TN, C, ...] -> [TN, C, 1, ..., 1]
        s3, x3, win, picked = f("sums_3d"), f("x_3d"), f("winners"), f("picked")
        lead, spatial, ones, out_shape = f("lead"), f("spatial"), f("ones"), f("out_shape")
        nodes += [
            helper.make_node("Reshape", [sums, i64("TNC_rest", [0, 0, -1])], [s3], name=f("flatten_sums")),
            helper.make_node("Reshape", [x, i64("TNC_rest_x", [0, 0, -1])], [x3], name=f("flatten_x")),
            helper.make_node("ArgMax", [s3], [win], name=f("winner"), axis=2, keepdims=1),
            helper.make_node("GatherElements", [x3, win], [picked], name=f("pick"), axis=2),
            helper.make_node("Slice", [shape, i64("zero", [0]), i64("two", [2])], [lead], name=f("lead_dims")),
            helper.make_node("Slice", [shape, i64("two_", [2]), i64("end", [2**62])], [spatial], name=f("spatial_dims")),
            helper.make_node("Div", [spatial, spatial], [ones], name=f("ones_of")),  # one 1 per spatial axis
            helper.make_node("Concat", [lead, ones], [out_shape], name=f("out_shape_of"), axis=0),
            helper.make_node("Reshape", [picked, out_shape], [y], name=node.name),
        ]
    for n in nodes:
        n.doc_string = LATERAL_TAG + node.name
    idx.remove_nodes([node])
    g.node.extend(nodes)


def build_snn(canonical: Canonical, analysis: Analysis, params: dict, *, T: int,
              per_timestep_output: bool = False, allow_inexact: bool = False) -> SNN:
    """The SNN graph of ``canonical`` (see the module docstring).

    params: neuron name -> ``NeuronParams`` (every neuron must have one). With
    ``analysis.maxpool == "lateral"`` every MaxPool/GlobalMaxPool in the spiking part becomes
    lateral-inhibition pooling (:func:`_lateral_pool`).
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
        node.CopyFrom(ops.make_node(n.input, vname, n.output, T=T, psi=p.psi, tau=p.tau, spikes=spikes, name=n.name,
                                    alpha=n.alpha))
        b = biases[n.name]
        signed = n.alpha is not None and any(a != 0 for a in n.alpha)
        spiking.append(SpikingNeuron(n.name, n.input, n.output, spikes, vname, int(p.psi), float(p.tau),
                                     b[0] if b else None, b[1] if b else 1, b[2] if b else 1.0,
                                     tuple(n.alpha) if signed else None))
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

    if analysis.maxpool == "lateral":
        for name in analysis.maxpools:
            _lateral_pool(g, idx, idx.nodes_by_name[name], T)
        idx.rebuild()

    tail_outputs, tail_per_t = _analog_tail(g, idx, analysis, T, opset, per_timestep_output)
    outputs, per_t = _output_means(g, idx, analysis, T, opset, per_timestep_output, info)
    outputs, per_t = outputs + tail_outputs, per_t + tail_per_t
    topological_sort(g)
    GraphIndex(g).prune()  # e.g. the min/max constants of a Clip that became a BurstIF
    ops.attach_function(model)
    return SNN(model=model, T=int(T), neurons=spiking, outputs=outputs, per_timestep_outputs=per_t)
