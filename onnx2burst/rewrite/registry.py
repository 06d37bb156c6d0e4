"""What each op type becomes in the SNN: the registry, op type -> handler (§1, §3).

A handler looks at one node and returns a ``Mark``; it never edits the graph (the
rewriter applies the marks in one place). ``supported_ops()`` is the registry's keys.
Kinds:

- ``NEURON``: becomes a BurstIF (Relu; Clip with min 0, its max kept as ``clip_max``;
  LeakyRelu and PRelu with a constant slope >= 0: a signed BurstIF, the slope as ``alpha``).
- ``LINEAR``: linear and time-invariant: runs unchanged on the time-folded batch.
- ``SHAPE``: computes shapes, not data.
- ``MAXPOOL``: MaxPool on spikes (per timestep) or replaced by AveragePool (``--maxpool``).
- ``OUTPUT``: non-linear, but only at the very end: moved after the mean over T (Softmax; any
  non-linear op after the last neuron, e.g. a detector's decoding, when the context says so).
- ``INEXACT``: non-linear; between neurons it cannot be converted exactly.

Marks only matter in the spiking part of the graph (after the first neuron); before it
every op runs once on the analog input, exactly as in the ANN.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import onnx

__all__ = ["Kind", "Mark", "Context", "register", "handler_for", "classify", "supported_ops"]


class Kind(str, enum.Enum):
    NEURON = "neuron"
    LINEAR = "linear"
    SHAPE = "shape"
    MAXPOOL = "maxpool"
    OUTPUT = "output"
    INEXACT = "inexact"


@dataclass(frozen=True)
class Mark:
    kind: Kind
    reason: str = ""
    clip_max: float | None = None
    alpha: tuple | None = None          # signed neuron: the negative slope (1 value, or a PRelu slope's values)
    alpha_shape: tuple | None = None    # the PRelu slope's shape (placed on the channel axis by the analysis)


class Context(Protocol):
    """What a handler may ask about the graph."""

    def const(self, name: str) -> np.ndarray | None: ...
    def temporal(self, name: str) -> bool: ...          # the tensor carries spikes (after a neuron)
    def only_feeds_outputs(self, node: onnx.NodeProto) -> bool: ...
    # optional: no neuron reads the node's outputs, directly or further on
    # def after_last_neuron(self, node: onnx.NodeProto) -> bool: ...


def _after_last_neuron(node, ctx) -> bool:
    f = getattr(ctx, "after_last_neuron", None)
    return bool(f and f(node))


_TAIL = "after the last neuron: runs once on the mean over T"


Handler = Callable[[onnx.NodeProto, Context], Mark]
_HANDLERS: dict[str, Handler] = {}


def register(*op_types: str):
    def deco(fn: Handler) -> Handler:
        for op in op_types:
            _HANDLERS[op] = fn
        return fn
    return deco


def handler_for(op_type: str) -> Handler | None:
    return _HANDLERS.get(op_type)


def supported_ops() -> list[str]:
    """Op types the registry knows (some only in the analog prefix or at the output)."""
    return sorted(_HANDLERS)


def classify(node: onnx.NodeProto, ctx: Context) -> Mark:
    """The mark of ``node``: its handler's, or INEXACT for an op the registry does not know."""
    if node.domain not in ("", "ai.onnx"):
        return _nonlinear_mark(node, ctx, f"custom-domain op {node.domain}.{node.op_type} (unknown to the converter)")
    h = _HANDLERS.get(node.op_type)
    if h is None:
        return _nonlinear_mark(node, ctx, f"{node.op_type} is not in the converter's registry")
    return h(node, ctx)


# ------------------------------------------------------------------ neurons
@register("Relu")
def _relu(node, ctx):
    return Mark(Kind.NEURON)


@register("Clip")
def _clip(node, ctx):
    lo = ctx.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    hi = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if lo is None or float(np.asarray(lo).reshape(-1)[0]) != 0.0:
        return Mark(Kind.INEXACT, "Clip whose min is not a constant 0 is not a ReLU")
    if len(node.input) > 2 and node.input[2] and hi is None:
        return Mark(Kind.INEXACT, "Clip with a non-constant max")
    return Mark(Kind.NEURON, clip_max=None if hi is None else float(np.asarray(hi).reshape(-1)[0]))


@register("LeakyRelu")
def _leaky(node, ctx):
    a = next((x.f for x in node.attribute if x.name == "alpha"), 0.01)
    if not (np.isfinite(a) and a >= 0):
        return _nonlinear_mark(node, ctx, f"LeakyRelu with slope {a} (< 0: not monotone)")
    return Mark(Kind.NEURON, alpha=(float(np.float32(a)),))


@register("PRelu")
def _prelu(node, ctx):
    slope = ctx.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if slope is None:
        return _nonlinear_mark(node, ctx, "PRelu with a slope that is not a constant")
    slope = np.asarray(slope, np.float32)
    if not (np.isfinite(slope).all() and (slope >= 0).all()) or slope.size == 0:
        return _nonlinear_mark(node, ctx, "PRelu with a negative slope (not monotone)")
    if np.all(slope == slope.reshape(-1)[0]):
        return Mark(Kind.NEURON, alpha=(float(slope.reshape(-1)[0]),))
    return Mark(Kind.NEURON, alpha=tuple(float(v) for v in slope.reshape(-1)), alpha_shape=tuple(slope.shape))


# ------------------------------------------------------------------ linear, time-invariant
@register("Conv", "ConvTranspose", "Gemm", "AveragePool", "GlobalAveragePool", "Concat", "Flatten",
          "Reshape", "Transpose", "Pad", "Squeeze", "Unsqueeze", "Split", "Slice", "Gather", "Identity",
          "Dropout", "BatchNormalization", "Sum", "Add", "Sub", "Neg", "ReduceMean", "ReduceSum", "Resize",
          "Upsample", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Cast", "Constant")
def _linear(node, ctx):
    return Mark(Kind.LINEAR)


@register("Mul", "Div", "MatMul", "Einsum")
def _product(node, ctx):
    spiking = [i for i in node.input if i and ctx.temporal(i)]
    if len(spiking) > 1 or (node.op_type == "Div" and len(node.input) > 1 and ctx.temporal(node.input[1])):
        return _nonlinear_mark(node, ctx, f"{node.op_type} of spiking tensors is not linear")
    return Mark(Kind.LINEAR)


@register("Shape", "Size", "ConstantOfShape", "Range", "Equal", "Less", "Greater", "Where", "NonZero")
def _shape(node, ctx):
    return Mark(Kind.SHAPE)


# ------------------------------------------------------------------ pooling by max
@register("MaxPool", "GlobalMaxPool")
def _maxpool(node, ctx):
    return Mark(Kind.MAXPOOL, "max pooling of spikes: lateral inhibition (default) or per timestep (--maxpool)")


# ------------------------------------------------------------------ output tail and non-linear ops
@register("Softmax", "LogSoftmax", "ArgMax")
def _softmax(node, ctx):
    if ctx.only_feeds_outputs(node):
        return Mark(Kind.OUTPUT, "moved after the mean over T")
    return _nonlinear_mark(node, ctx, f"{node.op_type} before the output is not linear")


_NONLINEAR = {
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Elu": "ELU", "Selu": "SELU", "Celu": "CELU",
    "Gelu": "GELU", "HardSigmoid": "hard sigmoid", "HardSwish": "hard swish", "Softplus": "softplus",
    "Softsign": "softsign", "Mish": "mish", "Erf": "erf (GELU)", "Exp": "exp", "Log": "log",
    "Sqrt": "sqrt", "Pow": "power", "Abs": "abs", "Reciprocal": "reciprocal", "Max": "elementwise max",
    "Min": "elementwise min", "LRN": "local response normalisation",
    "LayerNormalization": "normalisation by data statistics",
    "InstanceNormalization": "normalisation by data statistics",
    "GroupNormalization": "normalisation by data statistics", "LpNormalization": "Lp normalisation",
    "ReduceMax": "max over spikes", "ReduceMin": "min over spikes", "ReduceL2": "L2 norm",
    "ThresholdedRelu": "thresholded ReLU", "Shrink": "shrink", "Floor": "floor", "Ceil": "ceil",
    "Round": "round", "Sign": "sign", "Sin": "sin", "Cos": "cos", "ArgMin": "argmin",
}


def _nonlinear_mark(node, ctx, reason: str) -> Mark:
    """OUTPUT after the last neuron (it runs once on the mean over T, analog), else INEXACT."""
    return Mark(Kind.OUTPUT, _TAIL) if _after_last_neuron(node, ctx) else Mark(Kind.INEXACT, reason)


@register(*_NONLINEAR)
def _nonlinear(node, ctx):
    return _nonlinear_mark(node, ctx, f"{_NONLINEAR[node.op_type]} is not linear")
