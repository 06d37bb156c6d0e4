"""Sensitivity: the symmetric KL divergence between the ANN's and the SNN's predictions (§6).

``S = 0.5 * (KL(P||Q) + KL(Q||P))`` with ``P = softmax(ANN logits)`` and
``Q = softmax(SNN mean logits)``, averaged over samples. Written as
``0.5 * sum_j (p_j - q_j) * (log p_j - log q_j)``, from log-softmax in float64: no log of a
softmax (the authors' version, which overflows and gives -inf), and every term is >= 0 in
floating point too, since ``exp`` is monotone, so S is never negative.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["log_softmax", "symmetric_kl", "mean_symmetric_kl", "KLMeter"]


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(z)) in float64, stable for any finite logits."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def symmetric_kl(ann_logits: np.ndarray, snn_logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Per-sample symmetric KL between softmax(ann_logits) and softmax(snn_logits).

    Both ``[N, K]`` (classes along ``axis``); returns float64 ``[N]``, every value >= 0.
    """
    a = np.asarray(ann_logits)
    b = np.asarray(snn_logits)
    if a.shape != b.shape:
        raise ValueError(f"logit shapes differ: ANN {a.shape}, SNN {b.shape}")
    la, lb = log_softmax(a, axis), log_softmax(b, axis)
    return 0.5 * ((np.exp(la) - np.exp(lb)) * (la - lb)).sum(axis=axis)


def mean_symmetric_kl(ann_logits: np.ndarray, snn_logits: np.ndarray) -> float:
    """The sensitivity S of §6: symmetric KL averaged over the samples."""
    return float(symmetric_kl(ann_logits, snn_logits).mean())


@dataclass
class KLMeter:
    """Streams the mean symmetric KL over batches: ``update(ann, snn)`` then ``value``."""

    total: float = 0.0
    count: int = 0
    _parts: list = field(default_factory=list, repr=False)

    def update(self, ann_logits: np.ndarray, snn_logits: np.ndarray) -> np.ndarray:
        kl = symmetric_kl(ann_logits, snn_logits)
        self._parts.append(kl.sum())
        self.total = float(np.sum(self._parts))
        self.count += kl.shape[0]
        return kl

    @property
    def value(self) -> float:
        if not self.count:
            raise ValueError("KLMeter: no samples seen")
        return self.total / self.count
