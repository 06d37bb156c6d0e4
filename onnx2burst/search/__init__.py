"""BSR and SSC: per-layer psi and tau for an SNN (docs/method.md §6-§8, §10).

One module per job:

- ``graphs``: the sessions behind the tables (baseline, neuron cells, tails);
- ``tables``: ``measure`` -- S_i(k) and E_i(k) for every layer and candidate;
- ``pareto`` and ``select``: the exact Pareto DP, ``choose_bsr`` / ``choose_ssc``;
- ``guard``: SSC's decision guard;
- ``pipeline``: ``tune`` (BSR then SSC on a conversion), ``rebuild``;
- ``sweep``: SSC at several budgets, rebuilt and evaluated.
"""
from .pareto import InfeasibleBudgetError, ParetoResult, pareto_select
from .pipeline import JointCheck, TuneResult, joint_check, rebuild, search_fits, thresholds_from_converter, tune
from .select import SearchChoice, choose_bsr, choose_ssc, held_out_r, search_bsr, search_ssc
from .sweep import SweepPoint, sweep_r
from .tables import DEFAULT_PSI_MAX, DEFAULT_TAUS, Measurement, Table, VthProvider, measure, scaled_vth

__all__ = ["InfeasibleBudgetError", "ParetoResult", "pareto_select", "JointCheck", "TuneResult", "joint_check",
           "rebuild", "search_fits", "thresholds_from_converter", "tune", "SearchChoice", "choose_bsr", "choose_ssc",
           "held_out_r", "search_bsr", "search_ssc", "SweepPoint", "sweep_r", "DEFAULT_PSI_MAX", "DEFAULT_TAUS",
           "Measurement", "Table", "VthProvider", "measure", "scaled_vth"]
