"""Export an SNN ONNX file to NIR, the Neuromorphic Intermediate Representation (``nir``).

``to_nir(model)`` maps the graph written by ``onnx2burst convert`` (ALGORITHM.md §1, §2)
onto NIR nodes; ``export_nir(snn, out)`` also writes the ``.nir`` (HDF5) file, atomically.
Needs the optional ``nir`` package: ``pip install 'onnx2burst[nir]'``.

Mapping (ONNX -> NIR; every NIR node carries ``metadata["onnx_node"]``):

- graph input ``[N, ...]``  -> ``Input`` of shape ``[...]`` (NIR shapes have no batch axis).
- ``Tile`` (time expansion, §1) -> nothing: NIR runs step by step; present the same input
  at each of the T steps (direct encoding). ``T`` is in the graph's metadata.
- ``Conv`` -> ``Conv1d``/``Conv2d``; ``Gemm`` -> ``Affine`` (``Linear`` without a bias);
  ``MatMul`` (+ ``Add`` of a constant) -> ``Linear`` (``Affine``). Weights and biases are the
  file's initializers (which already hold the bias calibration, §5), with one exact change:
  the rounding offset ``theta/(2T)`` that BurstIF adds at every step (§2) is added to the
  bias of the layer feeding the neuron (``metadata["rounding_offset"]`` says so; where no
  such layer feeds only that neuron, a depthwise 1x1 ``Conv`` / identity ``Affine`` carries it).
- ``BurstIF`` -> ``IF`` with ``r = 1``, ``v_threshold = theta = tau * vth`` (per channel,
  broadcast to the layer's shape), ``v_reset = 0``, followed by ``Scale(theta)``: NIR spikes
  are 1, ours carry ``theta``. Channels with ``theta <= 0`` (never fire, §2) get ``r = 0``,
  ``v_threshold = 1`` and scale 0. ``metadata``: psi, tau, T, vth, reset.
- ``AveragePool`` -> ``AvgPool2d`` (kernel, stride, padding; NIR's ``AvgPool2d`` divides by
  the kernel size, as ONNX with no padding or ``count_include_pad=1``);
  ``GlobalAveragePool`` -> ``AvgPool2d`` with the whole map as kernel.
- ``Flatten`` (axis 1) and a ``Reshape`` to ``[N, -1]`` -> ``Flatten(start_dim=0)``.
- ``Add`` of two branches -> fan-in: both branches get an edge into the next node (a NIR
  node sums its inputs). ``Identity``/``Dropout`` -> nothing.
- time unfold (``Reshape`` to ``[T, N, ...]``) and ``ReduceMean`` over axis 0 -> nothing;
  each graph output -> ``Output``; ``metadata["readout"]``: ``mean_over_T`` (average the
  Output over the T steps, the SNN's output) or ``per_timestep``.

Exact: weights, biases, thresholds, tau (only ``theta = tau*vth`` matters: it is both the
threshold and the weight of a spike), per-channel thresholds, silent channels, the rounding
offset, residual sums, average pooling, the input encoding. At ``psi = 1`` a simulation of
the NIR graph whose IF resets by subtraction reproduces the SNN up to float rounding (the
offset is summed in another order, so a membrane within an ulp of the threshold may fire a
step apart): measured on 256 Fashion-MNIST test images at T=8, 99.6 % (VGG) and 98.4 %
(ResNet-20) of the outputs equal to 1e-5, argmax agreement 100 %.

Lost (NIR's ``IF`` has binary spikes and a reset *to* ``v_reset``), listed per layer in a
``NIRExportWarning``:

- reset by subtraction (§2: ``u = u - s*theta``) becomes reset to zero: the charge above the
  threshold at a spike is dropped, so rates come out lower than the SNN's (measured as above
  with NIR's IF: argmax agreement with the SNN 88.7 % for VGG, 29.3 % for ResNet-20, whose
  errors compound over 19 layers);
- ``psi > 1``: at most one spike per step, so a neuron's output saturates at ``theta`` per
  step instead of ``psi*theta`` (VGG at psi=4: 32 % top-1 against the SNN's 93 %);
- (negligible) the comparison: BurstIF fires at ``u >= theta``, NIR's ``IF`` at ``v > theta``.

Not mapped (``NIRUnsupportedError``, an ``UnsupportedModelError`` naming each node, unless
``lossy=True``): MaxPool, Concat, Softmax/LogSoftmax after the mean, and any other op.
With ``lossy``, MaxPool becomes ``SumPool2d`` (the max of binary spikes in a window equals
their sum while at most one fires; measured on the bundled vgg_max_fmnist at T=8, psi=1,
simulated with NIR's IF: 73 % top-1 against 22 % with ``AvgPool2d``, the SNN 90 %), and a
Softmax after the mean is dropped (apply it to the averaged output); Concat stays an error.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConfigError, GraphError, UnsupportedModelError
from ..ops.schema import DOMAIN, OP_TYPE
from ..rewrite.rewriter import LATERAL_TAG

__all__ = ["NIRExport", "NIRExportWarning", "NIRUnsupportedError", "to_nir", "export_nir", "SUPPORTED_OPS"]

#: ONNX ops the exporter maps (besides BurstIF).
SUPPORTED_OPS = ("Conv", "Gemm", "MatMul", "Add", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
                 "Tile", "ReduceMean", "Identity", "Dropout")
# ops whose only data input is input 0 (the others are shapes, axes, repeats, scales)
_FIRST_INPUT_ONLY = ("Tile", "Reshape", "ReduceMean", "Flatten", "Identity", "Dropout", "Softmax", "LogSoftmax",
                     "Squeeze", "Unsqueeze", "Slice", "Pad", "Resize", "Upsample")
_DROPPABLE_TAIL = ("Softmax", "LogSoftmax")



class NIRExportWarning(UserWarning):
    """What the NIR graph cannot express of the SNN (one line per layer)."""


@dataclass
class NIRExport:
    """``graph``: the ``nir.NIRGraph``; ``losses``: (layer, what NIR loses) per layer;
    ``approximations``: (node, op, what was done) for ops mapped only with ``lossy``."""

    graph: object
    T: int
    losses: list[tuple[str, str]] = field(default_factory=list)
    approximations: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.losses and not self.approximations

    def message(self, source: str = "the SNN") -> str:
        """The warning text: one line per layer, then the approximations, then what they mean."""
        lines = [f"NIR cannot express all of {source}; the exported graph differs from it in:"]
        lines += [f"  {name}: {what}" for name, what in self.losses]
        lines += [f"  {name} ({op}): {what}" for name, op, what in self.approximations]
        if self.losses:
            lines.append("(NIR's IF resets to zero: the charge above the threshold at a spike is lost and rates come "
                         "out lower; it emits one spike per step, so a burst of psi > 1 is clipped to one.)")
        return "\n".join(lines)


def _nir():
    try:
        import nir
    except ImportError:
        raise ConfigError("NIR export needs the 'nir' package: pip install 'onnx2burst[nir]' "
                          "(or pip install nir)") from None
    return nir


@dataclass
class _Val:
    """An ONNX tensor as NIR sees it: the NIR nodes whose outputs sum to it, its shape
    without the batch axis, and where it is in time (static: before the Tile; temporal:
    [T*N, ...]; unfolded: [T, N, ...]; mean: averaged over T)."""

    refs: tuple[str, ...]
    shape: tuple[int, ...]
    phase: str
    dropped: tuple[str, ...] = ()


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _sanitize(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.replace("/", ".")).strip("._")
    return s or "node"


def _conv_out(size, k, s, p0, p1, d):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


class _Builder:
    def __init__(self, model: onnx.ModelProto, lossy: bool):
        self.nir = _nir()
        self.model = model
        self.g = model.graph
        self.lossy = lossy
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        for n in self.g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                a = _attrs(n)
                if "value" in a:
                    self.consts[n.output[0]] = numpy_helper.to_array(a["value"])
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.nodes: dict = {}
        self.edges: list[tuple[str, str]] = []
        self.vals: dict[str, _Val] = {}
        self.names: set[str] = set()
        self.issues: list[tuple[str, str, str]] = []
        self.approx: list[tuple[str, str, str]] = []
        self.losses: list[tuple[str, str]] = []
        self.neurons: list[dict] = []          # IF name, theta, offsets, shape, psi, source name
        self.bias_of: dict[str, str] = {}      # NIR layer -> its bias field (for offset folding)
        self.T = self._find_T()

    # -- helpers -------------------------------------------------------------------------
    def _find_T(self) -> int:
        Ts = {int(_attrs(n).get("T", 0)) for n in self.g.node if n.domain == DOMAIN and n.op_type == OP_TYPE}
        if not Ts:
            raise GraphError(f"graph {self.g.name!r} has no {OP_TYPE} node (domain {DOMAIN}): "
                             "not an SNN file; make one with `onnx2burst convert`")
        if len(Ts) > 1:
            raise GraphError(f"the {OP_TYPE} nodes disagree on T: {sorted(Ts)}")
        return Ts.pop()

    def name(self, base: str) -> str:
        s = _sanitize(base)
        out, k = s, 1
        while out in self.names:
            out = f"{s}_{k}"
            k += 1
        self.names.add(out)
        return out

    def add(self, name: str, node, refs) -> str:
        self.nodes[name] = node
        for r in refs:
            if (r, name) in self.edges:
                raise GraphError(f"NIR node {name!r} would get the same input {r!r} twice "
                                 "(a tensor added to itself); NIR cannot express a doubled edge")
            self.edges.append((r, name))
        return name

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def issue(self, node, why: str):
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
    def build(self):
        nir = self.nir
        inits = set(self.consts)
        for vi in self.g.input:
            if vi.name in inits:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
                raise GraphError(f"input {vi.name!r} has shape {dims}: NIR needs static dims after the batch axis")
            shape = tuple(int(d) for d in dims[1:])
            name = self.name(vi.name)
            self.nodes[name] = nir.Input(input_type={"input": np.array(shape)}, metadata={"onnx_input": vi.name})
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
            "neuron": "onnx2burst BurstIF (ALGORITHM.md 2): IF + Scale(theta), rounding offset in the bias",
            "reset": "subtract (exported: zero, NIR's IF)",
            "lossy": bool(self.lossy),
        }
        for p in self.model.metadata_props:
            if p.key in ("onnx2burst.version", "onnx2burst.source_sha256", "onnx2burst.calibration_samples"):
                meta[p.key.split(".", 1)[1]] = p.value
        if self.losses or self.approx:
            meta["losses"] = "\n".join([f"{a}: {b}" for a, b in self.losses]
                                       + [f"{a} ({b}): {c}" for a, b, c in self.approx])
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=meta)

    def op(self, node, x: _Val):  # noqa: C901 - one branch per op
        op, a, out = node.op_type, _attrs(node), node.output[0]
        label = node.name or out
        if node.domain == DOMAIN and op == OP_TYPE:
            return self.burst_if(node, x, a)
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
            return self.conv(node, x, a)
        if op in ("Gemm", "MatMul"):
            return self.dense(node, x, a)
        if op == "Add":
            return self.add_op(node)
        if op in ("AveragePool", "GlobalAveragePool", "MaxPool"):
            return self.pool(node, x, a)
        if op == "Flatten":
            if int(a.get("axis", 1)) != 1:
                raise _Skip(f"Flatten axis={a.get('axis')}: only axis 1 keeps the batch axis apart")
            return self.flatten(label, x, out)
        if op == "Reshape":
            return self.reshape(node, x)
        if op == "ReduceMean":
            axes = a.get("axes")
            if axes is None and len(node.input) > 1:
                c = self.const(node.input[1])
                axes = None if c is None else [int(v) for v in c.reshape(-1)]
            if x.phase != "unfolded" or list(axes or []) != [0] or int(a.get("keepdims", 1)) != 0:
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

    # -- ops ------------------------------------------------------------------------------
    def burst_if(self, node, x: _Val, a):
        nir = self.nir
        if x.phase != "temporal":
            raise _Skip("the neuron's input is not time-expanded (no Tile before it)")
        vth = self.const(node.input[1])
        if vth is None:
            raise _Skip("vth is not an initializer")
        T, psi, tau = int(a.get("T", 1)), int(a.get("psi", 1)), float(a.get("tau", 1.0))
        vth = np.asarray(vth, np.float32).reshape(-1)
        shape = x.shape
        if vth.size not in (1, shape[0]):
            raise _Skip(f"vth has {vth.size} values for {shape[0]} channels")
        theta_c = np.float32(tau) * vth                       # as the kernel computes it
        fires_c = theta_c > 0
        bshape = (-1,) + (1,) * (len(shape) - 1)
        full = lambda v: np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float32).reshape(bshape), shape))  # noqa: E731
        theta = full(np.where(fires_c, theta_c, np.float32(1)))
        label = node.name or node.output[0]
        name = self.name(label)
        meta = {"onnx_node": label, "psi": psi, "tau": tau, "T": T, "vth": vth,
                "reset": "subtract", "exported_reset": "zero",
                "scale_node": "", "rounding_offset": "theta/(2T) per step, added to the bias of the layer feeding it"}
        ifn = nir.IF(r=full(fires_c.astype(np.float32)), v_threshold=theta,
                     v_reset=np.zeros(shape, np.float32), metadata=meta)
        self.add(name, ifn, x.refs)
        sname = self.name(label + ".scale")
        meta["scale_node"] = sname
        scale = full(np.where(fires_c, theta_c, np.float32(0)))
        self.add(sname, nir.Scale(scale=scale, metadata={"onnx_node": label, "role": "spike weight theta = tau*vth"}),
                 [name])
        offset_c = np.where(fires_c, theta_c / np.float32(2 * T), np.float32(0)).astype(np.float32)
        self.neurons.append({"name": name, "label": label, "offset": offset_c, "shape": shape})
        loss = ["reset to zero instead of by subtraction"]
        if psi > 1:
            loss.append(f"psi={psi} -> 1 spike per step (output capped at theta per step, not {psi}*theta)")
        self.losses.append((label, "; ".join(loss)))
        self.vals[node.output[0]] = _Val((sname,), shape, x.phase)
        if len(node.output) > 1 and node.output[1]:
            self.vals[node.output[1]] = None  # the spike count: not representable

    def conv(self, node, x: _Val, a):
        nir = self.nir
        w = self.const(node.input[1])
        b = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if w is None or (len(node.input) > 2 and node.input[2] and b is None):
            raise _Skip("weights/bias are not initializers")
        nd = w.ndim - 2
        if nd not in (1, 2) or len(x.shape) != nd + 1:
            raise _Skip(f"{nd}-d convolution on a {len(x.shape)}-d sample: NIR has Conv1d and Conv2d")
        ap = a.get("auto_pad", b"NOTSET")
        ap = ap.decode() if isinstance(ap, bytes) else ap
        if ap not in ("NOTSET", "VALID"):
            raise _Skip(f"auto_pad={ap}")
        pads = [int(p) for p in a.get("pads", [0] * 2 * nd)]
        strides = [int(s) for s in a.get("strides", [1] * nd)]
        dil = [int(d) for d in a.get("dilations", [1] * nd)]
        groups = int(a.get("group", 1))
        if pads[:nd] != pads[nd:]:
            raise _Skip(f"asymmetric pads {pads}")
        w = np.asarray(w, np.float32)
        bias = np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32).reshape(-1).copy()
        label = node.name or node.output[0]
        spatial = tuple(_conv_out(x.shape[1 + i], w.shape[2 + i], strides[i], pads[i], pads[i + nd], dil[i])
                        for i in range(nd))
        meta = {"onnx_node": label}
        if nd == 2:
            n = nir.Conv2d(input_shape=tuple(x.shape[1:]), weight=w, stride=tuple(strides), padding=tuple(pads[:2]),
                           dilation=tuple(dil), groups=groups, bias=bias, metadata=meta)
        else:
            n = nir.Conv1d(input_shape=int(x.shape[1]), weight=w, stride=strides[0], padding=pads[0],
                           dilation=dil[0], groups=groups, bias=bias, metadata=meta)
        name = self.add(self.name(label), n, x.refs)
        self.vals[node.output[0]] = _Val((name,), (int(w.shape[0]),) + spatial, x.phase)

    def dense(self, node, x: _Val, a):
        nir = self.nir
        label = node.name or node.output[0]
        if len(x.shape) != 1:
            raise _Skip(f"{node.op_type} on a sample of shape {list(x.shape)}: NIR's Affine takes vectors")
        B = self.const(node.input[1])
        if B is None or B.ndim != 2:
            raise _Skip("the weight is not a 2-d initializer")
        if node.op_type == "MatMul":
            W, bias = np.ascontiguousarray(B.T, np.float32), None
        else:
            if int(a.get("transA", 0)):
                raise _Skip("transA=1")
            W = np.asarray(B if int(a.get("transB", 0)) else B.T, np.float32)
            alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
            if alpha != 1.0:
                W = (W * np.float32(alpha)).astype(np.float32)
            bias = None
            if len(node.input) > 2 and node.input[2]:
                c = self.const(node.input[2])
                if c is None:
                    raise _Skip("the bias is not an initializer")
                bias = np.broadcast_to(np.asarray(c, np.float32).reshape(-1) * np.float32(beta),
                                       (W.shape[0],)).astype(np.float32)
        if W.shape[1] != x.shape[0]:
            raise _Skip(f"weight {list(W.shape)} does not fit an input of {x.shape[0]} features")
        meta = {"onnx_node": label}
        n = nir.Linear(weight=W, metadata=meta) if bias is None else nir.Affine(weight=W, bias=bias, metadata=meta)
        name = self.add(self.name(label), n, x.refs)
        self.vals[node.output[0]] = _Val((name,), (int(W.shape[0]),), x.phase)

    def add_op(self, node):
        nir = self.nir
        ins = list(node.input)
        consts = [self.const(i) for i in ins]
        if len(ins) != 2:
            raise _Skip("Add with other than two inputs")
        if all(c is None for c in consts):
            va, vb = self.vals.get(ins[0]), self.vals.get(ins[1])
            if va is None or vb is None:
                raise _Skip("an input is not a tensor the exporter has mapped")
            if va.shape != vb.shape:
                raise _Skip(f"broadcasting Add of {list(va.shape)} and {list(vb.shape)}")
            if va.phase != vb.phase:
                raise _Skip(f"adds a {va.phase} tensor to a {vb.phase} one")
            self.vals[node.output[0]] = _Val(va.refs + vb.refs, va.shape, va.phase)
            return
        k = 0 if consts[0] is None else 1
        v, c = self.vals.get(ins[k]), consts[1 - k]
        if v is None:
            raise _Skip("an input is not a tensor the exporter has mapped")
        # a bias after a MatMul/Conv that feeds only this Add: fold it into the layer
        layer = self.nodes.get(v.refs[0]) if len(v.refs) == 1 else None
        only_here = len(self.consumers.get(ins[k], [])) == 1 and ins[k] not in {o.name for o in self.g.output}
        if isinstance(layer, (nir.Linear, nir.Affine, nir.Conv2d, nir.Conv1d)) and only_here:
            C = v.shape[0]
            cc = np.asarray(c, np.float32)
            rank = len(v.shape) + 1                      # with the batch axis
            padded = (1,) * (rank - cc.ndim) + tuple(cc.shape) if cc.ndim <= rank else None
            ok = padded is not None and padded[0] == 1 and padded[1] in (1, C) and all(d == 1 for d in padded[2:])
            vec = np.broadcast_to(cc.reshape(-1), (C,)) if ok else None
            if vec is None:
                raise _Skip(f"adds a constant of shape {list(cc.shape)} that is not a per-channel bias")
            if isinstance(layer, nir.Linear):
                layer = nir.Affine(weight=layer.weight, bias=np.asarray(vec, np.float32).copy(),
                                   metadata=dict(layer.metadata, bias_from=node.name or node.output[0]))
                self.nodes[v.refs[0]] = layer
            else:
                layer.bias = (layer.bias + vec).astype(np.float32)
                layer.metadata["bias_from"] = node.name or node.output[0]
            self.vals[node.output[0]] = v
            return
        raise _Skip("adds a constant that is not the bias of the layer before it")

    def pool(self, node, x: _Val, a):
        nir = self.nir
        label = node.name or node.output[0]
        if len(x.shape) != 3:
            raise _Skip(f"pooling on a sample of shape {list(x.shape)}: NIR pools in 2-d")
        C, H, W = x.shape
        if node.op_type == "GlobalAveragePool":
            k, s, pads = [H, W], [H, W], [0, 0, 0, 0]
        else:
            ap = a.get("auto_pad", b"NOTSET")
            ap = ap.decode() if isinstance(ap, bytes) else ap
            k = [int(v) for v in a["kernel_shape"]]
            s = [int(v) for v in a.get("strides", [1, 1])]
            pads = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
            if ap not in ("NOTSET", "VALID") or int(a.get("ceil_mode", 0)) or pads[:2] != pads[2:]:
                raise _Skip("auto_pad, ceil_mode or asymmetric pads")
            if node.op_type == "AveragePool" and any(pads) and not int(a.get("count_include_pad", 0)):
                raise _Skip("count_include_pad=0 with padding: NIR's AvgPool2d divides by the kernel size")
            if node.op_type == "MaxPool":
                if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
                    raise _Skip("dilated MaxPool")
                if not self.lossy:
                    raise _Skip(_why_not("MaxPool"))
                self.approx.append((label, "MaxPool", f"approximated by SumPool2d (kernel {k}, stride {s}): "
                                    "the sum of the window's spikes, not their max (equal while at most one fires)"))
        Ho = _conv_out(H, k[0], s[0], pads[0], pads[2], 1)
        Wo = _conv_out(W, k[1], s[1], pads[1], pads[3], 1)
        pool = nir.SumPool2d if node.op_type == "MaxPool" else nir.AvgPool2d
        n = pool(kernel_size=np.array(k), stride=np.array(s), padding=np.array(pads[:2]),
                 metadata={"onnx_node": label, "onnx_op": node.op_type})
        name = self.add(self.name(label), n, x.refs)
        self.vals[node.output[0]] = _Val((name,), (C, Ho, Wo), x.phase)

    def flatten(self, label: str, x: _Val, out: str):
        nir = self.nir
        if len(x.shape) == 1:
            self.vals[out] = x
            return
        n = nir.Flatten(input_type={"input": np.array(x.shape)}, start_dim=0, end_dim=-1,
                        metadata={"onnx_node": label})
        name = self.add(self.name(label), n, x.refs)
        self.vals[out] = _Val((name,), (int(np.prod(x.shape)),), x.phase)

    def reshape(self, node, x: _Val):
        out = node.output[0]
        label = node.name or out
        readers = self.consumers.get(out, [])
        is_output = out in {o.name for o in self.g.output}
        shp = self.const(node.input[1])
        unfold = x.phase == "temporal" and (readers or is_output) and all(
            r.op_type == "ReduceMean" for r in readers)
        if shp is not None:
            dims = [int(d) for d in shp.reshape(-1)]
            unfold = unfold and len(dims) >= 2 and dims[0] == self.T
            if not unfold:
                if len(dims) == 2 and (dims[0] in (0, -1) or dims[1] in (-1, int(np.prod(x.shape)))) \
                        and (dims[1] == -1 or dims[1] == int(np.prod(x.shape))):
                    return self.flatten(label, x, out)
                raise _Skip(f"Reshape to {dims}: only a flatten to [N, -1] maps")
        if not unfold:
            raise _Skip("a Reshape with a computed shape that is not the time unfold [T, N, ...]")
        self.vals[out] = _Val(x.refs, x.shape, "unfolded", x.dropped)

    # -- outputs and the rounding offset ----------------------------------------------------
    def outputs(self):
        nir = self.nir
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
            self.add(name, nir.Output(output_type={"output": np.array(v.shape)}, metadata=meta), v.refs)

    def fold_offsets(self):
        """Add each neuron's rounding offset theta/(2T) to the bias of the layer that feeds
        only it; else put a bias-only layer in front of it."""
        nir = self.nir
        outs: dict[str, list[str]] = {}
        for s, d in self.edges:
            outs.setdefault(s, []).append(d)
        for nrn in self.neurons:
            name, off, shape = nrn["name"], nrn["offset"], nrn["shape"]
            preds = [s for s, d in self.edges if d == name]
            target = None
            for p in preds:
                layer = self.nodes[p]
                if isinstance(layer, (nir.Conv2d, nir.Conv1d, nir.Affine, nir.Linear)) and outs.get(p) == [name]:
                    target = p
                    break
            if target is not None:
                layer = self.nodes[target]
                if isinstance(layer, nir.Linear):
                    layer = nir.Affine(weight=layer.weight, bias=np.zeros(layer.weight.shape[0], np.float32),
                                       metadata=dict(layer.metadata))
                    self.nodes[target] = layer
                onnx_bias = np.asarray(layer.bias, np.float32).copy()
                layer.bias = (onnx_bias + off).astype(np.float32)
                layer.metadata["rounding_offset"] = f"bias = onnx_bias + theta/(2T) of {nrn['label']}"
                layer.metadata["onnx_bias"] = onnx_bias
                self.nodes[name].metadata["rounding_offset_in"] = target
                continue
            # a bias-only layer: depthwise 1x1 conv with unit weights, or an identity Affine
            C = shape[0]
            bname = self.name(nrn["label"] + ".offset")
            meta = {"onnx_node": nrn["label"], "role": f"rounding offset theta/(2T) of {nrn['label']}"}
            if len(shape) == 3:
                bn = nir.Conv2d(input_shape=tuple(shape[1:]), weight=np.ones((C, 1, 1, 1), np.float32), stride=1,
                                padding=0, dilation=1, groups=C, bias=off.copy(), metadata=meta)
            elif len(shape) == 2:
                bn = nir.Conv1d(input_shape=int(shape[1]), weight=np.ones((C, 1, 1), np.float32), stride=1,
                                padding=0, dilation=1, groups=C, bias=off.copy(), metadata=meta)
            else:
                bn = nir.Affine(weight=np.eye(C, dtype=np.float32),
                                bias=np.broadcast_to(off, (C,)).astype(np.float32), metadata=meta)
            self.nodes[bname] = bn
            self.edges = [(s, bname if d == name else d) for s, d in self.edges]
            self.edges.append((bname, name))
            self.nodes[name].metadata["rounding_offset_in"] = bname


class _Skip(Exception):
    """A node the exporter cannot map; the message says why."""


_BROKEN = _Val((), (), "broken")  # the output of a node that could not be mapped


def _why_not(op: str) -> str:
    if op == "MaxPool":
        return ("NIR has no max pooling (and max of spikes is not max of rates, ALGORITHM.md 3); "
                "--lossy approximates it by SumPool2d")
    if op == "Concat":
        return "NIR has no concatenation of branches"
    return "NIR has no equivalent"


class NIRUnsupportedError(UnsupportedModelError):
    """Nodes of the SNN that NIR cannot express; ``issues``: (node, op type, reason)."""

    def __init__(self, issues, lossy: bool = False):
        self.issues = list(issues)
        hint = ("no approximation exists for these, even with --lossy" if lossy else
                "pass --lossy (lossy=True) to approximate or drop what can be, or change the model")
        lines = [f"  {name} ({op}): {why}" for name, op, why in self.issues]
        Exception.__init__(self, f"{len(self.issues)} node(s) cannot be exported to NIR:\n" + "\n".join(lines)
                           + f"\n{hint}")


def to_nir(model: onnx.ModelProto, *, lossy: bool = False) -> NIRExport:
    """Map an SNN ModelProto (with BurstIF nodes) onto a ``nir.NIRGraph``; see the module docstring.

    Raises ``GraphError`` for a model that is not an SNN and ``UnsupportedModelError``
    (naming each node) for ops NIR cannot express, unless ``lossy`` (then MaxPool becomes
    SumPool2d and a Softmax after the mean is dropped; ``approximations`` lists them).
    Does not warn: ``export_nir`` does, or use ``result.losses``.
    """
    b = _Builder(model, lossy)
    graph = b.build()
    return NIRExport(graph=graph, T=b.T, losses=b.losses, approximations=b.approx)


def export_nir(snn: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike, *, lossy: bool = False,
               warn: bool = True) -> NIRExport:
    """Write the NIR graph of an SNN ONNX file (path or ModelProto) to ``output`` (HDF5, atomically).

    Emits one ``NIRExportWarning`` listing, per layer, what NIR loses (``warn=False``: none;
    the result's ``losses``/``approximations`` hold the same). Example::

        from onnx2burst.interop.nir import export_nir
        export_nir("vgg.snn.onnx", "vgg.nir")
        import nir; g = nir.read("vgg.nir")
    """
    from ..io import check_output, load_model, write_file

    source = None
    if not isinstance(snn, onnx.ModelProto):
        source = Path(snn)
        check_output(output, source)
        snn = load_model(source)
    else:
        check_output(output)
    result = to_nir(snn, lossy=lossy)
    nir = _nir()
    buf = io.BytesIO()
    nir.write(buf, result.graph)
    write_file(output, buf.getvalue(), source=source)
    if warn and not result.exact:
        warnings.warn(result.message(str(source) if source else "the SNN"), NIRExportWarning, stacklevel=2)
    return result
