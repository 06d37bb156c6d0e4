"""The per-op part of the NIR exporter: how each ONNX layer of an SNN becomes NIR nodes.

``_LayerMapper`` is a mixin of ``nir_graph._Builder``: each method maps one node onto
``self.nodes``/``self.edges`` (``_N`` records, made ``nir`` objects by ``nir_io``) and records its
output in ``self.vals``, or raises ``_Skip`` saying why it cannot. The graph it builds still has
``Scale`` nodes (a spike weighs ``theta``, an average pool ``1/k``); ``nir_lower`` removes them.
See ``interop.nir`` for the mapping and what it loses.
"""
from __future__ import annotations

import numpy as np

from ..graph.index import attr
from ..snn import Neuron
from .nir_common import _N, _Skip, _Val, _auto_pad, _conv_out, _why_not


def diagonal_conv(C: int, shape: tuple, k=(1, 1), stride=(1, 1), pads=(0, 0), value=None, meta=None) -> _N:
    """A Conv that maps channel ``c`` onto channel ``c`` only (weight ``value[c]`` at every tap of a
    ``k`` kernel), on a sample of ``shape`` (C, ...): a per-channel scale, a bias carrier or a pool.
    A dense (groups=1) diagonal, not a depthwise conv: nir's type inference ignores ``groups``."""
    nd = len(shape) - 1
    k, stride, pads = tuple(k[:nd]), tuple(stride[:nd]), tuple(pads[:nd])
    v = np.ones(C, np.float32) if value is None else np.broadcast_to(np.asarray(value, np.float32), (C,))
    w = np.zeros((C, C) + k, np.float32)
    w[np.arange(C), np.arange(C)] = v.reshape((C,) + (1,) * nd)
    spatial = tuple(_conv_out(shape[1 + i], k[i], stride[i], pads[i], pads[i], 1) for i in range(nd))
    return _N("Conv", {"weight": w, "bias": np.zeros(C, np.float32), "stride": stride, "padding": pads,
                       "dilation": (1,) * nd, "groups": 1, "in_shape": tuple(shape)}, (C,) + spatial, dict(meta or {}))


class _LayerMapper:
    """The layer mappings of ``_Builder`` (which provides ``nodes``, ``vals``, ``const``, ``add``, ...)."""

    def burst_if(self, nrn: Neuron, x: _Val):
        """``IF(r=1, v_threshold=theta = tau*vth)`` per channel, then ``Scale(theta)`` (docs/method.md
        §2). A channel with ``theta <= 0`` never fires (``fires`` false; ``nir_io`` gives it an
        unreachable threshold). The rounding offset ``theta/(2T)`` is kept for ``fold_offsets``."""
        if x.phase != "temporal":
            raise _Skip("the neuron's input is not time-expanded (no Tile before it)")
        vth = nrn.vth if nrn.vth is not None else self.const(nrn.vth_name)  # an initializer, or a Constant's value
        if vth is None:
            raise _Skip("vth is not an initializer")
        T, psi, tau = nrn.T, nrn.psi, nrn.tau
        vth = np.asarray(vth, np.float32).reshape(-1)
        shape = x.shape
        if vth.size not in (1, shape[0]):
            raise _Skip(f"vth has {vth.size} values for {shape[0]} channels")
        C = shape[0]
        theta_c = np.broadcast_to(np.float32(tau) * vth, (C,)).astype(np.float32)   # as the kernel computes it
        fires = theta_c > 0
        label = nrn.name
        meta = {"onnx_node": label, "psi": int(psi), "tau": float(tau), "T": int(T), "vth": vth,
                "reset": "subtract", "spike_weight": "theta = tau*vth, folded into the next layer's weights",
                "rounding_offset": "theta/(2T) per step, in the bias of the layer feeding it"}
        name = self.add(self.name(label), _N("IF", {"thr": np.where(fires, theta_c, np.float32(1)), "fires": fires},
                                             shape, meta), x.refs)
        sname = self.add(self.name(label + "_scale"), _N("Scale", {"s": np.where(fires, theta_c, np.float32(0))},
                                                         shape, {"onnx_node": label}), [name])
        offset_c = np.where(fires, theta_c / np.float32(2 * T), np.float32(0)).astype(np.float32)
        self.neurons.append({"name": name, "label": label, "offset": offset_c, "shape": shape})
        if psi > 1:
            loss = (f"psi={psi}: NIR's IF and Norse reset to zero and spike once a step; Sinabs: no cap at "
                    f"{psi} spikes a step, membrane floored at -threshold")
        else:
            loss = "NIR's IF and Norse reset to zero; Sinabs: several spikes a step, membrane floored at -threshold"
        self.losses.append((label, loss))
        self.vals[nrn.y] = _Val((sname,), shape, x.phase)
        if nrn.spikes:
            self.vals[nrn.spikes] = None  # the spike count: not representable

    def conv(self, node, x: _Val):
        """``Conv`` -> ``Conv1d``/``Conv2d`` with the initializer weights and bias (zero when absent)."""
        w = self.const(node.input[1])
        b = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if w is None or (len(node.input) > 2 and node.input[2] and b is None):
            raise _Skip("weights/bias are not initializers")
        nd = w.ndim - 2
        if nd not in (1, 2) or len(x.shape) != nd + 1:
            raise _Skip(f"{nd}-d convolution on a {len(x.shape)}-d sample: NIR has Conv1d and Conv2d")
        ap = _auto_pad(node)
        if ap not in ("NOTSET", "VALID"):
            raise _Skip(f"auto_pad={ap}")
        pads = [int(p) for p in attr(node, "pads", [0] * 2 * nd)]
        strides = [int(s) for s in attr(node, "strides", [1] * nd)]
        dil = [int(d) for d in attr(node, "dilations", [1] * nd)]
        groups = int(attr(node, "group", 1))
        if pads[:nd] != pads[nd:]:
            raise _Skip(f"asymmetric pads {pads}")
        w = np.asarray(w, np.float32)
        bias = np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32).reshape(-1).copy()
        label = node.name or node.output[0]
        spatial = tuple(_conv_out(x.shape[1 + i], w.shape[2 + i], strides[i], pads[i], pads[i + nd], dil[i])
                        for i in range(nd))
        n = _N("Conv", {"weight": w, "bias": bias, "stride": tuple(strides), "padding": tuple(pads[:nd]),
                        "dilation": tuple(dil), "groups": groups, "in_shape": tuple(x.shape)},
               (int(w.shape[0]),) + spatial, {"onnx_node": label})
        name = self.add(self.name(label), n, x.refs)
        self.vals[node.output[0]] = _Val((name,), n.shape, x.phase)

    def dense(self, node, x: _Val):
        """``MatMul`` -> ``Affine`` (weight ``B^T``, bias 0); ``Gemm`` -> ``Affine`` with weight
        ``alpha * op(B)`` and bias ``beta * C`` (0 without C)."""
        label = node.name or node.output[0]
        if len(x.shape) != 1:
            raise _Skip(f"{node.op_type} on a sample of shape {list(x.shape)}: NIR's Affine takes vectors")
        B = self.const(node.input[1])
        if B is None or B.ndim != 2:
            raise _Skip("the weight is not a 2-d initializer")
        if node.op_type == "MatMul":
            W, bias = np.ascontiguousarray(B.T, np.float32), None
        else:
            if int(attr(node, "transA", 0)):
                raise _Skip("transA=1")
            W = np.asarray(B if int(attr(node, "transB", 0)) else B.T, np.float32)
            alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
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
        bias = np.zeros(W.shape[0], np.float32) if bias is None else bias
        n = _N("Affine", {"weight": np.ascontiguousarray(W), "bias": bias}, (int(W.shape[0]),), {"onnx_node": label})
        name = self.add(self.name(label), n, x.refs)
        self.vals[node.output[0]] = _Val((name,), n.shape, x.phase)

    def add_op(self, node):
        """``Add`` of two mapped branches -> both feed the next node (a NIR node sums its
        inputs); ``Add`` of a per-channel constant -> folded into the bias of the layer before."""
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
        if layer is not None and layer.kind in ("Affine", "Conv") and only_here:
            C = v.shape[0]
            cc = np.asarray(c, np.float32)
            rank = len(v.shape) + 1                      # with the batch axis
            padded = (1,) * (rank - cc.ndim) + tuple(cc.shape) if cc.ndim <= rank else None
            ok = padded is not None and padded[0] == 1 and padded[1] in (1, C) and all(d == 1 for d in padded[2:])
            if not ok:
                raise _Skip(f"adds a constant of shape {list(cc.shape)} that is not a per-channel bias")
            layer.p["bias"] = (layer.p["bias"] + np.broadcast_to(cc.reshape(-1), (C,))).astype(np.float32)
            layer.meta["bias_from"] = node.name or node.output[0]
            self.vals[node.output[0]] = v
            return
        raise _Skip("adds a constant that is not the bias of the layer before it")

    def pool(self, node, x: _Val):
        """``AveragePool``/``GlobalAveragePool`` -> ``SumPool2d`` then ``Scale(1/k)`` (a padded one:
        a diagonal Conv of weight ``1/k``); ``MaxPool`` -> ``SumPool2d`` (only with ``lossy``)."""
        label = node.name or node.output[0]
        if len(x.shape) != 3:
            raise _Skip(f"pooling on a sample of shape {list(x.shape)}: NIR pools in 2-d")
        C, H, W = x.shape
        if node.op_type == "GlobalAveragePool":
            k, s, pads = [H, W], [H, W], [0, 0, 0, 0]
        else:
            ap = _auto_pad(node)
            k = [int(v) for v in attr(node, "kernel_shape")]
            s = [int(v) for v in attr(node, "strides", [1, 1])]
            pads = [int(v) for v in attr(node, "pads", [0, 0, 0, 0])]
            if ap not in ("NOTSET", "VALID") or int(attr(node, "ceil_mode", 0)) or pads[:2] != pads[2:]:
                raise _Skip("auto_pad, ceil_mode or asymmetric pads")
            if node.op_type == "AveragePool" and any(pads) and not int(attr(node, "count_include_pad", 0)):
                raise _Skip("count_include_pad=0 with padding: the divisor would vary at the border")
            if node.op_type == "MaxPool":
                if any(int(d) != 1 for d in attr(node, "dilations", [1, 1])):
                    raise _Skip("dilated MaxPool")
                if not self.lossy:
                    raise _Skip(_why_not("MaxPool"))
                self.approx.append((label, "MaxPool", f"approximated by SumPool2d (kernel {k}, stride {s}): "
                                    "the sum of the window's spikes, not their max (equal while at most one fires)"))
        avg = node.op_type != "MaxPool"
        meta = {"onnx_node": label, "onnx_op": node.op_type}
        if any(pads):   # importers ignore a SumPool2d's padding: a diagonal conv pads with zeros like ONNX
            n = diagonal_conv(C, x.shape, k, s, pads[:2], np.float32(1.0 / (k[0] * k[1])) if avg else None, meta)
            name = self.add(self.name(label), n, x.refs)
            self.vals[node.output[0]] = _Val((name,), n.shape, x.phase)
            return
        shape = (C, _conv_out(H, k[0], s[0], 0, 0, 1), _conv_out(W, k[1], s[1], 0, 0, 1))
        n = _N("SumPool", {"kernel": tuple(k), "stride": tuple(s)}, shape, meta)
        name = self.add(self.name(label), n, x.refs)
        if avg:
            name = self.add(self.name(label + "_mean"), _N("Scale", {"s": np.full(C, 1.0 / (k[0] * k[1]), np.float32)},
                                                            shape, {"onnx_node": label}), [name])
        self.vals[node.output[0]] = _Val((name,), shape, x.phase)

    def flatten(self, label: str, x: _Val, out: str):
        """A flatten of everything after the batch axis -> ``Flatten(start_dim=0)`` (nothing for a vector)."""
        if len(x.shape) == 1:
            self.vals[out] = x
            return
        n = _N("Flatten", {"in_shape": tuple(x.shape)}, (int(np.prod(x.shape)),), {"onnx_node": label})
        name = self.add(self.name(label), n, x.refs)
        self.vals[out] = _Val((name,), n.shape, x.phase)

    def reshape(self, node, x: _Val):
        """``Reshape`` to ``[N, -1]`` -> ``Flatten``; the time unfold ``[T, N, ...]`` read only by the
        mean over T -> nothing (the tensor becomes ``unfolded``)."""
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
