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

and keeps the argmin. The sums come from the batch's values sorted per channel
(``_sorted_update``: each level a run found by binary search, its error from prefix sums;
every candidate and every psi from one sort), or value by value for a signed neuron
(``update_elementwise``). Memory is one batch of activations plus ``[95, C]`` sums, for any
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
        if self.signed:
            self.update_elementwise(a)
        else:
            _sorted_update([self], a)

    def update_elementwise(self, a: np.ndarray) -> None:
        """``update`` value by value: every candidate quantises every activation (float32) and
        sums the squared errors (float64). Signed neurons take this way; for the others it is
        the reference the sorted-values fit (``_sorted_update``) is tested against."""
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
        psi candidates), in one pass over the batch's sorted values (``_sorted_update``)."""
        if any(getattr(s, "signed", False) for s in searches):  # signed: one fit per psi
            for s in searches:
                s.update(a)
            return
        _sorted_update(searches, a)

    def thresholds(self) -> np.ndarray:
        """The best theta per channel, float32 ``[C]``."""
        f = self.factors[self.best_index()]
        return (self.ref * f).astype(np.float32)


#: values per chunk of channels in the sorted-values fit: bounds its float64 temporaries
_CHUNK = 1 << 21


def _level32(z: np.ndarray, a) -> np.ndarray:
    """The level ``floor(z*T/f + 0.5)`` in float32 arithmetic, as the element-wise fit forms it
    (``a`` = float32(T/f), a scalar or one per value)."""
    return np.floor(np.multiply(z, a, dtype=np.float32) + np.float32(0.5))


def _edges32(levels: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Per level l >= 1 (with its ``a`` = float32(T/f)), the least float32 z >= 0 whose float32
    level (``_level32``) is >= l: the level is a non-decreasing function of z, so ``z >= edge``
    is ``level >= l`` exactly."""
    lv = levels.astype(np.float32)
    g = ((levels - 0.5) / a.astype(np.float64)).astype(np.float32)   # within a few ulps of the edge
    for _ in range(8):
        down = np.nextafter(g, np.float32(0))
        g = np.where((g > 0) & (_level32(down, a) >= lv), down, g)
        g = np.where(_level32(g, a) < lv, np.nextafter(g, np.float32(np.inf)), g)
    down = np.nextafter(g, np.float32(0))
    if not ((_level32(g, a) >= lv).all() and ((g == 0) | (_level32(down, a) < lv)).all()):
        raise ArithmeticError("threshold fit: a level edge was not found")  # not reached for finite z
    return g


def _sorted_update(searches: Sequence["ThresholdSearch"], a: np.ndarray) -> None:
    """Add one batch to every search of one unsigned neuron (same ref, T, factors; their psi
    caps may differ), from the batch's values sorted per channel.

    A candidate theta = f*ref quantises z = a/ref to the level ``floor(z*T/f + 0.5)``, capped at
    psi*T, worth ``q = level*f/T``. In a sorted channel each level is a run of values, found by
    a binary search for its float32 edge (exactly the values the element-wise fit puts on that
    level); a run's squared error is ``S2 - 2 q S1 + n q^2`` from prefix sums of z and z^2
    (float64), and a cap puts the run of every value at or above it at the cap's q. The q are
    the element-wise fit's float32 products, so the errors agree with ``update_elementwise``
    up to float rounding (float64 here, float32 squares there: about 1e-7 relative at worst)
    and the thresholds with them. All candidates share one sort, two prefix sums and one
    binary search per channel, whatever the number of psi.
    """
    first = searches[0]
    at = _channels_first(a, first.per_channel)
    if at.shape[0] != first.ref.size:
        raise ValueError(f"activations have {at.shape[0]} channels, thresholds {first.ref.size}")
    C, M = at.shape
    if M == 0:
        return
    T = first.T
    z = np.multiply(at, first._inv[:, None], dtype=np.float32)   # as the element-wise fit
    np.maximum(z, np.float32(0), out=z)                           # a value <= 0 quantises to 0: no error
    zmax = np.float32(z.max())
    if not zmax > 0:
        return
    factors = first.factors
    K = factors.size
    a32 = np.array([np.float32(T / f) for f in factors], np.float32)
    b32 = np.array([np.float32(f / T) for f in factors], np.float32)
    top = _level32(zmax, a32).astype(np.int64)          # per factor, the highest level a value reaches
    caps = sorted({int(s.psi * T) for s in searches})
    # every factor's levels 0..min(top, highest cap) side by side, its block of columns from
    # start[k]; above the highest cap every value is capped, so its last run goes to the end
    width = np.minimum(top, caps[-1]) + 1
    start = np.concatenate([[0], np.cumsum(width)])
    J = int(start[-1])
    factor_of = np.repeat(np.arange(K), width)
    level = np.arange(J) - start[factor_of]
    q = (level.astype(np.float32) * b32[factor_of]).astype(np.float64)   # the float32 products
    inner = level > 0                                                    # a run that begins at an edge
    edges = _edges32(level[inner].astype(np.float64), a32[factor_of[inner]])
    out = {c: np.zeros((K, C)) for c in caps}
    step = max(1, _CHUNK // max(M, J))
    for r0 in range(0, C, step):
        zr = np.sort(z[r0:r0 + step], axis=1)
        R = zr.shape[0]
        z64 = zr.astype(np.float64)
        P1 = np.zeros((R, M + 1))
        P2 = np.zeros((R, M + 1))
        np.cumsum(z64, axis=1, out=P1[:, 1:])
        np.cumsum(z64 * z64, axis=1, out=P2[:, 1:])
        del z64
        rows = np.arange(R)[:, None]
        lo = np.zeros((R, J), np.int64)           # run j holds the sorted values [lo, hi)
        lo[:, inner] = np.stack([np.searchsorted(zr[i], edges, side="left") for i in range(R)])
        hi = np.empty_like(lo)
        hi[:, :-1] = lo[:, 1:]
        hi[:, start[1:] - 1] = M                  # a factor's last run goes to the end
        n = (hi - lo).astype(np.float64)
        S1 = P1[rows, hi] - P1[rows, lo]
        S2 = P2[rows, hi] - P2[rows, lo]
        run = S2 - 2.0 * q * S1 + n * q * q
        # each sum over one factor's own runs only: a psi's errors do not depend on the others'
        total = np.add.reduceat(run, start[:-1], axis=1)          # [R, K]: no cap reached (used where c >= top)
        tail1, tail2 = P1[:, M:], P2[:, M:]
        for c in caps:
            capped = c < top                      # factors some value's level exceeds c at
            err = total.copy()
            if capped.any():
                kk = np.flatnonzero(capped)
                jc = start[kk] + c                # the run of level c: it and all above go to q(c)
                qc = q[jc]
                bounds = np.empty(2 * kk.size, np.int64)
                bounds[0::2], bounds[1::2] = start[kk], jc
                below = np.add.reduceat(run, bounds, axis=1)[:, 0::2]   # the runs below level c
                t1 = tail1 - P1[rows, lo[:, jc]]
                t2 = tail2 - P2[rows, lo[:, jc]]
                tn = (M - lo[:, jc]).astype(np.float64)
                err[:, kk] = below + t2 - 2.0 * qc * t1 + tn * qc * qc
            out[c][:, r0:r0 + R] = err.T
    scale = first.ref ** 2
    for s in searches:
        s.errors += out[int(s.psi * T)] * scale


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
    same pass (BSR/SSC candidates; an empty list fits nothing for that neuron). Returns ``{name: vth}`` (float32 ``[C]``) for single
    settings, ``{(name, psi, tau): vth}`` when lists were given.
    """
    config = config or ThresholdConfig()
    progress = progress or NullProgress()
    multi = any(isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)) for v in settings.values())
    plan = {k: ([tuple(x) for x in v] if multi and (not v or isinstance(v[0], (list, tuple))) else [tuple(v)])
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
