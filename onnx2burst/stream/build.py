"""The streaming form of an SNN: one timestep per run, the state carried between runs (docs/stream.md).

``build_stream(snn)`` rewrites the time-folded SNN graph (docs/method.md §1) so that every
tensor of the spiking part holds one step ``[N, ...]`` instead of ``[T*N, ...]``:

- the time ``Tile`` becomes an Identity: the layers before the first neuron run on each
  run's input (the same image at every step, or a new frame per step);
- each BurstIF becomes its standard-op step (the Scan body of ``ops.function``, inlined
  once) with its membrane ``u`` as a state input and output; its spike count of the step
  is an output;
- each lateral pool's ``CumSum`` over time becomes ``sums = sums_before + X``, a state;
- each output's mean over T becomes a running sum (a state) divided by the number of steps
  run (a state), so that after step ``t`` the output is the any-time prediction of the
  first ``t`` steps, with any head moved after the mean (Softmax, ...) applied to it; the
  step's own value (before the mean) is an output ``<name>.step``.

States start at zero (``StreamSession.reset``). The description of the inputs, outputs and
states is stored in the file's metadata under ``onnx2burst.stream``.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ConfigError, GraphError
from ..graph import GraphIndex, topological_sort
from ..graph.index import attr
from ..ops.function import _signed_step_body, _step_body
from ..ops.schema import DOMAIN
from ..rewrite.rewriter import LATERAL_TAG
from ..snn import METADATA_PREFIX, read_snn

__all__ = ["build_stream", "fuse_steps", "chunk_steps", "stream_info", "STREAM_KEY", "STEPS_STATE", "SHARED_KINDS"]

STREAM_KEY = METADATA_PREFIX + "stream"
STEPS_STATE = "steps"
#: states with no batch axis: the step count, a signed neuron's accumulated offset (the same for every sample)
SHARED_KINDS = ("steps", "shared")
#: the step body's inputs this export knows, and what feeds each (docs/method.md §2)
#: the BurstIF attributes whose step this export builds (docs/method.md §2)
_ATTRIBUTES = ("T", "psi", "tau", "alpha")
_BODY_INPUTS = {"u_in", "spk_in", "theta_in", "offset_in", "psi_in", "fires_in", "x_t",
                "w_in", "stepw_in", "thetan_in", "neg_in"}   # the last four: the signed neuron's


def _consts(idx: GraphIndex, name: str):
    v = idx.const(name)
    return None if v is None else np.asarray(v)


def _time_tiles(idx: GraphIndex, T: int) -> list[onnx.NodeProto]:
    tiles = []
    for node in idx.graph.node:
        if node.op_type != "Tile" or node.domain not in ("", "ai.onnx"):
            continue
        reps = _consts(idx, node.input[1])
        if reps is not None and reps.size >= 1 and int(reps[0]) == T and np.all(reps[1:] == 1):
            tiles.append(node)
    return tiles


def _inline_neuron(idx: GraphIndex, neuron, T: int, new_nodes: list, states: list, rank: int | None = None,
                   kernel_steps: list | None = None) -> str:
    """Replace a BurstIF node by its one-step form; returns the name of its spikes output. A ReLU
    neuron's step is described in ``kernel_steps`` (its nodes, inputs and outputs), so that a
    session with the kernel can run it as one ``BurstIFStep`` node (``fuse_steps``)."""
    n = neuron.node
    extra = sorted({a.name for a in n.attribute} - set(_ATTRIBUTES))
    signed = neuron.alpha is not None and bool((neuron.alpha > 0).any())  # alpha 0 everywhere: the plain step
    if extra:
        raise GraphError(f"BurstIF {neuron.name}: attribute(s) {', '.join(extra)} are not supported by the "
                         "streaming export")
    if neuron.vth is None:
        raise GraphError(f"BurstIF {neuron.name}: its threshold {neuron.vth_name!r} is not an initializer; "
                         "the streaming export needs it constant")
    body = _signed_step_body() if signed else _step_body()
    unknown = sorted({i.name for i in body.input} - _BODY_INPUTS)
    if unknown:
        raise GraphError(f"BurstIF {neuron.name}: the neuron's step has inputs {unknown} that the streaming "
                         "export does not know")
    f = lambda s: idx.fresh(f"{neuron.name}/{s}")  # noqa: E731
    axes = [b for b in body.node if b.op_type == "Constant" and list(b.output) == ["ax12"]]
    natural = rank is not None and rank >= 2 and len(axes) == 1  # the step on X as it is, no reshapes
    theta = neuron.theta.reshape((1, -1) + (1,) * ((rank if natural else 3) - 2))  # tau * vth as the kernel forms it
    fires = theta > 0
    theta = np.where(fires, theta, np.float32(1)).astype(np.float32)
    offset = (theta / np.float32(2 * T)).astype(np.float32)    # theta / (2T), the batch SNN's offset
    x3, y3, shape = (neuron.x, neuron.y, "") if natural else (f("x_step"), f("y_step"), f("shape"))
    u_in, u_out = f("u"), f("u.next")
    spikes = neuron.spikes or f("spikes")
    names = {
        "u_in": u_in, "x_t": x3, "u_out": u_out, "y_t": y3, "spk_out": spikes,
        "spk_in": idx.set_const(f("no_spikes"), np.zeros(1, np.float32)),
        "theta_in": idx.set_const(f("theta"), theta),
        "offset_in": idx.set_const(f("offset"), offset),
        "psi_in": idx.set_const(f("psi"), np.array(float(neuron.psi), np.float32)),
        "fires_in": idx.set_const(f("fires"), fires),
    }
    states_w = None
    if signed:  # the negative side, formed as the fallback function forms it (docs/method.md §2)
        alpha = neuron.alpha.reshape(theta.shape[:1] + (-1,) + theta.shape[2:])
        apos = alpha > 0
        thn_raw = (theta / np.where(apos, alpha, np.float32(1))).astype(np.float32)
        neg = fires & apos & ~(thn_raw > np.float32(3.4028234663852886e38))
        stepw = (offset + offset).astype(np.float32)
        w_in, w_out = f("w"), f("w.next")
        names.update({"w_in": w_in, "w_out": w_out, "stepw_in": idx.set_const(f("step_w"), stepw),
                      "thetan_in": idx.set_const(f("theta_n"), np.where(neg, thn_raw, np.float32(1))),
                      "neg_in": idx.set_const(f("negative"), neg)})
        states_w = {"kind": "shared", "layer": neuron.name, "in": w_in, "out": w_out, "of": "", "view": "shared",
                    "shape": list(stepw.shape)}
    if natural:  # the spike count sums over every axis but the batch
        names["ax12"] = idx.set_const(f("per_sample_axes"), np.arange(1, rank, dtype=np.int64))
    else:
        flat = idx.set_const(f("as_NCK"), np.array([0, 0, -1], np.int64))
        new_nodes += [helper.make_node("Shape", [neuron.x], [shape], name=f("shape_of")),
                      helper.make_node("Reshape", [neuron.x, flat], [x3], name=f("to_NCK"))]
    kept_outputs = {"u_out", "y_t", "spk_out", "w_out"}
    first = len(new_nodes)
    for b in _specialise(list(body.node), fires_all=bool(fires.all())):
        if all(o.endswith("_out") and o not in kept_outputs for o in b.output):
            continue  # the pass-through states
        if natural and b in axes:
            continue
        node = onnx.NodeProto()
        node.CopyFrom(b)
        for k, i in enumerate(node.input):
            names.setdefault(i, f(i))
            node.input[k] = names[i]
        for k, o in enumerate(node.output):
            names.setdefault(o, f(o))
            node.output[k] = names[o]
        node.name = f(b.name or b.output[0])
        new_nodes.append(node)
    if kernel_steps is not None and not signed:
        kernel_steps.append({"layer": neuron.name, "x": x3, "u_in": u_in, "y": y3, "spikes": spikes, "u_out": u_out,
                             "theta": names["theta_in"], "fires": names["fires_in"], "T": T, "psi": neuron.psi,
                             "nodes": [nd.name for nd in new_nodes[first:]]})
    if not natural:
        new_nodes.append(helper.make_node("Reshape", [y3, shape], [neuron.y], name=neuron.name))
    states.append({"kind": "membrane", "layer": neuron.name, "in": u_in, "out": u_out, "of": neuron.x,
                   "view": "same" if natural else "NCK"})
    if states_w:
        states.append(states_w)
    return spikes


def _specialise(nodes: list, *, fires_all: bool) -> list:
    """The step body with three rewrites that give the same bits for this neuron's constants:
    ``Where(fires, s, 0)`` is ``s`` when every channel fires; ``Where(a > b, b, a)`` is
    ``Min(a, b)``; ``spk_in + count`` is the count (a step starts its count at 0). Each saves
    an op of a step that runs once per call (docs/stream.md)."""
    producer = {o: n for n in nodes for o in n.output}
    out = []
    for n in nodes:
        new = None
        if n.op_type == "Where" and len(n.input) == 3:
            cond = producer.get(n.input[0])
            if fires_all and n.input[0] == "fires_in":
                new = helper.make_node("Identity", [n.input[1]], list(n.output), name=n.name)
            elif cond is not None and cond.op_type == "Greater" and list(cond.input) == [n.input[2], n.input[1]]:
                new = helper.make_node("Min", [n.input[2], n.input[1]], list(n.output), name=n.name)
        elif n.op_type == "Add" and "spk_in" in n.input:
            other = [i for i in n.input if i != "spk_in"]
            new = helper.make_node("Identity", other, list(n.output), name=n.name)
        out.append(new or n)
    used = {i for n in out for i in n.input}
    return [n for n in out if n.op_type != "Greater" or any(o in used for o in n.output)]


def _lateral_sums(idx: GraphIndex, cumsum: onnx.NodeProto, new_nodes: list, states: list, removed: list) -> None:
    """``Reshape(X, [T, -1]) -> CumSum(axis 0) -> Reshape(shape of X)`` becomes ``S_before + X``."""
    if not cumsum.doc_string.startswith(LATERAL_TAG):
        raise GraphError(f"CumSum {cumsum.name!r} sums over the time-folded batch and is not a lateral pool; "
                         "the streaming export cannot carry it")
    pool = cumsum.doc_string[len(LATERAL_TAG):]
    unfold = idx.producer.get(cumsum.input[0])
    folds = idx.consumers.get(cumsum.output[0], [])
    if unfold is None or unfold.op_type != "Reshape" or len(folds) != 1 or folds[0].op_type != "Reshape":
        raise GraphError(f"lateral pool {pool!r}: its running sum is not in the form the converter writes")
    x, sums = unfold.input[0], folds[0].output[0]
    s_in = idx.fresh(f"{pool}/sums")
    s_out = idx.fresh(f"{pool}/sums.next")
    new_nodes += [helper.make_node("Add", [s_in, x], [sums], name=idx.fresh(f"{pool}/sum_so_far")),
                  helper.make_node("Identity", [sums], [s_out], name=idx.fresh(f"{pool}/keep_sums"))]
    removed += [cumsum, folds[0]]
    states.append({"kind": "running_sum", "layer": pool, "in": s_in, "out": s_out, "of": x, "view": "same"})


def _time_means(idx: GraphIndex, T: int) -> list[onnx.NodeProto]:
    """The means over T the converter writes: ``ReduceMean(Reshape(y, [T, -1, ...]), axes=[0])``."""
    found = []
    for node in idx.graph.node:
        if node.op_type != "ReduceMean":
            continue
        unfold = idx.producer.get(node.input[0])
        if unfold is None or unfold.op_type != "Reshape":
            continue
        shape = idx.producer.get(unfold.input[1])
        head = _consts(idx, shape.input[0]) if shape is not None and shape.op_type == "Concat" else None
        axes = attr(node, "axes", None)
        if axes is None and len(node.input) > 1:
            axes = _consts(idx, node.input[1])
        if head is not None and list(head.reshape(-1)) == [T, -1] and axes is not None and list(axes) == [0] \
                and not attr(node, "keepdims", 1):
            found.append(node)
    return found


def _running_mean(idx: GraphIndex, mean: onnx.NodeProto, new_nodes: list, states: list, removed: list,
                  steps: tuple[str, str]) -> str:
    """A mean over T becomes ``sum = sum_before + y_t`` (a state) divided by the steps run; returns y_t."""
    src = idx.producer[mean.input[0]].input[0]
    base = mean.output[0]
    s_in, s_out = idx.fresh(f"{base}/sum"), idx.fresh(f"{base}/sum.next")
    new_nodes += [helper.make_node("Add", [s_in, src], [s_out], name=idx.fresh(f"{base}/sum_so_far")),
                  helper.make_node("Div", [s_out, steps[1]], [mean.output[0]], name=mean.name or idx.fresh(base))]
    removed.append(mean)
    states.append({"kind": "output_sum", "layer": base, "in": s_in, "out": s_out, "of": src, "view": "same"})
    return src


def _output(idx: GraphIndex, out: str, means: dict, new_nodes: list) -> dict:
    """Output ``out``: its any-time value, and its step value: the step's own tensor when one mean
    over T feeds it (through a head at most), else (a detector's boxes decoded from several
    means) the any-time value again."""
    feeding = [m for m in means if _reaches(idx, m, out)]
    if not feeding:
        raise GraphError(f"output {out!r}: no mean over T found behind it; the streaming export needs an SNN "
                         "made by `onnx2burst convert`")
    step = f"{out}.step"
    if step in idx.names:
        step = idx.fresh(step)
    one = len(feeding) == 1
    new_nodes.append(helper.make_node("Identity", [means[feeding[0]] if one else out], [step],
                                      name=idx.fresh(f"{out}/this_step")))
    return {"name": out, "step": step, "head": _head(idx, feeding[0], out) if one else "decoded"}


def _reaches(idx: GraphIndex, src: str, dst: str) -> bool:
    seen, todo = set(), [src]
    while todo:
        t = todo.pop()
        if t == dst:
            return True
        if t in seen:
            continue
        seen.add(t)
        for c in idx.consumers.get(t, []):
            todo.extend(o for o in c.output if o)
    return False


def _head(idx: GraphIndex, mean: str, out: str) -> str | None:
    """The op type of the head (Softmax, LogSoftmax, ArgMax) moved after the mean, if any."""
    if mean == out:
        return None
    node = idx.producer.get(out)
    return node.op_type if node is not None else None


def _per_sample_divisions(idx: GraphIndex, T: int) -> None:
    """A head's shape read off a time-folded tensor is divided by T (rows -> samples); each
    step has N rows already, so the division becomes one by 1."""
    for node in idx.graph.node:
        if node.op_type != "Div":
            continue
        c = _consts(idx, node.input[1])
        p = idx.producer.get(node.input[0])
        if c is not None and c.dtype == np.int64 and c.reshape(-1).tolist() == [T] and p is not None \
                and p.op_type == "Slice":
            node.input[1] = idx.set_const(idx.fresh(node.input[1] + "_one_step"), np.array([1], np.int64))


def build_stream(snn: onnx.ModelProto, ranks: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """The streaming model of ``snn`` and its description (also stored in its metadata).

    Raises ``GraphError``/``ConfigError`` naming the node for anything that is not an SNN
    ``onnx2burst convert`` writes (BurstIF attributes unknown here, a CumSum that is not a
    lateral pool, an output without its mean over T) and for a streaming file. ranks: the rank
    of each neuron's input where known; the step then runs on it as it is (else viewed as
    ``[N, C, K]``).
    """
    if any(p.key == STREAM_KEY for p in snn.metadata_props):
        raise GraphError("the model is a streaming model already (made by export-stream); pass the SNN "
                         "`onnx2burst convert` wrote")
    m = copy.deepcopy(snn)
    view = read_snn(m, require_vth=True)
    T = view.T
    odd = [n.name for n in view.neurons if n.T != T]
    if odd:
        raise GraphError(f"BurstIF {odd[0]}: T={view.neuron(odd[0]).T}, the SNN's T is {T}")
    g = m.graph
    idx = GraphIndex(g)
    states: list[dict] = []
    new_nodes: list[onnx.NodeProto] = []
    removed: list[onnx.NodeProto] = []
    per_t = set(json.loads(view.metadata.get("outputs", "{}") or "{}").get("per_timestep", []))

    for tile in _time_tiles(idx, T):
        tile.op_type = "Identity"
        del tile.input[1:]
    steps = (STEPS_STATE, idx.fresh(STEPS_STATE + ".next"))
    idx.names.add(STEPS_STATE)
    one = idx.set_const(idx.fresh("one_step"), np.array(1.0, np.float32))
    new_nodes.append(helper.make_node("Add", [steps[0], one], [steps[1]], name=idx.fresh("count_steps")))

    spikes, kernel_steps = [], []
    for neuron in view.neurons:
        spikes.append({"layer": neuron.name, "name": _inline_neuron(idx, neuron, T, new_nodes, states,
                                                                    (ranks or {}).get(neuron.x), kernel_steps)})
    removed += [n.node for n in view.neurons]
    for node in list(g.node):
        if node.op_type == "CumSum":
            _lateral_sums(idx, node, new_nodes, states, removed)
    means = {m.output[0]: _running_mean(idx, m, new_nodes, states, removed, steps) for m in _time_means(idx, T)}
    outputs = [_output(idx, out, means, new_nodes) for out in [o.name for o in g.output] if out not in per_t]
    _per_sample_divisions(idx, T)
    idx.remove_nodes(removed)
    g.node.extend(new_nodes)

    inputs = [i for i in view.inputs]
    del g.output[:]
    vi = helper.make_tensor_value_info
    for o in outputs:
        g.output.extend([vi(o["name"], TensorProto.FLOAT, None), vi(o["step"], TensorProto.FLOAT, None)])
    g.output.extend(vi(s["name"], TensorProto.FLOAT, None) for s in spikes)
    states.append({"kind": "steps", "layer": "", "in": steps[0], "out": steps[1], "of": "", "view": "scalar"})
    for s in states:
        g.input.append(vi(s["in"], TensorProto.FLOAT, None))
        g.output.append(vi(s["out"], TensorProto.FLOAT, None))
    del g.value_info[:]
    idx.rebuild()
    topological_sort(g)
    GraphIndex(g).prune()
    left = [n.name or n.op_type for n in g.node if n.domain == DOMAIN or n.op_type == "CumSum"]
    if left:
        raise GraphError(f"node {left[0]!r} still runs over time in the streaming model")
    del m.functions[:]
    keep = [o for o in m.opset_import if o.domain != DOMAIN]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    info = {"T": T, "inputs": inputs, "outputs": outputs, "spikes": spikes, "states": states,
            "kernel_steps": kernel_steps}
    return m, info


def fuse_steps(model: onnx.ModelProto, info: dict) -> tuple[onnx.ModelProto, int]:
    """``model`` (a streaming model) with each ReLU neuron's standard-op step replaced by one
    ``BurstIFStep`` node of the kernel, and how many were replaced: the same bits (the node
    gets ``vth = theta`` where the neuron fires, 0 where it never does, ``tau = 1``; docs/stream.md)
    in one pass over the membrane instead of a dozen element-wise ops. Session-only: files keep
    the standard ops. A step whose nodes are not all there (an edited file) is left as it is."""
    from onnx import numpy_helper

    from ..ops.schema import STEP_OP_TYPE

    m = copy.deepcopy(model)
    g = m.graph
    consts = {t.name: t for t in g.initializer}
    for node in g.node:  # set_const may have written Constant nodes
        if node.op_type == "Constant" and len(node.output) == 1:
            consts.setdefault(node.output[0], next((a.t for a in node.attribute if a.name == "value"), None))
    by_name = {n.name: k for k, n in enumerate(g.node)}
    drop, put = set(), {}
    for st in info.get("kernel_steps") or []:
        where = [by_name.get(n) for n in st["nodes"]]
        theta_t = consts.get(st["theta"])
        if not st["nodes"] or None in where or theta_t is None:
            continue
        theta = numpy_helper.to_array(theta_t).astype(np.float32).reshape(-1)
        fires_t = consts.get(st["fires"])   # pruned when every channel fires
        fires = np.ones(theta.shape, bool) if fires_t is None else numpy_helper.to_array(fires_t).reshape(-1)
        vth = f"{st['layer']}/vth_step"
        g.initializer.append(numpy_helper.from_array(np.where(fires, theta, np.float32(0)).astype(np.float32), vth))
        drop.update(where)
        put[min(where)] = helper.make_node(STEP_OP_TYPE, [st["x"], vth, st["u_in"]], [st["y"], st["spikes"], st["u_out"]],
                                           domain=DOMAIN, name=st["layer"], T=int(st["T"]), psi=int(st["psi"]), tau=1.0)
    if not put:
        return model, 0
    nodes = [put.get(k, n) for k, n in enumerate(g.node) if k in put or k not in drop]
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    GraphIndex(g).prune()
    return m, len(put)


#: the states a run of several steps in one call can carry (``chunk_steps``)
_CHUNK_KINDS = ("membrane", "output_sum", "steps")


def chunk_steps(fused: onnx.ModelProto, info: dict, k: int) -> onnx.ModelProto | None:
    """``fused`` (a streaming model after ``fuse_steps``) rewritten to run ``k`` steps per call:
    each input fed ``[k*N, ...]`` (the k steps' inputs, time-major), each ``BurstIFStep`` running
    the k steps from its membrane ``[N, ...]`` (the kernel's k-step form), each output's sum
    adding the k steps one after the other (the order k single steps add them: the same bits),
    the step count advancing by k; a step output ``<name>.step`` holds the k steps' rows.
    Session-only, like ``fuse_steps``. None when a state cannot be carried this way (a lateral
    pool's running sum, a signed neuron, a neuron step of standard ops)."""
    from ..graph import default_opset
    from ..ops.schema import STEP_OP_TYPE

    if k < 2 or any(s["kind"] not in _CHUNK_KINDS for s in info["states"]):
        return None
    m = copy.deepcopy(fused)
    g = m.graph
    idx = GraphIndex(g)
    fused_in = {n.input[2] for n in g.node if n.domain == DOMAIN and n.op_type == STEP_OP_TYPE}
    if any(s["kind"] == "membrane" and s["in"] not in fused_in for s in info["states"]):
        return None
    opset = default_opset(m)
    nodes = list(g.node)
    for s in info["states"]:
        if s["kind"] == "membrane":
            continue
        add = next((n for n in nodes if n.op_type == "Add" and s["in"] in n.input and list(n.output) == [s["out"]]),
                   None)
        if add is None:
            return None
        other = [i for i in add.input if i != s["in"]][0]
        if s["kind"] == "steps":
            add.input[list(add.input).index(other)] = idx.set_const(idx.fresh("k_steps"), np.array(k, np.float32))
            continue
        parts = [idx.fresh(f"{s['layer']}/step{t}") for t in range(k)]
        split = helper.make_node("Split", [other], parts, name=idx.fresh(f"{s['layer']}/split_steps"), axis=0,
                                 **({"num_outputs": k} if opset >= 18 else {}))
        chain, acc = [split], s["in"]
        for t, part in enumerate(parts):
            out = s["out"] if t == k - 1 else idx.fresh(f"{s['layer']}/sum{t}")
            chain.append(helper.make_node("Add", [acc, part], [out], name=idx.fresh(f"{s['layer']}/add_step{t}")))
            acc = out
        at = nodes.index(add)
        nodes[at:at + 1] = chain
    del g.node[:]
    g.node.extend(nodes)
    return m


def stream_info(model: onnx.ModelProto) -> dict | None:
    """The streaming description of ``model`` (None: not a streaming model)."""
    for p in model.metadata_props:
        if p.key == STREAM_KEY:
            try:
                return json.loads(p.value)
            except ValueError:
                raise ConfigError(f"the metadata {STREAM_KEY} is not valid JSON") from None
    return None
