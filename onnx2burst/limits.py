"""Resource bounds: estimate the memory a conversion needs from the model's *declared* sizes,
and refuse (``ResourceLimitError``, with the numbers) before anything is run or read.

- ``parse_bytes("8G")`` -> ``8 * 2**30``: the ``--max-memory`` syntax (bytes, or a number with
  K, M, G or T, optionally followed by B or iB; powers of 1024).
- ``memory_limit(max_memory)`` -> ``(bytes, where it comes from)``: ``max_memory``, or by
  default the memory available now (``psutil.virtual_memory().available``).
- ``estimate(model, ...)`` -> ``MemoryEstimate``, from dims and shape-inferred ``value_info``
  only, never from tensor data (external data need not be loaded):

  weights      every initializer, sparse initializer (densified, as onnxruntime does) and
               Constant tensor, subgraphs included, times ``WEIGHT_COPIES`` (the model, its
               rewritten copy, onnxruntime's copy);
  data         ``samples`` x one sample of every input (the calibration set in memory);
  ANN run      the peak of the live tensors along the node order at batch ``B``; ``keep``
               tensors (exposed as outputs for statistics) stay alive to the end;
  SNN run      the same at the time-folded batch ``T*B`` (§1);
  statistics   the threshold search (§4): ``candidates`` x channels float64 per kept tensor,
               and its per-batch buffers (4 x the largest kept tensor at ``B``);
  cache        the bias calibration's spike cache: ``min(cache_mb, T x samples x the
               largest kept tensor's per-sample elements)`` bytes.

  A symbolic or unknown leading dim is taken as the batch, any other as 1. The two runs do not overlap, so the
  larger counts.
- ``enforce(estimate, max_memory, what)``: raise when ``estimate.total`` exceeds the limit,
  naming the parts and the largest tensors.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable

from .errors import ConfigError, ResourceLimitError

__all__ = ["WEIGHT_COPIES", "DEFAULT_BUDGET", "MemoryEstimate", "parse_bytes", "format_bytes", "available_memory",
           "memory_limit", "memory_budget", "process_memory", "tensor_bytes", "estimate", "enforce", "available_cores",
           "cap_threads"]

#: the weights are held by the loaded model, its rewritten copy and onnxruntime's session.
WEIGHT_COPIES = 3
#: a conversion's default memory budget: at most this, and at most a quarter of the memory available.
DEFAULT_BUDGET = 4 * 2**30
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_threads(threads: int | None, what: str = "threads") -> int | None:
    """``threads`` capped at the cores available (more only make onnxruntime's workers wait for
    each other; a warning says so). None stays None; below 1 is a ``ConfigError`` naming ``what``."""
    if threads is None:
        return None
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {threads!r}")
    cores = available_cores()
    if threads > cores:
        import warnings

        warnings.warn(f"{what}={threads} is more than the {cores} core(s) available; using {cores}", ResourceWarning,
                      stacklevel=3)
        return cores
    return int(threads)


def parse_bytes(value, name: str = "--max-memory") -> int | None:
    """``None`` -> None; an int, ``"8G"``, ``"512M"``, ``"1.5GiB"`` or ``"1000000"`` -> bytes (> 0)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a size such as 8G, 512M or a number of bytes, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ConfigError(f"{name} must be a size such as 8G, 512M or a number of bytes, got {value!r}")
        from fractions import Fraction

        n = int(Fraction(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ConfigError(f"{name} must be more than 0 bytes, got {value!r}")
    if n > 2**62:
        raise ConfigError(f"{name} must be at most 4 EiB, got {str(value)[:40]!r}")
    return n


def format_bytes(n: float) -> str:
    """``3221225472`` -> ``"3.0 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def available_memory() -> int:
    """Memory available to new allocations now, in bytes (psutil; else sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def process_memory() -> int:
    """The memory this process holds now (resident set), in bytes; 0 when it cannot be read."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or no /proc: plan without it
        return 0


def memory_limit(max_memory=None) -> tuple[int, str]:
    """``(limit in bytes, where it comes from)`` for messages."""
    n = parse_bytes(max_memory)
    if n is not None:
        return n, "--max-memory"
    return available_memory(), "the memory available now; raise it with --max-memory"


def memory_budget(max_memory=None) -> tuple[int, str]:
    """``(budget in bytes, where it comes from)``: what a conversion plans its batch size for.
    ``max_memory`` when given; else the smaller of 4 GiB and a quarter of the memory available."""
    n = parse_bytes(max_memory)
    if n is not None:
        return n, "--max-memory"
    quarter = available_memory() // 4
    if quarter < DEFAULT_BUDGET:
        return quarter, "the default budget: a quarter of the memory available; --max-memory sets it"
    return DEFAULT_BUDGET, "the default budget of 4 GiB; --max-memory sets it"


def _itemsize(elem_type: int) -> int:
    from onnx import helper

    try:
        return int(helper.tensor_dtype_to_np_dtype(elem_type).itemsize) or 1
    except Exception:  # noqa: BLE001 - undefined, string or a new dtype: count 4 bytes
        return 4


def _resolve(dims, batch: int) -> tuple[int, ...]:
    """Known dims as they are; an unknown leading dim is the batch, any other unknown dim 1.

    (Treating every unknown dim as the batch turned a 5-D channel-shuffle Reshape that shape
    inference cannot resolve into 16 TiB and refused ShuffleNet; an unknown inner dim is a
    lower bound, and the real sizes are bounded again when the data is read.)"""
    return tuple(d if isinstance(d, int) and d >= 0 else (batch if i == 0 else 1) for i, d in enumerate(dims))


def tensor_bytes(elem_type: int, dims, batch: int = 1) -> int:
    """Bytes of a tensor whose dims are ints, symbols or None (a leading symbol -> ``batch``)."""
    if dims is None:
        return 0
    return math.prod(_resolve(dims, batch)) * _itemsize(elem_type)


@dataclass
class MemoryEstimate:
    """``parts`` (description -> bytes, summed in ``total``) and ``largest``: the largest
    tensors ``(name, dims, elem_type, bytes)`` at the batch of the biggest part."""

    parts: dict[str, int] = field(default_factory=dict)
    largest: list[tuple[str, tuple, int, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @classmethod
    def combined(cls, named: dict[str, "MemoryEstimate"]) -> "MemoryEstimate":
        """Estimates of things held at the same time (e.g. an ANN and its SNN), parts prefixed."""
        parts = {f"{who}: {k}": v for who, e in named.items() for k, v in e.parts.items()}
        largest = sorted((t for e in named.values() for t in e.largest), key=lambda t: -t[3])[:5]
        return cls(parts, largest)


def _weights(graph) -> Iterable[tuple[str, tuple, int]]:
    """``(name, dims, elem_type)`` of every stored tensor of ``graph`` and its subgraphs."""
    for t in graph.initializer:
        yield t.name, tuple(t.dims), t.data_type
    for s in graph.sparse_initializer:
        yield s.values.name, tuple(s.dims), s.values.data_type
    for node in graph.node:
        for a in node.attribute:
            for t in ([a.t] if a.HasField("t") else []) + list(a.tensors):
                yield t.name or f"{node.name or node.op_type}.{a.name}", tuple(t.dims), t.data_type
            if a.HasField("sparse_tensor"):
                s = a.sparse_tensor
                yield f"{node.name or node.op_type}.{a.name}", tuple(s.dims), s.values.data_type
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _weights(g)


def _run_peak(graph, info: dict, batch: int, keep: set[str]) -> int:
    """Peak bytes of live tensors along the node order: graph inputs and ``keep``/graph outputs
    live to the end, every other tensor until its last consumer."""
    inits = {t.name for t in graph.initializer}
    last = {}
    for i, node in enumerate(graph.node):
        for x in node.input:
            last[x] = i
    stay = keep | {o.name for o in graph.output} | {v.name for v in graph.input}
    size = {}

    def nbytes(name):
        if name not in size:
            et, dims = info.get(name, (0, None))
            size[name] = tensor_bytes(et, dims, batch)
        return size[name]

    live = sum(nbytes(v.name) for v in graph.input if v.name not in inits)
    peak = live
    for i, node in enumerate(graph.node):
        made = [o for o in node.output if o]
        live += sum(nbytes(o) for o in made)
        peak = max(peak, live)
        for x in set(node.input) | set(made):
            if x and x not in stay and x not in inits and last.get(x, -1) <= i and x in size:
                live -= size.pop(x)
                size[x] = 0  # freed; not counted again
    return peak


def estimate(model, *, batch_size: int = 1, T: int = 1, samples: int = 0, keep: Iterable[str] = (),
             candidates: int = 0, cache_mb: int = 0, info: dict | None = None) -> MemoryEstimate:
    """The memory a conversion of ``model`` with this plan needs (see the module docstring).

    info: ``graph.shapes.tensor_info`` of the model with inferred shapes (computed here when
    None; the model itself is not changed). keep: tensors read out per batch (the neurons).
    """
    from .graph.shapes import infer_shapes, tensor_info

    if info is None:
        info = tensor_info(infer_shapes(model))
    g = model.graph
    keep = set(keep)
    est = MemoryEstimate()
    weights = [(n, d, et, tensor_bytes(et, d)) for n, d, et in _weights(g)]
    est.parts[f"weights ({len(weights)} tensors, x{WEIGHT_COPIES}: model, rewritten copy, onnxruntime)"] = \
        WEIGHT_COPIES * sum(w[3] for w in weights)
    inits = {t.name for t in g.initializer}
    inputs = [v.name for v in g.input if v.name not in inits]
    if samples:
        per_sample = sum(tensor_bytes(info.get(n, (0, None))[0], (info.get(n, (0, None))[1] or ())[1:], batch_size)
                         for n in inputs)
        est.parts[f"calibration data ({samples} samples x {format_bytes(per_sample)})"] = samples * per_sample
    B, TB = batch_size, T * batch_size
    est.parts[f"ANN run (batch {B}, live tensors)"] = _run_peak(g, info, B, keep)
    snn = _run_peak(g, info, TB, set()) if T > 1 else 0
    kept = [(info.get(n, (0, None))) for n in keep]
    if candidates and kept:
        channels = sum(_resolve(d, 1)[1] if d and len(d) > 1 else 1 for _, d in kept)
        est.parts[f"threshold search ({candidates} candidates)"] = \
            candidates * channels * 8 + 4 * max(tensor_bytes(et, d, B) for et, d in kept)
    if cache_mb and kept and samples:
        per_sample = max(math.prod(_resolve((d or ())[1:], 1)) for _, d in kept)  # uint8 counts
        est.parts["bias calibration cache"] = min(int(cache_mb) * 2**20, T * samples * per_sample)
    ann_key = f"ANN run (batch {B}, live tensors)"
    if snn > est.parts[ann_key]:  # the runs do not overlap: count the larger
        del est.parts[ann_key]
        est.parts[f"SNN run (batch T*B = {T}*{B} = {TB}, live tensors)"] = snn
    run_batch = TB if T > 1 else B
    acts = [(n, _resolve(d, run_batch), et, tensor_bytes(et, d, run_batch)) for n, (et, d) in info.items()
            if n not in inits and d is not None]
    est.largest = sorted(weights + acts, key=lambda w: -w[3])[:5]
    return est


def enforce(est: MemoryEstimate, max_memory=None, what: str = "the conversion", *, budget: bool = False) -> None:
    """Raise ``ResourceLimitError`` when ``est.total`` exceeds the limit (``memory_limit``; with
    ``budget``, ``memory_budget``)."""
    limit, source = (memory_budget if budget else memory_limit)(max_memory)
    if est.total <= limit:
        return
    from onnx import helper

    def dtype(et):
        try:
            return helper.tensor_dtype_to_np_dtype(et).name
        except Exception:  # noqa: BLE001
            return f"type {et}"

    parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(est.parts.items(), key=lambda kv: -kv[1])[:3] if v)
    largest = ", ".join(f"{n!r} {list(d)} {dtype(et)} {format_bytes(b)}" for n, d, et, b in est.largest[:2] if b)
    raise ResourceLimitError(
        f"{what} would need about {format_bytes(est.total)} ({est.total:,} bytes), more than the limit of "
        f"{format_bytes(limit)} ({limit:,} bytes; {source}); refused before running anything. Largest parts: "
        f"{parts}; largest tensors: {largest}")
