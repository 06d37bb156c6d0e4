"""Figures of the search (matplotlib imported here, with the Agg backend, only when called).

- :func:`plot_sensitivity`: S_i against psi and against tau, one line per layer (the
  paper's Fig. 2).
- :func:`plot_frontier`: the energy/sensitivity Pareto frontier of BSR and/or SSC, the
  uniform configurations and the chosen point marked (Fig. 3).
"""
from __future__ import annotations

import os
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    """``fig`` written like every output (``io.write_file``: atomic, a symlink at ``path`` replaced)."""
    from io import BytesIO

    from ..io import write_file

    buf = BytesIO()
    fig.savefig(buf, dpi=120, format=os.path.splitext(os.fspath(path))[1][1:] or "png")
    write_file(path, buf.getvalue())


def _positive_floor(values):
    pos = [v for row in values for v in row if v > 0]
    return min(pos) / 2 if pos else 1e-12


def short_names(names: Sequence[str]) -> list[str]:
    """Layer names without the prefix and suffix they all share (at '/' or '.' boundaries)."""
    names = list(names)
    if len(names) < 2:
        return names
    pre = os.path.commonprefix(names)
    cut = max(pre.rfind("/"), pre.rfind("."))
    pre_len = cut + 1 if cut >= 0 else 0
    rev = [n[::-1] for n in names]
    suf = os.path.commonprefix(rev)[::-1]
    cut = max(suf.find("/"), suf.find("."))
    suf_len = len(suf) - cut if cut >= 0 else 0
    out = [n[pre_len:len(n) - suf_len] for n in names]
    return out if all(out) and len(set(out)) == len(out) else names


def plot_sensitivity(tables: Sequence, path: str | os.PathLike, title: str = "") -> str:
    """S_i(psi) and/or S_i(tau) per layer (``search.Table`` objects), log scale; returns the path."""
    plt = _pyplot()
    tables = [t for t in tables if t is not None]
    if not tables:
        raise ValueError("nothing measured: no psi and no tau table")
    fig, axes = plt.subplots(1, len(tables), figsize=(6.4 * len(tables) + 2.6, 4.8), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("viridis")
    for ax, t in zip(axes[0], tables):
        floor = _positive_floor(t.S.tolist())
        L = len(t.layers)
        for i, name in enumerate(short_names(t.layers)):
            # a candidate the search pruned (inf) was never measured to the end: no point
            ax.plot(list(t.candidates), [max(v, floor) if v < float("inf") else float("nan") for v in t.S[i]],
                    marker="o", ms=3, lw=1.2,
                    color=cmap(i / max(L - 1, 1)), label=name)
        ax.set_yscale("log")
        if t.kind == "psi":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("psi (most spikes per step)" if t.kind == "psi" else "tau (threshold ratio)")
        ax.set_ylabel("sensitivity S_i (§6)")
        ax.set_title(f"per-layer sensitivity vs {t.kind}")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title="layer (input to output)",
               title_fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)
    return os.fspath(path)


def plot_frontier(choices: Sequence, path: str | os.PathLike) -> str:
    """One panel per SearchChoice: frontier, uniform configurations, budget, the choice."""
    plt = _pyplot()
    if not choices:
        raise ValueError("no search result to plot")
    fig, axes = plt.subplots(1, len(choices), figsize=(6.4 * len(choices), 4.8), squeeze=False)
    for ax, c in zip(axes[0], choices):
        if c.full_frontier:
            ae = [p[0] for p in c.full_frontier]
            as_ = [p[1] for p in c.full_frontier]
            ax.step(ae, as_, where="post", color="tab:blue", lw=0.8, alpha=0.35, label="frontier, no budget")
        fe = [p[0] for p in c.frontier]
        fs = [p[1] for p in c.frontier]
        ax.step(fe, fs, where="post", color="tab:blue", lw=1.4, label="frontier within budget")
        ax.plot(fe, fs, ".", color="tab:blue", ms=3)
        ue = [p[0] for p in c.uniform.values()]
        us = [p[1] for p in c.uniform.values()]
        ax.plot(ue, us, "s", color="tab:gray", ms=5, label=f"uniform {c.kind}")
        for k, (e, s) in c.uniform.items():
            ax.annotate(f"{k:g}", (e, s), textcoords="offset points", xytext=(4, 3), fontsize=7, color="tab:gray")
        ax.plot([c.chosen[0]], [c.chosen[1]], "*", color="tab:red", ms=14,
                label=f"chosen ({c.problem.upper()})")
        if c.problem == "bsr":
            ax.axvline(c.budget, color="tab:red", ls="--", lw=0.8, label="energy budget")
        else:
            ax.axhline(c.budget, color="tab:red", ls="--", lw=0.8, label="sensitivity budget")
        pos = [s for s in fs + us + [p[1] for p in c.full_frontier] if s > 0]
        if pos and max(pos) / min(pos) > 20:
            ax.set_yscale("log")
        unit = "spikes / sample" if c.energy_mode == "spikes" else "SynOps / sample"
        ax.set_xlabel(f"energy: sum_i E_i ({unit})")
        ax.set_ylabel("sensitivity: sum_i S_i")
        ax.set_title(f"{c.problem.upper()}: {c.kind} per layer")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return os.fspath(path)


def plot_r_sweep(points: Sequence, path: str | os.PathLike, baseline=None, title: str = "") -> str:
    """SSC's r sweep: top-1 (or agreement with the ANN without labels) against spikes per
    sample, one point per r, the SNN SSC started from as a reference; returns the path."""
    plt = _pyplot()
    if not points:
        raise ValueError("no r sweep to plot")
    labelled = all(p.top1 is not None for p in points)
    acc = [(p.top1 if labelled else p.agreement) * 100 for p in points]
    spk = [p.spikes for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.plot(spk, acc, "o-", color="tab:blue", label="SSC at budget r")
    for p, x, y in zip(points, spk, acc):
        ax.annotate(f"r={p.r:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if baseline is not None:
        b_acc = (baseline.top1 if labelled else baseline.agreement) * 100
        ax.plot([baseline.spikes], [b_acc], "s", color="tab:gray", ms=7, label="before SSC (tau = 1)")
    ax.set_xlabel("spikes / sample")
    ax.set_ylabel("top-1 (%)" if labelled else "agreement with the ANN (%)")
    ax.set_title(title or "SSC: accuracy against spikes, per budget r")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return os.fspath(path)
