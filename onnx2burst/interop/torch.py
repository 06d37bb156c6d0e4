"""Run an onnx2burst SNN ONNX file as a PyTorch module (and export it as TorchScript).

``load(path_or_model)`` maps the graph onto torch ops, node by node in topological order;
``BurstIF`` nodes become :class:`BurstIF` modules with the exact dynamics of
``onnx2burst.ops.burst_if`` (docs/method.md §2, same float32 operation order); their
``T``, ``psi``, ``tau`` come from ``onnx2burst.snn.read_snn``.
``export(snn_path, out_path)`` writes a TorchScript (``torch.jit.trace``) artifact.

The public names are also importable as ``onnx2burst.torch``.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from typing import Dict, List

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from ..snn import read_snn
from .portable import fold_back

__all__ = ["BurstIF", "OnnxModule", "load", "export", "SUPPORTED_OPS"]


class BurstIF(torch.nn.Module):
    """Burst integrate-and-fire over the time-folded batch ``[T*N, C, ...]``; returns (Y, spikes).

    Per channel, ``theta = tau * vth`` and ``u = 0`` (docs/method.md §2)::

        u += X[t] + theta / (2T);  s = clip(floor(u / theta), 0, psi);  u -= s * theta;  Y[t] = s * theta

    Channels with ``theta <= 0`` never fire. ``spikes``: the sum of ``s`` per sample.
    """

    def __init__(self, T: int, psi: int, tau: float = 1.0):
        super().__init__()
        if T < 1 or psi < 1 or not tau > 0:
            raise ValueError(f"BurstIF needs T >= 1, psi >= 1, tau > 0; got T={T}, psi={psi}, tau={tau}")
        self.T, self.psi, self.tau = int(T), int(psi), float(tau)

    def forward(self, x: torch.Tensor, vth: torch.Tensor):
        T = self.T
        x = x.to(torch.float32)
        vth = vth.to(device=x.device, dtype=torch.float32).reshape(-1)
        N = x.shape[0] // T
        xt = x.reshape([T, N] + list(x.shape[1:]))
        bshape = [1, -1] + [1] * (x.dim() - 2)
        theta = torch.full((), self.tau, dtype=torch.float32, device=x.device) * vth.reshape(bshape)
        fires = theta > 0
        one = torch.ones((), dtype=torch.float32, device=x.device)
        zero = torch.zeros((), dtype=torch.float32, device=x.device)
        psi = torch.full((), float(self.psi), dtype=torch.float32, device=x.device)
        theta = torch.where(fires, theta, one)
        offset = theta / torch.full((), float(2 * T), dtype=torch.float32, device=x.device)
        u = torch.zeros_like(xt[0])
        ys = []
        spikes = torch.zeros([N], dtype=torch.float32, device=x.device)
        for t in range(T):
            u = (u + xt[t]) + offset
            q = torch.floor(u / theta)
            q = torch.where(q > 0, q, zero)          # NaN -> 0
            q = torch.where(q > psi, psi, q)
            s = torch.where(fires, q, zero)
            st = s * theta
            u = u - st
            ys.append(st)
            spikes = spikes + s.reshape(N, -1).sum(dim=1, dtype=torch.float32)
        return torch.stack(ys, 0).reshape(x.shape), spikes


def _attrs(node) -> Dict[str, object]:
    """All attributes of a (standard-domain) node as a dict, for the op mapping of ``_op``."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> List[int]:
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _pads_torch(pads: List[int]) -> List[int]:
    """ONNX [b1, b2, ..., e1, e2, ...] -> torch F.pad order (last dim first)."""
    k = len(pads) // 2
    out: List[int] = []
    for i in reversed(range(k)):
        out += [pads[i], pads[i + k]]
    return out


def _auto_pad_check(node, a):
    ap = a.get("auto_pad", b"NOTSET")
    ap = ap.decode() if isinstance(ap, bytes) else ap
    if ap not in ("NOTSET", "VALID"):
        raise NotImplementedError(f"node {node.name!r} ({node.op_type}): auto_pad={ap} not supported")


def _reshape(x, shape, allowzero=0):
    dims = [s for s in shape.reshape(-1).unbind(0)] if isinstance(shape, torch.Tensor) else list(shape)
    out = []
    for i, d in enumerate(dims):
        if not allowzero and int(d) == 0:
            out.append(x.shape[i])
        else:
            out.append(d)
    return x.reshape(out)


def _axes(a, inputs, idx):
    if "axes" in a:
        return list(a["axes"])
    if len(inputs) > idx and inputs[idx] is not None:
        return _ints(inputs[idx])
    return None


def _op(node, a, xs):  # noqa: C901 - one branch per op
    """The outputs of the standard ONNX ``node`` on the tensors ``xs``; ``a``: its attributes."""
    op = node.op_type
    x = xs[0] if xs else None
    if op == "Conv":
        _auto_pad_check(node, a)
        w = xs[1]
        b = xs[2] if len(xs) > 2 else None
        nd = w.dim() - 2
        pads = list(a.get("pads", [0] * 2 * nd))
        strides = list(a.get("strides", [1] * nd))
        dil = list(a.get("dilations", [1] * nd))
        g = int(a.get("group", 1))
        if pads[:nd] != pads[nd:]:
            x = F.pad(x, _pads_torch(pads))
            pads = [0] * 2 * nd
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
        return [conv(x, w, b, strides, pads[:nd], dil, g)]
    if op == "Gemm":
        A, B = xs[0], xs[1]
        if a.get("transA", 0):
            A = A.t()
        if a.get("transB", 0):
            B = B.t()
        y = torch.matmul(A, B)
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        if alpha != 1.0:
            y = y * alpha
        if len(xs) > 2 and xs[2] is not None:
            c = xs[2] if beta == 1.0 else xs[2] * beta
            y = y + c
        return [y]
    if op == "MatMul":
        return [torch.matmul(xs[0], xs[1])]
    if op in ("Add", "Sub", "Mul", "Div"):
        f = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op]
        if op == "Div" and not xs[0].is_floating_point():
            return [torch.div(xs[0], xs[1], rounding_mode="trunc")]
        return [f(xs[0], xs[1])]
    if op == "Relu":
        return [torch.relu(x)]
    if op == "Softmax":
        return [torch.softmax(x, dim=int(a.get("axis", -1)))]
    if op == "LogSoftmax":
        return [torch.log_softmax(x, dim=int(a.get("axis", -1)))]
    if op == "Identity":
        return [x]
    if op == "Flatten":
        ax = int(a.get("axis", 1))
        ax = ax + x.dim() if ax < 0 else ax
        return [x.reshape(1, -1) if ax == 0 else torch.flatten(torch.flatten(x, ax), 0, ax - 1) if ax > 1
                else torch.flatten(x, 1)]
    if op == "Reshape":
        return [_reshape(x, xs[1], int(a.get("allowzero", 0)))]
    if op == "Transpose":
        perm = a.get("perm")
        perm = list(perm) if perm is not None else list(reversed(range(x.dim())))
        return [x.permute(perm)]
    if op == "Tile":
        return [x.repeat(_ints(xs[1]))]
    if op in ("ReduceMean", "ReduceSum"):
        axes = _axes(a, xs, 1)
        keep = bool(a.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if op == "ReduceSum" and a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        f = torch.mean if op == "ReduceMean" else torch.sum
        return [f(x, dim=axes, keepdim=keep)]
    if op in ("AveragePool", "MaxPool"):
        _auto_pad_check(node, a)
        k = list(a["kernel_shape"])
        nd = len(k)
        pads = list(a.get("pads", [0] * 2 * nd))
        strides = list(a.get("strides", [1] * nd))
        ceil = bool(a.get("ceil_mode", 0))
        if op == "MaxPool":
            indices = len(node.output) > 1 and bool(node.output[1])
            dil = list(a.get("dilations", [1] * nd))
            if pads[:nd] != pads[nd:]:
                if indices:
                    raise NotImplementedError(f"node {node.name!r} (MaxPool): Indices with asymmetric pads")
                x = F.pad(x, _pads_torch(pads), value=float("-inf"))
                pads = [0] * 2 * nd
            mp = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
            if not indices:
                return [mp(x, k, strides, pads[:nd], dil, ceil)]
            if a.get("storage_order", 0):
                raise NotImplementedError(f"node {node.name!r} (MaxPool): column-major Indices")
            y, i = mp(x, k, strides, pads[:nd], dil, ceil, return_indices=True)
            # torch counts within each (n, c) plane; ONNX over the whole flattened tensor
            plane = math.prod(x.shape[2:])
            base = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[:2] + (1,) * nd) * plane
            return [y, i + base]
        cip = bool(a.get("count_include_pad", 0))
        if pads[:nd] != pads[nd:]:
            raise NotImplementedError(f"node {node.name!r} (AveragePool): asymmetric pads not supported")
        ap = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        return [ap(x, k, strides, pads[:nd], ceil, cip)]
    if op == "CumSum":
        if a.get("exclusive", 0) or a.get("reverse", 0):
            raise NotImplementedError(f"node {node.name!r} (CumSum): exclusive/reverse not supported")
        return [torch.cumsum(x, dim=int(xs[1].reshape(-1)[0]))]
    if op == "ArgMax":
        if a.get("select_last_index", 0):
            raise NotImplementedError(f"node {node.name!r} (ArgMax): select_last_index not supported")
        return [torch.argmax(x, dim=int(a.get("axis", 0)), keepdim=bool(a.get("keepdims", 1)))]
    if op == "GatherElements":
        return [torch.gather(x, int(a.get("axis", 0)), xs[1].to(torch.int64))]
    if op == "GlobalAveragePool":
        return [torch.mean(x, dim=list(range(2, x.dim())), keepdim=True)]
    if op == "GlobalMaxPool":
        return [torch.amax(x, dim=list(range(2, x.dim())), keepdim=True)]
    if op == "Concat":
        return [torch.cat(list(xs), dim=int(a["axis"]))]
    if op == "Shape":
        s = torch._shape_as_tensor(x).to(torch.int64)
        start, end = a.get("start"), a.get("end")
        if start is not None or end is not None:
            s = s[int(start or 0): (int(end) if end is not None else None)]
        return [s]
    if op == "Slice":
        starts, ends = _ints(xs[1]), _ints(xs[2])
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
        y = x
        for s0, e0, ax, st in zip(starts, ends, axes, steps):
            if st < 1:
                raise NotImplementedError(f"node {node.name!r} (Slice): step {st} < 1 not supported")
            n = y.shape[ax]
            y = y.narrow(ax, 0, n)  # keep traced
            idx = [slice(None)] * y.dim()
            idx[ax] = slice(max(min(s0, 2 ** 62), -(2 ** 62)), max(min(e0, 2 ** 62), -(2 ** 62)), st)
            y = y[tuple(idx)]
        return [y]
    if op == "Gather":
        ax = int(a.get("axis", 0))
        idx = xs[1].to(torch.int64)
        idx = torch.where(idx < 0, idx + x.shape[ax], idx)
        return [torch.index_select(x, ax, idx.reshape(-1)).reshape(
            list(x.shape[:ax]) + list(idx.shape) + list(x.shape[ax + 1:]))]
    if op in ("Unsqueeze", "Squeeze"):
        axes = _axes(a, xs, 1)
        if op == "Squeeze":
            if axes is None:
                return [x.squeeze()]
            axes = sorted(ax + x.dim() if ax < 0 else ax for ax in axes)
            for ax in reversed(axes):
                x = x.squeeze(ax)
            return [x]
        r = x.dim() + len(axes)
        for ax in sorted(ax + r if ax < 0 else ax for ax in axes):
            x = x.unsqueeze(ax)
        return [x]
    if op == "Pad":
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = _ints(xs[1]) if len(xs) > 1 else list(a["pads"])
        val = float(xs[2].reshape(-1)[0]) if len(xs) > 2 and xs[2] is not None else float(a.get("value", 0.0))
        if len(xs) > 3 and xs[3] is not None:
            raise NotImplementedError(f"node {node.name!r} (Pad): axes input not supported")
        tp = _pads_torch(pads)
        return [F.pad(x, tp, mode="constant", value=val) if mode == "constant" else F.pad(x, tp, mode=mode)]
    if op == "Floor":  # the ops of a streaming model's neuron step (onnx2burst.stream)
        return [torch.floor(x)]
    if op == "Greater":
        return [torch.gt(xs[0], xs[1])]
    if op == "Where":
        return [torch.where(xs[0], xs[1], xs[2])]
    if op == "Min":
        y = xs[0]
        for other in xs[1:]:
            y = torch.minimum(y, other)
        return [y]
    raise NotImplementedError(f"node {node.name!r}: op {op!r} is not supported by onnx2burst.torch")


SUPPORTED_OPS = frozenset("""Conv Gemm MatMul Add Sub Mul Div Relu Softmax LogSoftmax Identity Flatten Reshape Transpose Tile
ReduceMean ReduceSum AveragePool MaxPool GlobalAveragePool GlobalMaxPool Concat Shape Slice Gather Unsqueeze
Squeeze Pad Constant BurstIF CumSum ArgMax GatherElements Floor Greater Where Min""".split())


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, copy=True))


class OnnxModule(torch.nn.Module):
    """The graph of an (SNN) ONNX model, evaluated node by node with torch ops."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        model = fold_back(model)   # a portable file: its BurstIF nodes back
        g = model.graph
        inits = {i.name for i in g.initializer}
        self.input_names = [i.name for i in g.input if i.name not in inits]
        self.output_names = [o.name for o in g.output]
        self._cnames: Dict[str, str] = {}
        consts: Dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        streaming = any(p.key == "onnx2burst.stream" for p in model.metadata_props)  # standard ops only
        neurons = {} if streaming else {n.index: n for n in read_snn(model, require=False).neurons}
        self.nodes = []  # (op_type, name, inputs, outputs, attrs, module key or None)
        self.burst = torch.nn.ModuleDict()
        errors = []
        for k, node in enumerate(g.node):
            if node.op_type == "Constant":
                a = _attrs(node)
                if "value" in a:
                    consts[node.output[0]] = numpy_helper.to_array(a["value"])
                elif "value_float" in a:
                    consts[node.output[0]] = np.array(a["value_float"], np.float32)
                elif "value_floats" in a:
                    consts[node.output[0]] = np.array(a["value_floats"], np.float32)
                elif "value_int" in a:
                    consts[node.output[0]] = np.array(a["value_int"], np.int64)
                elif "value_ints" in a:
                    consts[node.output[0]] = np.array(a["value_ints"], np.int64)
                else:
                    errors.append(f"node {node.name!r} (Constant): unsupported value attribute {sorted(a)}")
                continue
            key = None
            if k in neurons:
                nrn = neurons[k]
                if nrn.signed:
                    errors.append(f"node {node.name!r}: a signed BurstIF (attribute alpha, LeakyReLU/PReLU) is not "
                                  "supported by onnx2burst.torch")
                    continue
                key = f"b{k}"
                self.burst[key] = BurstIF(nrn.T, nrn.psi, nrn.tau)
            elif node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                errors.append(f"node {node.name!r}: op {node.domain + '::' if node.domain else ''}"
                              f"{node.op_type} is not supported by onnx2burst.torch")
                continue
            self.nodes.append((node, key))
        if errors:
            raise NotImplementedError("; ".join(errors))
        for i, (name, arr) in enumerate(consts.items()):
            cname = f"c{i}"
            self._cnames[name] = cname
            t = _to_tensor(arr)
            if t.is_floating_point():
                self.register_parameter(cname, torch.nn.Parameter(t, requires_grad=False))
            else:
                self.register_buffer(cname, t)

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        env: Dict[str, torch.Tensor] = dict(zip(self.input_names, inputs))
        for name, cname in self._cnames.items():
            env[name] = getattr(self, cname)
        for node, key in self.nodes:
            xs = [env[i] if i else None for i in node.input]
            try:
                if key is not None:
                    outs = list(self.burst[key](xs[0], xs[1]))
                else:
                    outs = _op(node, _attrs(node), xs)
            except NotImplementedError:
                raise
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"node {node.name!r} ({node.op_type}) failed: {e}") from e
            for o, v in zip(node.output, outs):
                if o:
                    env[o] = v
        outs = tuple(env[o] for o in self.output_names)
        return outs[0] if len(outs) == 1 else outs


def load(model) -> OnnxModule:
    """An ``nn.Module`` running the ONNX model (a path or ``onnx.ModelProto``); ``.to(device)`` works."""
    if not isinstance(model, onnx.ModelProto):
        from ..io import load_model  # external data checked to stay in the model's folder

        model = load_model(model)
    return OnnxModule(model).eval()


def _example_inputs(model: onnx.ModelProto, batch: int = 2):
    """One constant tensor per graph input (unknown dims -> ``batch``), for tracing."""
    from ..data import input_specs

    out = []
    for spec in input_specs(model):
        dims = [d if isinstance(d, int) and d > 0 else batch for d in (spec.shape or ())]
        out.append(torch.from_numpy(np.full(dims, 0.5, dtype=spec.dtype)))
    return tuple(out)


def export(snn_path, out_path, example_inputs=None) -> str:
    """Write a TorchScript (``torch.jit.trace``) artifact of the SNN with ``io.write_file``
    (atomic, a symlink at ``out_path`` replaced not followed, the user's umask, never over
    the input)."""
    from ..io import check_output, load_model, write_file

    source = None if isinstance(snn_path, onnx.ModelProto) else snn_path
    check_output(out_path, source)
    model = snn_path if source is None else load_model(snn_path)
    mod = load(model)
    ex = tuple(example_inputs) if example_inputs is not None else _example_inputs(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape constants from initializers
        traced = torch.jit.trace(mod, ex, check_trace=False, strict=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    write_file(out_path, buf.getvalue(), source=source)
    return os.fspath(out_path)
