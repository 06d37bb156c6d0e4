"""SSC's decision guard: an addition to ALGORITHM.md §8, not in the paper.

SSC (§8) spends a budget of symmetric KL (§6). The KL also prices how confident the SNN
is, and a tau that moves the logits' scale towards the ANN's can lower it while the class
changes on more samples. On the Fashion-MNIST ResNet-20 at T = 4, one layer's tau lowered
the KL on the test set and cost 0.46 point of top-1 on its own (benchmarks/results/search.md).

The guard checks SSC's choice against the decisions it changes, on more samples than the
search measures the KL on, and needs no labels:

1. SSC chooses from the tau table (any rule: the paper's, ``z``, held-out folds).
2. For each layer the choice changes, the *loss of agreement* ``L`` is measured: the share of
   guard samples on which the SNN with only that layer at its chosen tau disagrees with the
   ANN's class, minus the same share for the SNN SSC started from, with its standard error
   ``SE`` over the paired samples. The layer runs as in the search (§6, the output
   mean-corrected to the baseline's), through the search's tail sessions.
3. A layer with ``L > z * SE`` loses decisions beyond the noise of the guard samples: that tau
   and every larger one are forbidden for it (a larger threshold only coarsens the layer).
4. SSC chooses again under the same budget without the forbidden taus; repeat until no
   changed layer is flagged. Every pair is measured once; each round forbids at least one
   candidate, so the loop ends.

Use a few thousand unlabeled inputs that are not the search samples (the SE of a loss is
about ``sqrt(p / N)``: at 4096 samples and 1 % of them changed, 0.16 point).

That per-layer loop (``mode="layer"``) did not fix the ResNet: every tau it forbids frees budget,
and SSC spends it on other layers, each below z SE alone (benchmarks/results/search.md). The
default, ``mode="model"``, checks what is deployed instead, and backs off the budget itself:

1. SSC chooses (any rule). Its Pareto frontier (§8) lists the other choices it could have made,
   each with less sensitivity and more energy than the next.
2. The chosen SNN is rebuilt (thresholds and biases refit, as after any choice) and run whole on
   the guard samples: its loss of agreement with the ANN's class, L, against the SNN SSC started
   from (paired, with its SE).
3. If ``L <= tol``, that is the choice. Otherwise the guard bisects the frontier, from the
   choice towards the SNN SSC started from (which loses nothing by definition), for the most
   compressed point with ``L <= tol``: at most ``checks`` rebuilds, and what it returns has
   been checked (or is the starting SNN). The bisection assumes that L grows with the
   compression along the frontier; between two checked points it is not measured.

Unlike the per-layer loop, a loss here is a measured loss of the SNN as it will be deployed,
and the remedy lowers the whole budget instead of moving it. ``tol`` is in the units of an
accuracy budget a user can reason about: how much agreement with the ANN the compression may
cost on inputs like the guard samples. Measured (benchmarks/results/search.md, 16384 guard
images, tol 0.5 point): the Fashion-MNIST ResNet-20's +SSC at T = 4 goes from -0.90 point of
top-1 (median of five draws of the search samples) to -0.40 at 0.71x the spikes of BS; the
VGG's choices lose under 0.2 point of agreement there and are kept as they are.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .. import ops
from ..errors import ConfigError
from ..report.data import data_input

__all__ = ["DEFAULT_GUARD_SAMPLES", "DEFAULT_GUARD_Z", "DEFAULT_GUARD_MODE", "DEFAULT_GUARD_TOL",
           "DEFAULT_GUARD_CHECKS", "GUARD_MODES", "AgreementProbe", "GuardRound", "GuardResult", "guarded_ssc",
           "masked", "ModelProbe", "BackoffStep", "BackoffResult", "backed_off_ssc"]

DEFAULT_GUARD_SAMPLES = 4096
DEFAULT_GUARD_Z = 2.0
GUARD_MODES = ("model", "layer")
DEFAULT_GUARD_MODE = "model"
DEFAULT_GUARD_TOL = 0.005      # mode "model": agreement the choice may lose, as a fraction (0.5 point)
DEFAULT_GUARD_CHECKS = 8       # mode "model": rebuilds at most


def _guard_dataset(ann, data, samples, batch_size):
    """The guard's inputs: the first ``samples`` of ``data`` (at least 2), for ``ann``'s input."""
    from ..report.data import load_dataset

    ds = load_dataset(data, data_input(ann)).limit(samples)
    if len(ds) < 2:
        raise ConfigError(f"the SSC guard needs at least 2 samples, {getattr(ds, 'source', 'its data')} has {len(ds)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    return ds


class AgreementProbe:
    """Each (layer, tau)'s loss of agreement with the ANN on guard data (step 2 above).

    ann, snn: ModelProto or path (the SNN SSC starts from). data: anything
    ``report.data.load_dataset`` reads (npz path, array, (x, labels), CalibrationSet); the first
    ``samples`` are used, labels ignored. Results are cached per pair. mean_correct: the changed
    layer's output is shifted to the starting SNN's mean per channel and batch, as
    ``search.measure`` does by default (False: the raw change).
    """

    def __init__(self, ann, snn, data, *, samples: int | None = DEFAULT_GUARD_SAMPLES, batch_size: int = 64,
                 threads: int | None = None, kernel: bool | None = None, progress: bool = False,
                 mean_correct: bool = True):
        from ..report.evaluate import load_onnx
        from .search import _SearchGraphs

        ann, snn = load_onnx(ann), load_onnx(snn)
        self.ds = _guard_dataset(ann, data, samples, batch_size)
        self.batch_size, self.progress, self.mean_correct = batch_size, progress, mean_correct
        kernel = ops.kernel_available() if kernel is None else kernel
        self.sg = _SearchGraphs(snn, threads, kernel)
        self.index = {nr.name: i for i, nr in enumerate(self.sg.neurons)}
        sess = ops.make_session(ann, kernel=False, threads=threads)
        a_in, a_out = data_input(ann), ann.graph.output[0].name
        self.ann_class = np.concatenate([sess.run([a_out], {a_in: x})[0].argmax(-1)
                                         for x, _ in self.ds.batches(batch_size)])
        self.base: np.ndarray | None = None          # per sample: the starting SNN agrees
        self._agree: dict[tuple[str, float], np.ndarray] = {}
        self.seconds = 0.0

    @property
    def samples(self) -> int:
        return len(self.ds)

    def _run(self, pairs: Sequence[tuple[str, float]]) -> None:
        from ..report.progress import progress_bar
        from .search import _mean_corrected

        t0 = time.perf_counter()
        sg, n = self.sg, len(self.ds)
        base = np.zeros(n, bool)
        agree = {p: np.zeros(n, bool) for p in pairs}
        batches = list(self.ds.batches(self.batch_size))
        pos = 0
        with progress_bar("SSC guard", len(batches), self.progress) as advance:
            for x, _ in batches:
                rows = slice(pos, pos + len(x))
                pos += len(x)
                want = self.ann_class[rows]
                env = dict(zip(sg.base_outputs, sg.base.run(sg.base_outputs, {sg.input: x})))
                env[sg.input] = x
                base[rows] = env[sg.logits].argmax(-1) == want
                for name, tau in pairs:
                    i = self.index[name]
                    nr = sg.neurons[i]
                    cell = sg.cell(env[nr.x].ndim, nr.T, nr.psi)
                    y, _ = cell.run(None, {"X": env[nr.x], "vth": (np.float32(tau) * nr.vth).astype(np.float32)})
                    feeds = {b: env[b] for b in sg.boundary[i]}
                    feeds[nr.y] = _mean_corrected(y, env[nr.y]) if self.mean_correct else y
                    logits = sg.tail(i, env).run([sg.logits], feeds)[0]
                    agree[name, tau][rows] = logits.argmax(-1) == want
                advance(1)
        self.base = base
        self._agree.update(agree)
        self.seconds += time.perf_counter() - t0

    def losses(self, pairs: Sequence[tuple[str, float]]) -> dict[tuple[str, float], tuple[float, float]]:
        """(layer, tau) -> (L, SE): loss of agreement with the ANN against the starting SNN, as
        a fraction of the samples, and its standard error over the paired samples."""
        unknown = sorted({p[0] for p in pairs} - set(self.index))
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown}; the SNN has {list(self.index)}")
        todo = [(n, float(t)) for n, t in dict.fromkeys(pairs) if (n, float(t)) not in self._agree]
        if todo or self.base is None:
            self._run(todo)
        out = {}
        n = len(self.ds)
        for name, tau in pairs:
            d = self.base.astype(np.float64) - self._agree[name, float(tau)]
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
                choose: Callable, *, z: float = DEFAULT_GUARD_Z, max_rounds: int | None = None,
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
    anything ``report.data.load_dataset`` reads; the first ``samples`` are used, labels ignored.
    """

    def __init__(self, ann, snn, data, *, samples: int | None = DEFAULT_GUARD_SAMPLES, batch_size: int = 256,
                 threads: int | None = None, kernel: bool | None = None):
        from ..report.evaluate import load_onnx

        ann, snn = load_onnx(ann), load_onnx(snn)
        self.ds = _guard_dataset(ann, data, samples, batch_size)
        self.batch_size, self.threads = batch_size, threads
        self.kernel = ops.kernel_available() if kernel is None else kernel
        self.seconds = 0.0
        self.ann_class = self._classes(ann, False)
        self.base = self.agrees(snn)

    @property
    def samples(self) -> int:
        return len(self.ds)

    def _classes(self, model, kernel: bool) -> np.ndarray:
        t0 = time.perf_counter()
        sess = ops.make_session(model, kernel=kernel, threads=self.threads)
        a_in, a_out = data_input(model), model.graph.output[0].name
        out = np.concatenate([sess.run([a_out], {a_in: x})[0].argmax(-1) for x, _ in self.ds.batches(self.batch_size)])
        self.seconds += time.perf_counter() - t0
        return out

    def agrees(self, snn) -> np.ndarray:
        """Per guard sample: does ``snn`` predict the ANN's class."""
        from ..report.evaluate import load_onnx

        return self._classes(load_onnx(snn), self.kernel) == self.ann_class

    def loss(self, snn) -> tuple[float, float]:
        """(L, SE): the share of guard samples ``snn`` agrees with the ANN on, less than the
        starting SNN does (a fraction), and its standard error over the paired samples."""
        d = self.base.astype(np.float64) - self.agrees(snn)
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
                   tol: float = DEFAULT_GUARD_TOL, checks: int = DEFAULT_GUARD_CHECKS,
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
