"""The search's sensitivity for any model outputs (docs/method.md §6).

Per sample, ``S = sum_o d_o(ANN_o, SNN_o)`` over the model's outputs ``o`` (the SNN's output
is its mean over T), with one of two terms per output:

- ``"kl"``: the symmetric KL of §6 between the class distributions, along the class axis
  (the Softmax/LogSoftmax's axis, else the last); the output holds logits, probabilities
  (after a Softmax) or log-probabilities (after a LogSoftmax). Where the output has more
  axes than the sample's and the class axis, the KL is averaged over them.
- ``"mse"``: the normalised squared error ``mean_j (SNN_oj - ANN_oj)^2 / Var(ANN_o)``: the mean
  over the sample's elements of the output, ``Var`` over every element of the ANN's output on
  the data the tables are measured on (1 where the ANN's output is constant). For regression
  outputs: box offsets, objectness maps, decoded boxes.

Mode ``"auto"`` (the default) takes ``"kl"`` for an output a Softmax/LogSoftmax produces and
for a classifier's logits (a 2-D ``[N, K]`` output, ``K >= 2``), ``"mse"`` for every other
output. A classifier's sensitivity is therefore the paper's KL, unchanged.

The SSC guard (§10) uses the same terms for its per-sample loss: a changed class (0 or 1)
when every term is ``"kl"``, the sample's S otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np
import onnx

from ..config import SENSITIVITIES
from ..errors import ConfigError
from .metrics import symmetric_kl

__all__ = ["SENSITIVITIES", "Term", "Sensitivity", "plan_sensitivity", "fit_sensitivity"]

_FORMS = {"Softmax": "probs", "LogSoftmax": "logprobs"}


@dataclass(frozen=True)
class Term:
    """One output's part of S (module docstring). kind: ``"kl"`` or ``"mse"``; form (kl): what
    the output holds, ``"logits"``, ``"probs"`` or ``"logprobs"``; axis (kl): the class axis;
    scale (mse): ``1 / Var(ANN output)``, None until fitted."""

    output: str
    kind: str
    form: str = "logits"
    axis: int = -1
    scale: float | None = None

    def __call__(self, ann: np.ndarray, snn: np.ndarray) -> np.ndarray:
        """This output's term per sample, float64 ``[N]``."""
        a, s = np.asarray(ann), np.asarray(snn)
        if a.shape != s.shape:
            raise ValueError(f"output {self.output!r}: shapes differ, ANN {a.shape}, SNN {s.shape}")
        n = a.shape[0] if a.ndim else 1
        if self.kind == "kl":
            v = symmetric_kl(self._logits(a), self._logits(s), axis=self.axis)
            return v if v.ndim == 1 else v.reshape(n, -1).mean(axis=1)
        if self.scale is None:
            raise ValueError(f"output {self.output!r}: the normalised error's scale is not fitted")
        d = np.square(s.astype(np.float64) - a.astype(np.float64)).reshape(n, -1)
        return d.mean(axis=1) * self.scale

    def _logits(self, x: np.ndarray) -> np.ndarray:
        # log(p) of a probability is a logit vector whose softmax is p (tiny floor: no log 0)
        return np.log(np.maximum(x.astype(np.float64), 1e-300)) if self.form == "probs" else x

    def classes(self, x: np.ndarray) -> np.ndarray:
        """The class per sample (and per position of any other axis)."""
        return np.asarray(x).argmax(axis=self.axis)

    def describe(self) -> str:
        return (f"{self.output}: symmetric KL ({self.form})" if self.kind == "kl" else
                f"{self.output}: squared error / {1.0 / self.scale if self.scale else float('nan'):.4g} (ANN variance)")


@dataclass(frozen=True)
class Sensitivity:
    """S per sample as the sum of one :class:`Term` per model output, in the model's output
    order. Callable as the search's metric: ``(ANN outputs, SNN outputs) -> float64 [N]``."""

    terms: tuple[Term, ...]

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(t.output for t in self.terms)

    @property
    def classes_only(self) -> bool:
        """Every term a KL: the model's outputs are class scores, the guard counts changed classes."""
        return all(t.kind == "kl" for t in self.terms)

    def __call__(self, ann: Sequence[np.ndarray], snn: Sequence[np.ndarray]) -> np.ndarray:
        if len(ann) != len(self.terms) or len(snn) != len(self.terms):
            raise ValueError(f"the sensitivity has {len(self.terms)} outputs, got {len(ann)} ANN and {len(snn)} SNN")
        total = self.terms[0](ann[0], snn[0])
        for t, a, s in zip(self.terms[1:], ann[1:], snn[1:]):
            total = total + t(a, s)
        return total

    def loss(self, ann: Sequence[np.ndarray], snn: Sequence[np.ndarray]) -> np.ndarray:
        """The SSC guard's per-sample loss (§10): 1.0 where any output's class differs from the
        ANN's (every term a KL), else the sample's S."""
        if not self.classes_only:
            return self(ann, snn)
        n = len(ann[0])
        out = np.zeros(n, bool)
        for t, a, s in zip(self.terms, ann, snn):
            out |= (t.classes(a) != t.classes(s)).reshape(n, -1).any(axis=1)
        return out.astype(np.float64)

    def describe(self) -> str:
        return "; ".join(t.describe() for t in self.terms)

    def summary(self) -> str:
        """One line: which outputs count by KL and which by normalised error."""
        kl = [t.output for t in self.terms if t.kind == "kl"]
        mse = [t.output for t in self.terms if t.kind == "mse"]
        parts = ([f"symmetric KL of {', '.join(kl)}"] if kl else []) + \
                ([f"normalised squared error of {', '.join(mse)}"] if mse else [])
        return " + ".join(parts)

    def to_dict(self) -> dict:
        return {"terms": [{"output": t.output, "kind": t.kind, "form": t.form, "axis": t.axis, "scale": t.scale}
                          for t in self.terms]}


def _rank(vi: onnx.ValueInfoProto) -> int | None:
    tt = vi.type.tensor_type
    return len(tt.shape.dim) if tt.HasField("shape") else None


def plan_sensitivity(model: onnx.ModelProto, mode: str = "auto") -> Sensitivity:
    """The terms for ``model``'s outputs under ``mode`` (``SENSITIVITIES``); the normalised
    errors' scales are fitted by :func:`fit_sensitivity`. ``model``: the ANN (or the SNN: its
    head is the ANN's)."""
    if mode not in SENSITIVITIES:
        raise ConfigError(f"--sensitivity must be one of {', '.join(SENSITIVITIES)}, got {mode!r}")
    producer = {o: n for n in model.graph.node for o in n.output}
    terms = []
    for vi in model.graph.output:
        node = producer.get(vi.name)
        while node is not None and node.op_type == "Identity":
            node = producer.get(node.input[0])
        form, axis = "logits", -1
        if node is not None and node.op_type in _FORMS:
            form = _FORMS[node.op_type]
            opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        rank = _rank(vi)
        dims = vi.type.tensor_type.shape.dim if rank else ()
        kind = mode
        if mode == "auto":
            k = dims[1].dim_value if rank == 2 and dims[1].HasField("dim_value") else None
            # a 2-D output of unknown width counts as class scores too; fitted data decides it below
            kind = "kl" if form != "logits" or (rank == 2 and (k is None or k >= 2)) else "mse"
            if rank is None:
                kind = "auto"  # decided on the data by fit_sensitivity
        terms.append(Term(vi.name, kind, form, axis))
    return Sensitivity(tuple(terms))


def fit_sensitivity(sens: Sensitivity, ann_batches: Iterable[Sequence[np.ndarray]]) -> Sensitivity:
    """``sens`` with every normalised error's scale, ``1 / Var``, from the ANN's outputs over
    ``ann_batches`` (each a list of arrays in the model's output order); a term left to the
    data (unknown rank) becomes a KL for a 2-D ``[N, K >= 2]`` output, else an error."""
    n = len(sens.terms)
    count, s1, s2, shapes = np.zeros(n), np.zeros(n), np.zeros(n), [None] * n
    for outs in ann_batches:
        if len(outs) != n:
            raise ConfigError(f"the model has {n} outputs, a reference run gave {len(outs)}")
        for j, a in enumerate(outs):
            a64 = np.asarray(a, np.float64)
            if not np.isfinite(a64).all():
                raise ConfigError(f"the ANN's output {sens.terms[j].output!r} is not finite on the search samples")
            count[j] += a64.size
            s1[j] += a64.sum()
            s2[j] += np.square(a64).sum()
            shapes[j] = a64.shape
    terms = []
    for j, t in enumerate(sens.terms):
        kind = t.kind
        if kind == "auto":
            shp = shapes[j]
            kind = "kl" if shp is not None and len(shp) == 2 and shp[1] >= 2 else "mse"
        scale = None
        if kind == "mse":
            if not count[j]:
                raise ConfigError(f"no reference outputs to fit the normalised error of {t.output!r}")
            mean = s1[j] / count[j]
            var = max(s2[j] / count[j] - mean * mean, 0.0)
            scale = 1.0 / var if var > 1e-12 * max(1.0, mean * mean) else 1.0
        terms.append(replace(t, kind=kind, scale=scale))
    return Sensitivity(tuple(terms))
