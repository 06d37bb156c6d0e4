"""The search pipeline on a conversion (docs/method.md §8, §10): BSR, then SSC, each followed
by a rebuild (thresholds refit, biases recalibrated), as ``convert --bsr --ssc`` and ``search``
run it.

``tune(conv, data, config)`` measures the tables (``tables.measure``), chooses
(``select``), optionally guards SSC's choice (``guard``), rebuilds the SNN and checks the
rebuilt SNN's S against what the tables predicted (``joint_check``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx

from ..config import SearchConfig
from ..errors import ConfigError
from ..progress import Progress, progress_or_null
from ..snn import read_snn
from .select import SearchChoice, choose_bsr, choose_ssc
from .prune import Prune
from .tables import Measurement, VthProvider, measure

__all__ = ["psi_fits", "search_fits", "thresholds_from_converter", "TuneResult", "JointCheck", "joint_check", "rebuild",
           "tune"]


def psi_fits(conv, psis: Sequence[int]) -> dict[str, list[tuple[int, float]]]:
    """The (psi, tau) per neuron whose thresholds BSR's psi table needs: every psi of ``psis``
    other than the neuron's own at its tau (its own where it has no other)."""
    base = conv.settings()
    return {name: [(int(p), t) for p in psis if int(p) != cur] or [(cur, t)] for name, (cur, t) in base.items()}


def search_fits(conv, config: SearchConfig) -> dict[str, list[tuple[int, float]]] | None:
    """What the conversion's threshold pass should fit alongside its own for ``tune`` with
    ``config`` to follow (``Converter.run(..., also_fit=)``): BSR's psi candidates, else None."""
    return psi_fits(conv, range(1, config.psi_max + 1)) if config.bsr else None


def thresholds_from_converter(conv, data, psis: Sequence[int], *, stats=None, progress=None) -> VthProvider:
    """The §4 refit of every neuron for every psi in ``psis`` as a provider: one ANN pass, or
    none where the conversion fitted them already (``search_fits``).

    conv: an ``onnx2burst.convert.Converter``; data: its ``CalibrationSet`` (the data the SNN's
    own thresholds were fitted on). Each neuron keeps its configured tau; its own psi (the
    baseline, never asked for by :func:`measure`) is fitted only on demand.
    """
    base = conv.settings()
    fits = conv.fit_thresholds(data, stats, psi_fits(conv, psis), progress=progress)

    def vth_for_psi(name: str, psi: int) -> np.ndarray:
        key = (name, int(psi), base[name][1])
        if key not in fits:  # a layer's own psi: fitted when asked (measure never asks)
            fits.update(conv.fit_thresholds(data, stats, {n: [(int(psi), t)] for n, (_, t) in base.items()},
                                            progress=progress))
        return fits[key]

    return vth_for_psi


@dataclass
class TuneResult:
    """What :func:`tune` produced: the final SNN and how it was chosen."""

    model: onnx.ModelProto                       # the SNN with the chosen psi/tau, recalibrated
    settings: dict[str, tuple[int, float]]       # neuron -> (psi, tau)
    bsr: SearchChoice | None
    ssc: SearchChoice | None
    measurements: dict[str, Measurement]         # "bsr" (psi table), "ssc" (tau table)
    timings: dict[str, float]
    ssc_start: dict[str, tuple[int, float]] | None = None  # the settings SSC began from
    after_bsr: onnx.ModelProto | None = None     # the SNN after BSR (recalibrated), before SSC
    checks: dict[str, "JointCheck"] = field(default_factory=dict)  # "bsr" / "ssc": the rebuilt SNN's S
    guard: object | None = None                  # guard.GuardResult / BackoffResult when SSC ran guarded
    guard_probe: object | None = None            # the layer guard's AgreementProbe (pairs cached), for sweep_r

    def to_dict(self) -> dict:
        return {"settings": {k: {"psi": p, "tau": t} for k, (p, t) in self.settings.items()},
                "choices": {k: c.to_dict() for k, c in (("bsr", self.bsr), ("ssc", self.ssc)) if c is not None},
                "measurements": {k: m.to_dict() for k, m in self.measurements.items()},
                "checks": {k: c.to_dict() for k, c in self.checks.items()},
                "guard": None if self.guard is None else self.guard.to_dict(),
                "timings": dict(self.timings)}


@dataclass(frozen=True)
class JointCheck:
    """How far §8's assumption of independent layers held for one choice, on the search samples.

    before: S of the SNN the search started from; predicted: the S the tables add up to for
    the choice (``before + sum_i (S_i(k_i) - before)``); measured: S of the rebuilt SNN (every
    layer changed at once, biases recalibrated) on the same samples.
    """

    before: float
    predicted: float
    measured: float

    def to_dict(self) -> dict:
        return {"S_before": self.before, "S_predicted": self.predicted, "S_measured": self.measured}


def joint_check(ann, model, data, choice: SearchChoice, m: Measurement, *, threads=None, kernel=None) -> JointCheck:
    """The rebuilt SNN's S on the samples ``m`` was measured on (with ``m``'s sensitivity),
    next to what the tables predict."""
    from .. import ops
    from ..data import load_data

    tb = m.psi if choice.kind == "psi" else m.tau
    delta = sum(float(tb.S[i, tb.column(choice.choice[name])]) - m.baseline_S for i, name in enumerate(tb.layers))
    predicted = m.baseline_S + delta
    ds = load_data(data, ann, samples=m.samples)
    kernel = ops.kernel_available() if kernel is None else kernel
    a_sess = ops.make_session(ann, kernel=False, threads=threads)
    s_sess = ops.make_session(model, kernel=kernel, threads=threads)
    a_names, s_names = [o.name for o in ann.graph.output], [o.name for o in model.graph.output]
    per = [m.sensitivity(a_sess.run(a_names, f), s_sess.run(s_names, f)) for f in ds.batches(256)]
    return JointCheck(m.baseline_S, float(predicted), float(np.concatenate(per).mean()))


def rebuild(conv, data, stats, settings: Mapping[str, tuple[int, float]], *, thresholds=None,
            progress=None) -> onnx.ModelProto:
    """Thresholds refit for ``settings`` (unless given), the SNN built, biases recalibrated,
    metadata added."""
    vth = dict(thresholds) if thresholds is not None else conv.fit_thresholds(data, stats, settings, progress=progress)
    snn = conv.build(vth, settings)
    model, deltas = snn.model, {}
    if conv.config.bias_calibration:
        cal = conv.calibrate(snn, data, stats, progress=progress)
        model, deltas = cal.model, cal.deltas
    model = conv.finalize(model, snn, vth, len(data), set(deltas))
    onnx.checker.check_model(model)
    return model


def tune(conv, data, config: SearchConfig, *, snn: onnx.ModelProto | None = None,
         progress: Progress | None = None, r_max: float | None = None) -> TuneResult:
    """BSR then SSC on a conversion, as ``onnx2burst convert --bsr --ssc`` runs them (§8).

    conv: an ``onnx2burst.convert.Converter`` (its calibration config gives the threads and
    the memory limit); data: its ``CalibrationSet`` (the first ``config.samples`` measure the
    tables; all of it fits thresholds and biases). snn: the SNN ``conv`` makes with its config
    (converted here when None). config: what to search (``SearchConfig``), including SSC's
    decision guard (§10).

    1. BSR: psi table on ``snn`` (thresholds refit per psi candidate), choose psi per layer,
       then refit thresholds for the chosen psi and recalibrate the biases;
    2. SSC: tau table on that SNN, choose tau per layer (guarded when ``config.guard``),
       recalibrate again.

    With ``config.prune`` the tables skip the cells no choice within the budget can hold
    (``prune``): r_max is the largest SSC budget the tau table will serve (an r sweep's).
    """
    if not isinstance(config, SearchConfig):
        raise ConfigError(f"tune needs a SearchConfig, got {type(config).__name__}")
    if not config.any:
        raise ConfigError("tune: nothing to do (neither BSR nor SSC)")
    target = config.psi_target or max(p for p, _ in conv.settings().values())
    if config.bsr and target > config.psi_max:
        raise ConfigError(f"--bsr: the budget is the energy of psi = {target} (--psi-target, else --psi), above "
                          f"--psi-max {config.psi_max}; raise --psi-max or lower --psi-target")
    progress = progress_or_null(progress)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    threads = conv.config.calibration.threads
    kernel = config.kernel
    kw = dict(samples=config.samples, batch_size=config.search_batch, threads=threads, kernel=kernel,
              progress=progress, workers=config.workers, address=config.ray_address,
              sensitivity=config.sensitivity)
    stats = conv.activation_stats(data, progress)
    if snn is None:  # converted here: the threshold pass fits BSR's candidates too
        t = time.perf_counter()
        vth = conv.fit_thresholds(data, stats, conv.settings(), progress=progress, also=search_fits(conv, config))
        snn = rebuild(conv, data, stats, conv.settings(), thresholds=vth, progress=progress)
        timings["convert"] = time.perf_counter() - t
    settings = conv.settings()
    ann = conv.source
    bsr = ssc = guarded = probe = None
    measurements: dict[str, Measurement] = {}
    ssc_start = after_bsr = fitted = None
    checks: dict[str, JointCheck] = {}
    if config.bsr:
        t = time.perf_counter()
        psis = list(range(1, config.psi_max + 1))
        provider = thresholds_from_converter(conv, data, psis, stats=stats, progress=progress)
        timings["bsr thresholds"] = time.perf_counter() - t
        cut = Prune("psi", config.energy_ratio, target, config.energy) if config.prune else None
        m = measure(ann, snn, data, psis=psis, taus=None, vth_for_psi=provider, prune=cut, **kw)
        measurements["bsr"] = m
        bsr = choose_bsr(m.psi, psi_target=config.psi_target, ratio=config.energy_ratio, energy=config.energy)
        timings["bsr measure"] = m.timings["total"]
        old = {n.name: n for n in read_snn(snn).neurons}
        settings = {k: (int(bsr.choice.get(k, p)), t_) for k, (p, t_) in settings.items()}
        # the thresholds for the chosen psi were fitted for the table already (or are the SNN's)
        vth = {k: old[k].vth if p == old[k].psi else provider(k, p) for k, (p, _) in settings.items()}
        t = time.perf_counter()
        snn = after_bsr = rebuild(conv, data, stats, settings, thresholds=vth, progress=progress)
        fitted = vth
        timings["bsr rebuild"] = time.perf_counter() - t
        t = time.perf_counter()
        checks["bsr"] = joint_check(ann, snn, data, bsr, m, threads=threads, kernel=kernel)
        timings["bsr check"] = time.perf_counter() - t
    if config.ssc:
        # the held-out budget and the per-layer guard read every cell of the table
        whole = config.ssc_folds or (config.guard is not None and config.guard.mode != "model")
        cut = None if whole or not config.prune else Prune("tau", max(config.r, r_max or 0.0), 1.0, ascending=True)
        m = measure(ann, snn, data, psis=None, taus=config.tau_grid, prune=cut, **kw)
        measurements["ssc"] = m
        ssc_start = dict(settings)
        timings["ssc measure"] = m.timings["total"]

        def choose(table, budget=None):
            return choose_ssc(table, r=config.r, energy=config.energy, z=config.ssc_z, folds=config.ssc_folds,
                              budget=budget)

        built: dict[tuple, onnx.ModelProto] = {}   # the guard's rebuilt SNNs, by settings

        def settings_of(choice):
            return {k: (p, float(choice.get(k, t_))) for k, (p, t_) in ssc_start.items()}

        def build(st):
            key = tuple(sorted(st.items()))
            if key not in built:
                built[key] = rebuild(conv, data, stats, st, thresholds=known_vth(st), progress=progress)
            return built[key]

        def known_vth(st):
            """The thresholds of ``st`` when BSR's fit holds them: a layer's fit depends on tau only
            through its reference (the Clip cap of §3), so an equal reference is the same fit."""
            if fitted is None:
                return None
            from ..tuning.thresholds import reference_thresholds

            out = {}
            for name, (p, t_) in st.items():
                p0, t0_ = ssc_start[name]
                same = {name: (p, t_)}, {name: (p0, t0_)}
                if p != p0 or not np.array_equal(*(reference_thresholds(conv.analysis, stats, x)[name] for x in same)):
                    return None
                out[name] = fitted[name]
            return out

        g = config.guard
        if g is not None:
            from . import guard as G

            t = time.perf_counter()
            calib = conv.config.calibration
            if g.mode == "model":
                mprobe = G.ModelProbe(ann, snn, g.data, samples=g.samples, batch_size=config.batch_size or 256,
                                      threads=threads, kernel=kernel, max_memory=calib.max_memory, progress=progress,
                                      sensitivity=m.sensitivity)
                guarded = G.backed_off_ssc(m.tau, choose, lambda ch: mprobe.loss(build(settings_of(ch))),
                                           tol=g.tol_fraction, checks=g.checks, samples=mprobe.samples)
            else:
                probe = G.AgreementProbe(ann, snn, g.data, samples=g.samples, batch_size=config.batch_size or 64,
                                         threads=threads, kernel=kernel, max_memory=calib.max_memory,
                                         progress=progress, sensitivity=m.sensitivity)
                guarded = G.guarded_ssc(m.tau, probe.losses, choose, z=g.z, samples=probe.samples)
            ssc = guarded.choice
            timings["ssc guard"] = time.perf_counter() - t
        else:
            ssc = choose(m.tau)
        settings = settings_of(ssc.choice)
        t = time.perf_counter()
        snn = build(settings)
        timings["ssc rebuild"] = time.perf_counter() - t
        t = time.perf_counter()
        checks["ssc"] = joint_check(ann, snn, data, ssc, m, threads=threads, kernel=kernel)
        timings["ssc check"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    res = TuneResult(snn, settings, bsr, ssc, measurements, timings, ssc_start, after_bsr, checks, guarded, probe)
    energy = config.energy
    p = snn.metadata_props.add()
    p.key, p.value = "onnx2burst.search", json.dumps(
        {"settings": res.to_dict()["settings"],
         "bsr": None if bsr is None else {"budget": bsr.budget, "rule": bsr.budget_rule, "energy": energy},
         "ssc": None if ssc is None else {"budget": ssc.budget, "rule": ssc.budget_rule, "energy": energy,
                                          "guard": None if guarded is None else guarded.meta()}})
    return res
