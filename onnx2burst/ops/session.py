"""onnxruntime sessions for models with BurstIF: the kernel registered, the neurons in the
blocked NCHWc layout where that is possible (``layout.py``)."""
from __future__ import annotations

import os

from .layout import blocked_session
from .library import kernel_available, session_options
from .schema import DOMAIN, OP_TYPE

__all__ = ["make_session"]


def make_session(model, *, kernel: bool | None = None, threads: int | None = None,
                 optimization=None, providers=None, layout: str = "auto", spinning: "bool | str" = True,
                 arena: bool = True):
    """An onnxruntime.InferenceSession for ``model`` (ModelProto, bytes or path), kernel per ``kernel``.

    layout: "auto" (default) runs the neurons in onnxruntime's blocked NCHWc layout when that
    is possible -- the kernel in use, the CPU provider, full optimisation, BurstIF in the
    model -- which removes two layout passes per neuron layer (see :mod:`.layout`; checked
    bit for bit against the plain session on a probe input); "plain" never does.
    """
    import onnx
    import onnxruntime as ort

    if layout not in ("auto", "plain"):
        raise ValueError(f"layout must be 'auto' or 'plain', got {layout!r}")
    use_kernel = kernel_available() if kernel is None else bool(kernel)
    if (layout == "auto" and use_kernel and optimization in (None, "all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            and list(providers or ["CPUExecutionProvider"]) == ["CPUExecutionProvider"] and _has_burstif(model)):
        return blocked_session(model, threads=threads, providers=providers, spinning=spinning)[0]
    so = session_options(kernel=kernel, threads=threads, optimization=optimization, spinning=spinning, arena=arena)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    return ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])


def _has_burstif(model) -> bool:
    """Whether the model's main graph holds a BurstIF node (reads the file when given a path)."""
    import onnx

    if isinstance(model, bytes):
        model = onnx.load_model_from_string(model)
    elif not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    return any(n.op_type == OP_TYPE and n.domain == DOMAIN for n in model.graph.node)
