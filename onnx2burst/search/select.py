"""Choosing psi (BSR) and tau (SSC) per layer from the tables (docs/method.md §8).

Both are the exact Pareto DP of ``pareto.pareto_select`` on a table of ``measure``:

- BSR: psi per layer minimising sum_i S_i(psi_i) with sum_i E_i(psi_i) <= ratio * sum_i E_i(psi_target);
- SSC: tau per layer minimising sum_i E_i(tau_i) with sum_i S_i(tau_i) <= r * sum_i S_i(tau=1),
  optionally with each S counted at S + z SE, or r lowered to what holds on held-out folds.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .pareto import pareto_select
from .tables import DEFAULT_PSI_MAX, DEFAULT_TAUS, Measurement, Table, VthProvider, measure

__all__ = ["SearchChoice", "choose_bsr", "choose_ssc", "held_out_r", "search_bsr", "search_ssc"]


@dataclass(frozen=True)
class SearchChoice:
    """The outcome of BSR or SSC: one value per layer, and the numbers behind it.

    ``choice`` maps layer name -> psi (BSR) or tau (SSC). ``frontier`` holds
    ``(energy, sensitivity)`` points of the final Pareto frontier whatever the problem,
    energy increasing and sensitivity decreasing;
    ``uniform`` the same point for every uniform configuration; ``chosen`` the choice's.
    """

    problem: str                 # "bsr" | "ssc"
    kind: str                    # "psi" | "tau"
    energy_mode: str
    choice: Mapping[str, float]
    budget: float
    budget_rule: str
    chosen: tuple[float, float]
    frontier: tuple[tuple[float, float], ...]
    uniform: Mapping[float, tuple[float, float]]
    seconds: float
    full_frontier: tuple[tuple[float, float], ...] = ()   # the same without the budget

    def to_dict(self) -> dict:
        return {"problem": self.problem, "kind": self.kind, "energy": self.energy_mode,
                "choice": dict(self.choice), "budget": self.budget, "budget_rule": self.budget_rule,
                "chosen": {"energy": self.chosen[0], "sensitivity": self.chosen[1]},
                "frontier": [{"energy": e, "sensitivity": s} for e, s in self.frontier],
                "uniform": {str(k): {"energy": e, "sensitivity": s} for k, (e, s) in self.uniform.items()},
                "full_frontier": [{"energy": e, "sensitivity": s} for e, s in self.full_frontier],
                "seconds": self.seconds}


def _uniform_points(table: Table, E: np.ndarray):
    """Every uniform configuration that was measured to the end (pruned columns have none)."""
    return {c: (float(E[:, j].sum()), float(table.S[:, j].sum())) for j, c in enumerate(table.candidates)
            if np.isfinite(E[:, j]).all() and np.isfinite(table.S[:, j]).all()}


def _live(cost: np.ndarray, profit: np.ndarray, candidates):
    """Per layer, the candidates the table measured (a pruned one is inf: no choice within
    the budget it was pruned for can hold it, so the DP never misses it)."""
    ok = np.isfinite(cost) & np.isfinite(profit)
    if ok.all():
        return cost, profit, [list(candidates)] * len(cost)
    return ([c[m] for c, m in zip(cost, ok)], [p[m] for p, m in zip(profit, ok)],
            [[k for k, keep in zip(candidates, m) if keep] for m in ok])


def _pareto(cost, profit, budget, candidates):
    c, p, k = _live(np.asarray(cost), np.asarray(profit), candidates)
    return pareto_select(c, p, budget, k)


def _most(cost: np.ndarray) -> float:
    """The largest total cost of any measured choice: a budget that holds the whole frontier."""
    return float(np.where(np.isfinite(cost), cost, -np.inf).max(axis=1).sum())


def choose_bsr(table: Table, *, psi_target: int | None = None, ratio: float = 1.0,
               energy: str = "spikes") -> SearchChoice:
    """BSR (§8): psi per layer minimising sum S with sum E <= ratio * sum_i E_i(psi_target).

    psi_target defaults to the SNN's psi (which must then be uniform).
    """
    if table.kind != "psi":
        raise ConfigError(f"BSR needs the psi table, got {table.kind}")
    if not ratio > 0:
        raise ConfigError(f"--ratio must be > 0, got {ratio}")
    t = time.perf_counter()
    if psi_target is None:
        if len(set(table.defaults)) != 1:
            raise ConfigError(f"the SNN's psi differs between layers {sorted(set(table.defaults))}; "
                              "give --psi-target")
        psi_target = table.defaults[0]
    E = table.energy(energy)
    j = table.column(psi_target)
    budget = ratio * float(E[:, j].sum())
    r = _pareto(E, table.S, budget, table.candidates)
    full = _pareto(E, table.S, _most(E), table.candidates).frontier
    return SearchChoice(
        "bsr", "psi", energy, dict(zip(table.layers, (int(c) for c in r.choices))), budget,
        f"{ratio:g} * sum_i E_i(psi={psi_target})", (r.cost, r.profit), r.frontier,
        _uniform_points(table, E), time.perf_counter() - t, full)


def held_out_r(table: Table, *, r: float = 1.0, energy: str = "spikes", folds: int = 4,
               reference_tau: float = 1.0, steps: int = 14) -> float:
    """The SSC budget with the selection bias taken out (§8): the largest r_eff <= r such that
    the choice made at r_eff on the samples outside each of ``folds`` folds keeps, on that
    fold's own samples, sum S <= r * sum S(tau=1) -- on average over the folds.

    Choosing the least-energy taus on the same samples that measure S favours the candidates
    whose S came out low by chance, so the budget is met in-sample and spent out of it; with
    many layers and a fine grid the choice compresses past what r allows. Needs
    ``table.kl`` (the per-sample KL :func:`measure` records). Returns r when the budget holds
    out of sample already; at worst the least sensitive configuration's r.
    """
    if table.kl is None:
        raise ConfigError("a held-out SSC budget needs the per-sample KL (measure records it)")
    if not np.isfinite(table.S).all():
        raise ConfigError("a held-out SSC budget needs every candidate on every sample: measure without pruning")
    n = table.kl.shape[-1]
    if folds < 2 or n < 2 * folds:
        raise ConfigError(f"--ssc-folds must be >= 2 with at least 2 samples per fold; got {folds} folds "
                          f"for {n} samples")
    E = table.energy(energy)
    j1 = table.column(reference_tau)
    fold = np.arange(n) % folds
    rows = np.arange(len(table.layers))
    parts = [(table.kl[:, :, fold != f].mean(-1), table.kl[:, :, fold == f].mean(-1)) for f in range(folds)]
    # below this r some fold (or the whole table) has no feasible choice
    least = max(float(S_.min(axis=1).sum() / S_[:, j1].sum()) for S_ in [table.S] + [p[0] for p in parts])
    least *= 1 + 1e-12

    def excess(r_eff: float) -> float:
        total = 0.0
        for S_in, S_out in parts:
            k = pareto_select(S_in, E, r_eff * float(S_in[:, j1].sum())).indices
            total += float(S_out[rows, list(k)].sum() - r * S_out[:, j1].sum())
        return total

    if r <= least or excess(r) <= 0:
        return r
    lo, hi = least, r
    if excess(lo) > 0:
        return lo
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) <= 0 else (lo, mid)
    return lo


def choose_ssc(table: Table, *, r: float = 1.0, energy: str = "spikes",
               reference_tau: float = 1.0, z: float = 0.0, folds: int = 0,
               budget: float | None = None) -> SearchChoice:
    """SSC (§8): tau per layer minimising sum E with sum S <= r * sum_i S_i(tau=1).

    budget: this sensitivity budget instead of r's (the decision guard's back-off to a point of
    the frontier, §10).

    z > 0 counts each candidate at S + z * SE (``table.se``: the standard error of its
    per-sample difference to the baseline), so that a tau whose gain is within the noise of
    the search samples does not spend the budget. folds >= 2 instead lowers the budget to the
    r_eff that holds on held-out samples (:func:`held_out_r`). z = 0 and folds = 0 are the
    paper's rule.

    After BSR the budget is still that of the SNN SSC starts from (docs/method.md §8).
    """
    if table.kind != "tau":
        raise ConfigError(f"SSC needs the tau table, got {table.kind}")
    if not r > 0:
        raise ConfigError(f"r must be > 0, got {r}")
    if z < 0:
        raise ConfigError(f"z must be >= 0, got {z}")
    if folds and z:
        raise ConfigError("choose one of the noise margin (z) and the held-out budget (folds)")
    t = time.perf_counter()
    E = table.energy(energy)
    j = table.column(reference_tau)
    S = table.sensitivity(z)
    rule = f"{r:g} * sum_i S_i(tau={reference_tau:g})"
    r_eff = r
    if folds and budget is None:
        r_eff = held_out_r(table, r=r, energy=energy, folds=folds, reference_tau=reference_tau)
        rule = f"{r_eff:.6g} * sum_i S_i(tau={reference_tau:g}) (r = {r:g}, held out over {folds} folds)"
    if budget is None:
        budget = r_eff * float(S[:, j].sum())
    else:
        rule = f"{budget:.6g}, a point of the frontier of {rule}"
    if z:
        rule += f", candidates at S + {z:g} SE"
    res = _pareto(S, E, budget, table.candidates)
    full = _pareto(S, E, _most(S), table.candidates).frontier
    return SearchChoice(
        "ssc", "tau", energy, dict(zip(table.layers, (float(c) for c in res.choices))), budget,
        rule, (res.profit, res.cost),
        tuple((e, s) for s, e in reversed(res.frontier)), _uniform_points(table, E), time.perf_counter() - t,
        tuple((e, s) for s, e in reversed(full)))


def search_bsr(ann, snn, data, *, psi_max: int = DEFAULT_PSI_MAX, psi_target: int | None = None,
               ratio: float = 1.0, energy: str = "spikes", vth_for_psi: VthProvider | None = None,
               **measure_kw) -> tuple[SearchChoice, Measurement]:
    """Measure the psi table (1..psi_max) and choose psi per layer by BSR.

    Returns (choice, measurement); ``choice.choice`` maps layer name -> psi. Afterwards the
    caller refits thresholds for the new psi and re-runs bias calibration (§8).
    """
    m = measure(ann, snn, data, psis=range(1, psi_max + 1), taus=None, vth_for_psi=vth_for_psi, **measure_kw)
    return choose_bsr(m.psi, psi_target=psi_target, ratio=ratio, energy=energy), m


def search_ssc(ann, snn, data, *, taus: Sequence[float] = DEFAULT_TAUS, r: float = 1.0,
               energy: str = "spikes", **measure_kw) -> tuple[SearchChoice, Measurement]:
    """Measure the tau table and choose tau per layer by SSC.

    Returns (choice, measurement); ``choice.choice`` maps layer name -> tau. Afterwards the
    caller sets the taus and re-runs bias calibration (§8).
    """
    if not any(math.isclose(t, 1.0) for t in taus):
        raise ConfigError(f"the tau candidates must include 1.0 (the SSC budget is r * sum S_i(1)), got {list(taus)}")
    m = measure(ann, snn, data, psis=None, taus=taus, **measure_kw)
    return choose_ssc(m.tau, r=r, energy=energy), m
