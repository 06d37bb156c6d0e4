"""Per-layer sensitivity and energy tables (docs/method.md §6-§7).

``measure(ann, snn, data)`` fills, for every BurstIF layer ``i`` and candidate ``k`` (psi in
1..psi_max, tau on a grid), the sensitivity ``S_i(k)`` (only layer ``i`` changed, the others as
in ``snn``), its per-sample terms and paired standard error, and the layer's own spikes per
sample ``E_i(k)``. It runs through ``graphs.SearchGraphs``: one baseline run per batch, then
per candidate one neuron cell and the layer's tail -- never a whole network per candidate.
The ANN's reference outputs are computed once; batches stream; thresholds for every (layer, psi)
come from a provider called once per pair before any SNN run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from .. import ops
from ..config import ENERGY_MODES
from ..data import load_data
from ..errors import ConfigError
from ..evaluation.energy import energy_model
from ..evaluation.evaluate import load_onnx
from ..progress import Progress, progress_or_null
from ..snn import read_snn
from ..evaluation.sensitivity import Sensitivity, fit_sensitivity, plan_sensitivity
from .cells import Metric, run_layer
from .graphs import SearchGraphs
from .prune import ROUND, Prune, Pruner, open_layers

__all__ = ["DEFAULT_PSI_MAX", "DEFAULT_TAUS", "VthProvider", "scaled_vth", "Table", "Measurement", "measure"]

DEFAULT_PSI_MAX = 8
DEFAULT_TAUS = tuple(1.0 + 0.5 * i for i in range(19))  # 1.0, 1.5, ..., 10.0
MEAN_CORRECTIONS = ("input", "output", "none")

#: ``vth_for_psi(layer name, psi) -> vth [C] float32``: the layer's threshold refit for psi (§4).
VthProvider = Callable[[str, int], np.ndarray]


def scaled_vth(snn: onnx.ModelProto) -> VthProvider:
    """Fallback provider without ANN statistics: ``vth(k) = vth(psi) * psi / k``.

    Keeps the largest output ``psi*vth`` of the layer. An approximation of the refit of §4;
    prefer the converter's threshold fit where the ANN is at hand.
    """
    info = {n.name: n for n in read_snn(snn, require_vth=True).neurons}

    def vth_for_psi(name: str, psi: int) -> np.ndarray:
        n = info[name]
        return (n.vth * np.float32(n.psi) / np.float32(psi)).astype(np.float32)

    return vth_for_psi


@dataclass(frozen=True)
class Table:
    """S and E of every layer for every candidate of one kind (psi or tau).

    ``S[i, k]``: mean sensitivity (§6) with layer ``i`` at candidate ``k``; ``spikes[i, k]``: the
    spikes per sample that layer ``i`` itself emits then; ``synops = spikes * fanout``.
    ``defaults[i]``: the layer's value in the SNN (its S is the baseline's).
    """

    kind: str
    layers: tuple[str, ...]
    candidates: tuple
    defaults: tuple
    S: np.ndarray
    spikes: np.ndarray
    synops: np.ndarray
    fanout: tuple[float, ...]
    se: np.ndarray | None = None  # standard error of S[i, k] - S(baseline), from per-sample pairs
    kl: np.ndarray | None = None  # [layer, candidate, sample]: each sample's KL, S's terms

    def sensitivity(self, z: float = 0.0) -> np.ndarray:
        """S, or S + z * se: each candidate counted with a margin of z standard errors."""
        return self.S + z * self.se if z and self.se is not None else self.S

    def energy(self, mode: str = "spikes") -> np.ndarray:
        if mode not in ENERGY_MODES:
            raise ConfigError(f"energy must be one of {ENERGY_MODES}, got {mode!r}")
        return self.spikes if mode == "spikes" else self.synops

    def column(self, value) -> int:
        for j, c in enumerate(self.candidates):
            if math.isclose(float(c), float(value), rel_tol=1e-9, abs_tol=1e-12):
                return j
        raise ConfigError(f"{self.kind} = {value} is not among the candidates {list(self.candidates)}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers), "candidates": list(self.candidates),
                "defaults": list(self.defaults), "fanout": list(self.fanout),
                "S": _finite(self.S), "spikes": _finite(self.spikes), "synops": _finite(self.synops),
                "se": None if self.se is None else _finite(self.se)}


def _finite(a: np.ndarray) -> list:
    """``a`` as nested lists, a pruned (inf) entry as None."""
    return np.where(np.isfinite(a), a, None).tolist() if not np.isfinite(a).all() else a.tolist()


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure` found: the tables, the baseline and where the time went."""

    psi: Table | None
    tau: Table | None
    samples: int
    T: int
    baseline_S: float                    # the SNN as it is
    baseline_spikes: tuple[float, ...]   # per layer, per sample
    timings: Mapping[str, float]
    notes: tuple[str, ...] = ()
    sensitivity: Sensitivity | None = None  # what S measured, with its fitted scales

    def to_dict(self) -> dict:
        return {"samples": self.samples, "T": self.T, "baseline_S": self.baseline_S,
                "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict(),
                "baseline_spikes": list(self.baseline_spikes), "timings": dict(self.timings),
                "psi": None if self.psi is None else self.psi.to_dict(),
                "tau": None if self.tau is None else self.tau.to_dict(), "notes": list(self.notes)}


def measure(ann, snn, data, *, psis: Sequence[int] | None = tuple(range(1, DEFAULT_PSI_MAX + 1)),
            taus: Sequence[float] | None = DEFAULT_TAUS, vth_for_psi: VthProvider | None = None,
            samples: int | None = 256, batch_size: int = 32, threads: int | None = None,
            kernel: bool | None = None, progress: Progress | None = None,
            layers: Sequence[str] | None = None, mean_correct: bool | str = "output",
            prune: Prune | None = None, workers: int = 0, address: str | None = None,
            sensitivity: str | Sensitivity = "auto") -> Measurement:
    """Sensitivity and spikes of every layer at every psi and tau candidate (§6-§7).

    ann, snn: ModelProto or path; the SNN as converted (its psi/tau are the defaults). data:
    anything ``onnx2burst.data.load_data`` reads; the first ``samples`` are used. psis / taus:
    the candidates (None skips that kind). vth_for_psi: the threshold refit for a psi
    candidate (default: :func:`scaled_vth`). layers: only these layers (default all).
    mean_correct: how the changed layer is recalibrated, per channel and on the batch, before
    the rest of the network sees it -- the §5 bias calibration the rebuild applies after the
    choice (§8), so that S_i(k) and E_i(k) are what the choice costs once recalibrated rather
    than a mean shift calibration removes anyway:

    - ``"output"`` (default, also ``True``): the layer's output is shifted to the baseline SNN's
      mean. Its spikes are those before the correction.
    - ``"input"``: §5's one step where it acts. The difference of the layer's output mean to the
      baseline's is subtracted from its input (the bias in front of it) and the layer runs
      again, so its spikes include those the correction brings back. Its spike estimate is
      closer to the rebuilt model's, but it rates large taus as cheaper and its additive S is
      further from what a choice costs (docs/results.md); hence not the default.
    - ``"none"`` (also ``False``): the raw change.

    prune: skip what the choice the table is made for can never contain (``prune.Prune``;
    exact: such candidates are ``inf`` in the table). workers / address: run the
    (layer, candidate) cells as Ray tasks on a local instance of ``workers`` CPUs, or on the
    cluster at ``address`` (``cluster``); the numbers are those of the in-process run.
    sensitivity: what S measures (``evaluation.sensitivity``): ``"auto"`` (§6's symmetric KL of
    class scores, the normalised squared error of any other output, summed over the model's
    outputs), ``"kl"``, ``"mse"``, or a fitted ``Sensitivity`` (its scales kept).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ann, snn = load_onnx(ann), load_onnx(snn)
    ds = load_data(data, ann, samples=samples)
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    psis = None if psis is None else sorted({int(p) for p in psis})
    taus = None if taus is None else sorted({float(t) for t in taus})
    if psis is not None and (not psis or psis[0] < 1):
        raise ConfigError(f"psi candidates must be integers >= 1, got {psis}")
    if taus is not None and (not taus or taus[0] <= 0):
        raise ConfigError(f"tau candidates must be > 0, got {taus}")
    kernel = ops.kernel_available() if kernel is None else kernel
    correction = {True: "output", False: "none", None: "none"}.get(mean_correct, mean_correct)
    if correction not in MEAN_CORRECTIONS:
        raise ConfigError(f"mean_correct must be one of {MEAN_CORRECTIONS}, got {mean_correct!r}")

    sg = SearchGraphs(snn, threads, kernel)
    neurons = sg.neurons
    if layers is not None:
        unknown = sorted(set(layers) - {n.name for n in neurons})
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown}; the SNN has {[n.name for n in neurons]}")
    active = [i for i, n in enumerate(neurons) if layers is None or n.name in layers]
    em = energy_model(snn)
    fanout = {l.name: l.fanout for l in em.layers}
    timings["prepare"] = time.perf_counter() - t0

    # the ANN's reference outputs, once; the normalised errors' scales from them
    t = time.perf_counter()
    a_sess = ops.make_session(ann, kernel=False, threads=threads)
    a_outs = [o.name for o in ann.graph.output]
    if len(a_outs) != len(sg.outputs):
        raise ConfigError(f"the ANN has {len(a_outs)} outputs, the SNN {len(sg.outputs)}: not the SNN of this ANN")
    ann_logits = [a_sess.run(a_outs, feeds) for feeds in ds.batches(batch_size)]
    del a_sess
    metric: Metric = sensitivity if isinstance(sensitivity, Sensitivity) else \
        fit_sensitivity(plan_sensitivity(ann, sensitivity), ann_logits)
    timings["ann_logits"] = time.perf_counter() - t

    # thresholds for every (layer, psi candidate), before any SNN run
    t = time.perf_counter()
    provider = vth_for_psi or scaled_vth(snn)
    theta_psi: dict[tuple[int, int], np.ndarray] = {}
    if psis is not None:
        for i in active:
            nr = neurons[i]
            for p in psis:
                if p != nr.psi:
                    v = np.asarray(provider(nr.name, p), np.float32).reshape(-1)
                    if v.size != nr.vth.size:
                        raise ConfigError(f"vth for {nr.name} at psi={p} has {v.size} values, the layer {nr.vth.size}")
                    theta_psi[i, p] = (np.float32(nr.tau) * v).astype(np.float32)
    timings["thresholds"] = time.perf_counter() - t

    # candidate lists per layer: (kind, column, psi, theta) for every non-default candidate
    plan: dict[int, list[tuple[str, int, int, np.ndarray]]] = {}
    for i in active:
        nr = neurons[i]
        todo = []
        for j, p in enumerate(psis or ()):
            if p != nr.psi:
                todo.append(("psi", j, p, theta_psi[i, p]))
        for j, tau in enumerate(taus or ()):
            if not math.isclose(tau, nr.tau, rel_tol=1e-9):
                todo.append(("tau", j, nr.psi, (np.float32(tau) * nr.vth).astype(np.float32)))
        plan[i] = todo

    L = len(neurons)
    n = len(ds)
    shapes = {"psi": (L, len(psis or ())), "tau": (L, len(taus or ()))}
    per = {k: np.zeros(v + (n,)) for k, v in shapes.items()}  # each sample's KL: S and its SE come from it
    spk = {k: np.zeros(v) for k, v in shapes.items()}
    base_per, base_spk = np.zeros(n), np.zeros(L)
    batches = list(ds.batches(batch_size))
    fo = np.array([fanout[nr.name] for nr in neurons])
    progress = progress_or_null(progress)
    pruners: dict[str, Pruner] = {}
    if prune is not None and (psis if prune.kind == "psi" else taus) is not None:
        # the budget is the baseline's: one pass over the batches measures it first
        t = time.perf_counter()
        with progress.stage("sensitivity baseline", len(batches)) as stage:
            pos = 0
            for feeds, a_logits in zip(batches, ann_logits):
                env = sg.run_base(feeds)
                b = metric(a_logits, [env[o] for o in sg.outputs])
                base_per[pos:pos + len(b)] = b
                pos += len(b)
                base_spk += [float(env[nr.spikes].sum()) for nr in neurons]
                stage.advance(1)
        timings["baseline pass"] = time.perf_counter() - t
        cands = psis if prune.kind == "psi" else taus
        defaults = [nr.psi if prune.kind == "psi" else nr.tau for nr in neurons]
        if prune.kind == "tau":
            cost0, scale = np.full(L, base_per.mean()), np.ones(L)
        else:
            scale = fo if prune.energy == "synops" else np.ones(L)
            cost0 = base_spk / n * scale
        pr = Pruner(prune, cands, defaults, cost0, n, scale)
        if pr.enabled:
            for i in range(L):
                if i not in active:  # a layer left out keeps its default (its exact cost)
                    pr.dead[i] = np.isnan(pr.exact[i])
            pruners[prune.kind] = pr
    runner = _runner(sg, correction, metric, workers, address, timings)
    n_evals = sum(len(v) for v in plan.values())
    ascending = "tau" in pruners and prune is not None and prune.ascending and psis is None
    t_base, ran, pruned = 0.0, 0, 0

    def run_pass(plan_now, stage, first: bool) -> None:
        """Every batch once: the baseline run, then the cells of ``plan_now`` (layer -> candidates)."""
        nonlocal t_base, ran, pruned
        pos = 0
        for feeds, a_logits in zip(batches, ann_logits):
            t = time.perf_counter()
            env = sg.run_base(feeds)
            t_base += time.perf_counter() - t
            k = len(a_logits[0])
            rows = slice(pos, pos + k)
            pos += k
            if first and not pruners:
                base_per[rows] = metric(a_logits, [env[o] for o in sg.outputs])
                base_spk[:] += [float(env[nr.spikes].sum()) for nr in neurons]
            if not ascending:
                stage.advance(1)
            work, skipped = [], 0
            for i in active:
                cands = plan_now.get(i, ())
                todo = [c for c in cands if ascending or not (c[0] in pruners and pruners[c[0]].dead[i, c[1]])]
                skipped += len(cands) - len(todo)
                if todo:
                    work.append((i, todo))
            if skipped:
                stage.advance(skipped, description="sensitivity (pruned)")
            ran += sum(len(todo) for _, todo in work)
            pruned += skipped
            results = runner.run(env, a_logits, work, stage.advance)
            del env
            for (i, todo), res in zip(work, results):
                for (kind, j, _, _), (kl, s) in zip(todo, res):
                    per[kind][i, j, rows] = kl
                    spk[kind][i, j] += s
                    if kind in pruners and not ascending:
                        pruners[kind].add(i, j, float(kl.sum()) if kind == "tau" else s)
            if not ascending:
                for pr in pruners.values():
                    pr.update()

    try:
        if not ascending:
            with progress.stage("sensitivity", len(batches) * (1 + n_evals)) as stage:
                run_pass(plan, stage, True)
        else:
            # SSC in increasing tau, ROUND taus of every open layer per pass over the batches (prune.py)
            pr = pruners["tau"]
            K = len(taus)
            measured = np.zeros((L, K), bool)
            S_now = np.full((L, K), np.inf)
            for i, nr in enumerate(neurons):
                for j, c in enumerate(taus):
                    if math.isclose(float(c), float(nr.tau), rel_tol=1e-9):
                        measured[i, j], S_now[i, j] = True, float(base_per.mean())
                if i not in active:
                    measured[i] = True
            done = {i: 0 for i in active}
            with progress.stage("sensitivity", len(batches) * n_evals) as stage:
                while True:
                    go = open_layers(S_now, measured, pr.limit)
                    now = {i: plan[i][done[i]:done[i] + ROUND] for i in active if go[i] and done[i] < len(plan[i])}
                    if not now:
                        break
                    run_pass(now, stage, False)
                    for i, cands in now.items():
                        for _, j, _, _ in cands:
                            measured[i, j], S_now[i, j] = True, float(per["tau"][i, j].mean())
                        done[i] += len(cands)
                left = sum(len(plan[i]) - done[i] for i in active)
                if left:
                    stage.advance(left * len(batches), description="sensitivity (past the slack)")
                pruned += left * len(batches)
                pr.dead = ~measured
    finally:
        runner.close()
    timings.update(baseline=t_base)
    timings.update({"cells run": float(ran), "cells pruned": float(pruned)})  # (batch, layer, candidate) cells
    base_S = float(base_per.mean())
    base_spikes = base_spk / n
    dead = {k: pr.dead for k, pr in pruners.items()}

    def table(kind, cands, default_of):
        if cands is None:
            return None
        E = spk[kind] / n
        for i, nr in enumerate(neurons):
            for j, c in enumerate(cands):
                if math.isclose(float(c), float(default_of(nr)), rel_tol=1e-9):
                    E[i, j] = base_spikes[i]
                    per[kind][i, j] = base_per
        S = per[kind].mean(axis=-1)
        # SE of the paired difference d = a sample's KL with the candidate - its KL in the
        # baseline SNN; 0 at each layer's own value (d = 0 for every sample)
        se = (per[kind] - base_per).std(axis=-1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(S)
        if kind in dead:  # pruned: never measured to the end, never chosen (prune.py)
            d = dead[kind]
            S[d], E[d], se[d] = np.inf, np.inf, np.inf
            per[kind][d] = np.nan
        keep = np.array(active, dtype=int)
        return Table(kind, tuple(neurons[i].name for i in keep), tuple(cands),
                     tuple(default_of(neurons[i]) for i in keep), S[keep], E[keep],
                     E[keep] * fo[keep, None], tuple(float(f) for f in fo[keep]), se[keep], per[kind][keep])

    timings["total"] = time.perf_counter() - t0
    return Measurement(
        psi=table("psi", psis, lambda nr: nr.psi), tau=table("tau", taus, lambda nr: nr.tau),
        samples=n, T=neurons[0].T, baseline_S=base_S,
        baseline_spikes=tuple(float(v) for v in base_spikes), timings=timings, notes=em.notes,
        sensitivity=metric if isinstance(metric, Sensitivity) else None)




class _InProcess:
    """The cells of one batch, one layer after the other, in this process."""

    def __init__(self, sg: SearchGraphs, correction: str, metric: Metric, timings: dict):
        self.sg, self.correction, self.metric, self.timings = sg, correction, metric, timings

    def run(self, env, a_logits, work, advance):
        out = []
        for i, todo in work:
            out.append(run_layer(self.sg, i, env, a_logits, todo, self.correction, self.metric, self.timings))
            advance(len(todo), description=f"sensitivity {self.sg.neurons[i].name}")
        return out

    def close(self):
        pass


def _runner(sg, correction, metric, workers, address, timings):
    if not workers and not address:
        return _InProcess(sg, correction, metric, timings)
    from .cluster import RayRunner  # Ray only when asked for

    return RayRunner(sg, correction, metric, workers=workers, address=address, timings=timings)
