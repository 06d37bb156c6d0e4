"""Threshold (vth) fitting, per layer and channel (§4), streamed over calibration batches.

Pass 1 (``activation_stats``): the ANN runs with, for each neuron, in-graph reductions of
its post-ReLU output: the running per-channel max ``m_c`` (of ``|a|`` for a signed neuron) (and the per-channel mean, which
the bias calibration needs), so only ``[C]`` vectors leave onnxruntime.

Pass 2 (``search_thresholds``): the ANN runs with the neurons' outputs exposed; for each
batch and neuron a ``ThresholdSearch`` adds, for each of the 95 candidates
``theta = m_c * (1 - 0.01 i)``, the per-channel sum of ``(a - Q(a))^2`` with

    Q(a) = theta/T * clip(floor(T*a/theta + 0.5), 0, psi*T)     (round, not floor)

For a signed neuron (LeakyReLU/PReLU, §2) the activations below 0 count too: a negative spike
is worth ``-theta`` (its threshold is ``theta / alpha`` on the pre-activation, so on the
post-activation ``a = alpha * x`` the steps are the same), and the negative side rounds
towards zero, ``Q(a) = -theta/T * clip(floor(-T*a/theta + alpha/2), 0, psi*T)`` for a < 0.

and keeps the argmin. Memory is one batch of activations plus ``[95, C]`` sums, for any
number of samples. The stored ``vth`` is that theta; the neuron fires at ``tau * vth``
(tau is not divided out: that would make SSC a no-op).

For a ``Clip(0, m)`` neuron the candidates start at ``min(m_c, m / (psi * tau))`` so that
the SNN's mean output (at most ``psi * tau * vth``) keeps the bound ``m``. With
``ThresholdConfig(method="max")`` the threshold is that first candidate, the channel max
(plain max-normalisation), and pass 2 is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from ..calibration.augment import add_channel_reduce, with_outputs
from ..data import CalibrationSet
from ..progress import NullProgress
from ..calibration.runner import Runner
from ..calibration.stats import RunningMax, RunningMean
from ..config import ThresholdConfig
from ..errors import CalibrationDataError
from ..graph import Canonical, GraphIndex
from ..rewrite.analysis import Analysis, Neuron

__all__ = ["candidate_factors", "quantize", "ThresholdSearch", "ActivationStats", "activation_stats",
           "reference_thresholds", "search_thresholds"]


def candidate_factors(candidates: int = 95, step: float = 0.01) -> np.ndarray:
    """``1 - step*i`` for i < candidates (float64)."""
    return 1.0 - step * np.arange(candidates, dtype=np.float64)


def quantize(a: np.ndarray, theta, T: int, psi: int) -> np.ndarray:
    """The neuron's steady-state output ``Q(a)`` of §4 (theta broadcast against ``a``)."""
    theta = np.asarray(theta, np.float64)
    safe = np.where(theta > 0, theta, 1.0)
    q = theta / T * np.clip(np.floor(T * np.asarray(a, np.float64) / safe + 0.5), 0, psi * T)
    return np.where(theta > 0, q, 0.0)


def _channels_first(a: np.ndarray, per_channel: bool) -> np.ndarray:
    a = np.asarray(a, np.float32)
    if not per_channel:
        return a.reshape(1, -1)
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)


class ThresholdSearch:
    """Pass-2 collector of one neuron: ``update(a)`` per batch, then ``thresholds()``.

    ref: the first candidate per channel ``[C]`` (``m_c``, capped for Clip neurons); a
    channel with ref 0 never fires (vth 0). ``errors`` is ``[K, C]`` float64: the sum of
    squared errors per candidate and channel so far.
    """

    def __init__(self, ref: np.ndarray, T: int, psi: int, factors: np.ndarray, per_channel: bool = True,
                 signed: bool = False, alpha=None):
        self.signed = signed or alpha is not None
        # a signed neuron's negative side rounds towards zero (§2): its count is
        # floor(T|a|/theta + alpha/2), so the fit models that rather than a rounding
        a = np.asarray(alpha if alpha is not None else [1.0], np.float32).reshape(-1)
        self._half_neg = (a if a.size == np.asarray(ref).size or a.size == 1 else a.mean(keepdims=True)) / 2
        self.ref = np.asarray(ref, np.float64).reshape(-1)
        self.T, self.psi = int(T), int(psi)
        self.factors = np.asarray(factors, np.float64)
        self.per_channel = per_channel
        self.errors = np.zeros((self.factors.size, self.ref.size), np.float64)
        self._inv = np.where(self.ref > 0, 1.0 / np.where(self.ref > 0, self.ref, 1.0), 0.0).astype(np.float32)

    def update(self, a: np.ndarray) -> None:
        """Add a batch of post-ReLU activations ``[N, C, ...]`` (``[N, ...]`` when per-tensor)."""
        at = _channels_first(a, self.per_channel)
        if at.shape[0] != self.ref.size:
            raise ValueError(f"activations have {at.shape[0]} channels, thresholds {self.ref.size}")
        # Q(0) = 0 has no error: only positive values count. In units of ref_c every
        # candidate is one scalar factor f, so a candidate costs a few passes over them.
        mask = at != 0 if self.signed else at > 0
        counts = mask.sum(axis=1)
        z = (at * self._inv[:, None])[mask]                  # channel-major, flat
        if z.size == 0:
            return
        nonempty = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
        scale = (self.ref ** 2)[nonempty]
        buf = np.empty_like(z)
        top = np.float32(self.psi * self.T)
        if self.signed:
            half_c = np.broadcast_to(self._half_neg, (self.ref.size,)).astype(np.float32)
            neg = z < 0
            half = np.where(neg, np.repeat(half_c, counts), np.float32(0.5)).astype(np.float32)
            sgn = np.where(neg, np.float32(-1), np.float32(1))
            absz = np.abs(z)
        for k, f in enumerate(self.factors):
            if self.signed:  # sign(a) * clip(floor(T|a|/theta + half), 0, psi*T)
                np.multiply(absz, np.float32(self.T / f), out=buf)
                buf += half
                np.floor(buf, out=buf)
                np.minimum(buf, top, out=buf)
                buf *= sgn
            else:
                np.multiply(z, np.float32(self.T / f), out=buf)
                buf += np.float32(0.5)
                np.floor(buf, out=buf)
                np.minimum(buf, top, out=buf)
            buf *= np.float32(f / self.T)
            np.subtract(z, buf, out=buf)
            np.multiply(buf, buf, out=buf)
            self.errors[k, nonempty] += np.add.reduceat(buf, starts, dtype=np.float64) * scale

    def best_index(self) -> np.ndarray:
        return np.argmin(self.errors, axis=0)

    @staticmethod
    def update_group(searches: Sequence["ThresholdSearch"], a: np.ndarray) -> None:
        """``s.update(a)`` for each search of one neuron with the same ref, T and factors (its
        psi candidates), sharing the work: per factor the levels ``floor(z*T/f + 0.5)`` are
        computed once, and every psi whose cap ``psi*T`` no level of the batch reaches gets
        the unclipped errors computed once. The float operations on each value are those of
        ``update``, in the same order, so the errors are the same bit for bit."""
        first = searches[0]
        if len(searches) == 1 or any(getattr(s, "signed", False) for s in searches):  # signed: one fit per psi
            for s in searches:
                s.update(a)
            return
        at = _channels_first(a, first.per_channel)
        if at.shape[0] != first.ref.size:
            raise ValueError(f"activations have {at.shape[0]} channels, thresholds {first.ref.size}")
        mask = at > 0
        counts = mask.sum(axis=1)
        z = (at * first._inv[:, None])[mask]
        if z.size == 0:
            return
        nonempty = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
        scale = (first.ref ** 2)[nonempty]
        level, buf = np.empty_like(z), np.empty_like(z)
        T = first.T
        for k, f in enumerate(first.factors):
            np.multiply(z, np.float32(T / f), out=level)
            level += np.float32(0.5)
            np.floor(level, out=level)
            high = level.max()
            done: dict[float, np.ndarray] = {}
            for s in searches:
                top = np.float32(s.psi * T)
                cap = float(min(top, high))  # the same for every psi whose cap no level reaches
                if cap not in done:
                    np.minimum(level, top, out=buf)
                    buf *= np.float32(f / T)
                    np.subtract(z, buf, out=buf)
                    np.multiply(buf, buf, out=buf)
                    done[cap] = np.add.reduceat(buf, starts, dtype=np.float64) * scale
                s.errors[k, nonempty] += done[cap]

    def thresholds(self) -> np.ndarray:
        """The best theta per channel, float32 ``[C]``."""
        f = self.factors[self.best_index()]
        return (self.ref * f).astype(np.float32)


@dataclass
class ActivationStats:
    """Pass-1 results per neuron: ``max`` (per channel ``[C]``, or ``[1]`` per tensor),
    ``mean`` (along the neuron's bias axis, for the bias calibration), and ``samples``."""

    max: dict[str, np.ndarray] = field(default_factory=dict)
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    samples: int = 0
    notes: list[str] = field(default_factory=list)


def _signed(n: Neuron) -> bool:
    return n.alpha is not None and any(a != 0 for a in n.alpha)


def _mean_axis(n: Neuron) -> int | None:
    if n.bias is not None:
        return n.bias.axis
    return 1 if n.channels is not None else None


def activation_stats(canonical: Canonical, analysis: Analysis, data: CalibrationSet, *, batch_size: int = 64,
                     threads: int | None = None, progress=None) -> ActivationStats:
    """Pass 1: per-channel max and mean of every neuron's ANN output, over ``data``."""
    progress = progress or NullProgress()
    m = onnx.ModelProto()
    m.CopyFrom(canonical.model)
    idx = GraphIndex(m.graph)
    outs, keys = [], []
    for n in analysis.neurons:
        src = n.output
        if _signed(n):  # a signed neuron's range: the largest |a| (a channel may be negative only)
            src = idx.fresh(f"{n.output}__abs")
            m.graph.node.append(helper.make_node("Abs", [n.output], [src], name=src))
        outs.append(add_channel_reduce(m, idx, src, "ReduceMax", 1 if n.per_channel else None,
                                       rank=n.rank, opset=canonical.opset, tag="max"))
        outs.append(add_channel_reduce(m, idx, n.output, "ReduceMean", _mean_axis(n), rank=n.rank,
                                       opset=canonical.opset, tag="mean"))
        keys.append(n.name)
    runner = Runner(with_outputs(m, outs), threads=threads, kernel=False)
    maxes = {k: RunningMax() for k in keys}
    means = {k: RunningMean() for k in keys}
    total = 0
    with progress.stage("activation ranges (ANN, pass 1)", data.num_batches(batch_size)) as st:
        for nb, res in runner.iterate(data, batch_size, outs, st):
            total += nb
            for j, k in enumerate(keys):
                maxes[k].update(np.asarray(res[2 * j]).reshape(-1))
                means[k].update(np.asarray(res[2 * j + 1]).reshape(-1), nb)
    stats = ActivationStats({k: np.maximum(v.value, 0.0) for k, v in maxes.items()},
                            {k: v.value for k, v in means.items()}, total)
    overflow = [k for k in keys if not (np.isfinite(stats.max[k]).all() and np.isfinite(stats.mean[k]).all())]
    if overflow:
        raise CalibrationDataError(
            f"{data.source}: the ANN's activations overflow float32 (inf or NaN) at {', '.join(overflow)} on the "
            "calibration data: no threshold can be fitted (are the inputs scaled as the model expects?)")
    for k in keys:
        if not (stats.max[k] > 0).any():
            stats.notes.append(f"{k} is never positive on the {total} calibration samples: its threshold is 0 and it "
                               "never spikes (are the calibration data representative, not all zero?)")
    return stats


def reference_thresholds(analysis: Analysis, stats: ActivationStats, settings: Mapping[str, tuple[int, float]]) \
        -> dict[str, np.ndarray]:
    """The first candidate per neuron and channel: ``m_c``, capped at ``m/(psi*tau)`` for Clip(0, m).
    Only the neurons named in ``settings``."""
    out = {}
    for n in analysis.neurons:
        if n.name not in settings:
            continue
        ref = np.asarray(stats.max[n.name], np.float64).copy()
        if n.clip_max is not None:
            psi, tau = settings[n.name]
            ref = np.minimum(ref, n.clip_max / (psi * tau))
        out[n.name] = ref
    return out


def search_thresholds(canonical: Canonical, analysis: Analysis, data: CalibrationSet, stats: ActivationStats, *,
                      T: int, settings: Mapping[str, tuple[int, float] | Sequence[tuple[int, float]]],
                      config: ThresholdConfig | None = None, batch_size: int = 64, threads: int | None = None,
                      progress=None) -> dict:
    """Pass 2: the best thresholds per neuron.

    settings: neuron name -> ``(psi, tau)``, or a list of them to fit several at once in the
    same pass (BSR/SSC candidates). Returns ``{name: vth}`` (float32 ``[C]``) for single
    settings, ``{(name, psi, tau): vth}`` when lists were given.
    """
    config = config or ThresholdConfig()
    progress = progress or NullProgress()
    multi = any(isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)) for v in settings.values())
    plan = {k: ([tuple(x) for x in v] if multi and isinstance(v[0], (list, tuple)) else [tuple(v)])
            for k, v in settings.items()}
    factors = candidate_factors(config.candidates, config.step)
    result = {}
    searches: dict[tuple, ThresholdSearch] = {}
    for n in analysis.neurons:
        for psi, tau in plan[n.name]:
            ref = reference_thresholds(analysis, stats, {n.name: (psi, tau)})[n.name]
            if config.method == "max":
                result[(n.name, psi, tau)] = ref.astype(np.float32)
            else:
                searches[(n.name, psi, tau)] = ThresholdSearch(ref, T, psi, factors, n.per_channel,
                                                               alpha=n.alpha if _signed(n) else None)
    if searches:
        wanted = [n for n in analysis.neurons if any(k[0] == n.name for k in searches)]
        runner = Runner(with_outputs(canonical.model, [n.output for n in wanted]), threads=threads, kernel=False)
        groups: dict[tuple, list[ThresholdSearch]] = {}  # one neuron's searches that share ref: its psis
        for key, s in searches.items():
            groups.setdefault((key[0], s.ref.tobytes(), s.per_channel), []).append(s)
        with progress.stage("threshold search (ANN, pass 2)", data.num_batches(batch_size)) as st:
            for _, res in runner.iterate(data, batch_size, [n.output for n in wanted], st):
                for n, a in zip(wanted, res):
                    for gkey, group in groups.items():
                        if gkey[0] == n.name:
                            ThresholdSearch.update_group(group, a)
        for key, s in searches.items():
            result[key] = s.thresholds()
    if multi:
        return result
    return {k[0]: v for k, v in result.items()}
