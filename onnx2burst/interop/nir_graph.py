"""The graph walk of the NIR exporter: inputs, the nodes in graph order, outputs, and the
folding of each neuron's rounding offset ``theta/(2T)`` into a bias (docs/method.md §2).

The neurons come from ``onnx2burst.snn.read_snn``; the per-op mappings are in ``nir_layers``.
The result is a graph of ``_N`` records with ``Scale`` nodes, which ``nir_lower`` then rewrites
into what the importers run.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import GraphError
from ..graph.index import attr
from ..ops.schema import DOMAIN, OP_TYPE
from ..rewrite.rewriter import LATERAL_TAG
from ..snn import is_neuron, layer_name, read_snn
from .nir_common import (_BROKEN, _DROPPABLE_TAIL, _FIRST_INPUT_ONLY, SUPPORTED_OPS, NIRUnsupportedError, _N,
                         _sanitize, _Skip, _Val, _why_not)
from .nir_layers import _LayerMapper, diagonal_conv


class _Builder(_LayerMapper):
    """One export: walks the SNN's nodes in graph order and collects the NIR nodes and edges."""

    def __init__(self, model: onnx.ModelProto, lossy: bool):
        self.model = model
        self.g = model.graph
        self.lossy = lossy
        self.snn = read_snn(model, require=False)
        signed = [n.name for n in self.snn.neurons if n.signed]
        if signed:  # NIR's IF/CubaLIF have no negative spikes at another threshold
            raise GraphError(f"NIR has no neuron with negative spikes: signed BurstIF layer(s) {', '.join(signed)} "
                             "(attribute alpha, from LeakyReLU/PReLU) cannot be exported")
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        for n in self.g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                value = attr(n, "value")
                if value is not None:
                    self.consts[n.output[0]] = numpy_helper.to_array(value)
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.nodes: dict[str, _N] = {}
        self.edges: list[tuple[str, str]] = []
        self.vals: dict[str, _Val] = {}
        self.names: set[str] = set()
        self.issues: list[tuple[str, str, str]] = []
        self.approx: list[tuple[str, str, str]] = []
        self.losses: list[tuple[str, str]] = []
        self.burst = {n.name: n for n in self.snn.neurons}  # BurstIF layer name -> Neuron
        self.neurons: list[dict] = []          # IF name, offsets, shape, source name
        self.T = self._find_T()

    # -- helpers -------------------------------------------------------------------------
    def _find_T(self) -> int:
        """The neurons' common T (a ``GraphError`` when there is none or they disagree)."""
        Ts = {n.T for n in self.snn.neurons}
        if not Ts:
            raise GraphError(f"graph {self.g.name!r} has no {OP_TYPE} node (domain {DOMAIN}): "
                             "not an SNN file; make one with `onnx2burst convert`")
        if len(Ts) > 1:
            raise GraphError(f"the {OP_TYPE} nodes disagree on T: {sorted(Ts)}")
        return Ts.pop()

    def name(self, base: str) -> str:
        """A new NIR node name made from ``base`` (sanitized, made unique)."""
        s = _sanitize(base)
        out, k = s, 1
        while out in self.names:
            out = f"{s}_{k}"
            k += 1
        self.names.add(out)
        return out

    def add(self, name: str, node, refs) -> str:
        """Add NIR ``node`` as ``name`` with an edge from each of ``refs``."""
        self.nodes[name] = node
        for r in refs:
            if (r, name) in self.edges:
                raise GraphError(f"NIR node {name!r} would get the same input {r!r} twice "
                                 "(a tensor added to itself); NIR cannot express a doubled edge")
            self.edges.append((r, name))
        return name

    def const(self, name: str) -> np.ndarray | None:
        """The value of initializer or Constant ``name``, else None."""
        return self.consts.get(name) if name else None

    def issue(self, node, why: str):
        """List ``node`` as not mappable, for ``why``."""
        self.issues.append((node.name or node.output[0], node.op_type, why))

    def data_nodes(self) -> set[int]:
        """Indices of the nodes on a data path to a graph output (shape helpers excluded)."""
        by_out = {o: i for i, n in enumerate(self.g.node) for o in n.output if o}
        seen: set[int] = set()
        stack = [o.name for o in self.g.output]
        while stack:
            t = stack.pop()
            i = by_out.get(t)
            if i is None or i in seen:
                continue
            seen.add(i)
            n = self.g.node[i]
            if n.op_type == "Constant":
                continue
            ins = n.input[:1] if n.op_type in _FIRST_INPUT_ONLY else n.input
            stack += [x for x in ins if x and x not in self.consts]
        return seen

    # -- the walk --------------------------------------------------------------------------
    def build(self) -> dict:
        """Map the model onto ``self.nodes``/``self.edges`` and return the graph's metadata, or raise
        ``NIRUnsupportedError`` listing every node that does not map."""
        inits = set(self.consts)
        for vi in self.g.input:
            if vi.name in inits:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
                raise GraphError(f"input {vi.name!r} has shape {dims}: NIR needs static dims after the batch axis")
            shape = tuple(int(d) for d in dims[1:])
            name = self.name(vi.name)
            self.nodes[name] = _N("Input", {}, shape, {"onnx_input": vi.name})
            self.vals[vi.name] = _Val((name,), shape, "static")
        keep = self.data_nodes()
        lateral_seen: set[str] = set()
        for i, node in enumerate(self.g.node):
            if i not in keep or node.op_type == "Constant":
                continue
            if node.doc_string.startswith(LATERAL_TAG):  # one issue per lateral pool, not per node
                pool = node.doc_string[len(LATERAL_TAG):]
                if pool not in lateral_seen:
                    lateral_seen.add(pool)
                    self.issues.append((pool, "MaxPool, --maxpool lateral",
                                        "NIR has no lateral-inhibition pooling, even approximately; convert with "
                                        "--maxpool spikes, whose MaxPool --lossy approximates by SumPool2d"))
                for o in node.output:
                    self.vals[o] = _BROKEN
                continue
            x = self.vals.get(node.input[0]) if node.input else None
            if any(self.vals.get(i) is _BROKEN for i in node.input if i):
                # downstream of a node already listed: list it only if it could never map
                if node.domain not in ("", "ai.onnx", DOMAIN) or (
                        node.domain != DOMAIN and node.op_type not in SUPPORTED_OPS):
                    self.issue(node, _why_not(node.op_type))
                for o in node.output:
                    self.vals[o] = _BROKEN
                continue
            if x is None:
                self.issue(node, "its input is not a tensor the exporter can map (a spike count?)")
                for o in node.output:
                    self.vals[o] = _BROKEN
                continue
            if x.phase == "unfolded" and node.op_type != "ReduceMean":
                self.issue(node, "runs on the per-timestep [T, N, ...] tensor; only ReduceMean over axis 0 maps")
                continue
            try:
                self.op(node, x)
            except _Skip as e:
                self.issue(node, str(e))
                for o in node.output:
                    self.vals[o] = _BROKEN
        self.outputs()
        if self.issues:
            raise NIRUnsupportedError(self.issues, lossy=self.lossy)
        self.fold_offsets()
        meta = {
            "source": "onnx2burst", "T": int(self.T),
            "encoding": f"direct: present the Input at every one of the T={self.T} steps",
            "readout": "average each Output over the T steps (metadata 'readout' of the Output)",
            "burstif": "onnx2burst BurstIF (docs/method.md §2): IF of threshold theta = tau*vth; the spike weight "
                      "theta is in the next layer's weights, the rounding offset theta/(2T) in the bias before",
            "reset": "subtract (Sinabs' IAF: subtract; NIR's IF and Norse: zero)",
            "lossy": bool(self.lossy),
        }
        for key, value in self.snn.metadata.items():
            if key in ("version", "source_sha256", "calibration_samples"):
                meta[key] = value
        if self.losses or self.approx:
            meta["losses"] = "\n".join([f"{a}: {b}" for a, b in self.losses]
                                       + [f"{a} ({b}): {c}" for a, b, c in self.approx])
        return meta

    def op(self, node, x: _Val):  # noqa: C901 - one branch per op
        """Map ``node`` (whose first input is ``x``) or raise ``_Skip``; the layers are in ``_LayerMapper``."""
        op, out = node.op_type, node.output[0]
        label = node.name or out
        if is_neuron(node):
            return self.burst_if(self.burst[layer_name(node)], x)
        if node.domain not in ("", "ai.onnx"):
            raise _Skip(f"custom op of domain {node.domain!r}")
        if op in ("Identity", "Dropout"):
            self.vals[out] = x
            return
        if op == "Tile":
            reps = self.const(node.input[1])
            if x.phase != "static" or reps is None or int(reps.reshape(-1)[0]) != self.T \
                    or any(int(r) != 1 for r in reps.reshape(-1)[1:]):
                raise _Skip("a Tile that is not the time expansion (repeats [T, 1, ...] of a static tensor)")
            self.vals[out] = _Val(x.refs, x.shape, "temporal")
            return
        if op == "Conv":
            return self.conv(node, x)
        if op in ("Gemm", "MatMul"):
            return self.dense(node, x)
        if op == "Add":
            return self.add_op(node)
        if op in ("AveragePool", "GlobalAveragePool", "MaxPool"):
            return self.pool(node, x)
        if op == "Flatten":
            if int(attr(node, "axis", 1)) != 1:
                raise _Skip(f"Flatten axis={attr(node, 'axis')}: only axis 1 keeps the batch axis apart")
            return self.flatten(label, x, out)
        if op == "Reshape":
            return self.reshape(node, x)
        if op == "ReduceMean":
            axes = attr(node, "axes")
            if axes is None and len(node.input) > 1:
                c = self.const(node.input[1])
                axes = None if c is None else [int(v) for v in c.reshape(-1)]
            if x.phase != "unfolded" or list(axes or []) != [0] or int(attr(node, "keepdims", 1)) != 0:
                raise _Skip("a ReduceMean that is not the mean over T (axis 0 of the unfolded [T, N, ...])")
            self.vals[out] = _Val(x.refs, x.shape, "mean", x.dropped)
            return
        if op in _DROPPABLE_TAIL and x.phase == "mean" and self.lossy:
            self.approx.append((label, op, "dropped (after the mean over T; apply it to the averaged Output)"))
            self.vals[out] = _Val(x.refs, x.shape, x.phase, x.dropped + (op,))
            return
        if op in _DROPPABLE_TAIL and x.phase == "mean":
            raise _Skip("NIR has no softmax (it follows the mean over T; --lossy drops it)")
        raise _Skip(_why_not(op))

    # -- outputs and the rounding offset ----------------------------------------------------
    def outputs(self):
        for vi in self.g.output:
            v = self.vals.get(vi.name)
            if v is None:
                p = self.producer.get(vi.name)
                if p is not None and p.domain == DOMAIN:
                    if self.lossy:
                        self.approx.append((vi.name, "output", "dropped (a spike count; NIR has none)"))
                        continue
                    self.issues.append((vi.name, "output", "a spike count; NIR has none (--lossy drops it)"))
                elif not self.issues:  # else the node that broke the path is listed already
                    self.issues.append((vi.name, "output", "not mapped"))
                continue
            readout = {"mean": "mean_over_T", "unfolded": "per_timestep"}.get(v.phase, "per_timestep")
            meta = {"onnx_output": vi.name, "readout": readout, "T": int(self.T)}
            if v.dropped:
                meta["dropped"] = ",".join(v.dropped)
            name = self.name(vi.name)
            self.add(name, _N("Output", {}, v.shape, meta), v.refs)

    def fold_offsets(self):
        """Add each neuron's rounding offset theta/(2T) to the bias of the layer that feeds
        only it; else put a bias-only layer (identity weights) in front of it."""
        outs: dict[str, list[str]] = {}
        for s, d in self.edges:
            outs.setdefault(s, []).append(d)
        for nrn in self.neurons:
            name, off, shape = nrn["name"], nrn["offset"], nrn["shape"]
            preds = [s for s, d in self.edges if d == name]
            target = next((p for p in preds if self.nodes[p].kind in ("Conv", "Affine") and outs.get(p) == [name]),
                          None)
            if target is not None:
                layer = self.nodes[target]
                onnx_bias = np.asarray(layer.p["bias"], np.float32).copy()
                layer.p["bias"] = (onnx_bias + off).astype(np.float32)
                layer.meta["rounding_offset"] = f"bias = onnx_bias + theta/(2T) of {nrn['label']}"
                layer.meta["onnx_bias"] = onnx_bias
                self.nodes[name].meta["rounding_offset_in"] = target
                continue
            C = shape[0]
            bname = self.name(nrn["label"] + "_offset")
            meta = {"onnx_node": nrn["label"], "role": f"rounding offset theta/(2T) of {nrn['label']}"}
            if len(shape) == 1:
                bn = _N("Affine", {"weight": np.eye(C, dtype=np.float32), "bias": off.copy()}, shape, meta)
            else:
                bn = diagonal_conv(C, shape, meta=meta)
                bn.p["bias"] = off.copy()
            self.nodes[bname] = bn
            self.edges = [(s, bname if d == name else d) for s, d in self.edges]
            self.edges.append((bname, name))
            self.nodes[name].meta["rounding_offset_in"] = bname
