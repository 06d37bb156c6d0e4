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


_SHARED_ARENA = False


def shared_arena() -> None:
    """Register, once per process, the CPU arena that sessions made with ``arena="shared"``
    allocate from. It grows by what a run asks (not to the next power of two); it keeps what it
    holds unless a run's options shrink it (``calibration.runner.Runner`` does at the end of
    a layer)."""
    global _SHARED_ARENA
    if not _SHARED_ARENA:
        import onnxruntime as ort

        ort.create_and_register_allocator(
            ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT),
            ort.OrtArenaCfg({"arena_extend_strategy": 1}))
        _SHARED_ARENA = True


def session_options(*, kernel: bool | None = None, threads: int | None = None,
                    optimization: "str | int | None" = None, spinning: "bool | str" = True,
                    arena: "bool | str" = True):
    """onnxruntime.SessionOptions with the BurstIF kernel registered.

    kernel: True = require it (error if missing), False = never register it (the standard-op
    fallback runs), None = register it when available. threads: intra-op threads (None: ORT's
    default; more than the cores available: capped, with a ``ResourceWarning``). optimization: an ``onnxruntime.GraphOptimizationLevel`` or its name
    ("disable", "basic", "extended", "all"). spinning=False: idle intra-op threads sleep
    instead of spinning (for benchmarks that interleave several sessions on few cores);
    "run": they spin during a run and stop at its end (sessions that take turns).
    arena=False: no CPU memory arena (each tensor freed when done). arena="shared": the
    process's one shared arena (:func:`shared_arena`): for the many sessions that take turns
    (calibration's per-layer segments, the search's tails), whose own arenas would each keep
    their runs' memory -- one arena serves them all, and tensors are not allocated anew (and
    their pages faulted in) on every run.
    """
    import onnxruntime as ort

    from ..limits import cap_threads

    so = ort.SessionOptions()
    threads = cap_threads(threads)
    if threads is not None:
        so.intra_op_num_threads = threads
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
    elif spinning == "run":
        so.add_session_config_entry("session.force_spinning_stop", "1")
    so.enable_cpu_mem_arena = bool(arena)
    if arena == "shared":
        shared_arena()
        so.add_session_config_entry("session.use_env_allocators", "1")
    if kernel is None:
        kernel = kernel_available()
    if kernel:
        ok, why = kernel_status()
        if not ok:
            raise RuntimeError(f"the BurstIF kernel was asked for but is {why}")
        so.register_custom_ops_library(why)
    return so
