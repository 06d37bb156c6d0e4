"""What the NIR exporter's modules share: the result type, its warning and error, the
supported ops, and the small value types of the graph walk (see ``interop.nir``)."""
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
    ``approximations``: (node, op, what was done) for ops mapped only with ``lossy``."""

    graph: object
    T: int
    losses: list[tuple[str, str]] = field(default_factory=list)
    approximations: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.losses and not self.approximations

    def message(self, source: str = "the SNN") -> str:
        """The warning text: one line per layer, then the approximations, then what they mean."""
        lines = [f"NIR cannot express all of {source}; the exported graph differs from it in:"]
        lines += [f"  {name}: {what}" for name, what in self.losses]
        lines += [f"  {name} ({op}): {what}" for name, op, what in self.approximations]
        if self.losses:
            lines.append("(NIR's IF resets to zero: the charge above the threshold at a spike is lost and rates come "
                         "out lower; it emits one spike per step, so a burst of psi > 1 is clipped to one.)")
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


def _sanitize(name: str) -> str:
    """``name`` as a NIR node name: ``/`` becomes ``.``, other characters outside [A-Za-z0-9_.-] ``_``."""
    s = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.replace("/", ".")).strip("._")
    return s or "node"


def _conv_out(size, k, s, p0, p1, d):
    """Output size of a convolution or pooling axis: ``(size + p0 + p1 - d*(k-1) - 1) // s + 1``."""
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _auto_pad(node) -> str:
    """The node's ``auto_pad`` attribute as a str (``NOTSET`` when absent)."""
    ap = attr(node, "auto_pad", b"NOTSET")
    return ap.decode() if isinstance(ap, bytes) else ap
