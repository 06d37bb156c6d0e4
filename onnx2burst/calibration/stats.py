"""Streaming statistics merged batch by batch (memory independent of the number of samples)."""
from __future__ import annotations

import numpy as np

__all__ = ["RunningMax", "RunningMean"]


class RunningMax:
    """Elementwise running maximum of equally shaped arrays."""

    def __init__(self):
        self.value: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        self.value = x.copy() if self.value is None else np.maximum(self.value, x)


class RunningMean:
    """Weighted running mean: ``update(batch_mean, weight)`` (weight = elements averaged)."""

    def __init__(self):
        self.total: np.ndarray | None = None
        self.weight = 0.0

    def update(self, mean: np.ndarray, weight: float) -> None:
        m = np.asarray(mean, np.float64) * float(weight)
        self.total = m if self.total is None else self.total + m
        self.weight += float(weight)

    @property
    def value(self) -> np.ndarray | None:
        return None if self.total is None else self.total / self.weight
