"""Exact Pareto-frontier dynamic programme for per-layer choices (docs/method.md §8).

Layer ``i`` picks one candidate ``k`` out of its list; each candidate has a ``cost`` and a
``profit``; layers are independent and both add up. :func:`pareto_select` minimises the
total profit subject to ``total cost <= budget``. BSR and SSC are the same problem with the
roles swapped:

- BSR: cost = energy ``E_i(psi)``, profit = sensitivity ``S_i(psi)``;
- SSC: cost = sensitivity ``S_i(tau)``, profit = energy ``E_i(tau)``.

The frontier after ``j`` layers holds every non-dominated partial choice over the first
``j`` layers: sorted by cost, each node's profit is strictly below the previous one's. A
dominated partial choice (no cheaper and no more profitable than another) can never complete
to a better solution, so the result is exact. Costs must be >= 0 for pruning by budget to be
exact; negative costs are handled by shifting each layer by its cheapest candidate.

Unlike the authors' code, the choices come back in layer order for both problems, and as
candidate *values*, never as positions in a list that may not start at 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import Onnx2BurstError

__all__ = ["InfeasibleBudgetError", "ParetoResult", "pareto_select"]


class InfeasibleBudgetError(Onnx2BurstError, ValueError):
    """No choice of candidates keeps the total cost within the budget."""


@dataclass(frozen=True)
class ParetoResult:
    """The optimum of :func:`pareto_select`.

    choices: the chosen candidate value per layer, in layer order. indices: the position of
    each choice in its layer's candidate list. cost / profit: the totals of the choice.
    frontier: the final Pareto frontier as ``(cost, profit)`` pairs, cost increasing and
    profit strictly decreasing; the choice is its last node.
    """

    choices: tuple[Any, ...]
    indices: tuple[int, ...]
    cost: float
    profit: float
    budget: float
    frontier: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict:
        return {"choices": list(self.choices), "indices": list(self.indices), "cost": self.cost,
                "profit": self.profit, "budget": self.budget,
                "frontier": [list(p) for p in self.frontier]}


def _check(costs, profits, candidates) -> list[list[Any]]:
    if len(costs) != len(profits):
        raise ValueError(f"costs has {len(costs)} layers, profits {len(profits)}")
    if len(costs) == 0:
        raise ValueError("no layers to choose for")
    if candidates is None:
        candidates = [list(range(len(c))) for c in costs]
    if len(candidates) != len(costs):
        raise ValueError(f"candidates has {len(candidates)} layers, costs {len(costs)}")
    for i, (c, p, k) in enumerate(zip(costs, profits, candidates)):
        if not len(c):
            raise ValueError(f"layer {i} has no candidates")
        if not len(c) == len(p) == len(k):
            raise ValueError(f"layer {i}: {len(c)} costs, {len(p)} profits, {len(k)} candidates")
        for v in list(c) + list(p):
            if not math.isfinite(float(v)):
                raise ValueError(f"layer {i}: non-finite cost or profit {v!r}")
    return [list(k) for k in candidates]


def pareto_select(costs: Sequence[Sequence[float]], profits: Sequence[Sequence[float]],
                  budget: float, candidates: Sequence[Sequence[Any]] | None = None, *,
                  rtol: float = 1e-9) -> ParetoResult:
    """Minimise ``sum_i profits[i][k_i]`` subject to ``sum_i costs[i][k_i] <= budget``.

    costs, profits: per layer, one value per candidate. candidates: per layer, the values
    that the choices are reported as (default: the positions 0, 1, ...). rtol: a budget
    computed from the same numbers in another order (e.g. the cost of a uniform
    configuration) is met up to this relative rounding slack.

    Raises InfeasibleBudgetError when even the cheapest choice exceeds the budget.
    """
    cands = _check(costs, profits, candidates)
    costs = [[float(v) for v in c] for c in costs]
    profits = [[float(v) for v in p] for p in profits]
    budget = float(budget)
    cheapest = [min(c) for c in costs]
    # Pruning partial sums by the budget is exact only for non-negative costs.
    shift = [m if m < 0 else 0.0 for m in cheapest]
    if any(shift):
        costs = [[v - s for v in c] for c, s in zip(costs, shift)]
    limit = budget - math.fsum(shift)
    limit += rtol * max(abs(limit), abs(budget), 1e-300)
    least = math.fsum(c - s for c, s in zip(cheapest, shift))
    if least > limit:
        raise InfeasibleBudgetError(
            f"budget {budget:.6g} is below the least total cost {math.fsum(cheapest):.6g} "
            f"(every layer at its cheapest candidate): no choice is feasible")

    # The frontier as arrays: node costs and profits; back[j] = (parent node in layer j-1's
    # frontier, candidate index) per node of layer j's frontier. One layer's step, vectorised:
    # expand every node by every candidate (parent-major, as a nested loop would), sort stably
    # by (cost, profit), drop what exceeds the budget, keep a node only if its profit is
    # strictly below every earlier one's (= the last kept node's).
    node_c, node_p = np.zeros(1), np.zeros(1)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for c, p in zip(costs, profits):
        ec = (node_c[:, None] + np.asarray(c, dtype=np.float64)[None, :]).ravel()
        ep = (node_p[:, None] + np.asarray(p, dtype=np.float64)[None, :]).ravel()
        order = np.lexsort((ep, ec))  # stable: ties keep the expansion order
        order = order[ec[order] <= limit]
        ep_sorted = ep[order]
        before = np.concatenate(([np.inf], np.minimum.accumulate(ep_sorted)[:-1]))
        keep = order[ep_sorted < before]
        node_c, node_p = ec[keep], ep[keep]
        back.append(np.divmod(keep, len(c)))
    nodes = list(zip(node_c.tolist(), node_p.tolist()))

    # The last node has the lowest profit; walk back to the first layer, then reverse.
    idx = len(nodes) - 1
    picked: list[int] = []
    for parents, ks in reversed(back):
        picked.append(int(ks[idx]))
        idx = int(parents[idx])
    picked.reverse()
    total_shift = math.fsum(shift)
    frontier = tuple((c + total_shift, p) for c, p in nodes)
    return ParetoResult(
        choices=tuple(cands[i][k] for i, k in enumerate(picked)),
        indices=tuple(picked),
        cost=frontier[-1][0],
        profit=frontier[-1][1],
        budget=budget,
        frontier=frontier,
    )
