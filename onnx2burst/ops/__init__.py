"""The BurstIF operator (docs/method.md §2): numpy reference, ONNX node and fallback function,
and the C++ kernel's library.

- ``burst_if``: the numpy reference, the spec in executable form.
- ``make_node`` / ``attach_function``: put BurstIF into a model with its standard-op fallback.
- ``library_path`` / ``session_options`` / ``make_session``: run with the kernel registered.
"""
from __future__ import annotations

import onnx
from onnx import helper

from .function import make_function
from .library import kernel_available, kernel_status, library_path, session_options
from .session import make_session
from .reference import burst_if
from .schema import DOMAIN, MIN_OPSET, OP_TYPE, OP_VERSION

__all__ = [
    "DOMAIN", "OP_TYPE", "OP_VERSION", "MIN_OPSET", "burst_if", "make_node", "make_function",
    "attach_function", "default_opset", "library_path", "kernel_available", "kernel_status",
    "session_options", "make_session",
]


def make_node(x: str, vth: str, y: str, *, T: int, psi: int, tau: float = 1.0,
              spikes: str | None = None, name: str | None = None) -> onnx.NodeProto:
    """A BurstIF node ``y, spikes = BurstIF(x, vth)`` with attributes T, psi, tau.

    Both outputs are always declared (``spikes`` defaults to ``y + "_spikes"``): onnx and
    onnxruntime cannot infer a function call that leaves a function output out.
    """
    if int(T) < 1 or int(psi) < 1 or not float(tau) > 0:
        raise ValueError(f"BurstIF {name or y}: need T >= 1, psi >= 1, tau > 0; got T={T}, psi={psi}, tau={tau}")
    outputs = [y, spikes or f"{y}_spikes"]
    return helper.make_node(OP_TYPE, [x, vth], outputs, name=name, domain=DOMAIN,
                            T=int(T), psi=int(psi), tau=float(tau))


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
    model.functions.append(make_function(default_opset(model)))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    return model
