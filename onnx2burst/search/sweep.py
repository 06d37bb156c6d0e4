"""SSC at several budgets r, each rebuilt and evaluated: the accuracy/spikes trade-off to
pick from (docs/method.md §8)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config import SearchConfig
from ..errors import ConfigError
from ..progress import Progress
from .pareto import InfeasibleBudgetError
from .pipeline import TuneResult, rebuild
from .select import choose_ssc

__all__ = ["SweepPoint", "sweep_r"]


@dataclass(frozen=True)
class SweepPoint:
    """One SSC budget of an r sweep: the SNN it gives, measured on the evaluation data."""

    r: float
    taus: dict[str, float]
    top1: float | None          # None without labels
    agreement: float            # same class as the ANN
    spikes: float               # per sample
    synops: float
    energy_ratio: float | None
    feasible: bool = True       # False: r's budget is below every configuration; the least sensitive is used
    sym_kl: float | None = None  # mean symmetric KL to the ANN on the evaluation data (§6's measure)

    def to_dict(self) -> dict:
        return dict(vars(self))


def sweep_r(conv, data, res: TuneResult, rs: Sequence[float], eval_data, config: SearchConfig, *,
            progress: Progress | None = None) -> tuple[SweepPoint, list[SweepPoint]]:
    """SSC at each budget ``r`` (§8) from the tau table ``tune`` measured with ``config`` (its
    energy measure and SSC rule): choose, rebuild (biases recalibrated), evaluate on
    ``eval_data`` (anything ``load_data`` reads) -- the accuracy/spikes trade-off to pick from.
    When ``tune`` ran SSC with the per-layer guard (mode "layer"), every r is guarded too (with
    the pairs measured once); the whole-model guard (mode "model") backs off the chosen r only,
    and the sweep shows each r's own choice.

    Returns (the SNN SSC started from, as a point with r = 0; one point per r).
    """
    from ..evaluation import evaluate

    if res.ssc_start is None or "ssc" not in res.measurements:
        raise ConfigError("an r sweep needs the SSC table: run the search with SSC")
    energy, z, folds = config.energy, config.ssc_z, config.ssc_folds
    calib = conv.config.calibration
    start = res.ssc_start
    table = res.measurements["ssc"].tau
    stats = conv.activation_stats(data, progress)
    out = []
    for r in [None] + [float(v) for v in rs]:
        settings, feasible = dict(start), True
        if r is not None:
            try:
                if res.guard_probe is not None:
                    from .guard import guarded_ssc

                    choice = guarded_ssc(table, res.guard_probe.losses,
                                         lambda t, r=r: choose_ssc(t, r=r, energy=energy, z=z, folds=folds),
                                         z=res.guard.z).choice.choice
                else:
                    choice = choose_ssc(table, r=r, energy=energy, z=z, folds=folds).choice
            except InfeasibleBudgetError:  # below every configuration: the least sensitive one
                feasible = False
                least = np.argmin(table.sensitivity(z), axis=1)
                choice = {name: float(table.candidates[int(least[i])]) for i, name in enumerate(table.layers)}
            settings = {k: (p, float(choice.get(k, t_))) for k, (p, t_) in start.items()}
        model = rebuild(conv, data, stats, settings, progress=progress)
        ev = evaluate(conv.source, model, eval_data, threads=calib.threads, max_memory=calib.max_memory,
                      other_ann=True, **({"batch_size": config.batch_size} if config.batch_size else {}))
        e = ev.energy
        out.append(SweepPoint(0.0 if r is None else r, {k: t for k, (_, t) in settings.items()},
                              None if ev.snn.top1 is None else float(ev.snn.top1), float(ev.agreement),
                              float(e.spikes), float(e.synops), e.ratio, feasible, float(ev.sym_kl)))
    return out[0], out[1:]
