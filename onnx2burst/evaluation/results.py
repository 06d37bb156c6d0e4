"""Typed results of ``onnx2burst eval`` and ``onnx2burst search``; each has ``to_dict()``."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .energy import EnergyEstimate


@dataclass(frozen=True)
class ModelStats:
    """One model on the evaluation data: top-1 (None without labels) and latency."""

    top1: float | None
    ms_per_sample: float

    def to_dict(self) -> dict:
        return {"top1": self.top1, "ms_per_sample": self.ms_per_sample}


@dataclass(frozen=True)
class EvalResult:
    """The ANN against its SNN on the same samples (`onnx2burst eval`)."""

    samples: int
    T: int
    ann: ModelStats
    snn: ModelStats
    agreement: float               # fraction of samples where both predict the same class
    sym_kl: float                  # mean symmetric KL of §6
    energy: EnergyEstimate | None  # spikes, SynOps and energies per sample, §7 (None: no BurstIF node)
    kernel: bool                   # the SNN ran with the C++ BurstIF kernel
    batch_size: int
    threads: int | None
    notes: tuple[str, ...] = field(default=())
    snn_pred: "np.ndarray | None" = field(default=None, repr=False, compare=False)  # class per sample

    def to_dict(self) -> dict:
        return {
            "samples": self.samples, "T": self.T, "ann": self.ann.to_dict(),
            "snn": self.snn.to_dict(), "agreement": self.agreement, "sym_kl": self.sym_kl,
            "energy": None if self.energy is None else self.energy.to_dict(), "kernel": self.kernel,
            "batch_size": self.batch_size, "threads": self.threads, "notes": list(self.notes),
        }
