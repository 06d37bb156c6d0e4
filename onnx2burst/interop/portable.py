"""Portable SNN files: the BurstIF functions inlined, nothing but standard ONNX ops left.

A portable file needs no custom domain at all: any ONNX runtime that implements the
standard ops (Scan included) runs it. Its outputs equal the kernel's bit for bit
(docs/method.md §2: the fallback performs the same float32 operations in the same order).
"""
from __future__ import annotations

import onnx
from onnx import inliner

from ..ops import DOMAIN


def make_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline every model-local function (onnx.inliner) and drop the onnx2burst domain import."""
    out = inliner.inline_local_functions(model)
    left = [n.name or n.op_type for n in out.graph.node if n.domain == DOMAIN]
    if left:
        raise ValueError(f"nodes of domain {DOMAIN!r} remain after inlining (no function for them?): {left[:5]}")
    keep = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    onnx.checker.check_model(out, full_check=True)
    return out


def is_portable(model: onnx.ModelProto) -> bool:
    """True when the model uses only the standard ONNX domains."""
    std = {"", "ai.onnx"}

    def walk(graph):
        for n in graph.node:
            if n.domain not in std:
                return False
            for a in n.attribute:
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    if not walk(g):
                        return False
        return True

    return not model.functions and walk(model.graph)
