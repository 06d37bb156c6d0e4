"""Rich tables for the terminal. ``rich`` is imported when a table is built."""
from __future__ import annotations

from ..evaluation.results import EvalResult


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f} %"


def _si(v: float, unit: str = "") -> str:
    for scale, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {p}{unit}"
    return f"{v:.3g} {unit}".rstrip()


def _energy(pj: float | None) -> str:
    if pj is None:
        return "-"
    for scale, unit in ((1e9, "mJ"), (1e6, "uJ"), (1e3, "nJ")):
        if abs(pj) >= scale:
            return f"{pj / scale:.4g} {unit}"
    return f"{pj:.4g} pJ"


def eval_tables(r: EvalResult):
    """(summary table, per-layer table) of an EvalResult."""
    from rich.table import Table

    s = Table(title=f"ANN vs SNN, {r.samples} samples, T={r.T}", show_header=True)
    s.add_column("")
    s.add_column("ANN", justify="right")
    s.add_column("SNN", justify="right")
    s.add_row("top-1", _pct(r.ann.top1), _pct(r.snn.top1))
    s.add_row("top-1 agreement", "", _pct(r.agreement))
    s.add_row("mean symmetric KL", "", f"{r.sym_kl:.4g}")
    e = r.energy
    if e is not None:
        s.add_row("MACs / sample", _si(e.ann_macs or 0), _si(e.analog_macs) + " (analog)")
        s.add_row("spikes / sample", "", _si(e.spikes))
        s.add_row("SynOps / sample", "", _si(e.synops))
        s.add_row("energy / sample", _energy(e.e_ann_pj), _energy(e.e_snn_pj))
        s.add_row("energy ratio SNN/ANN", "", "-" if e.ratio is None else f"{e.ratio:.3f}")
    s.add_row("ms / sample", f"{r.ann.ms_per_sample:.3f}", f"{r.snn.ms_per_sample:.3f}"
              + ("" if r.kernel else " (fallback)"))

    t = Table(title="per layer (per sample)", show_header=True)
    for c in ("layer", "spikes", "fanout", "SynOps", "share"):
        t.add_column(c, justify="left" if c == "layer" else "right")
    if e is None:
        return s, t
    for l in e.layers:
        t.add_row(l.name, f"{l.spikes:.1f}", f"{l.fanout:.4g}", _si(l.synops),
                  f"{100 * l.synops / e.synops:.1f} %" if e.synops else "-")
    t.add_row("total", f"{e.spikes:.1f}", "", _si(e.synops), "")
    return s, t


def search_tables(steps, timings=None, checks=None, guard=None):
    """Tables of a search: one per ``(SearchChoice, Table, baseline_S)`` step, the SSC guard's
    rounds (a ``search.guard.GuardResult``, if any), then the time split.

    checks: problem ("bsr" / "ssc") -> ``JointCheck``: the rebuilt SNN's S, in the caption.
    """
    from rich.table import Table

    out = []
    for c, tb, base in steps:
        E = tb.energy(c.energy_mode)
        t = Table(title=f"{c.problem.upper()}: {c.kind} per layer (baseline S = {base:.4g})")
        for col in ("layer", c.kind, f"-> {c.kind}", "S_i", "E_i", "E_i before"):
            t.add_column(col, justify="left" if col == "layer" else "right")
        for i, name in enumerate(tb.layers):
            j, j0 = tb.column(c.choice[name]), tb.column(tb.defaults[i])
            t.add_row(name, f"{tb.defaults[i]:g}", f"[bold]{c.choice[name]:g}[/]", f"{tb.S[i, j]:.3g}",
                      f"{E[i, j]:.4g}", f"{E[i, j0]:.4g}")
        unit = "spikes" if c.energy_mode == "spikes" else "SynOps"
        t.caption = (f"sum E = {c.chosen[0]:.5g} {unit}/sample, sum S = {c.chosen[1]:.4g}; "
                     f"budget {c.budget:.5g} = {c.budget_rule}; frontier {len(c.frontier)} points")
        ck = (checks or {}).get(c.problem)
        if ck is not None:
            t.caption += (f"\nthe SNN rebuilt with this choice: S = {ck.measured:.4g} on the same samples "
                          f"(the tables add up to {ck.predicted:.4g}; before: {ck.before:.4g})")
        out.append(t)
    if guard is not None:
        out.append(guard_table(guard))
    if timings:
        w = Table(title="time split (s)")
        w.add_column("stage")
        w.add_column("seconds", justify="right")
        for k, v in timings.items():
            w.add_row(k, f"{v:.1f}")
        out.append(w)
    return out


def guard_table(guard):
    """The SSC guard's work. Mode "model": each checked frontier point (0 = SSC's choice) with
    its spikes/energy, S, and the rebuilt SNN's loss of agreement with the ANN, L +- SE (points
    of the guard samples), kept when L <= tol. Mode "layer": each round's changed layers, L +- SE,
    flagged when L > z * SE."""
    from rich.table import Table

    if guard.mode == "model":
        t = Table(title=f"SSC guard: loss of agreement with the ANN of the rebuilt SNN ({guard.samples} samples, "
                        f"kept when L <= {100 * guard.tol:g} points)")
        for col in ("check", "frontier point", "sum E", "sum S", "L (points)", "SE", "kept"):
            t.add_column(col, justify="right")
        for k, st in enumerate(guard.steps, 1):
            t.add_row(str(k), str(st.point), f"{st.energy:.5g}", f"{st.sensitivity:.4g}", f"{100 * st.loss:+.2f}",
                      f"{100 * st.se:.2f}", "yes" if st.passed else "[bold red]no[/]")
        t.caption = f"{guard.summary()}; {guard.seconds:.0f} s"
        return t
    t = Table(title=f"SSC guard: loss of agreement with the ANN per changed layer ({guard.samples} samples, "
                    f"flagged when L > {guard.z:g} SE)")
    for col in ("round", "layer", "tau", "L (points)", "SE", "flagged"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for k, rd in enumerate(guard.rounds, 1):
        for (name, tau), (L, se) in rd.losses.items():
            bad = (name, tau) in rd.flagged
            t.add_row(str(k), name, f"{tau:g}", f"{100 * L:+.2f}", f"{100 * se:.2f}", "[bold red]yes[/]" if bad else "")
    forb = ", ".join(f"{n} from {v:g}" for n, v in guard.forbidden.items()) or "none"
    t.caption = f"{len(guard.rounds)} round(s), {guard.seconds:.0f} s; forbidden: {forb}"
    return t


def sweep_table(points, baseline=None):
    """SSC's r sweep as a rich table: r, top-1, agreement, symmetric KL to the ANN, spikes and
    energy per sample. (The KL is the search's measure: next to top-1 it shows how far the one
    follows the other.)"""
    from rich.table import Table

    t = Table(title="SSC r sweep (biases recalibrated at each r)")
    for col in ("r", "top-1", "agreement", "sym. KL", "spikes/sample", "vs before SSC", "SynOps/sample", "energy vs ANN"):
        t.add_column(col, justify="right")
    ref = baseline.spikes if baseline is not None else None
    rows = ([("before", baseline)] if baseline is not None else []) + [(f"{p.r:g}", p) for p in points]
    for label, p in rows:
        t.add_row(label + ("" if p.feasible else " (infeasible: least S)"), _pct(p.top1), _pct(p.agreement),
                  "" if p.sym_kl is None else f"{p.sym_kl:.4f}", f"{p.spikes:,.0f}",
                  "" if not ref else f"{p.spikes / ref:.3f}", f"{p.synops:,.0f}",
                  "" if p.energy_ratio is None else f"{p.energy_ratio:.3f}")
    return t
