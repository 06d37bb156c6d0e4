"""Rewrite the exporter's graph into one that the released NIR importers run, computing the same
(up to float rounding). The importers (Sinabs 3.1 and Norse 1.1, both through ``nirtorch.load``)
know Input, Output, Conv2d, Affine, IF, SumPool2d and Flatten; Sinabs silently skips a node it
does not know (Scale, AvgPool2d, Linear), Norse flattens the batch axis too, and nirtorch runs
the nodes in the depth-first order of the edges, so a node may run before one of its inputs.

1. ``expand_groups``: a grouped Conv becomes a dense one (block-diagonal weights): nir's type
   check reads the input channels off the weight and ignores ``groups``.
2. ``conv_ify``: ``Flatten -> Affine`` becomes a ``Conv2d`` whose kernel covers the (square) map,
   and each layer after it a 1x1 ``Conv2d``: shapes stay ``(K, 1, 1)``, no Flatten is left.
3. ``remove_scales``: each ``Scale`` (a spike weighs ``theta``, an average pool ``1/k``) moves
   forward through SumPool2d/Flatten and is multiplied into the input side of the next Conv or
   Affine. Where a scaled spike goes straight into a neuron (an identity shortcut), that neuron's
   other inputs and its threshold are divided by the scale instead (an IF is unchanged when its
   input and threshold are scaled alike). A scale left over becomes a diagonal Conv/Affine.
4. ``merge_shortcuts``: a residual block whose shortcut is a 1x1 Conv (``X -> conv1 -> IF ->
   conv2 -> J`` and ``X -> shortcut -> J``) becomes a chain: conv1 gets one more output channel
   per channel of ``X`` that copies its spikes (the kernel's centre tap), the IF passes them on
   (threshold ``1 - eps``: exact under reset to zero and, for at most T steps, by subtraction),
   and conv2 applies the shortcut's weights to them.
5. ``check_order``: what nirtorch would still run out of order (listed as a note).
"""
from __future__ import annotations

import math

import numpy as np

from .nir_common import _N
from .nir_layers import diagonal_conv

_MAX_DENSE = 1 << 24     # weights of a grouped conv made dense, at most


class _G:
    """Nodes and ordered edges with the few edits the passes need (edge order is what nirtorch follows)."""

    def __init__(self, nodes: dict[str, _N], edges: list[tuple[str, str]]):
        self.nodes, self.edges = nodes, edges

    def preds(self, n: str) -> list[str]:
        return [s for s, d in self.edges if d == n]

    def succs(self, n: str) -> list[str]:
        return [d for s, d in self.edges if s == n]

    def unique(self, base: str) -> str:
        out, k = base, 1
        while out in self.nodes:
            out, k = f"{base}_{k}", k + 1
        return out

    def topo(self) -> list[str]:
        indeg = {n: 0 for n in self.nodes}
        for _, d in self.edges:
            indeg[d] += 1
        ready = [n for n in self.nodes if indeg[n] == 0]
        order = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for d in self.succs(n):
                indeg[d] -= 1
                if indeg[d] == 0:
                    ready.append(d)
        return order

    def bypass(self, n: str, src: str, dsts: list[str]):
        """Remove node ``n`` (fed by ``src`` only): ``src`` feeds ``dsts`` instead, where it fed ``n``."""
        i = self.edges.index((src, n))
        rest = [e for e in self.edges if e[0] != n and e != (src, n)]
        j = sum(1 for e in self.edges[:i] if e[0] != n)
        self.edges[:] = rest[:j] + [(src, d) for d in dsts] + rest[j:]
        if not any(e[0] == n or e[1] == n for e in self.edges):
            del self.nodes[n]

    def insert_after(self, n: str, new: str):
        """Node ``new`` takes over ``n``'s outputs; ``n`` feeds ``new``."""
        first = next(i for i, e in enumerate(self.edges) if e[0] == n)
        self.edges[:] = [(new if s == n else s, d) for s, d in self.edges]
        self.edges.insert(first, (n, new))


def lower(nodes: dict[str, _N], edges: list[tuple[str, str]], T: int) -> list[str]:
    """Run the passes in place; return the notes (what nirtorch would still not run as meant)."""
    g = _G(nodes, edges)
    notes = expand_groups(g)
    conv_ify(g)
    remove_scales(g)
    merge_shortcuts(g, T)
    return notes + check_order(g)


def expand_groups(g: _G) -> list[str]:
    notes = []
    for name, n in g.nodes.items():
        G = int(n.p.get("groups", 1)) if n.kind == "Conv" else 1
        if G == 1:
            continue
        w = n.p["weight"]
        cout, cin_g = w.shape[:2]
        if w.size * G > _MAX_DENSE:
            notes.append(f"{name}: a grouped conv (groups={G}) too large to make dense; nir's type check "
                         "rejects it (read with nir.read(path, type_check=False))")
            continue
        dense = np.zeros((cout, cin_g * G) + w.shape[2:], np.float32)
        per = cout // G
        for k in range(G):
            dense[k * per:(k + 1) * per, k * cin_g:(k + 1) * cin_g] = w[k * per:(k + 1) * per]
        n.p["weight"], n.p["groups"] = dense, 1
        n.meta["groups"] = G
    return notes


def conv_ify(g: _G):
    """``Flatten -> Affine`` -> ``Conv2d`` over the whole (square) map; the 1-d layers after it -> 1x1 convs."""
    for f in [k for k, v in g.nodes.items() if v.kind == "Flatten"]:
        shp = g.nodes[f].p["in_shape"]
        preds, firsts = g.preds(f), g.succs(f)
        if len(shp) != 3 or shp[1] != shp[2] or len(preds) != 1 or not firsts or any(
                g.nodes[c].kind != "Affine" or g.preds(c) != [f] for c in firsts):
            continue
        down, stack, ok = set(), list(firsts), True
        while stack and ok:
            for d in g.succs(stack.pop()):
                if d not in down and d not in firsts:
                    ok = g.nodes[d].kind in ("Affine", "IF", "Scale", "Output")
                    down.add(d)
                    stack.append(d)
        if not ok or any(p not in down and p not in firsts for d in down for p in g.preds(d)):
            continue
        for c in firsts:
            a = g.nodes[c]
            K = a.p["weight"].shape[0]
            g.nodes[c] = _conv_of(a, a.p["weight"].reshape((K,) + tuple(shp)), tuple(shp))
        for d in down:
            n = g.nodes[d]
            if n.kind == "Affine":
                K, J = n.p["weight"].shape
                g.nodes[d] = _conv_of(n, n.p["weight"].reshape(K, J, 1, 1), (J, 1, 1))
            else:
                n.meta.setdefault("onnx_shape", list(n.shape))
                n.shape = (n.shape[0], 1, 1)
        g.bypass(f, preds[0], firsts)


def _conv_of(a: _N, w: np.ndarray, in_shape: tuple) -> _N:
    meta = dict(a.meta, onnx_shape=list(a.shape))
    return _N("Conv", {"weight": np.ascontiguousarray(w, np.float32), "bias": a.p["bias"], "stride": (1, 1),
                       "padding": (0, 0), "dilation": (1, 1), "groups": 1, "in_shape": in_shape},
              (int(w.shape[0]), 1, 1), meta)


def _absorb(n: _N, s: np.ndarray):
    """Multiply the input side of Conv/Affine ``n`` by the per-channel scale ``s``."""
    w = n.p["weight"]
    if n.kind == "Affine":
        n.p["weight"] = (w * s[None, :]).astype(np.float32)
        return
    G = int(n.p["groups"])
    cout, cin_g = w.shape[:2]
    factor = s.reshape(G, cin_g)[np.arange(cout) // (cout // G)]            # (cout, cin_g)
    n.p["weight"] = (w * factor.reshape(factor.shape + (1,) * (w.ndim - 2))).astype(np.float32)


def _gain_ok(g: _G, j: str, sname: str) -> bool:
    """Can IF ``j`` take the scale of ``sname`` as a gain (every other input a layer feeding only it)?"""
    preds = g.preds(j)
    return preds.count(sname) == 1 and all(
        g.nodes[p].kind in ("Conv", "Affine") and g.succs(p) == [j] for p in preds if p != sname)


def remove_scales(g: _G):
    queue = [n for n in g.topo() if g.nodes[n].kind == "Scale"]
    while queue:
        sname = queue.pop(0)
        S = g.nodes[sname]
        preds = g.preds(sname)
        if len(preds) != 1:
            continue
        src, s = preds[0], np.asarray(S.p["s"], np.float32)
        handled, new_scales = [], []
        for c in g.succs(sname):
            n = g.nodes[c]
            only = g.preds(c) == [sname]
            if n.kind in ("Conv", "Affine") and only:
                _absorb(n, s)
            elif n.kind == "Scale" and only:
                n.p["s"] = (n.p["s"] * s).astype(np.float32)
            elif n.kind in ("SumPool", "Flatten") and only:
                s2 = s if n.kind == "SumPool" else np.repeat(s, int(np.prod(S.shape[1:], dtype=np.int64)))
                new = g.unique(c + "_scale")
                g.nodes[new] = _N("Scale", {"s": s2.astype(np.float32)}, n.shape, dict(S.meta))
                g.insert_after(c, new)
                new_scales.append(new)
            elif n.kind == "IF" and _gain_ok(g, c, sname):
                gain = np.where(s > 0, np.float32(1) / np.where(s > 0, s, np.float32(1)), np.float32(1))
                gain = gain.astype(np.float32)
                for p in g.preds(c):
                    if p != sname:
                        layer = g.nodes[p]
                        w = layer.p["weight"]
                        layer.p["weight"] = (w * gain.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
                        layer.p["bias"] = (layer.p["bias"] * gain).astype(np.float32)
                        layer.meta["output_gain"] = f"1/theta of {S.meta.get('onnx_node', src)}"
                n.p["thr"] = (n.p["thr"] * gain).astype(np.float32)
                n.meta["input_gain"] = (f"input and threshold divided by theta of {S.meta.get('onnx_node', src)} "
                                        "(whose spikes arrive unweighted)")
            else:
                continue
            handled.append(c)
        queue[:0] = new_scales
        kept = [c for c in g.succs(sname) if c not in handled]
        if not kept:
            g.bypass(sname, src, g.succs(sname))
            continue
        # some consumers keep the scale: they read it from a diagonal layer
        g.edges[:] = [e for e in g.edges if not (e[0] == sname and e[1] in handled)]
        i = g.edges.index((src, sname))
        g.edges[i:i] = [(src, c) for c in handled]
    for name in [k for k, v in g.nodes.items() if v.kind == "Scale"]:
        S = g.nodes[name]
        C, s = S.shape[0], np.asarray(S.p["s"], np.float32)
        meta = dict(S.meta, role="spike weight (a scale that no layer could absorb)")
        if len(S.shape) == 1:
            g.nodes[name] = _N("Affine", {"weight": np.diag(s).astype(np.float32), "bias": np.zeros(C, np.float32)},
                               S.shape, meta)
        else:
            g.nodes[name] = diagonal_conv(C, S.shape, value=s, meta=meta)


def _same(n: _N, stride: int | None = None) -> tuple | None:
    """The centre tap of 2-d Conv ``n`` when it keeps the map's size (``stride`` 1) or samples it
    like a 1x1 conv of that stride: (row, col); else None."""
    w = n.p["weight"]
    if w.ndim != 4 or int(n.p["groups"]) != 1 or tuple(n.p["dilation"]) != (1, 1):
        return None
    k, pad, st = w.shape[2:], tuple(n.p["padding"]), tuple(n.p["stride"])
    if stride is not None and st != (stride, stride) or any(2 * p != kk - 1 for p, kk in zip(pad, k)):
        return None
    return pad


def merge_shortcuts(g: _G, T: int):
    for j in list(g.nodes):
        if j not in g.nodes or g.nodes[j].kind != "IF":
            continue
        preds = g.preds(j)
        if len(preds) != 2 or any(g.nodes[p].kind != "Conv" or g.succs(p) != [j] for p in preds):
            continue
        for m2, sc in (preds, preds[::-1]):
            if _merge(g, j, m2, sc, T):
                break


def _merge(g: _G, j: str, m2: str, sc: str, T: int) -> bool:
    M2, SC = g.nodes[m2], g.nodes[sc]
    n1s = g.preds(m2)
    if len(n1s) != 1 or g.nodes[n1s[0]].kind != "IF" or g.succs(n1s[0]) != [m2]:
        return False
    n1 = n1s[0]
    m1s = g.preds(n1)
    if len(m1s) != 1 or g.nodes[m1s[0]].kind != "Conv" or g.succs(m1s[0]) != [n1]:
        return False
    m1 = m1s[0]
    xs = g.preds(m1)
    if len(xs) != 1 or g.preds(sc) != xs or g.nodes[xs[0]].kind != "IF":
        return False
    M1, N1, X = g.nodes[m1], g.nodes[n1], g.nodes[xs[0]]
    ws = SC.p["weight"]
    if ws.ndim != 4 or ws.shape[2:] != (1, 1) or tuple(SC.p["padding"]) != (0, 0) or int(SC.p["groups"]) != 1:
        return False
    stride = tuple(SC.p["stride"])
    t1, t2 = _same(M1, stride[0]) if stride[0] == stride[1] else None, _same(M2, 1)
    if t1 is None or t2 is None or M1.shape[1:] != SC.shape[1:] or M2.shape != SC.shape:
        return False
    psi_x = int(X.meta.get("psi", 1))
    if psi_x > int(N1.meta.get("psi", 1)):
        return False
    Cx, C1 = X.shape[0], N1.shape[0]
    w1 = M1.p["weight"]
    copy = np.zeros((Cx,) + w1.shape[1:], np.float32)
    copy[np.arange(Cx), np.arange(Cx), t1[0], t1[1]] = 1
    M1.p["weight"] = np.concatenate([w1, copy], 0)
    M1.p["bias"] = np.concatenate([M1.p["bias"], np.zeros(Cx, np.float32)])
    M1.shape = (C1 + Cx,) + M1.shape[1:]
    eps = 2.0 ** -math.ceil(math.log2(2 * (psi_x * T + 1)))
    N1.p["thr"] = np.concatenate([N1.p["thr"], np.full(Cx, 1 - eps, np.float32)])
    N1.p["fires"] = np.concatenate([N1.p["fires"], np.ones(Cx, bool)])
    N1.shape = M1.shape
    N1.meta["passthrough"] = (f"channels {C1}..{C1 + Cx - 1} copy the spikes of {X.meta.get('onnx_node', xs[0])} "
                              f"(threshold 1-{eps:g}) for the shortcut {SC.meta.get('onnx_node', sc)}")
    w2 = M2.p["weight"]
    extra = np.zeros((w2.shape[0], Cx) + w2.shape[2:], np.float32)
    extra[:, :, t2[0], t2[1]] = ws[:, :, 0, 0]
    M2.p["weight"] = np.concatenate([w2, extra], 1)
    M2.p["bias"] = (M2.p["bias"] + SC.p["bias"]).astype(np.float32)
    M2.p["in_shape"] = (C1 + Cx,) + tuple(M2.p["in_shape"][1:])
    M2.meta["shortcut"] = f"{SC.meta.get('onnx_node', sc)} (its weights on input channels {C1}..{C1 + Cx - 1})"
    g.edges[:] = [e for e in g.edges if sc not in e]
    del g.nodes[sc]
    return True


def check_order(g: _G) -> list[str]:
    """Where nirtorch (which runs the nodes in depth-first order from the input, following the
    edges in their order, and returns the last node it ran) would not run the graph as meant."""
    ins = [k for k, v in g.nodes.items() if v.kind == "Input"]
    outs = [k for k, v in g.nodes.items() if v.kind == "Output"]
    notes = []
    if len(ins) != 1 or len(outs) != 1:
        notes.append(f"nirtorch feeds one input and returns one output; the graph has {len(ins)} input(s) and "
                     f"{len(outs)} output(s)")
    if not ins:
        return notes
    order, seen, stack = [], set(), [iter([ins[0]])]
    while stack:
        n = next(stack[-1], None)
        if n is None:
            stack.pop()
        elif n not in seen:
            seen.add(n)
            order.append(n)
            stack.append(iter(g.succs(n)))
    pos = {n: i for i, n in enumerate(order)}
    late = [(n, p) for n in order for p in g.preds(n) if pos.get(p, -1) > pos[n]]
    for n, p in late[:5]:
        notes.append(f"nirtorch runs {n} before its input {p} (which then arrives a step late)")
    if len(order) != len(g.nodes):
        notes.append(f"{len(g.nodes) - len(order)} node(s) not reachable from the input")
    elif order and g.nodes[order[-1]].kind != "Output":
        notes.append(f"nirtorch returns the last node it runs, {order[-1]}, not the Output")
    return notes
