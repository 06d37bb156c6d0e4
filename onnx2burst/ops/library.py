"""Finding and registering the C++ BurstIF kernel in onnxruntime sessions."""
from __future__ import annotations

import functools
import os
from pathlib import Path

LIBRARY_NAME = "libonnx2burst_ops.so"
_ENV = "ONNX2BURST_OPS_LIBRARY"


def _candidates():
    env = os.environ.get(_ENV)
    if env:
        yield Path(env)
    pkg = Path(__file__).resolve().parent.parent
    yield pkg / "_lib" / LIBRARY_NAME
    import onnx2burst  # an editable install may spread the package over several folders
    for p in getattr(onnx2burst, "__path__", []):
        yield Path(p) / "_lib" / LIBRARY_NAME
    root = pkg.parent  # a source checkout: the scikit-build build folders
    yield from sorted((root / "build").glob(f"*/{LIBRARY_NAME}"))


def library_path() -> str | None:
    """Path of the built kernel library, or None when it was not built.

    ``ONNX2BURST_OPS_LIBRARY`` overrides the search.
    """
    for p in _candidates():
        if p.is_file():
            return str(p)
    return None


@functools.lru_cache(maxsize=None)
def _load_error(path: str) -> str | None:
    import onnxruntime as ort

    try:
        ort.SessionOptions().register_custom_ops_library(path)
    except Exception as e:  # noqa: BLE001 - reported to the user by doctor/kernel_available
        return str(e)
    return None


def kernel_available() -> bool:
    """True when the kernel library exists and onnxruntime accepts it."""
    p = library_path()
    return p is not None and _load_error(p) is None


def kernel_status() -> tuple[bool, str]:
    """(usable, a sentence saying why) for doctor and for error messages."""
    p = library_path()
    if p is None:
        return False, ("not built: the fallback function is used (reinstall with onnxruntime headers "
                       "available to build it; see README)")
    err = _load_error(p)
    if err:
        return False, f"{p} does not load: {err}"
    return True, p


def session_options(*, kernel: bool | None = None, threads: int | None = None,
                    optimization: "str | int | None" = None, spinning: bool = True):
    """onnxruntime.SessionOptions with the BurstIF kernel registered.

    kernel: True = require it (error if missing), False = never register it (the standard-op
    fallback runs), None = register it when available. threads: intra-op threads (None: ORT's
    default). optimization: an ``onnxruntime.GraphOptimizationLevel`` or its name
    ("disable", "basic", "extended", "all"). spinning=False: idle intra-op threads sleep
    instead of spinning (for benchmarks that interleave several sessions on few cores).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if optimization is not None:
        if isinstance(optimization, str):
            optimization = {
                "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            }[optimization]
        so.graph_optimization_level = optimization
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if kernel is None:
        kernel = kernel_available()
    if kernel:
        ok, why = kernel_status()
        if not ok:
            raise RuntimeError(f"the BurstIF kernel was asked for but is {why}")
        so.register_custom_ops_library(why)
    return so


def make_session(model, *, kernel: bool | None = None, threads: int | None = None,
                 optimization=None, providers=None, layout: str = "auto", spinning: bool = True):
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
        from .layout import blocked_session

        return blocked_session(model, threads=threads, providers=providers, spinning=spinning)[0]
    so = session_options(kernel=kernel, threads=threads, optimization=optimization, spinning=spinning)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    return ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])


def _has_burstif(model) -> bool:
    """Whether the model's main graph holds a BurstIF node (reads the file when given a path)."""
    import onnx

    from .schema import DOMAIN, OP_TYPE

    if isinstance(model, bytes):
        model = onnx.load_model_from_string(model)
    elif not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    return any(n.op_type == OP_TYPE and n.domain == DOMAIN for n in model.graph.node)
