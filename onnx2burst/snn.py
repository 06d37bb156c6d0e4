"""A typed view of an SNN file: the one place that reads BurstIF nodes back out of a graph.

``read_snn(model)`` returns an :class:`SNN`: its neurons in graph order, each with the
attributes of docs/method.md §2 (``T``, ``psi``, ``tau``), its threshold ``vth`` when that is
an initializer, and the tensors it reads and writes; the model's data inputs and outputs; the
metadata ``convert`` wrote. Every consumer (search, energy, evaluation, the exports, the
blocked-layout session) reads neurons through it instead of parsing node attributes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ConfigError
from .graph.index import attr
from .ops.schema import DOMAIN, OP_TYPE

__all__ = ["Neuron", "SNN", "read_snn", "is_neuron", "layer_name", "data_inputs", "METADATA_PREFIX"]

METADATA_PREFIX = "onnx2burst."


def is_neuron(node: onnx.NodeProto) -> bool:
    """True for a BurstIF node."""
    return node.op_type == OP_TYPE and node.domain == DOMAIN


def layer_name(node: onnx.NodeProto) -> str:
    """A BurstIF layer's name: the node name, or its Y output when the node has none."""
    return node.name or node.output[0]


def data_inputs(model: onnx.ModelProto) -> list[str]:
    """The graph inputs that are not initializers (what a user feeds)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


@dataclass(frozen=True)
class Neuron:
    """One BurstIF node: ``Y, spikes = BurstIF(X, vth; T, psi, tau)``.

    Per neuron of channel c, with ``theta = tau * vth[c]`` and ``u = 0`` (docs/method.md §2)::

        u += X[t] + theta / (2T);  s = clip(floor(u / theta), 0, psi);  u -= s * theta;  Y[t] = s * theta

    ``alpha`` is the negative slope of a signed neuron (attribute alpha, float32 ``[1]`` or
    ``[C]``; §2), None for a ReLU neuron. ``vth`` is the threshold per channel (float32) when
    the file stores it as an initializer, else None. ``spikes`` is the name of the per-sample
    spike count output ("" when the node does not declare it). ``index`` is the node's position in ``graph.node``.
    """

    name: str
    node: onnx.NodeProto = field(repr=False)
    index: int
    x: str
    vth_name: str
    y: str
    spikes: str
    T: int
    psi: int
    tau: float
    vth: np.ndarray | None = field(default=None, repr=False)
    alpha: np.ndarray | None = field(default=None, repr=False)

    @property
    def signed(self) -> bool:
        """Whether the neuron fires negative spikes (some alpha > 0)."""
        return self.alpha is not None and bool((self.alpha > 0).any())

    @property
    def theta(self) -> np.ndarray:
        """``tau * vth`` in float32, as the kernel forms it."""
        if self.vth is None:
            raise ConfigError(f"BurstIF {self.name}: vth {self.vth_name!r} is not an initializer")
        return (np.float32(self.tau) * self.vth).astype(np.float32)


@dataclass(frozen=True)
class SNN:
    """An SNN file as onnx2burst reads it. ``T``: the timesteps (metadata, else the neurons')."""

    model: onnx.ModelProto = field(repr=False)
    neurons: tuple[Neuron, ...]
    T: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    metadata: Mapping[str, str]

    def neuron(self, name: str) -> Neuron:
        for n in self.neurons:
            if n.name == name:
                return n
        raise ConfigError(f"no BurstIF layer {name!r}; the SNN has {[n.name for n in self.neurons]}")

    @property
    def settings(self) -> dict[str, tuple[int, float]]:
        """neuron -> (psi, tau)."""
        return {n.name: (n.psi, n.tau) for n in self.neurons}

    @property
    def input(self) -> str:
        """The one data input (an error naming them when there are several)."""
        if len(self.inputs) != 1:
            raise ConfigError(f"expected one data input, the model has {list(self.inputs)}")
        return self.inputs[0]


def _int(value, what: str, lo: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an integer >= {lo}, got {value!r}") from None
    if v < lo:
        raise ConfigError(f"{what} must be an integer >= {lo}, got {value!r}")
    return v


#: what a BurstIF node in a file may carry; the kernel's extras (``channel_block``,
#: ``time_broadcast``, a third input) exist only in sessions ``ops.make_session`` builds.
FILE_ATTRIBUTES = ("T", "psi", "tau", "alpha")


def read_snn(model: onnx.ModelProto, *, require: bool = True, require_vth: bool = False) -> SNN:
    """Read the BurstIF neurons, inputs, outputs and metadata of ``model``.

    require: an SNN without BurstIF node is an error (``ConfigError``) rather than an empty
    view. require_vth: every threshold must be an initializer. Layer names must be unique; a
    node with the kernel's session-only extras (which change its sizes) is refused.
    """
    if any(p.key == METADATA_PREFIX + "stream" for p in model.metadata_props):
        raise ConfigError("the model is a streaming model (export-stream: one timestep per run), not an SNN; pass "
                          "the SNN it was exported from, or step it with onnx2burst.stream.StreamSession")
    inits = {t.name: t for t in model.graph.initializer}
    neurons = []
    for index, n in enumerate(model.graph.node):
        if not is_neuron(n):
            continue
        name = layer_name(n)
        extra = sorted({a.name for a in n.attribute} - set(FILE_ATTRIBUTES)) + (["a third input"] if len(n.input) > 2
                                                                                  else [])
        if extra:
            raise ConfigError(f"BurstIF {name}: {', '.join(extra)} is not part of an SNN file (the kernel takes it only "
                              "inside the sessions onnx2burst builds)")
        vth = None
        if len(n.input) > 1 and n.input[1] in inits:
            vth = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32).reshape(-1)
        elif require_vth:
            raise ConfigError(f"BurstIF {name}: vth {n.input[1] if len(n.input) > 1 else ''!r} is not an initializer")
        psi = _int(attr(n, "psi"), f"BurstIF {name}: psi")
        tau = float(attr(n, "tau", 1.0))
        alpha = next((np.asarray(a.floats, np.float32) for a in n.attribute if a.name == "alpha"), None)
        if alpha is not None and not (alpha.size and np.isfinite(alpha).all() and (alpha >= 0).all()):
            raise ConfigError(f"BurstIF {name}: alpha must be finite values >= 0, got {alpha.tolist()}")
        neurons.append(Neuron(name, n, index, n.input[0], n.input[1] if len(n.input) > 1 else "", n.output[0],
                              n.output[1] if len(n.output) > 1 else "", _int(attr(n, "T"), f"BurstIF {name}: T"),
                              psi, tau, vth, alpha))
    if require and not neurons:
        raise ConfigError("the model has no BurstIF layer: pass the SNN made by `onnx2burst convert`")
    names = [n.name for n in neurons]
    if len(set(names)) != len(names):
        raise ConfigError(f"BurstIF layer names are not unique: {names}")
    meta = {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}
    if "T" in meta:
        T = _int(meta["T"], "the SNN's metadata T")
    else:
        T = neurons[0].T if neurons else 1
    return SNN(model, tuple(neurons), T, tuple(data_inputs(model)), tuple(o.name for o in model.graph.output), meta)
