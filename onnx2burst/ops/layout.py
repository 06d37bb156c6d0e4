"""BurstIF in onnxruntime's blocked NCHWc layout: a CPU session with no reorders around neurons.

onnxruntime's CPU provider runs convolutions in a blocked layout (``NCHWc``: channels in
blocks of 8 or 16, the block innermost) and fuses the ANN's ReLU into them. A custom op
only sees plain NCHW, so around every BurstIF it inserts ``ReorderOutput`` (NCHWc -> NCHW)
and ``ReorderInput`` (back): two full passes over the activation per neuron layer,
which can cost more than the neuron itself (benchmarks/results/latency.md).

:func:`blocked_session` removes them. It lets onnxruntime optimise the SNN (level "all")
and save that graph, then rewrites it: every BurstIF fed by a ``ReorderOutput`` runs on
the blocked tensor itself with the kernel attribute ``channel_block`` (docs/method.md §2's
dynamics, channel ``c`` read at its blocked position), and so do the layout-free ops
between neurons (a residual ``Add``, the time-expansion ``Tile`` over the batch axis). An
Add or a Tile whose only reader is a neuron is then folded into it (the kernel's addend
input ``R`` and its ``time_broadcast`` attribute: the same float operations, one pass over
the activation fewer). A
``ReorderOutput`` is kept only where a plain-layout consumer remains. The rewritten graph is
hardware specific, so it lives only in memory, and it is checked before use: on a probe
input it must give exactly the outputs of the ordinary session (first with the folds, then
without), or that session is used.

The rewrite needs the kernel (the fallback function has no ``channel_block``) and channel
counts that are a multiple of the block; other layers keep their reorders.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.index import attr as _attr
from .schema import DOMAIN, STEP_OP_TYPE

__all__ = ["blocked_session", "blocked_stream_session", "rewrite_blocked", "nchwc_block_size", "blocked_states",
           "to_blocked", "from_blocked"]

log = logging.getLogger(__name__)
NCHWC_DOMAIN = "com.microsoft.nchwc"


def nchwc_block_size() -> int:
    """The channel block onnxruntime's MLAS uses on this CPU: 16 with AVX-512F, else 8."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8


def rewrite_blocked(model: onnx.ModelProto, block: int, fuse: bool = True) -> tuple[onnx.ModelProto, int]:
    """Move BurstIF (and the residual Adds and time Tiles between them) into the NCHWc layout.

    model: onnxruntime's optimised CPU graph (with ``com.microsoft.nchwc`` reorders).
    fuse: also fold into the kernel an Add or a batch Tile whose only consumer is a BurstIF
    (the kernel's addend input R and its ``time_broadcast`` attribute): the same float
    operations in the same order, one pass over the activation fewer.
    Returns (the rewritten copy, how many BurstIF nodes now run blocked).
    """
    from ..snn import METADATA_PREFIX, read_snn  # the SNN reader builds on this package's schema: imported when used

    g = model.graph
    uses: dict[str, int] = defaultdict(int)
    for n in g.node:
        for i in n.input:
            uses[i] += 1
    consts = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    graph_outputs = {o.name for o in g.output}

    blocked: dict[str, tuple[str, int]] = {}   # plain tensor -> (its blocked twin, channels)
    alias: dict[str, str] = {}                 # a removed ReorderInput's output -> blocked tensor
    new_nodes: list[onnx.NodeProto] = []
    replaced: dict[str, int] = {}              # plain tensor produced by a blocked node -> channels
    fusable: dict[str, tuple] = {}             # plain output of a moved Add/Tile -> (node, how to fold it)
    folded: set[int] = set()                   # id() of the Adds/Tiles a neuron took over
    moved = 0

    def twin(name):
        return blocked.get(name)

    streaming = any(p.key == METADATA_PREFIX + "stream" for p in model.metadata_props)
    neurons = {} if streaming else {nr.index: nr for nr in read_snn(model, require=False).neurons}
    graph_inputs = {i.name for i in g.input}
    for index, n in enumerate(g.node):
        ins = [alias.get(i, i) for i in n.input]
        if n.domain == NCHWC_DOMAIN and n.op_type == "ReorderOutput" and not _attr(n, "channels_last", 0):
            C = int(_attr(n, "channels", 0))
            if C and C % block == 0:
                blocked[n.output[0]] = (ins[0], C)
        if n.domain == NCHWC_DOMAIN and n.op_type == "ReorderInput" and not _attr(n, "channels_last", 0) \
                and twin(ins[0]) is not None:
            alias[n.output[0]] = twin(ins[0])[0]
            continue
        # a BurstIF, or a streaming neuron's step whose membrane (a model input and output of its
        # own) is carried in the blocked layout between runs (the caller converts at its edges)
        step = _movable_step(n, ins, twin, uses, graph_inputs, graph_outputs)
        if (step or index in neurons) and twin(ins[0]) is not None:
            xb, C = twin(ins[0])
            yb = n.output[0] + "_nchwc"
            m = onnx.NodeProto()
            m.CopyFrom(n)
            del m.input[:]
            m.input.extend([xb] + ins[1:3 if step else 2])  # a step keeps its membrane input U
            m.output[0] = yb
            m.attribute.append(helper.make_attribute("channel_block", int(block)))
            src = fusable.get(ins[0]) if fuse and uses[ins[0]] == 1 and ins[0] not in graph_outputs else None
            if src is not None and (src[1] == "add" or (not step and src[2] == neurons[index].T)):
                folded.add(id(src[0]))  # the kernel does its work
                if src[1] == "add":
                    m.input[0] = src[0].input[0]
                    m.input.append(src[0].input[1])  # R (after a step's U): the neuron integrates fl(X + R)
                else:
                    m.input[0] = src[0].input[0]  # one step, fed at every t
                    m.attribute.append(helper.make_attribute("time_broadcast", 1))
                del blocked[ins[0]], replaced[ins[0]]
            new_nodes.append(m)
            blocked[n.output[0]] = (yb, C)
            replaced[n.output[0]] = C
            moved += 1
            continue
        if n.domain in ("", "ai.onnx") and n.op_type == "Add" and len(ins) == 2 \
                and all(twin(i) is not None for i in ins) and twin(ins[0])[1] == twin(ins[1])[1]:
            C = twin(ins[0])[1]
            out = n.output[0] + "_nchwc"
            new_nodes.append(helper.make_node("Add", [twin(ins[0])[0], twin(ins[1])[0]], [out], name=n.name + "_nchwc"))
            fusable[n.output[0]] = (new_nodes[-1], "add")
            blocked[n.output[0]] = (out, C)
            replaced[n.output[0]] = C
            continue
        if n.domain in ("", "ai.onnx") and n.op_type == "Tile" and twin(ins[0]) is not None and ins[1] in consts:
            reps = numpy_helper.to_array(consts[ins[1]]).reshape(-1)
            if reps.size >= 2 and np.all(reps[1:] == 1):
                C = twin(ins[0])[1]
                out = n.output[0] + "_nchwc"
                new_nodes.append(helper.make_node("Tile", [twin(ins[0])[0], ins[1]], [out], name=n.name + "_nchwc"))
                fusable[n.output[0]] = (new_nodes[-1], "tile", int(reps[0]))
                blocked[n.output[0]] = (out, C)
                replaced[n.output[0]] = C
                continue
        m = onnx.NodeProto()
        m.CopyFrom(n)
        del m.input[:]
        m.input.extend(ins)
        new_nodes.append(m)

    # plain tensors that a remaining node or the graph output still reads
    new_nodes = [n for n in new_nodes if id(n) not in folded]
    needed = {i for n in new_nodes for i in n.input} | graph_outputs
    out_nodes: list[onnx.NodeProto] = []
    plain_of = {blocked[p][0]: (p, C) for p, C in replaced.items()}
    for n in new_nodes:
        if n.domain == NCHWC_DOMAIN and n.op_type == "ReorderOutput" and n.output[0] not in needed:
            continue  # its consumers all moved to the blocked layout
        out_nodes.append(n)
        for o in n.output:
            if o in plain_of and plain_of[o][0] in needed:  # a plain-layout consumer remains
                p, C = plain_of[o]
                out_nodes.append(helper.make_node("ReorderOutput", [o], [p], name=p + "_reorder",
                                                  domain=NCHWC_DOMAIN, channels=int(C), channels_last=0))
    res = onnx.ModelProto()
    res.CopyFrom(model)
    del res.graph.node[:]
    res.graph.node.extend(out_nodes)
    read = {i for n in out_nodes for i in n.input}  # a fused Tile's repeats are no longer read
    kept = [t for t in res.graph.initializer if t.name in read or t.name in graph_outputs]
    del res.graph.initializer[:]
    res.graph.initializer.extend(kept)
    return res, moved


def _movable_step(n, ins, twin, uses, graph_inputs, graph_outputs) -> bool:
    """Whether the BurstIFStep ``n`` can run blocked: its input in the blocked layout, its membrane
    a model input that only it reads, its next membrane a model output."""
    return (n.domain == DOMAIN and n.op_type == STEP_OP_TYPE and len(ins) == 3 and len(n.output) == 3
            and twin(ins[0]) is not None and ins[2] in graph_inputs and uses[ins[2]] == 1
            and n.output[2] in graph_outputs)


def blocked_states(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """The membranes a rewritten streaming graph carries blocked: ``{input: (output, block)}`` of
    every BurstIFStep with ``channel_block``."""
    out = {}
    for n in model.graph.node:
        if n.domain == DOMAIN and n.op_type == STEP_OP_TYPE:
            b = int(_attr(n, "channel_block", 1))
            if b > 1:
                out[n.input[2]] = (n.output[2], b)
    return out


def to_blocked(a: np.ndarray, block: int) -> np.ndarray:
    """``a`` ([N, C, ...], plain NCHW) laid out as onnxruntime's NCHWc with channel block
    ``block`` (C a multiple of it), in an array of the same shape: channel c of position k of a
    sample at ``((c // block) * K + k) * block + c % block``."""
    a = np.asarray(a)
    N, C = a.shape[:2]
    K = int(np.prod(a.shape[2:], dtype=np.int64))
    return np.ascontiguousarray(a.reshape(N, C // block, block, K).transpose(0, 1, 3, 2)).reshape(a.shape)


def from_blocked(a: np.ndarray, block: int) -> np.ndarray:
    """The inverse of :func:`to_blocked`."""
    a = np.asarray(a)
    N, C = a.shape[:2]
    K = int(np.prod(a.shape[2:], dtype=np.int64))
    return np.ascontiguousarray(a.reshape(N, C // block, K, block).transpose(0, 1, 3, 2)).reshape(a.shape)


def _probe_feeds(sess, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in i.shape]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def blocked_session(model, *, threads: int | None = None, providers=None, probe_batch: int = 2,
                    spinning: "bool | str" = True):
    """An InferenceSession for the SNN ``model`` with its neurons in the NCHWc layout.

    Returns ``(session, moved)``: ``moved`` BurstIF nodes run blocked; 0 means the ordinary
    session came back (nothing to move, or the probe disagreed, which is logged).
    """
    sess, moved, _ = _blocked(model, threads=threads, providers=providers, probe_batch=probe_batch,
                              spinning=spinning)
    return sess, moved


def blocked_stream_session(model, *, threads: int | None = None, spinning: "bool | str" = True, probe=None):
    """A CPU session for a streaming model (its ReLU steps fused into BurstIFStep nodes) whose
    steps run in the NCHWc layout, their membranes carried blocked between runs.

    Returns ``(session, states)``: ``states`` as :func:`blocked_states`, the membrane inputs the
    caller feeds (and gets back) in the blocked layout (:func:`to_blocked`); empty when the
    ordinary session came back. probe: the feeds (plain layout) to check the rewrite on
    (default: random ones at batch 2).
    """
    sess, _, states = _blocked(model, threads=threads, providers=None, probe_batch=2, spinning=spinning,
                               feeds=probe)
    return sess, states


def _blocked(model, *, threads, providers, probe_batch, spinning, feeds=None):
    """(session, neurons moved, blocked membranes): the rewritten session if it passes the probe,
    else the ordinary one (0, {})."""
    import onnxruntime as ort

    from .library import session_options

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    providers = providers or ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="onnx2burst_nchwc_") as tmp:
        so = session_options(kernel=True, threads=threads, optimization="all", spinning=spinning)
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        so.log_severity_level = 3  # the "hardware specific" warning: we never save it
        plain = ort.InferenceSession(data, so, providers=providers)
        optimized = onnx.load(so.optimized_model_filepath)
    for fuse in (True, False):  # with the Add/Tile fusions; if the probe disagrees, without
        rewritten, moved = rewrite_blocked(optimized, nchwc_block_size(), fuse=fuse)
        if not moved:
            return plain, 0, {}
        states = blocked_states(rewritten)
        so = session_options(kernel=True, threads=threads, optimization="disable", spinning=spinning)
        so.log_severity_level = 4  # a failed probe is handled here; onnxruntime need not print it
        try:
            fast = ort.InferenceSession(rewritten.SerializeToString(), so, providers=providers)
            feeds = feeds or _probe_feeds(plain, probe_batch)
            # blocked membranes go in blocked and come back blocked: compared in the plain layout
            fast_feeds = {k: to_blocked(v, states[k][1]) if k in states else v for k, v in feeds.items()}
            back = {o: b for o, b in states.values()}
            want = plain.run(None, feeds)
            got = [from_blocked(v, back[o.name]) if o.name in back else v
                   for o, v in zip(fast.get_outputs(), fast.run(None, fast_feeds))]
            if all(np.array_equal(a, b, equal_nan=True) for a, b in zip(want, got)):
                return fast, moved, states
            log.info("NCHWc rewrite (fuse=%s) not used: its outputs differ from the ordinary session's on the probe",
                     fuse)
        except Exception as e:  # noqa: BLE001 - any trouble: the ordinary session is correct
            log.info("NCHWc rewrite (fuse=%s) not used: %s", fuse, e)
    return plain, 0, {}
