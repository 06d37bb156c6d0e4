"""The BurstIF operator (docs/method.md §2): numpy reference, ONNX node and fallback function,
and the C++ kernel's library.

- ``burst_if``: the numpy reference, the spec in executable form.
- ``make_node`` / ``attach_function``: put BurstIF into a model with its standard-op fallback.
- ``library_path`` / ``session_options`` / ``make_session``: run with the kernel registered.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from .function import make_function
from .library import kernel_available, kernel_status, library_path, session_options
from .session import make_session
from .reference import burst_if
from .schema import DOMAIN, MIN_OPSET, OP_TYPE, OP_VERSION

__all__ = [
    "DOMAIN", "OP_TYPE", "OP_VERSION", "MIN_OPSET", "burst_if", "make_node", "make_function",
    "attach_function", "default_opset", "node_alpha", "library_path", "kernel_available", "kernel_status",
    "session_options", "make_session",
]


def make_node(x: str, vth: str, y: str, *, T: int, psi: int, tau: float = 1.0,
              spikes: str | None = None, name: str | None = None, alpha=None) -> onnx.NodeProto:
    """A BurstIF node ``y, spikes = BurstIF(x, vth)`` with attributes T, psi, tau (and alpha).

    Both outputs are always declared (``spikes`` defaults to ``y + "_spikes"``): onnx and
    onnxruntime cannot infer a function call that leaves a function output out. ``alpha``
    (the negative slope, 1 or C values >= 0; docs/method.md §2) is written only when some
    value is not 0: a ReLU neuron's node is the same with or without it.
    """
    if int(T) < 1 or int(psi) < 1 or not float(tau) > 0:
        raise ValueError(f"BurstIF {name or y}: need T >= 1, psi >= 1, tau > 0; got T={T}, psi={psi}, tau={tau}")
    outputs = [y, spikes or f"{y}_spikes"]
    extra = {}
    if alpha is not None:
        a = [float(v) for v in np.asarray(alpha, np.float32).reshape(-1)]
        if not a or not all(math.isfinite(v) and v >= 0 for v in a):
            raise ValueError(f"BurstIF {name or y}: alpha must be finite values >= 0, got {a}")
        if any(v != 0 for v in a):
            extra["alpha"] = a
    return helper.make_node(OP_TYPE, [x, vth], outputs, name=name, domain=DOMAIN,
                            T=int(T), psi=int(psi), tau=float(tau), **extra)


def node_alpha(node: onnx.NodeProto) -> list[float] | None:
    """The ``alpha`` values of a BurstIF node, or None (a ReLU neuron)."""
    for a in node.attribute:
        if a.name == "alpha":
            return list(a.floats)
    return None


def _signed(model: onnx.ModelProto) -> bool:
    return any(n.op_type == OP_TYPE and n.domain == DOMAIN and node_alpha(n) for n in model.graph.node)


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    raise ValueError("model imports no default-domain opset")


def attach_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Attach the BurstIF fallback function and the domain's opset import (in place, idempotent).

    The function is written against the model's default opset, which must be >= 13.
    """
    keep = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(keep)
    model.functions.append(make_function(default_opset(model), signed=_signed(model)))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    return model
