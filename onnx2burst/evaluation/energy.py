"""Spike counts, synaptic operations and the energy estimate (docs/method.md §7).

- :func:`energy_model` reads an SNN graph: for every BurstIF layer, how many synapses one of
  its spikes drives in the layers that receive it (its *fanout*), and the MACs of the analog
  layers that run before the first neuron.
- :func:`count_macs` / :func:`ann_macs`: MACs of every Conv/Gemm/MatMul, from onnx shape
  inference (batch 1).
- :func:`with_spike_outputs`: a copy of the SNN with every BurstIF ``spikes`` output exposed
  as a graph output, so that one run yields the logits and the per-layer spike counts.
- :meth:`EnergyModel.estimate`: ``E_SNN = SynOps*E_AC + MACs_analog*E_MAC`` against
  ``E_ANN = MACs*E_MAC``; energies in pJ per sample.

Fanout of a spike, per receiving layer (several receivers add up):

- Conv: ``C_out/groups * prod(kernel) / prod(strides)`` (each input neuron sits in that many
  output windows on average);
- Gemm / MatMul: the number of output features;
- another BurstIF reached directly (an identity shortcut into a residual sum): 1;
- pass-through ops are followed to the next receivers: Flatten, Reshape, Add, Concat, ...;
  AveragePool/MaxPool multiply by ``prod(kernel)/prod(strides)`` (1 for the usual 2x2/2),
  GlobalAveragePool by 1 (it folds into the next linear layer); Resize/Upsample by the output
  elements per input element (4 for a 2x upsampling: each spike reaches four positions);
- lateral-inhibition pooling (``--maxpool lateral``): the spikes reach the next layer through
  the ``Gather`` of the winners, scaled like the MaxPool that picks them; the running sums that
  pick the winners are indices, not spikes, and drive no synapse.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph.index import attr as _attr
from ..snn import is_neuron, read_snn

__all__ = [
    "E_AC_PJ", "E_MAC_PJ", "SpikingLayer", "EnergyModel", "EnergyEstimate", "LayerEnergy",
    "energy_model", "count_macs", "ann_macs", "with_spike_outputs",
]

E_AC_PJ = 0.9   # one accumulate, 45 nm (Horowitz, ISSCC 2014)
E_MAC_PJ = 4.6  # one multiply-accumulate, 45 nm

LINEAR_OPS = ("Conv", "Gemm", "MatMul")
# op -> how it passes spikes on; "pool" scales by prod(kernel)/prod(strides)
PASS_THROUGH = {
    "Flatten": 1, "Reshape": 1, "Transpose": 1, "Squeeze": 1, "Unsqueeze": 1, "Identity": 1,
    "Pad": 1, "Concat": 1, "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Cast": 1, "Dropout": 1,
    "Split": 1, "Slice": 1, "GlobalAveragePool": 1, "GlobalMaxPool": 1,
    "AveragePool": "pool", "MaxPool": "pool", "CumSum": 1, "GatherElements": 1,
}
INDEX_OPS = ("Gather", "GatherElements")  # input 1 holds indices: no spikes pass through it
# ops that consume spikes without synapses (the output mean over T, shape bookkeeping)
SINKS = ("ReduceMean", "Shape", "Size", "Softmax", "LogSoftmax", "ArgMax")


@dataclass(frozen=True)
class SpikingLayer:
    """One BurstIF layer: its names, attributes and the synapses a spike of it drives."""

    name: str
    y: str
    spikes: str
    T: int
    psi: int
    tau: float
    fanout: float
    receivers: tuple[tuple[str, float], ...]  # (receiving node, synapses per spike via it)


@dataclass(frozen=True)
class LayerEnergy:
    name: str
    spikes: float          # per sample, over all T steps
    fanout: float
    synops: float          # per sample


@dataclass(frozen=True)
class EnergyEstimate:
    """Energy per sample (pJ) of the SNN against the ANN, §7."""

    layers: tuple[LayerEnergy, ...]
    spikes: float
    synops: float
    analog_macs: float
    ann_macs: float | None
    e_ac_pj: float
    e_mac_pj: float
    e_snn_pj: float
    e_ann_pj: float | None

    @property
    def ratio(self) -> float | None:
        """E_SNN / E_ANN (None without the ANN's MACs)."""
        return None if not self.e_ann_pj else self.e_snn_pj / self.e_ann_pj

    def to_dict(self) -> dict:
        return {
            "layers": [vars(l).copy() for l in self.layers], "spikes": self.spikes,
            "synops": self.synops, "analog_macs": self.analog_macs, "ann_macs": self.ann_macs,
            "e_ac_pj": self.e_ac_pj, "e_mac_pj": self.e_mac_pj, "e_snn_pj": self.e_snn_pj,
            "e_ann_pj": self.e_ann_pj, "ratio": self.ratio,
        }


@dataclass(frozen=True)
class EnergyModel:
    """What §7 needs from an SNN graph; spike counts are supplied per run."""

    layers: tuple[SpikingLayer, ...]
    analog_macs: float          # per sample: linear layers that see no spikes
    notes: tuple[str, ...] = field(default=())

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    def synops(self, spikes: Mapping[str, float] | Sequence[float]) -> np.ndarray:
        """Per-layer SynOps from per-layer spike counts (by name, or a sequence in layer order)."""
        s = self._vector(spikes)
        return s * np.array([l.fanout for l in self.layers], dtype=np.float64)

    def _vector(self, spikes) -> np.ndarray:
        if isinstance(spikes, Mapping):
            missing = [n for n in self.names if n not in spikes]
            if missing:
                raise KeyError(f"no spike count for layer(s) {missing}")
            return np.array([float(spikes[n]) for n in self.names], dtype=np.float64)
        s = np.asarray(spikes, dtype=np.float64).reshape(-1)
        if s.size != len(self.layers):
            raise ValueError(f"{s.size} spike counts for {len(self.layers)} layers")
        return s

    def estimate(self, spikes: Mapping[str, float] | Sequence[float], *, ann_macs: float | None = None,
                 e_ac_pj: float = E_AC_PJ, e_mac_pj: float = E_MAC_PJ) -> EnergyEstimate:
        """E_SNN from spikes per sample per layer; E_ANN from the ANN's MACs when given."""
        s = self._vector(spikes)
        syn = self.synops(s)
        layers = tuple(LayerEnergy(l.name, float(si), l.fanout, float(yi))
                       for l, si, yi in zip(self.layers, s, syn))
        total_syn = float(syn.sum())
        e_snn = total_syn * e_ac_pj + self.analog_macs * e_mac_pj
        return EnergyEstimate(
            layers=layers, spikes=float(s.sum()), synops=total_syn, analog_macs=self.analog_macs,
            ann_macs=None if ann_macs is None else float(ann_macs), e_ac_pj=e_ac_pj,
            e_mac_pj=e_mac_pj, e_snn_pj=e_snn,
            e_ann_pj=None if ann_macs is None else float(ann_macs) * e_mac_pj)


# ----------------------------------------------------------------------------- graph walking
class _Graph:
    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.init = {t.name: tuple(t.dims) for t in g.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self._shapes: dict[str, tuple] | None = None
        self._model = model

    def shape(self, name: str) -> tuple | None:
        if name in self.init:
            return self.init[name]
        if self._shapes is None:
            self._shapes = _infer_shapes(self._model)
        return self._shapes.get(name)


def _copies(g: _Graph, node: onnx.NodeProto) -> float | None:
    """Output elements per input element of a Resize/Upsample (4 for 2x upsampling), from the
    inferred shapes (None when unknown)."""
    a, b = g.shape(node.input[0]), g.shape(node.output[0])
    if not a or not b or len(a) != len(b) or not all(isinstance(d, int) and d > 0 for d in (*a[1:], *b[1:])):
        return None
    return math.prod(b[1:]) / math.prod(a[1:])


def _pool_factor(node: onnx.NodeProto) -> float:
    k = list(_attr(node, "kernel_shape", []))
    s = list(_attr(node, "strides", [])) or [1] * len(k)
    return math.prod(k) / math.prod(s) if k else 1.0


def _fanout_of(g: _Graph, node: onnx.NodeProto, tensor: str, notes: list[str]) -> float | None:
    """Synapses per input element of ``tensor`` in linear ``node``; None if not computable."""
    op = node.op_type
    if op == "Conv":
        if node.input[0] != tensor:
            notes.append(f"{node.name or node.output[0]}: spikes feed the Conv weights; not counted")
            return 0.0
        w = g.shape(node.input[1])
        if not w or len(w) < 3:
            return None
        groups = int(_attr(node, "group", 1))
        k = w[2:]
        strides = list(_attr(node, "strides", [])) or [1] * len(k)
        return w[0] / groups * math.prod(k) / math.prod(strides)
    if op == "Gemm":
        if node.input[0] != tensor:
            notes.append(f"{node.name or node.output[0]}: spikes feed Gemm's B; not counted")
            return 0.0
        w = g.shape(node.input[1])
        if not w or len(w) != 2:
            return None
        return float(w[0] if _attr(node, "transB", 0) else w[1])
    if op == "MatMul":
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        w = g.shape(other)
        if not w:
            return None
        return float(w[-1] if node.input[0] == tensor else w[-2])
    raise AssertionError(op)


def _receivers(g: _Graph, tensor: str, factor: float, notes: list[str], depth: int = 0):
    """(receiving node name, synapses per spike) reached from ``tensor``."""
    if depth > 64:
        raise ValueError(f"pass-through chain from {tensor!r} is too long")
    out = []
    for node in g.consumers.get(tensor, []):
        op = node.op_type
        label = node.name or node.output[0]
        if is_neuron(node):
            out.append((label, factor * 1.0))          # identity synapse into a membrane
        elif node.domain in ("", "ai.onnx") and op in LINEAR_OPS:
            f = _fanout_of(g, node, tensor, notes)
            if f is None:
                notes.append(f"{label}: weight shape unknown; its synapses are not counted")
                f = 0.0
            out.append((label, factor * f))
        elif op in SINKS:
            continue
        elif op in INDEX_OPS and tensor not in node.input[:1]:
            continue  # the winners of a lateral pool, not spikes
        elif op == "Gather":  # lateral pooling: the data goes on as through the MaxPool that picks it
            picker = g.producer.get(node.input[1]) if len(node.input) > 1 else None
            f = _pool_factor(picker) if picker is not None and picker.op_type == "MaxPool" else 1.0
            out.extend(_receivers(g, node.output[0], factor * f, notes, depth + 1))
        elif op in ("Resize", "Upsample") and _copies(g, node) is not None:
            for o in node.output[:1]:  # each input element reaches as many outputs as it is copied to
                out.extend(_receivers(g, o, factor * _copies(g, node), notes, depth + 1))
        else:
            how = PASS_THROUGH.get(op)
            if how is None:
                notes.append(f"{label}: {op} treated as pass-through for SynOps")
                how = 1
            f = _pool_factor(node) if how == "pool" else float(how)
            for o in node.output:
                if o:
                    out.extend(_receivers(g, o, factor * f, notes, depth + 1))
    return out


def energy_model(snn: onnx.ModelProto) -> EnergyModel:
    """Fanout of every BurstIF layer and the analog MACs of an SNN graph (§7)."""
    g = _Graph(snn)
    notes: list[str] = []
    layers = []
    for n in read_snn(snn, require=False).neurons:
        rec = tuple(_receivers(g, n.y, 1.0, notes))
        layers.append(SpikingLayer(name=n.name, y=n.y, spikes=n.spikes, T=n.T, psi=n.psi, tau=n.tau,
                                   fanout=float(sum(f for _, f in rec)), receivers=rec))
    if not layers:
        raise ValueError("the model has no BurstIF layer: not an onnx2burst SNN")
    macs = count_macs(snn)
    spiking = _downstream(snn, {l.y for l in layers})
    analog = float(sum(m for name, m in macs.items() if name not in spiking))
    return EnergyModel(tuple(layers), analog, tuple(dict.fromkeys(notes)))


def _downstream(model: onnx.ModelProto, sources: set[str]) -> set[str]:
    """Labels of the nodes that (transitively) read one of ``sources``."""
    reached = set(sources)
    labels = set()
    for n in model.graph.node:  # graph order is topological
        if any(i in reached for i in n.input):
            labels.add(n.name or n.output[0])
            reached.update(o for o in n.output if o)
    return labels


# ----------------------------------------------------------------------------- MACs
def _batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    inits = {t.name for t in m.graph.initializer}
    for i in m.graph.input:
        if i.name in inits:
            continue
        dims = i.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = 1
    del m.graph.value_info[:]
    return m


def _infer_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Static shapes of every tensor onnx can infer, with batch 1; unknown dims as None."""
    try:
        m = onnx.shape_inference.infer_shapes(_batch_one(model), data_prop=True)
    except Exception:  # noqa: BLE001 - partial shapes are still useful
        m = _batch_one(model)
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    for t in m.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    return shapes


def _probe_shapes(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, tuple]:
    """Shapes by running the model once on zeros with batch 1 (when inference gave up)."""
    from ..ops import make_session

    m = _batch_one(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
    feeds = {}
    inits = {t.name for t in m.graph.initializer}
    for i in m.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in i.type.tensor_type.shape.dim]
        dt = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feeds[i.name] = np.zeros(dims, dt)
    sess = make_session(m, threads=1, layout="plain")
    names = list(names)
    outs = sess.run(names, feeds)
    return {n: tuple(o.shape) for n, o in zip(names, outs)}


def count_macs(model: onnx.ModelProto) -> dict[str, int]:
    """MACs of every Conv/Gemm/MatMul for batch 1 (the whole folded batch after a time
    expansion, i.e. T samples' worth), keyed by node label (name, or first output)."""
    shapes = _infer_shapes(model)
    lin = [n for n in model.graph.node if n.op_type in LINEAR_OPS and n.domain in ("", "ai.onnx")]

    def known(name):
        s = shapes.get(name)
        return s is not None and all(d is not None for d in s)

    missing = {t for n in lin for t in (n.input[0], n.input[1], n.output[0]) if not known(t)}
    if missing:
        shapes.update(_probe_shapes(model, sorted(missing)))
    macs = {}
    for n in lin:
        a, w, y = shapes[n.input[0]], shapes[n.input[1]], shapes[n.output[0]]
        if n.op_type == "Conv":
            macs[n.name or n.output[0]] = int(math.prod(y) * math.prod(w[1:]))
        elif n.op_type == "Gemm":
            k = a[0] if _attr(n, "transA", 0) else a[1]
            macs[n.name or n.output[0]] = int(math.prod(y) * k)
        else:  # MatMul
            macs[n.name or n.output[0]] = int(math.prod(y) * a[-1])
    return macs


def ann_macs(ann: onnx.ModelProto) -> int:
    """Total MACs of an ANN per sample (§7's E_ANN = MACs * E_MAC)."""
    return int(sum(count_macs(ann).values()))


# ----------------------------------------------------------------------------- spikes
def with_spike_outputs(snn: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``snn`` whose graph outputs include every BurstIF ``spikes`` tensor.

    Returns the copy and the spikes output names in layer order. A node whose spikes output
    was left out gets one (``<Y>_spikes``).
    """
    m = copy.deepcopy(snn)
    have = {o.name for o in m.graph.output}
    names = []
    for n in (node for node in m.graph.node if is_neuron(node)):
        if len(n.output) < 2 or not n.output[1]:
            while len(n.output) < 2:
                n.output.append("")
            n.output[1] = f"{n.output[0]}_spikes"
        s = n.output[1]
        names.append(s)
        if s not in have:
            m.graph.output.append(helper.make_tensor_value_info(s, TensorProto.FLOAT, None))
            have.add(s)
    return m, names
