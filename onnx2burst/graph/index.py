"""A small index over an ``onnx.GraphProto``: who produces and who consumes each tensor,
the initializers as numpy arrays (decoded lazily), and a few edit helpers.

Build one per pass (``GraphIndex(model.graph)``), edit through it, and call ``rebuild()``
after structural changes; it never rescans the graph on a lookup.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import GraphError

__all__ = ["GraphIndex", "attr", "attrs", "subgraph_inputs", "default_opset", "unique_name", "topological_sort", "make_reduce"]


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute ``name`` of ``node`` (ints, floats, strings as bytes, tensors),
    or ``default`` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def attrs(node: onnx.NodeProto) -> dict:
    """Every attribute of ``node`` by name (values as :func:`attr` gives them)."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise GraphError("the model imports no default-domain (ai.onnx) opset")


class GraphIndex:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self._arrays: dict[str, np.ndarray] = {}
        self.rebuild()

    def rebuild(self) -> "GraphIndex":
        g = self.graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in g.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.graph_inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in g.output]
        self.nodes_by_name = {n.name: n for n in g.node if n.name}
        self.names = {n.name for n in g.node} | set(self.producer) | set(self.initializers) | \
            {i.name for i in g.input}
        self._arrays = {k: v for k, v in self._arrays.items() if k in self.initializers}
        return self

    # ---------------------------------------------------------------- lookups
    def is_const(self, name: str) -> bool:
        return name in self.initializers

    def const(self, name: str) -> np.ndarray | None:
        """The initializer ``name`` as a numpy array (read-only view), or None."""
        if name not in self.initializers:
            return None
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.initializers[name])
        return self._arrays[name]

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        """The only node consuming ``name`` when it is not also a graph output."""
        cons = self.consumers.get(name, [])
        if len(cons) == 1 and name not in self.graph_outputs:
            return cons[0]
        return None

    def fresh(self, base: str) -> str:
        """A tensor/node name not used yet, based on ``base``."""
        name = unique_name(base, self.names)
        self.names.add(name)
        return name

    # ---------------------------------------------------------------- edits
    def set_const(self, name: str, array: np.ndarray) -> str:
        """Create or overwrite initializer ``name`` with ``array`` (dtype kept)."""
        a = np.asarray(array)
        t = numpy_helper.from_array(np.ascontiguousarray(a) if a.ndim else a, name)  # keep scalars rank 0
        if name in self.initializers:
            self.initializers[name].CopyFrom(t)
        else:
            self.graph.initializer.append(t)
            self.initializers[name] = self.graph.initializer[-1]
            self.names.add(name)
        self._arrays.pop(name, None)
        return name

    def private_const(self, node: onnx.NodeProto, index: int, base: str) -> str:
        """Make input ``index`` of ``node`` an initializer used by this node only; returns its name."""
        name = node.input[index]
        users = [n for n in self.consumers.get(name, []) if n is not node]
        if not users and name not in self.graph_outputs:
            return name
        new = self.fresh(base)
        self.set_const(new, np.array(self.const(name)))
        node.input[index] = new
        return new

    def rename_uses(self, old: str, new: str, *, skip: Iterable[onnx.NodeProto] = ()) -> None:
        """Make every consumer of ``old`` (but ``skip``) read ``new`` instead."""
        skip_ids = {id(n) for n in skip}
        for node in self.consumers.get(old, []):
            if id(node) in skip_ids:
                continue
            for k, i in enumerate(node.input):
                if i == old:
                    node.input[k] = new

    def remove_nodes(self, nodes: Iterable[onnx.NodeProto]) -> None:
        """Delete ``nodes`` from the graph; references to the other nodes stay valid.
        Call ``rebuild()`` afterwards before the next lookup."""
        ids = {id(n) for n in nodes}
        for k in reversed([k for k, n in enumerate(self.graph.node) if id(n) in ids]):
            del self.graph.node[k]

    def prune(self) -> int:
        """Drop nodes and initializers that no graph output depends on; returns nodes removed."""
        g = self.graph
        needed = set(self.graph_outputs)
        keep = []
        for node in reversed(list(g.node)):
            if any(o in needed for o in node.output):
                keep.append(node)
                needed.update(i for i in node.input if i)
                needed.update(subgraph_inputs(node))
        removed = len(g.node) - len(keep)
        if removed:
            kept = {id(n) for n in keep}
            self.remove_nodes([n for n in g.node if id(n) not in kept])
        used_inits = [t for t in g.initializer if t.name in needed]
        if len(used_inits) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(used_inits)
            inputs = [i for i in g.input if i.name in needed or i.name not in self.initializers]
            del g.input[:]
            g.input.extend(inputs)
        self.rebuild()
        return removed


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the outer scope (over-approximated: all their inputs)."""
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else list(a.graphs)):
            for n in g.node:
                names.update(i for i in n.input if i)
                names.update(subgraph_inputs(n))
    return names


def unique_name(base: str, taken: set[str]) -> str:
    base = base or "node"
    if base not in taken:
        return base
    k = 1
    while f"{base}_{k}" in taken:
        k += 1
    return f"{base}_{k}"


def topological_sort(graph: onnx.GraphProto) -> None:
    """Sort ``graph.node`` topologically (stable: keeps the given order where it can)."""
    produced_by = {}
    for k, node in enumerate(graph.node):
        for o in node.output:
            if o:
                produced_by[o] = k
    nodes = list(graph.node)
    deps = []
    for node in nodes:
        d = {produced_by[i] for i in list(node.input) + sorted(subgraph_inputs(node)) if i in produced_by}
        deps.append(d)
    order, state = [], [0] * len(nodes)  # 0 new, 1 visiting, 2 done
    for start in range(len(nodes)):
        if state[start]:
            continue
        stack = [(start, iter(sorted(deps[start])))]
        state[start] = 1
        while stack:
            k, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[k] = 2
                order.append(k)
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps[nxt]))))
            elif state[nxt] == 1 and nxt != k:
                raise GraphError(f"the graph has a cycle through node {nodes[nxt].name!r}")
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)


def make_reduce(op: str, x: str, y: str, axes: list[int], *, keepdims: int, opset: int,
                name: str, index: GraphIndex | None = None, graph: onnx.GraphProto | None = None) -> list[onnx.NodeProto]:
    """A ReduceXxx node with ``axes``, written for ``opset`` (axes become an input from opset
    18 on, and for ReduceSum from 13 on). Returns the node(s) to add; an axes initializer is
    added to ``graph`` when needed."""
    axes_as_input = opset >= 18 or op == "ReduceSum"
    if not axes_as_input:
        return [helper.make_node(op, [x], [y], name=name, axes=list(axes), keepdims=keepdims)]
    g = graph if graph is not None else index.graph
    aname = f"{name}_axes"
    g.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), aname))
    if index is not None:
        index.names.add(aname)
        index.initializers[aname] = g.initializer[-1]
    return [helper.make_node(op, [x, aname], [y], name=name, keepdims=keepdims)]
