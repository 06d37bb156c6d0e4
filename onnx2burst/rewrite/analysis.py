"""Stage 2 of a conversion: what the canonical ANN becomes, decided before any heavy work.

``analyze(canonical)`` finds the neurons (in topological order), where time starts (the
tensors that get the Tile), the layers that stay analog, MaxPools, the trailing ops moved
after the mean, and every op between neurons that cannot be converted exactly (§3).
The *analog tail* is every node after the last neuron that is not linear (a detector's
Sigmoid/Exp decoding, a product of two spiking tensors, an unknown op) and everything that
reads it: it runs once, on the mean over T of the spiking tensors it reads (``tail_inputs``).
It also finds, for each neuron, the layer whose bias the bias calibration corrects (§5):
the Conv/Gemm producing its input, or for a residual sum the one on the main branch (the
operand with the longest path of layers from the input, i.e. not the shortcut).
"""
from __future__ import annotations

from dataclasses import dataclass, field


from ..graph import Canonical, GraphIndex
from ..graph.index import attr as _attr
from ..graph.index import subgraph_inputs
from .registry import Kind, Mark, classify

__all__ = ["BiasTarget", "Neuron", "OpIssue", "Analysis", "analyze"]

_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_NEURON_OPS = ("Relu", "Clip", "LeakyRelu", "PRelu")
_NO_DATA = ("Shape", "Size")
_OUTPUT_TAIL_OPS = ("Softmax", "LogSoftmax", "ArgMax")
# shape-only ops that may follow a head at the output (an opset upgrade wraps a 4-D Softmax in
# Flatten ... Reshape): they move after the mean with it
_TAIL_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
# ops between a layer and its neuron through which a per-channel bias shift passes unchanged
_PER_CHANNEL_PASS = ("AveragePool", "GlobalAveragePool", "Identity")


@dataclass(frozen=True)
class BiasTarget:
    """Where a neuron's bias correction goes: ``node`` (Conv/Gemm, or the Add of a
    MatMul+bias), its bias initializer (None: none yet, the rewriter creates it), the
    bias axis of the layer output, and ``scale`` (the Gemm's beta: delta is divided by it)."""

    node: str
    op_type: str
    bias: str | None
    axis: int = 1
    scale: float = 1.0


@dataclass(frozen=True)
class Neuron:
    """A Relu/Clip that becomes a BurstIF. ``name`` is its node name, the key of per-layer
    settings; ``channels`` the size of axis 1 of its input (None: unknown, one threshold)."""

    name: str
    op_type: str
    input: str
    output: str
    rank: int | None
    channels: int | None
    per_channel: bool
    clip_max: float | None
    layer: str | None
    bias: BiasTarget | None
    alpha: tuple | None = None      # signed neuron (LeakyRelu/PRelu): negative slope, 1 or C values


@dataclass(frozen=True)
class OpIssue:
    node: str
    op_type: str
    reason: str


@dataclass
class Analysis:
    neurons: list[Neuron]
    analog_layers: list[tuple[str, str]]            # (node name, op type)
    inexact: list[OpIssue]
    maxpools: list[str]
    output_tail: list[str]                          # nodes moved after the mean
    expansion: list[str]                            # static tensors that get the Tile
    temporal: set[str]                              # tensors that carry spikes
    marks: dict[str, Mark]                          # node name -> mark (spiking part only)
    opset: int
    notes: list[str] = field(default_factory=list)
    shape_issues: list[OpIssue] = field(default_factory=list)
    unsupported: list[OpIssue] = field(default_factory=list)   # never converted (If/Loop/Scan on spikes)
    maxpool: str = "lateral"                        # how the SNN pools (§3): "lateral" or "spikes"
    analog_tail: list[str] = field(default_factory=list)   # nodes after the last neuron run on the mean over T
    tail_inputs: list[str] = field(default_factory=list)   # spiking tensors the analog tail reads (get a mean)

    def neuron(self, name: str) -> Neuron:
        for n in self.neurons:
            if n.name == name:
                return n
        raise KeyError(f"no neuron named {name!r}; neurons: {[n.name for n in self.neurons]}")

    @property
    def neuron_names(self) -> list[str]:
        return [n.name for n in self.neurons]


class _Ctx:
    def __init__(self, idx: GraphIndex, temporal: set[str], feeds_neuron: set[str] | None = None):
        self.idx, self._temporal, self._feeds = idx, temporal, feeds_neuron

    def after_last_neuron(self, node):
        return self._feeds is not None and node.name not in self._feeds

    def const(self, name):
        return self.idx.const(name)

    def temporal(self, name):
        return name in self._temporal

    def only_feeds_outputs(self, node):
        outs = set(self.idx.graph_outputs)
        seen, todo = set(), list(node.output)
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for c in self.idx.consumers.get(t, []):
                if c.op_type not in _OUTPUT_TAIL_OPS + _TAIL_SHAPE_OPS:
                    return False
                todo.extend(c.output)
        return any(t in outs for t in seen)


def _depths(idx: GraphIndex) -> dict[str, int]:
    """Longest path of layers (Conv/Gemm/MatMul) from the inputs, per tensor."""
    depth: dict[str, int] = {}
    for node in idx.graph.node:
        d = max((depth.get(i, 0) for i in node.input if i), default=0)
        d += node.op_type in _LAYERS
        for o in node.output:
            depth[o] = d
    return depth


def _bias_target(idx: GraphIndex, tensor: str, depth: dict[str, int]) -> BiasTarget | None:
    for _ in range(64):
        p = idx.producer.get(tensor)
        if p is None:
            return None
        if p.op_type == "Conv" and idx.is_const(p.input[1]):
            bias = p.input[2] if len(p.input) > 2 and p.input[2] else None
            return BiasTarget(p.name, p.op_type, bias, 1, 1.0)
        if p.op_type == "Gemm" and idx.is_const(p.input[1]) and not _attr(p, "transA", 0):
            bias = p.input[2] if len(p.input) > 2 and p.input[2] else None
            if bias is not None and not idx.is_const(bias):
                return None
            beta = float(_attr(p, "beta", 1.0))
            return BiasTarget(p.name, p.op_type, bias, 1, beta if beta != 0 else 1.0)
        if p.op_type == "Add":
            a, b = p.input
            ca, cb = idx.is_const(a), idx.is_const(b)
            if ca or cb:
                other = b if ca else a
                q = idx.producer.get(other)
                if q is not None and q.op_type == "MatMul":
                    return BiasTarget(p.name, "Add", a if ca else b, -1, 1.0)
                tensor = other
                continue
            tensor = a if depth.get(a, 0) >= depth.get(b, 0) else b  # the main branch
            continue
        if p.op_type in _PER_CHANNEL_PASS:
            tensor = p.input[0]
            continue
        return None
    return None


def _subgraph_reason(node) -> str | None:
    """Why a node with a subgraph (If/Loop/Scan) that reads spikes cannot be converted."""
    bodies = [a for a in node.attribute if a.HasField("g") or len(a.graphs)]
    if not bodies:
        return None
    relus = []
    for a in bodies:
        for g in ([a.g] if a.HasField("g") else list(a.graphs)):
            relus += [n.name or n.output[0] for n in g.node if n.op_type in ("Relu", "Clip")]
    inside = f"; the Relu/Clip inside ({', '.join(relus)}) would not become neurons" if relus else ""
    return (f"{node.op_type} with a subgraph ({', '.join(a.name for a in bodies)}) reads spikes: its body would "
            f"run per timestep{inside}")


def analyze(canonical: Canonical, maxpool: str = "lateral", signed: bool = True) -> Analysis:
    """Analyse the canonical ANN (see the module docstring); ``maxpool`` only words the note.

    signed: LeakyRelu/PRelu become signed neurons (alpha); False makes them ReLU neurons that
    drop the negative slope, each listed as inexact (what the signed neuron buys)."""
    model = canonical.model
    idx = GraphIndex(model.graph)
    info = canonical.info
    nodes = list(model.graph.node)

    # a node's inputs include what its subgraphs (If/Loop/Scan bodies) read from this scope
    inputs = {id(node): [i for i in node.input if i] + sorted(subgraph_inputs(node)) for node in nodes}

    # 1. data tensors: what carries the batch (reached from a graph input, not through a shape)
    data = set(idx.graph_inputs)
    for node in nodes:
        if node.op_type not in _NO_DATA and any(i in data for i in inputs[id(node)]):
            data.update(o for o in node.output if o)

    # 2. neurons: Relu/Clip on data (a Relu on weights or shapes is not a neuron), and the
    #    temporal tensors (carry spikes)
    neuron_marks = {}
    plain_ctx = _Ctx(idx, set())
    for node in nodes:
        if node.op_type in _NEURON_OPS and node.domain in ("", "ai.onnx") and node.input[0] in data:
            m = classify(node, plain_ctx)
            if m.kind is Kind.NEURON:
                neuron_marks[node.name] = m
    temporal: set[str] = set()
    for node in nodes:
        if node.op_type not in _NO_DATA and (node.name in neuron_marks or
                                              any(i in temporal for i in inputs[id(node)])):
            temporal.update(o for o in node.output if o)

    # nodes some neuron reads from, directly or further on (the rest is after the last neuron)
    producer = {o: node for node in nodes for o in node.output if o}
    feeds: set[str] = set()
    todo = [i for node in nodes if node.name in neuron_marks for i in inputs[id(node)]]
    while todo:
        p = producer.get(todo.pop())
        if p is not None and p.name not in feeds:
            feeds.add(p.name)
            todo.extend(inputs[id(p)])
    feeds.update(neuron_marks)

    # 3. marks of the spiking part; expansion points; shape paths from before the expansion
    ctx = _Ctx(idx, temporal, feeds)
    analog_tail, tail_inputs, atail_out = [], [], set()
    marks: dict[str, Mark] = {}
    inexact, maxpools, tail, expansion, shape_issues, unsupported = [], [], [], [], [], []
    tail_out: set[str] = set()
    static_shape = set()
    for node in nodes:
        ins = inputs[id(node)]
        if node.op_type in _NO_DATA and ins and ins[0] in data and ins[0] not in temporal:
            static_shape.update(node.output)
        elif ins and all(i in static_shape or idx.is_const(i) for i in ins) and any(i in static_shape for i in ins):
            static_shape.update(node.output)
        spiking = node.name in neuron_marks or any(i in temporal for i in ins)
        if not spiking:
            continue
        m = neuron_marks.get(node.name) or classify(node, ctx)
        marks[node.name] = m
        why = _subgraph_reason(node)
        reads_tail = any(i in atail_out for i in ins)
        chain = m.kind is Kind.OUTPUT and node.op_type in _OUTPUT_TAIL_OPS and ctx.only_feeds_outputs(node)
        if not why and node.name not in feeds and (reads_tail or (m.kind is Kind.OUTPUT and not chain)):
            analog_tail.append(node.name)
            atail_out.update(o for o in node.output if o)
            tail_inputs += [i for i in ins if i in temporal and i not in atail_out and i not in tail_inputs]
            continue
        if why:
            unsupported.append(OpIssue(node.name, node.op_type, why))
        elif m.kind is Kind.INEXACT:
            inexact.append(OpIssue(node.name, node.op_type, m.reason))
        elif m.kind is Kind.MAXPOOL:
            maxpools.append(node.name)
        elif m.kind is Kind.OUTPUT or (node.op_type in _TAIL_SHAPE_OPS and ins and ins[0] in tail_out):
            tail.append(node.name)
            tail_out.update(node.output)
        for i in ins:
            if i in data and i not in temporal and i not in expansion:
                expansion.append(i)
            if i in static_shape:
                shape_issues.append(OpIssue(node.name, node.op_type,
                                            f"its input {i!r} is a shape computed before the time expansion"))

    # 4. neurons with their bias targets, analog layers
    depth = _depths(idx)
    neurons = []
    for node in nodes:
        m = neuron_marks.get(node.name)
        if m is None:
            continue
        dims = info.get(node.input[0], (0, None))[1]
        rank = len(dims) if dims is not None else None
        ch = dims[1] if dims is not None and rank >= 2 and isinstance(dims[1], int) else None
        target = _bias_target(idx, node.input[0], depth)
        per_channel = ch is not None and (target is None or target.axis == 1)
        alpha = m.alpha
        if alpha is not None and not signed:
            inexact.append(OpIssue(node.name, node.op_type, f"converted as a ReLU neuron (--no-signed): its negative "
                                   f"slope {', '.join(f'{a:g}' for a in alpha[:4])} is dropped"))
            alpha = None
        elif m.alpha_shape is not None:
            alpha = _channel_slope(m, rank, ch)
            if alpha is None:
                inexact.append(OpIssue(node.name, node.op_type, f"its slope of shape {list(m.alpha_shape)} does not run "
                                       f"along the channel axis of its input (rank {rank}, {ch} channels)"))
                continue
        neurons.append(Neuron(node.name, node.op_type, node.input[0], node.output[0], rank, ch,
                              per_channel, m.clip_max, target.node if target else None, target, alpha))
    targets = {n.layer for n in neurons if n.layer}
    analog = [(n.name, n.op_type) for n in nodes if n.op_type in _LAYERS and n.name not in targets
              and not any(t == n.name for t in targets)]
    # MatMul+Add targets are named by their Add; the MatMul behind it is not analog
    add_targets = {n.bias.node for n in neurons if n.bias and n.bias.op_type == "Add"}
    if add_targets:
        behind = set()
        for name in add_targets:
            add = idx.nodes_by_name[name]
            for i in add.input:
                p = idx.producer.get(i)
                if p is not None and p.op_type == "MatMul":
                    behind.add(p.name)
        analog = [(n, op) for n, op in analog if n not in behind]
    temporal -= atail_out  # the analog tail runs once per sample on the means, not on the time-folded batch
    notes = list(canonical.notes)
    if analog_tail:
        notes.append(f"{len(analog_tail)} node(s) after the last neuron run once on the mean over T (analog): "
                     + ", ".join(analog_tail[:6]) + (", ..." if len(analog_tail) > 6 else ""))
    if maxpools:
        notes.append(f"{len(maxpools)} MaxPool node(s) " + ("pool by lateral inhibition (the input with the most "
                     "spikes so far wins)" if maxpool == "lateral" else "run per timestep on spikes"))
    return Analysis(neurons=neurons, analog_layers=analog, inexact=inexact, maxpools=maxpools,
                    output_tail=tail, expansion=expansion, temporal=temporal, marks=marks,
                    opset=canonical.opset, notes=notes, shape_issues=shape_issues, unsupported=unsupported,
                    maxpool="lateral" if maxpool == "lateral" else "spikes", analog_tail=analog_tail,
                    tail_inputs=tail_inputs)


def _channel_slope(m, rank: int | None, channels: int | None) -> tuple | None:
    """A PRelu slope (numpy-broadcast against the input, aligned right) as per-channel values, or
    None when it varies along another axis than 1 or the input's rank/channels are unknown."""
    shape = m.alpha_shape
    if rank is None or channels is None or len(shape) > rank:
        return None
    k = 1 - (rank - len(shape))  # the slope's axis that lines up with the input's axis 1
    if k < 0 or any(d != 1 for j, d in enumerate(shape) if j != k) or shape[k] != channels:
        return None
    return tuple(m.alpha)
