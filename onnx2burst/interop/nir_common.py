"""What the NIR exporter's modules share: the result type, its warning and error, the
supported ops, and the small value types of the graph walk and of the lowering (see ``interop.nir``)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ConfigError, UnsupportedModelError
from ..graph.index import attr

__all__ = ["NIRExport", "NIRExportWarning", "NIRUnsupportedError", "SUPPORTED_OPS"]

#: ONNX ops the exporter maps (besides BurstIF).
SUPPORTED_OPS = ("Conv", "Gemm", "MatMul", "Add", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
                 "Tile", "ReduceMean", "Identity", "Dropout")
# ops whose only data input is input 0 (the others are shapes, axes, repeats, scales)
_FIRST_INPUT_ONLY = ("Tile", "Reshape", "ReduceMean", "Flatten", "Identity", "Dropout", "Softmax", "LogSoftmax",
                     "Squeeze", "Unsqueeze", "Slice", "Pad", "Resize", "Upsample")
_DROPPABLE_TAIL = ("Softmax", "LogSoftmax")


class NIRExportWarning(UserWarning):
    """What the NIR graph cannot express of the SNN (one line per layer)."""


@dataclass
class NIRExport:
    """``graph``: the ``nir.NIRGraph``; ``losses``: (layer, what NIR loses) per layer;
    ``approximations``: (node, op, what was done) for ops mapped only with ``lossy``;
    ``notes``: what the importers (nirtorch: Sinabs, Norse) cannot run as written, if anything;
    ``data``: the file's bytes; ``neuron``: the NIR neuron type each BurstIF became ("if", "cubalif")."""

    graph: object
    T: int
    losses: list[tuple[str, str]] = field(default_factory=list)
    approximations: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: bytes = field(default=b"", repr=False)
    neuron: str = "if"

    @property
    def exact(self) -> bool:
        return not self.losses and not self.approximations and not self.notes

    def message(self, source: str = "the SNN") -> str:
        """The warning text: one line per layer, then the approximations, then what they mean."""
        lines = [f"NIR cannot express all of {source}; the exported graph differs from it in:"]
        lines += [f"  {name}: {what}" for name, what in self.losses]
        lines += [f"  {name} ({op}): {what}" for name, op, what in self.approximations]
        lines += [f"  importers: {note}" for note in self.notes]
        if self.losses and self.neuron == "if":
            lines.append("(NIR's IF, and Norse's, reset to zero and spike once a step: the charge above the threshold "
                         "at a spike is lost, rates come out lower, and a burst of psi > 1 is clipped to one. Sinabs' "
                         "IAF resets by subtraction like BurstIF, with no cap on the spikes a step and the membrane "
                         "floored at -threshold; onnx2burst.interop.nir_run.sinabs_as_burstif makes it BurstIF.)")
        return "\n".join(lines)


class NIRUnsupportedError(UnsupportedModelError):
    """Nodes of the SNN that NIR cannot express; ``issues``: (node, op type, reason)."""

    def __init__(self, issues, lossy: bool = False):
        self.issues = list(issues)
        hint = ("no approximation exists for these, even with --lossy" if lossy else
                "pass --lossy (lossy=True) to approximate or drop what can be, or change the model")
        lines = [f"  {name} ({op}): {why}" for name, op, why in self.issues]
        Exception.__init__(self, f"{len(self.issues)} node(s) cannot be exported to NIR:\n" + "\n".join(lines)
                           + f"\n{hint}")


def _nir():
    """The ``nir`` package, or a ``ConfigError`` saying how to install it."""
    try:
        import nir
    except ImportError:
        raise ConfigError("NIR export needs the 'nir' package: pip install 'onnx2burst[nir]' "
                          "(or pip install nir)") from None
    return nir


@dataclass(eq=False)
class _N:
    """A NIR node before it becomes a ``nir`` object (``interop.nir_io``): its ``kind`` (Input, Output,
    Conv, Affine, IF, SumPool, Flatten; Scale only until ``nir_lower`` removes it), parameters ``p``,
    output ``shape`` without the batch axis, and ``meta``. Per-channel parameters run along axis 0
    of ``shape``: IF ``thr`` (threshold, float32 [C]) and ``fires`` (bool [C]), Scale ``s`` ([C])."""

    kind: str
    p: dict
    shape: tuple
    meta: dict = field(default_factory=dict)


@dataclass
class _Val:
    """An ONNX tensor as NIR sees it: the NIR nodes whose outputs sum to it, its shape
    without the batch axis, and where it is in time (static: before the Tile; temporal:
    [T*N, ...]; unfolded: [T, N, ...]; mean: averaged over T)."""

    refs: tuple[str, ...]
    shape: tuple[int, ...]
    phase: str
    dropped: tuple[str, ...] = ()


_BROKEN = _Val((), (), "broken")  # the output of a node that could not be mapped


class _Skip(Exception):
    """A node the exporter cannot map; the message says why."""


def _why_not(op: str) -> str:
    """Why NIR cannot express ``op`` (the reason listed for the node)."""
    if op == "MaxPool":
        return ("NIR has no max pooling (and max of spikes is not max of rates, docs/method.md §3); "
                "--lossy approximates it by SumPool2d")
    if op == "Concat":
        return "NIR has no concatenation of branches"
    return "NIR has no equivalent"


# attributes of nirtorch's GraphExecutor (a torch Module) that a submodule name must not shadow
_RESERVED = {"graph", "stateful_modules", "return_state", "execution_order", "training", "forward", "eval",
             "train", "to", "type", "float", "double", "half", "cuda", "cpu", "apply", "modules", "children",
             "parameters", "buffers", "state_dict", "call_super_init", "dump_patches"}


def _sanitize(name: str) -> str:
    """``name`` as a NIR node name that is also a torch submodule name (nirtorch makes one per
    node): characters outside [A-Za-z0-9_] become ``_``; a name a torch Module already uses gets ``_``."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_")
    s = re.sub(r"_+", "_", s) or "node"
    return s + "_" if s in _RESERVED else s


def _conv_out(size, k, s, p0, p1, d):
    """Output size of a convolution or pooling axis: ``(size + p0 + p1 - d*(k-1) - 1) // s + 1``."""
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _auto_pad(node) -> str:
    """The node's ``auto_pad`` attribute as a str (``NOTSET`` when absent)."""
    ap = attr(node, "auto_pad", b"NOTSET")
    return ap.decode() if isinstance(ap, bytes) else ap
