"""Exact pruning of the sensitivity tables (docs/method.md §8): candidates that no choice within
the budget can contain are not measured to the end.

Both problems bound a sum over layers of a non-negative per-sample quantity: SSC keeps
``sum_i S_i(tau_i) <= r * sum_i S_i(1)`` (S a mean of per-sample KLs, each >= 0), BSR keeps
``sum_i E_i(psi_i) <= ratio * sum_i E_i(psi_target)`` (E a mean of spike counts, each >= 0).
After some batches, the part of a candidate's sum measured so far divided by all the samples
is a lower bound ``lb[i, k]`` of its final value, and a layer's least candidate is at least
``min_k lb[i, k]``. A candidate with

    lb[i, k] > limit - sum_{j != i} min_k lb[j, k]

exceeds the budget whatever the other layers choose, so the Pareto DP (``pareto``) can never
pick it; it is dropped from the remaining batches and its table entries are ``inf``. Nothing
is assumed about how S or E grow with tau or psi: each bound is a measured partial sum.

The budget must be known before the candidates run: it is the baseline SNN's own S or E
(each layer's default is the reference candidate), measured in a first pass over the batches
that runs the SNN once per batch. Where a layer's default is not the reference, or the rule
needs every sample of every candidate (SSC's held-out folds, the per-layer guard), nothing
is pruned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["Prune", "Pruner", "open_layers", "ROUND"]

#: taus per layer per round of the ascending SSC measurement, and how many consecutive taus past
#: the slack close a layer
ROUND = 2

#: pruning margin: a budget computed in another order is met up to pareto's rtol (1e-9)
_MARGIN = 1e-6


@dataclass(frozen=True)
class Prune:
    """What the table will be used for, so that ``measure`` may skip what it cannot change.

    kind: "tau" (SSC: the cost is S) or "psi" (BSR: the cost is E). factor: r, or BSR's
    energy ratio -- the largest any use of the table will ask (an r sweep: its largest r).
    reference: the candidate whose column sets the budget (tau 1.0, or the psi target).
    energy: BSR's E, "spikes" or "synops". ascending (SSC): see :func:`open_layers`.
    """

    kind: str
    factor: float
    reference: float
    energy: str = "spikes"
    ascending: bool = False   # SSC: measure each layer's taus in increasing order, in rounds, and
    #                           stop a layer past its slack (``open_layers``)

    def __post_init__(self):
        if self.kind not in ("psi", "tau"):
            raise ConfigError(f"prune kind must be 'psi' or 'tau', got {self.kind!r}")
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ConfigError(f"prune factor must be a finite number > 0, got {self.factor}")


class Pruner:
    """The live candidates of one table while its batches run.

    cost0: per layer, the exact cost of its default candidate (the reference); columns: the
    table's candidate values; defaults: each layer's own value; n: the samples in all;
    scale: per layer, what one unit of the partial sums costs (1, or the fanout for SynOps).
    """

    def __init__(self, prune: Prune, columns, defaults, cost0: np.ndarray, n: int, scale: np.ndarray):
        self.prune = prune
        L, K = len(defaults), len(columns)
        self.ref = [j for j, c in enumerate(columns) if math.isclose(float(c), prune.reference, rel_tol=1e-9)]
        self.enabled = bool(self.ref) and all(math.isclose(float(d), prune.reference, rel_tol=1e-9)
                                              for d in defaults)
        self.n, self.scale = n, np.asarray(scale, np.float64).reshape(-1, 1)
        self.partial = np.zeros((L, K))             # measured part of each candidate's sum
        self.exact = np.full((L, K), np.nan)        # costs known exactly (the defaults)
        for i, d in enumerate(defaults):
            for j, c in enumerate(columns):
                if math.isclose(float(c), float(d), rel_tol=1e-9):
                    self.exact[i, j] = cost0[i]
        self.limit = prune.factor * float(np.sum(cost0)) if self.enabled else math.inf
        self.limit = self.limit * (1 + _MARGIN) + 1e-300
        self.dead = np.zeros((L, K), bool)

    def add(self, i: int, j: int, value: float) -> None:
        """A batch's sum of candidate (i, j)'s per-sample costs."""
        self.partial[i, j] += value

    def lower(self) -> np.ndarray:
        """Each candidate's lower bound: exact where known, else the partial sum over n."""
        lb = self.partial * self.scale / self.n
        return np.where(np.isnan(self.exact), lb, self.exact)

    def update(self) -> int:
        """Mark the candidates that can no longer fit; returns how many died now."""
        if not self.enabled:
            return 0
        lb = self.lower()
        least = lb.min(axis=1)
        others = float(least.sum()) - least          # sum_{j != i} min_k lb[j, k]
        dead = (lb > (self.limit - others)[:, None]) & np.isnan(self.exact)
        new = int((dead & ~self.dead).sum())
        self.dead |= dead
        return new


def open_layers(S: np.ndarray, measured: np.ndarray, limit: float, confirm: int = ROUND) -> np.ndarray:
    """SSC measured in increasing tau, in rounds: which layers go on to their next taus.

    S: ``[L, K]`` the exact S of every measured candidate (defaults included), in increasing
    tau; measured: ``[L, K]`` bool. A layer is closed once its last ``confirm`` measured taus
    each exceed its slack

        S_i(k) > limit - sum_{j != i} min_{measured k'} S_j(k')

    or when nothing is left to measure. Assumed: past two consecutive taus over the slack, a
    layer's S does not come back under it (S grows with tau: a larger threshold only drops
    spikes). Under that assumption the skipped taus are over the slack too, so the Pareto DP
    cannot pick them; the slack only grows as the other layers' minima fall, so a closed layer
    opens again when it does.
    """
    L, K = S.shape
    least = np.where(measured, S, np.inf).min(axis=1)
    least = np.where(np.isfinite(least), least, 0.0)
    slack = limit - (float(least.sum()) - least)
    out = np.zeros(L, bool)
    for i in range(L):
        if measured[i].all():
            continue
        last = np.flatnonzero(measured[i])[-confirm:]
        out[i] = len(last) < confirm or bool((S[i, last] <= slack[i]).any())
    return out
