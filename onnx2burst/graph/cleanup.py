"""Cleanup pass: unique node names, no Identity/Dropout, no dead nodes or unused
initializers, topological order."""
from __future__ import annotations

import onnx

from .index import GraphIndex, topological_sort, unique_name

__all__ = ["name_nodes", "drop_identities", "cleanup"]


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique, non-empty name (``<op_type>_<k>`` for unnamed ones)."""
    taken: set[str] = set()
    for node in graph.node:
        base = node.name or node.op_type
        node.name = unique_name(base, taken)
        taken.add(node.name)


def drop_identities(graph: onnx.GraphProto) -> int:
    """Remove Identity and (inference-mode) Dropout nodes, rewiring their consumers."""
    idx = GraphIndex(graph)
    removed = 0
    for node in list(graph.node):
        if node.op_type not in ("Identity", "Dropout") or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] and \
                (idx.consumers.get(node.output[1]) or node.output[1] in idx.graph_outputs):
            continue  # its mask is used: leave it
        x, y = node.input[0], node.output[0]
        if y in idx.graph_outputs:
            if x in idx.graph_inputs or idx.is_const(x) or x in idx.graph_outputs or x not in idx.producer:
                continue
            producer = idx.producer[x]
            for k, o in enumerate(producer.output):
                if o == x:
                    producer.output[k] = y
            idx.rename_uses(x, y, skip=[node])
        else:
            idx.rename_uses(y, x)
        idx.remove_nodes([node])
        idx.rebuild()
        removed += 1
    return removed


def cleanup(model: onnx.ModelProto) -> int:
    """Identity/Dropout removal, dead-code pruning, unique names, topological order.
    Returns the number of nodes removed."""
    g = model.graph
    n = drop_identities(g)
    n += GraphIndex(g).prune()
    topological_sort(g)
    name_nodes(g)
    return n
