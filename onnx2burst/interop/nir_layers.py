"""The per-op part of the NIR exporter: how each ONNX layer of an SNN becomes NIR nodes.

``_LayerMapper`` is a mixin of ``nir_graph._Builder``: each method maps one node onto
``self.nodes``/``self.edges`` and records its output in ``self.vals``, or raises ``_Skip``
saying why it cannot. See ``interop.nir`` for the mapping and what it loses.
"""
from __future__ import annotations

import numpy as np

from ..graph.index import attr
from ..snn import Neuron
from .nir_common import _Skip, _Val, _auto_pad, _conv_out, _why_not


class _LayerMapper:
    """The layer mappings of ``_Builder`` (which provides ``nir``, ``nodes``, ``vals``, ``const``, ...)."""

    def burst_if(self, nrn: Neuron, x: _Val):
        """``IF(r=1, v_threshold=theta, v_reset=0)`` then ``Scale(theta)``, ``theta = tau*vth`` per
        channel (docs/method.md §2); channels with ``theta <= 0`` get ``r = 0``, threshold 1 and
        scale 0. The rounding offset ``theta/(2T)`` is kept for ``fold_offsets``."""
        nir = self.nir
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
        theta_c = np.float32(tau) * vth                       # as the kernel computes it
        fires_c = theta_c > 0
        bshape = (-1,) + (1,) * (len(shape) - 1)
        full = lambda v: np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float32).reshape(bshape), shape))  # noqa: E731
        theta = full(np.where(fires_c, theta_c, np.float32(1)))
        label = nrn.name
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
        self.vals[nrn.y] = _Val((sname,), shape, x.phase)
        if nrn.spikes:
            self.vals[nrn.spikes] = None  # the spike count: not representable

    def conv(self, node, x: _Val):
        """``Conv`` -> ``Conv1d``/``Conv2d`` with the initializer weights and bias (zero when absent)."""
        nir = self.nir
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
        meta = {"onnx_node": label}
        if nd == 2:
            n = nir.Conv2d(input_shape=tuple(x.shape[1:]), weight=w, stride=tuple(strides), padding=tuple(pads[:2]),
                           dilation=tuple(dil), groups=groups, bias=bias, metadata=meta)
        else:
            n = nir.Conv1d(input_shape=int(x.shape[1]), weight=w, stride=strides[0], padding=pads[0],
                           dilation=dil[0], groups=groups, bias=bias, metadata=meta)
        name = self.add(self.name(label), n, x.refs)
        self.vals[node.output[0]] = _Val((name,), (int(w.shape[0]),) + spatial, x.phase)

    def dense(self, node, x: _Val):
        """``MatMul`` -> ``Linear`` (weight ``B^T``); ``Gemm`` -> ``Affine`` with weight
        ``alpha * op(B)`` and bias ``beta * C`` (``Linear`` without C)."""
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
        meta = {"onnx_node": label}
        n = nir.Linear(weight=W, metadata=meta) if bias is None else nir.Affine(weight=W, bias=bias, metadata=meta)
        name = self.add(self.name(label), n, x.refs)
        self.vals[node.output[0]] = _Val((name,), (int(W.shape[0]),), x.phase)

    def add_op(self, node):
        """``Add`` of two mapped branches -> both feed the next node (a NIR node sums its
        inputs); ``Add`` of a per-channel constant -> folded into the bias of the layer before."""
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

    def pool(self, node, x: _Val):
        """``AveragePool``/``GlobalAveragePool`` -> ``AvgPool2d``; ``MaxPool`` -> ``SumPool2d``
        (only with ``lossy``)."""
        nir = self.nir
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
                raise _Skip("count_include_pad=0 with padding: NIR's AvgPool2d divides by the kernel size")
            if node.op_type == "MaxPool":
                if any(int(d) != 1 for d in attr(node, "dilations", [1, 1])):
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
        """A flatten of everything after the batch axis -> ``Flatten(start_dim=0)`` (nothing for a vector)."""
        nir = self.nir
        if len(x.shape) == 1:
            self.vals[out] = x
            return
        n = nir.Flatten(input_type={"input": np.array(x.shape)}, start_dim=0, end_dim=-1,
                        metadata={"onnx_node": label})
        name = self.add(self.name(label), n, x.refs)
        self.vals[out] = _Val((name,), (int(np.prod(x.shape)),), x.phase)

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
