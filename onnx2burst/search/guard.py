"""SSC's decision guard (docs/method.md §10; not in the paper).

SSC (§8) spends a budget of symmetric KL (§6). The KL also prices how confident the SNN is,
and a tau that moves the logits' scale towards the ANN's can lower it while the class changes
on more samples. The guard checks SSC's choice against the decisions it changes, on held-out
inputs (no labels needed). Its per-sample loss is task-neutral (``Sensitivity.loss``): for
class scores a changed class (0 or 1, so L is agreement lost), for any other output the
sample's normalised error (so L is the growth of the error, as a fraction of the ANN
output's variance). In one of two modes:

- ``"model"`` (:class:`ModelProbe`, :func:`backed_off_ssc`): the chosen SNN is rebuilt and run
  whole on the guard inputs; its loss (of agreement with the ANN's class), L (paired against the
  SNN SSC started from, with its SE), must stay within ``tol``. Otherwise the guard bisects
  SSC's Pareto frontier, from the choice towards the starting SNN (which loses nothing by
  definition), for the most compressed point with ``L <= tol``, in at most ``checks``
  rebuilds. What it keeps has been checked (or is the starting SNN); the bisection assumes L
  grows with the compression along the frontier.
- ``"layer"`` (:class:`AgreementProbe`, :func:`guarded_ssc`): for each layer the choice changes,
  the loss with only that layer at its chosen tau (run as in the search, §6); a
  layer with ``L > z * SE`` gets that tau and every tau further from its default forbidden, and
  SSC chooses again under the same budget, until no changed layer is flagged.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .. import ops
from ..data import load_data
from ..errors import ConfigError
from ..evaluation.evaluate import load_onnx
from ..progress import Progress, progress_or_null
from ..evaluation.sensitivity import Sensitivity, fit_sensitivity, plan_sensitivity
from .graphs import SearchGraphs, mean_corrected

__all__ = ["AgreementProbe", "GuardRound", "GuardResult", "guarded_ssc", "masked", "ModelProbe", "BackoffStep",
           "BackoffResult", "backed_off_ssc"]


def _guard_dataset(ann, data, samples, batch_size, max_memory=None):
    """The guard's inputs: the first ``samples`` of ``data`` (at least 2), for ``ann``'s inputs."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    ds = load_data(data, ann, samples=samples, max_memory=max_memory)
    if len(ds) < 2:
        raise ConfigError(f"the SSC guard needs at least 2 samples, {ds.source} has {len(ds)}")
    return ds


def _outputs(sess, ds, batch_size: int, names: Sequence[str]) -> list[list[np.ndarray]]:
    """Per batch of ``ds``: the model's outputs ``names``."""
    return [sess.run(list(names), feeds) for feeds in ds.batches(batch_size)]


def _sensitivity(sensitivity, ann, refs) -> Sensitivity:
    """``sensitivity`` as a fitted ``Sensitivity`` (a mode: fitted on the ANN's guard outputs)."""
    if isinstance(sensitivity, Sensitivity):
        return sensitivity
    return fit_sensitivity(plan_sensitivity(ann, sensitivity), refs)


class AgreementProbe:
    """Each (layer, tau)'s loss against the ANN on guard data (step 2 above).

    ann, snn: ModelProto or path (the SNN SSC starts from). data: anything
    ``onnx2burst.data.load_data`` reads; the first ``samples`` are used, labels ignored.
    Results are cached per pair. mean_correct: the changed layer's output is shifted to the
    starting SNN's mean per channel and batch, as ``tables.measure`` does by default (False:
    the raw change). sensitivity: the per-sample loss (``Sensitivity.loss``: a changed class
    for class scores, the normalised error otherwise); a mode is fitted on the guard data.
    """

    def __init__(self, ann, snn, data, *, samples: int | None = 4096, batch_size: int = 64,
                 threads: int | None = None, kernel: bool | None = None, progress: Progress | None = None,
                 mean_correct: bool = True, max_memory=None, sensitivity: str | Sensitivity = "auto"):
        ann, snn = load_onnx(ann), load_onnx(snn)
        self.ds = _guard_dataset(ann, data, samples, batch_size, max_memory)
        self.batch_size, self.mean_correct = batch_size, mean_correct
        self.progress = progress_or_null(progress)
        kernel = ops.kernel_available() if kernel is None else kernel
        self.sg = SearchGraphs(snn, threads, kernel)
        self.index = {nr.name: i for i, nr in enumerate(self.sg.neurons)}
        sess = ops.make_session(ann, kernel=False, threads=threads)
        self.ann_out = _outputs(sess, self.ds, batch_size, [o.name for o in ann.graph.output])
        self.sens = _sensitivity(sensitivity, ann, self.ann_out)
        self.base: np.ndarray | None = None          # per sample: the starting SNN's loss
        self._loss: dict[tuple[str, float], np.ndarray] = {}
        self.seconds = 0.0

    @property
    def samples(self) -> int:
        return len(self.ds)

    def _run(self, pairs: Sequence[tuple[str, float]]) -> None:
        t0 = time.perf_counter()
        sg, n = self.sg, len(self.ds)
        base = np.zeros(n)
        loss = {p: np.zeros(n) for p in pairs}
        batches = list(self.ds.batches(self.batch_size))
        pos = 0
        with self.progress.stage("SSC guard", len(batches)) as stage:
            for feeds, ann_out in zip(batches, self.ann_out):
                k = len(next(iter(feeds.values())))
                rows = slice(pos, pos + k)
                pos += k
                env = sg.run_base(feeds)
                base[rows] = self.sens.loss(ann_out, [env[o] for o in sg.outputs])
                for name, tau in pairs:
                    i = self.index[name]
                    nr = sg.neurons[i]
                    cell = sg.cell(env[nr.x].ndim, nr.T, nr.psi, nr.alpha)
                    y, _ = cell.run(None, {"X": env[nr.x], "vth": (np.float32(tau) * nr.vth).astype(np.float32)})
                    feeds = {b: env[b] for b in sg.boundary[i]}
                    feeds[nr.y] = mean_corrected(y, env[nr.y]) if self.mean_correct else y
                    loss[name, tau][rows] = self.sens.loss(ann_out, sg.outputs_after(i, env, feeds))
                stage.advance(1)
        self.base = base
        self._loss.update(loss)
        self.seconds += time.perf_counter() - t0

    def losses(self, pairs: Sequence[tuple[str, float]]) -> dict[tuple[str, float], tuple[float, float]]:
        """(layer, tau) -> (L, SE): the mean per-sample loss against the starting SNN's (the
        agreement with the ANN's class lost, as a fraction of the samples, for class scores),
        and its standard error over the paired samples."""
        unknown = sorted({p[0] for p in pairs} - set(self.index))
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown}; the SNN has {list(self.index)}")
        todo = [(n, float(t)) for n, t in dict.fromkeys(pairs) if (n, float(t)) not in self._loss]
        if todo or self.base is None:
            self._run(todo)
        out = {}
        n = len(self.ds)
        for name, tau in pairs:
            d = self._loss[name, float(tau)] - self.base
            out[name, float(tau)] = (float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)))
        return out


@dataclass(frozen=True)
class GuardRound:
    """One round: SSC's choice, the loss of every layer it changed, and which were flagged."""

    choice: Mapping[str, float]
    losses: Mapping[tuple[str, float], tuple[float, float]]   # (layer, tau) -> (L, SE)
    flagged: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict:
        return {"choice": dict(self.choice),
                "losses": [{"layer": k, "tau": t, "loss": L, "se": se} for (k, t), (L, se) in self.losses.items()],
                "flagged": [{"layer": k, "tau": t} for k, t in self.flagged]}


@dataclass(frozen=True)
class GuardResult:
    """The guarded SSC choice and how it was reached."""

    choice: object                       # the final SearchChoice
    rounds: tuple[GuardRound, ...]
    z: float
    samples: int
    seconds: float
    forbidden: Mapping[str, float] = field(default_factory=dict)   # layer -> forbidden tau nearest its default

    mode = "layer"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "z": self.z, "samples": self.samples, "seconds": self.seconds,
                "forbidden": dict(self.forbidden), "rounds": [r.to_dict() for r in self.rounds]}

    def meta(self) -> dict:
        """What the output file's search metadata records of the guard."""
        return {"mode": self.mode, "samples": self.samples, "z": self.z, "forbidden": dict(self.forbidden)}

    def summary(self) -> str:
        forb = ", ".join(f"{n} from {v:g}" for n, v in self.forbidden.items()) or "none"
        return f"per layer, {len(self.rounds)} round(s) on {self.samples} samples, z = {self.z:g}; forbidden: {forb}"


def masked(table, forbid: np.ndarray):
    """``table`` with the candidates where ``forbid`` is True made unaffordable: their S exceeds
    any budget by itself (so the DP of §8 can never pick them), for every SSC rule."""
    forbid = np.asarray(forbid, bool)
    if forbid.shape != table.S.shape:
        raise ValueError(f"forbid has shape {forbid.shape}, the table {table.S.shape}")
    if not forbid.any():
        return table
    big = 10.0 * (float(np.abs(table.S).sum()) + float(np.abs(table.S).max(initial=0.0)) * table.S.shape[1]) + 1.0
    if table.se is not None:
        big += 10.0 * float(np.abs(table.se).sum())
    kw = {"S": np.where(forbid, big, table.S)}
    if table.se is not None:
        kw["se"] = np.where(forbid, 0.0, table.se)
    if table.kl is not None:
        kw["kl"] = np.where(forbid[:, :, None], big, table.kl)
    return dataclasses.replace(table, **kw)


def guarded_ssc(table, losses: Callable[[Sequence[tuple[str, float]]], Mapping[tuple[str, float], tuple[float, float]]],
                choose: Callable, *, z: float = 2.0, max_rounds: int | None = None,
                samples: int = 0) -> GuardResult:
    """The guard loop (steps 1-4 above).

    table: SSC's tau table. losses: (layer, tau) pairs -> (L, SE), e.g.
    ``AgreementProbe.losses``. choose: table -> SearchChoice (e.g. ``lambda t: choose_ssc(t, r=1)``).
    z: a layer is flagged when L > z * SE (and L > 0); its tau and every tau further from the
    layer's default are then forbidden (the default never is, so a choice always exists).
    max_rounds: stop early (None: until no flag). samples: recorded in the result.
    """
    if z < 0:
        raise ConfigError(f"guard z must be >= 0, got {z}")
    t0 = time.perf_counter()
    forbid = np.zeros(table.S.shape, bool)
    cands = np.asarray(table.candidates, dtype=np.float64)
    rounds = []
    rows = {name: i for i, name in enumerate(table.layers)}
    limit = max_rounds if max_rounds is not None else table.S.size + 1
    while True:
        choice = choose(masked(table, forbid))
        changed = [(name, float(choice.choice[name])) for i, name in enumerate(table.layers)
                   if not math.isclose(float(choice.choice[name]), float(table.defaults[i]), rel_tol=1e-9)]
        L = dict(losses(changed)) if changed else {}
        flagged = tuple(p for p in changed if L[p][0] > 0 and L[p][0] > z * L[p][1])
        rounds.append(GuardRound(dict(choice.choice), L, flagged))
        if not flagged or len(rounds) >= limit:
            break
        for name, tau in flagged:
            i = rows[name]
            eps = 1e-9 * max(1.0, abs(tau))
            d = float(table.defaults[i])
            forbid[i] |= (cands >= tau - eps) if tau > d else (cands <= tau + eps)
    least = {}   # per layer, the forbidden candidate nearest its default
    for i, name in enumerate(table.layers):
        if forbid[i].any():
            f = cands[forbid[i]]
            least[name] = float(f[np.argmin(np.abs(f - float(table.defaults[i])))])
    return GuardResult(choice, tuple(rounds), z, samples, time.perf_counter() - t0, least)


# ----------------------------------------------------------------------- mode "model"
class ModelProbe:
    """The loss of agreement with the ANN of a whole SNN on guard data (step 2 of mode "model").

    ann, snn: ModelProto or path (``snn``: the SNN SSC starts from, the reference). data:
    anything ``onnx2burst.data.load_data`` reads; the first ``samples`` are used, labels ignored.
    """

    def __init__(self, ann, snn, data, *, samples: int | None = 4096, batch_size: int = 256,
                 threads: int | None = None, kernel: bool | None = None, max_memory=None,
                 progress: Progress | None = None, sensitivity: str | Sensitivity = "auto"):
        ann, snn = load_onnx(ann), load_onnx(snn)
        self.ds = _guard_dataset(ann, data, samples, batch_size, max_memory)
        self.batch_size, self.threads = batch_size, threads
        self.progress = progress_or_null(progress)
        self.kernel = ops.kernel_available() if kernel is None else kernel
        self.seconds = 0.0
        self.ann_out = self._outputs(ann, False)
        self.sens = _sensitivity(sensitivity, ann, self.ann_out)
        self.base = self.losses_of(snn)

    @property
    def samples(self) -> int:
        return len(self.ds)

    def _outputs(self, model, kernel: bool) -> list[list[np.ndarray]]:
        t0 = time.perf_counter()
        with self.progress.stage("SSC guard", 1) as stage:
            sess = ops.make_session(model, kernel=kernel, threads=self.threads)
            out = _outputs(sess, self.ds, self.batch_size, [o.name for o in model.graph.output])
            stage.advance(1)
        self.seconds += time.perf_counter() - t0
        return out

    def losses_of(self, snn) -> np.ndarray:
        """Per guard sample: ``snn``'s loss against the ANN (``Sensitivity.loss``: 1.0 where
        the class differs from the ANN's, for class scores)."""
        outs = self._outputs(load_onnx(snn), self.kernel)
        return np.concatenate([self.sens.loss(a, s) for a, s in zip(self.ann_out, outs)])

    def loss(self, snn) -> tuple[float, float]:
        """(L, SE): ``snn``'s mean per-sample loss less the starting SNN's (for class scores, the
        share of guard samples whose agreement with the ANN it loses, a fraction), and its
        standard error over the paired samples."""
        d = self.losses_of(snn) - self.base
        return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


@dataclass(frozen=True)
class BackoffStep:
    """One checked point of the frontier: ``point`` 0 is SSC's choice, larger ones less compressed."""

    point: int
    energy: float
    sensitivity: float
    loss: float
    se: float
    passed: bool

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass(frozen=True)
class BackoffResult:
    """Mode "model": the choice the guard kept and the checks that led to it."""

    choice: object                       # the final SearchChoice
    steps: tuple[BackoffStep, ...]
    tol: float
    samples: int
    seconds: float
    points: int                          # frontier points SSC's choice could back off to
    point: int                           # the one kept (``points``: the SNN SSC started from)
    mode = "model"

    @property
    def backed_off(self) -> bool:
        return self.point > 0

    def to_dict(self) -> dict:
        return {"mode": self.mode, "tol": self.tol, "samples": self.samples, "seconds": self.seconds,
                "points": self.points, "point": self.point, "steps": [s.to_dict() for s in self.steps]}

    def meta(self) -> dict:
        return {"mode": self.mode, "samples": self.samples, "tol": self.tol, "point": self.point,
                "points": self.points}

    def summary(self) -> str:
        first = self.steps[0]
        where = ("kept SSC's choice" if not self.backed_off else
                 "kept the SNN SSC started from" if self.point >= self.points else
                 f"backed off to frontier point {self.point} of {self.points}")
        return (f"whole model on {self.samples} samples, tol {100 * self.tol:g} point(s): SSC's choice loses "
                f"{100 * first.loss:+.2f} +- {100 * first.se:.2f}; {where} after {len(self.steps)} check(s)")


def backed_off_ssc(table, choose: Callable, loss: Callable[[Mapping[str, float]], tuple[float, float]], *,
                   tol: float = 0.005, checks: int = 8,
                   samples: int = 0) -> BackoffResult:
    """Mode "model" (steps 1-3 of the module docstring).

    table: SSC's tau table. choose: ``(table, budget=None) -> SearchChoice`` (budget None: its
    rule; a number: that sensitivity budget instead). loss: a choice (layer -> tau) -> (L, SE)
    of the SNN it builds, e.g. ``ModelProbe.loss`` of the rebuilt SNN. tol: the largest L
    kept (a fraction). checks: at most this many calls of ``loss``.
    """
    if not tol >= 0:
        raise ConfigError(f"guard tolerance must be >= 0, got {tol}")
    if checks < 1:
        raise ConfigError(f"guard checks must be >= 1, got {checks}")
    t0 = time.perf_counter()
    first = choose(table)
    # frontier: energy increasing, sensitivity decreasing; point 0 is the choice itself
    pts = list(first.frontier) or [first.chosen]
    start = len(pts)                      # one past the frontier: the SNN SSC started from
    choices: dict[int, object] = {0: first}
    steps: list[BackoffStep] = []

    def at(k: int):
        if k not in choices:
            choices[k] = choose(table, budget=pts[k][1])
        return choices[k]

    def check(k: int) -> bool:
        c = at(k)
        L, se = loss(c.choice)
        ok = L <= tol
        steps.append(BackoffStep(k, float(c.chosen[0]), float(c.chosen[1]), L, se, ok))
        return ok

    if check(0):
        best = 0
    else:
        lo, hi = 0, start                 # lo fails; hi passes (the start loses nothing)
        while hi - lo > 1 and len(steps) < checks:
            mid = (lo + hi) // 2
            if check(mid):
                hi = mid
            else:
                lo = mid
        best = hi
    if best < start:
        final = at(best)
    else:
        j = [table.column(d) for d in table.defaults]
        E, Sm = table.energy(first.energy_mode), table.S
        final = dataclasses.replace(
            first, choice={name: float(table.defaults[i]) for i, name in enumerate(table.layers)},
            chosen=(float(sum(E[i, k] for i, k in enumerate(j))), float(sum(Sm[i, k] for i, k in enumerate(j)))),
            budget_rule=f"{first.budget_rule}; the guard kept the SNN SSC started from")
    return BackoffResult(final, tuple(steps), tol, samples, time.perf_counter() - t0, start, best)
