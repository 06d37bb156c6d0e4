"""The exact Pareto DP of docs/method.md §8 against brute-force enumeration."""
from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings, strategies as st

from onnx2burst.search.pareto import InfeasibleBudgetError, pareto_select

values = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)


@st.composite
def instances(draw):
    layers = draw(st.integers(3, 6))
    sizes = [draw(st.integers(2, 5)) for _ in range(layers)]
    # integer-ish values make ties (equal costs, equal profits) common: the hard case
    grid = draw(st.booleans())
    v = st.integers(0, 6).map(float) if grid else values
    costs = [[draw(v) for _ in range(n)] for n in sizes]
    profits = [[draw(v) for _ in range(n)] for n in sizes]
    frac = draw(st.floats(0.0, 1.0))
    lo = sum(min(c) for c in costs)
    hi = sum(max(c) for c in costs)
    return costs, profits, lo + frac * (hi - lo)


def brute(costs, profits, budget):
    """All complete choices within budget, summed in layer order like the DP."""
    out = []
    for ks in itertools.product(*[range(len(c)) for c in costs]):
        c = p = 0.0
        for i, k in enumerate(ks):
            c += costs[i][k]
            p += profits[i][k]
        if c <= budget:
            out.append((c, p, ks))
    return out


def pareto_set(points):
    pts = sorted(points, key=lambda e: (e[0], e[1]))
    front = []
    for c, p, _ in pts:
        if not front or p < front[-1][1]:
            front.append((c, p))
    return front


def _sum(table, ks):
    s = 0.0
    for i, k in enumerate(ks):
        s += table[i][k]
    return s


@settings(max_examples=300, deadline=None, derandomize=True)
@given(instances())
def test_matches_brute_force(inst):
    costs, profits, budget = inst
    r = pareto_select(costs, profits, budget)
    every = brute(costs, profits, budget * (1 + 1e-9) + 1e-300)
    assert r.profit == min(p for _, p, _ in every)
    assert math.isclose(_sum(profits, r.indices), r.profit, abs_tol=1e-12)
    assert _sum(costs, r.indices) <= budget * (1 + 1e-9) + 1e-300
    assert list(r.frontier) == pareto_set(every)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(instances())
def test_both_roles(inst):
    """BSR (cost=E, profit=S) and SSC (cost=S, profit=E) on the same tables."""
    E, S, _ = inst
    e_target = sum(row[len(row) // 2] for row in E)
    bsr = pareto_select(E, S, e_target)
    every = brute(E, S, e_target * (1 + 1e-9))
    assert bsr.profit == min(p for _, p, _ in every)
    s_target = sum(row[0] for row in S)
    ssc = pareto_select(S, E, s_target)
    every = brute(S, E, s_target * (1 + 1e-9))
    assert ssc.profit == min(p for _, p, _ in every)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(instances())
def test_frontier_monotone(inst):
    r = pareto_select(*inst)
    f = r.frontier
    assert f[-1] == (r.cost, r.profit)
    assert all(a[0] <= b[0] and a[1] > b[1] for a, b in zip(f, f[1:]))
    # equal costs can only survive with strictly lower profit, which sorting rules out
    assert all(a[0] < b[0] for a, b in zip(f, f[1:]))


def test_choices_are_values_in_layer_order():
    # layer 0 wants its last candidate, layer 2 its first: a reversed list would show it
    psi = [[1, 2, 3], [1, 2, 3], [1, 2, 3]]
    costs = [[1, 2, 3]] * 3
    profits = [[9, 5, 0], [0, 5, 9], [0, 5, 9]]
    r = pareto_select(costs, profits, budget=5, candidates=psi)
    assert r.choices == (3, 1, 1) and r.indices == (2, 0, 0)
    # candidates that do not start at 1 (the authors' off-by-one)
    r = pareto_select(costs, profits, budget=5, candidates=[[4, 5, 6]] * 3)
    assert r.choices == (6, 4, 4)
    taus = [[1.0, 1.5, 2.0]] * 3
    r = pareto_select(profits, costs, budget=0.0, candidates=taus)
    assert r.choices == (2.0, 1.0, 1.0)


def test_uniform_budget_is_met_despite_rounding():
    E = [[0.1, 0.7, 0.2], [0.3, 0.1, 0.6], [0.2, 0.2, 0.3]]
    S = [[3.0, 0.0, 1.0], [1.0, 2.0, 0.0], [0.0, 1.0, 2.0]]
    target = sum(reversed([row[2] for row in E]))  # another summation order
    r = pareto_select(E, S, target)
    assert r.profit <= sum(row[2] for row in S)


def test_negative_costs():
    costs = [[-1.0, 0.0], [2.0, -3.0], [0.5, 0.0]]
    profits = [[0.0, 1.0], [0.0, 4.0], [0.0, 1.0]]
    r = pareto_select(costs, profits, budget=1.6)
    every = brute(costs, profits, 1.6 + 1e-9)
    assert r.profit == min(p for _, p, _ in every)


def test_infeasible_budget():
    with pytest.raises(InfeasibleBudgetError, match="below the least total cost"):
        pareto_select([[1, 2], [1, 3]], [[0, 0], [0, 0]], budget=1.5)


def test_bad_tables():
    with pytest.raises(ValueError, match="layer 1"):
        pareto_select([[1, 2], [1]], [[0, 0], [0, 0]], budget=5)
    with pytest.raises(ValueError, match="non-finite"):
        pareto_select([[1, float("nan")]], [[0, 0]], budget=5)
    with pytest.raises(ValueError, match="no layers"):
        pareto_select([], [], budget=5)
