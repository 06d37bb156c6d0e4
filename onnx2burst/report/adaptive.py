"""The rich table of ``onnx2burst eval --adaptive`` (docs/stream.md)."""
from __future__ import annotations

from ..evaluation.adaptive import AdaptiveResult
from .tables import _energy, _si


def _p(v) -> str:
    return "-" if v is None else f"{v:.2f} %"


def adaptive_table(a: AdaptiveResult):
    """Adaptive timesteps against all T steps, with the distribution of the exit steps."""
    from rich.table import Table

    from ..stream.rule import ExitRule

    r = a.rule
    t = Table(title=f"adaptive timesteps ({a.samples} samples): "
                    f"{ExitRule(r['c'], r['t_min'], r['kind']).describe()}")
    t.add_column("")
    t.add_column("adaptive", justify="right")
    t.add_column(f"all T={a.T} steps", justify="right")
    t.add_row("timesteps / sample", f"{a.mean_timesteps:.3f}", str(a.T))
    drop = "" if a.top1_drop_se is None else f" ({a.top1 - a.top1_full_T:+.2f} +- {a.top1_drop_se:.2f} points)"
    t.add_row("top-1", _p(a.top1) + drop, _p(a.top1_full_T))
    t.add_row("agreement with the ANN", _p(a.agreement), _p(a.agreement_full_T))
    t.add_row("spikes / sample", _si(a.spikes), _si(a.spikes_full_T))
    t.add_row("energy / sample", _energy(a.energy_pj), _energy(a.energy_full_T_pj))
    dist = ", ".join(f"{k}: {v}" for k, v in a.timesteps.items() if v)
    t.add_row("samples per exit step", dist, "")
    return t
