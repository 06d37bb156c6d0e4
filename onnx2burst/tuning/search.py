"""Per-layer sensitivity and energy tables, and the BSR / SSC searches (ALGORITHM.md §6-§8).

``measure(ann, snn, data)`` fills, for every BurstIF layer ``i`` and candidate ``k``
(psi in 1..psi_max, tau on a grid), the sensitivity ``S_i(k)`` (§6: only layer ``i``
changed, the others as in ``snn``) and the layer's own spikes per sample ``E_i(k)`` (§7).
``choose_bsr`` / ``choose_ssc`` then run the exact Pareto DP (§8) on those tables;
``search_bsr`` / ``search_ssc`` do both.

How it stays fast (one onnxruntime session per layer, never one per candidate):

1. One *baseline* run of the SNN per batch exposes every neuron's input ``X_i`` and every
   tensor that the layers after neuron ``i`` read from before it (the *boundary*).
2. A candidate of layer ``i`` changes only what neuron ``i`` computes from ``X_i``: tau only
   scales ``theta = tau*vth`` and psi changes the clip and (refit, §4) the threshold. So a
   one-node BurstIF session per ``(rank, psi)`` with ``tau = 1`` and ``vth = theta`` fed at
   run time computes neuron ``i`` for any candidate, bit for bit as the real node would
   (the kernel forms ``theta = tau*vth`` in float32, as we do).
3. A *tail* session per layer ``i`` (the nodes downstream of neuron ``i``, everything
   upstream fed from the baseline) turns the candidate's spikes into logits. Upstream layers
   are computed once per batch, not once per candidate.

ANN reference logits are computed once; batches stream; thresholds for every (layer, psi)
come from a provider called once per pair before any SNN run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import ops
from ..errors import ConfigError
from .energy import energy_model, layer_name
from .guard import (DEFAULT_GUARD_CHECKS, DEFAULT_GUARD_MODE, DEFAULT_GUARD_SAMPLES, DEFAULT_GUARD_TOL,
                    DEFAULT_GUARD_Z, GUARD_MODES)
from .pareto import InfeasibleBudgetError, pareto_select
from .sensitivity import symmetric_kl
from ..report.data import data_input

__all__ = [
    "DEFAULT_PSI_MAX", "DEFAULT_TAUS", "parse_grid", "VthProvider", "scaled_vth", "Table",
    "Measurement", "SearchChoice", "measure", "choose_bsr", "choose_ssc", "search_bsr",
    "search_ssc", "thresholds_from_converter", "rebuild", "tune", "TuneResult", "JointCheck", "joint_check",
]

DEFAULT_PSI_MAX = 8
DEFAULT_TAUS = tuple(1.0 + 0.5 * i for i in range(19))  # 1.0, 1.5, ..., 10.0
ENERGY_MODES = ("spikes", "synops")
MEAN_CORRECTIONS = ("input", "output", "none")

#: ``vth_for_psi(layer name, psi) -> vth [C] float32``: the layer's threshold refit for psi (§4).
VthProvider = Callable[[str, int], np.ndarray]


def parse_grid(spec: str) -> tuple[float, ...]:
    """``"1:10:0.5"`` (start:stop:step, stop included), ``"1,1.5,3"``, or a comma list mixing
    both (``"1:3:0.1,3.5:10:0.5"``) -> sorted unique values."""
    vals: list[float] = []
    try:
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if ":" in part:
                a, b, s = (float(v) for v in part.split(":"))
                if s <= 0 or b < a:
                    raise ValueError
                n = int(math.floor((b - a) / s + 1e-9)) + 1
                vals += [round(a + i * s, 10) for i in range(n)]
            else:
                vals.append(float(part))
    except ValueError:
        raise ConfigError(f"grid {spec!r}: expected start:stop:step (e.g. 1:10:0.5), a comma list, "
                          "or both (1:3:0.1,3.5:10:0.5)") from None
    if not vals or any(not v > 0 for v in vals):
        raise ConfigError(f"grid {spec!r}: values must be > 0")
    return tuple(sorted(set(vals)))


def scaled_vth(snn: onnx.ModelProto) -> VthProvider:
    """Fallback provider without ANN statistics: ``vth(k) = vth(psi) * psi / k``.

    Keeps the largest output ``psi*vth`` of the layer. An approximation of the refit of §4;
    prefer the converter's threshold fit where the ANN is at hand.
    """
    info = {n.name: n for n in _neurons(snn)}

    def vth_for_psi(name: str, psi: int) -> np.ndarray:
        n = info[name]
        return (n.vth * np.float32(n.psi) / np.float32(psi)).astype(np.float32)

    return vth_for_psi


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Table:
    """S and E of every layer for every candidate of one kind (psi or tau).

    ``S[i, k]``: mean symmetric KL with layer ``i`` at candidate ``k``; ``spikes[i, k]``: the
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
                "S": self.S.tolist(), "spikes": self.spikes.tolist(), "synops": self.synops.tolist(),
                "se": None if self.se is None else self.se.tolist()}


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

    def to_dict(self) -> dict:
        return {"samples": self.samples, "T": self.T, "baseline_S": self.baseline_S,
                "baseline_spikes": list(self.baseline_spikes), "timings": dict(self.timings),
                "psi": None if self.psi is None else self.psi.to_dict(),
                "tau": None if self.tau is None else self.tau.to_dict(), "notes": list(self.notes)}


@dataclass(frozen=True)
class SearchChoice:
    """The outcome of BSR or SSC: one value per layer, and the numbers behind it.

    ``choice`` maps layer name -> psi (BSR) or tau (SSC). ``frontier`` holds
    ``(energy, sensitivity)`` points of the final Pareto frontier whatever the problem,
    energy increasing and sensitivity decreasing;
    ``uniform`` the same point for every uniform configuration; ``chosen`` the choice's.
    """

    problem: str                 # "bsr" | "ssc"
    kind: str                    # "psi" | "tau"
    energy_mode: str
    choice: Mapping[str, float]
    budget: float
    budget_rule: str
    chosen: tuple[float, float]
    frontier: tuple[tuple[float, float], ...]
    uniform: Mapping[float, tuple[float, float]]
    seconds: float
    full_frontier: tuple[tuple[float, float], ...] = ()   # the same without the budget

    def to_dict(self) -> dict:
        return {"problem": self.problem, "kind": self.kind, "energy": self.energy_mode,
                "choice": dict(self.choice), "budget": self.budget, "budget_rule": self.budget_rule,
                "chosen": {"energy": self.chosen[0], "sensitivity": self.chosen[1]},
                "frontier": [{"energy": e, "sensitivity": s} for e, s in self.frontier],
                "uniform": {str(k): {"energy": e, "sensitivity": s} for k, (e, s) in self.uniform.items()},
                "full_frontier": [{"energy": e, "sensitivity": s} for e, s in self.full_frontier],
                "seconds": self.seconds}


# ----------------------------------------------------------------------------- graphs
@dataclass
class _Neuron:
    name: str
    x: str
    y: str
    spikes: str
    vth: np.ndarray
    T: int
    psi: int
    tau: float
    index: int             # position in graph.node


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _neurons(snn: onnx.ModelProto) -> list[_Neuron]:
    inits = {t.name: t for t in snn.graph.initializer}
    out = []
    for index, n in enumerate(snn.graph.node):
        if not (n.op_type == ops.OP_TYPE and n.domain == ops.DOMAIN):
            continue
        if n.input[1] not in inits:
            raise ConfigError(f"BurstIF {layer_name(n)}: vth {n.input[1]!r} is not an initializer")
        spikes = n.output[1] if len(n.output) > 1 and n.output[1] else ""
        out.append(_Neuron(layer_name(n), n.input[0], n.output[0], spikes,
                           numpy_helper.to_array(inits[n.input[1]]).astype(np.float32).reshape(-1),
                           int(_attr(n, "T")), int(_attr(n, "psi")), float(_attr(n, "tau", 1.0)),
                           index))
    if not out:
        raise ConfigError("the model has no BurstIF layer: pass the SNN made by `onnx2burst convert`")
    names = [n.name for n in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"BurstIF layer names are not unique: {names}")
    return out


def _session(model: onnx.ModelProto, threads, kernel, arena: bool = True):
    import onnxruntime as ort

    so = ops.session_options(kernel=kernel, threads=threads)
    # many sessions take turns: idle pools must not spin on the cores the next one needs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # one arena per tail session would keep each one's peak memory for the whole search
    so.enable_cpu_mem_arena = arena
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class _SearchGraphs:
    """The baseline session, one tail session per neuron, one neuron session per (rank, psi)."""

    def __init__(self, snn: onnx.ModelProto, threads, kernel):
        self.snn = snn
        self.threads, self.kernel = threads, kernel
        self.neurons = _neurons(snn)
        g = snn.graph
        self.input = data_input(snn)
        self.logits = g.output[0].name
        missing = [nr.name for nr in self.neurons if not nr.spikes]
        if missing:
            raise ConfigError(f"BurstIF layer(s) {missing} declare no spikes output")
        nodes = list(g.node)
        inits = {t.name for t in g.initializer}
        self.tail_nodes: list[list[onnx.NodeProto]] = []
        self.boundary: list[list[str]] = []   # tensors from before neuron i that its tail reads
        for nr in self.neurons:
            reached, tail = {nr.y}, []
            for n in nodes[nr.index + 1:]:
                if any(i in reached for i in n.input):
                    tail.append(n)
                    reached.update(o for o in n.output if o)
            if self.logits not in reached:
                raise ConfigError(f"the output {self.logits!r} does not depend on neuron {nr.name}")
            produced = {o for n in tail for o in n.output}
            b = []
            for n in tail:
                for i in n.input:
                    if i and i not in produced and i not in inits and i != nr.y and i not in b:
                        b.append(i)
                if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
                    raise ConfigError(f"node {n.name or n.op_type} after {nr.name} has a subgraph; not supported by the search")
            self.tail_nodes.append(tail)
            self.boundary.append(b)
        base = onnx.ModelProto()
        base.CopyFrom(snn)
        have = {o.name for o in base.graph.output}
        self.base_outputs = [self.logits]
        want = [nr.spikes for nr in self.neurons] + [nr.x for nr in self.neurons] + \
               [nr.y for nr in self.neurons] + [t for b in self.boundary for t in b]
        for t in want:
            if t and t != self.input and t not in self.base_outputs:
                self.base_outputs.append(t)
                if t not in have:
                    base.graph.output.append(helper.make_empty_tensor_value_info(t))
        self.base = _session(base, threads, kernel)
        self._tails: dict[int, object] = {}
        self._cells: dict[tuple[int, int, int], object] = {}

    def tail(self, i: int, env: Mapping[str, np.ndarray]):
        s = self._tails.get(i)
        if s is None:
            nr = self.neurons[i]
            g = self.snn.graph
            used = {x for n in self.tail_nodes[i] for x in n.input}
            inputs = [helper.make_tensor_value_info(nr.y, TensorProto.FLOAT, None)]
            for b in self.boundary[i]:
                inputs.append(helper.make_tensor_value_info(
                    b, helper.np_dtype_to_tensor_dtype(env[b].dtype), None))
            graph = helper.make_graph(self.tail_nodes[i], f"tail_{i}", inputs, [g.output[0]],
                                      [t for t in g.initializer if t.name in used])
            m = helper.make_model(graph, opset_imports=list(self.snn.opset_import),
                                  ir_version=self.snn.ir_version)
            m.functions.extend(self.snn.functions)
            s = self._tails[i] = _session(m, self.threads, self.kernel, arena=False)
        return s

    def cell(self, rank: int, T: int, psi: int):
        key = (rank, T, psi)
        s = self._cells.get(key)
        if s is None:
            dims = ["TN"] + [f"d{j}" for j in range(1, rank)]
            vi = helper.make_tensor_value_info
            node = ops.make_node("X", "vth", "Y", T=T, psi=psi, tau=1.0, spikes="S", name=f"cell_psi{psi}")
            g = helper.make_graph([node], "cell", [vi("X", TensorProto.FLOAT, dims), vi("vth", TensorProto.FLOAT, ["C"])],
                                  [vi("Y", TensorProto.FLOAT, dims), vi("S", TensorProto.FLOAT, ["N"])])
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", max(ops.default_opset(self.snn), ops.MIN_OPSET))],
                                  ir_version=self.snn.ir_version)
            ops.attach_function(m)
            s = self._cells[key] = _session(m, self.threads, self.kernel, arena=False)
        return s




# ----------------------------------------------------------------------------- measuring
def _mean_corrected(y: np.ndarray, base: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """``target`` (default ``y``) minus, per channel (axis 1), the difference of ``y``'s and
    ``base``'s means over every other axis: the step of §5 bias calibration. Applied to ``y``
    it gives the layer's output the baseline's mean; applied to the layer's input it is the
    bias change in front of the neuron."""
    axes = tuple(a for a in range(y.ndim) if a != 1)
    shift = y.mean(axis=axes, keepdims=True, dtype=np.float64) - base.mean(axis=axes, keepdims=True, dtype=np.float64)
    return ((y if target is None else target) - shift.astype(np.float32)).astype(np.float32, copy=False)


def measure(ann, snn, data, *, psis: Sequence[int] | None = tuple(range(1, DEFAULT_PSI_MAX + 1)),
            taus: Sequence[float] | None = DEFAULT_TAUS, vth_for_psi: VthProvider | None = None,
            samples: int | None = 256, batch_size: int = 32, threads: int | None = None,
            kernel: bool | None = None, progress: bool = False,
            layers: Sequence[str] | None = None, mean_correct: bool | str = "output") -> Measurement:
    """Sensitivity and spikes of every layer at every psi and tau candidate (§6-§7).

    ann, snn: ModelProto or path; the SNN as converted (its psi/tau are the defaults). data:
    npz path, array, (x, labels) or a Dataset; the first ``samples`` are used. psis / taus:
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
      again, so its spikes include those the correction brings back. The spike estimate is
      closer to the rebuilt model's: on the Fashion-MNIST VGG at T = 4 (SSC, 512 samples, held
      out budget) 0.848 predicted vs 0.854 rebuilt, where "output" predicts 0.840 vs 0.852.
      But it rates large taus as cheaper, and the additive sum of S is then further from what
      the choice costs: on the ResNet-20 at T = 4 (same setting), SSC gives 0.65x spikes for
      -1.11 points top-1, where "output" gives 0.70x for -0.42. Hence not the default.
    - ``"none"`` (also ``False``): the raw change.
    """
    from ..report.data import load_dataset
    from ..report.evaluate import load_onnx
    from ..report.progress import progress_bar

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ann, snn = load_onnx(ann), load_onnx(snn)
    ds = load_dataset(data, data_input(ann)).limit(samples)
    if not len(ds):
        raise ConfigError("no samples to measure sensitivity on")
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

    sg = _SearchGraphs(snn, threads, kernel)
    neurons = sg.neurons
    if layers is not None:
        unknown = sorted(set(layers) - {n.name for n in neurons})
        if unknown:
            raise ConfigError(f"unknown layer(s) {unknown}; the SNN has {[n.name for n in neurons]}")
    active = [i for i, n in enumerate(neurons) if layers is None or n.name in layers]
    em = energy_model(snn)
    fanout = {l.name: l.fanout for l in em.layers}
    timings["prepare"] = time.perf_counter() - t0

    # ANN reference logits, once
    t = time.perf_counter()
    a_sess = ops.make_session(ann, kernel=False, threads=threads)
    a_in, a_out = data_input(ann), ann.graph.output[0].name
    ann_logits = [a_sess.run([a_out], {a_in: x})[0] for x, _ in ds.batches(batch_size)]
    del a_sess
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
    pos = 0
    t_base = t_cell = t_tail = t_kl = 0.0
    n_evals = sum(len(v) for v in plan.values())
    batches = list(ds.batches(batch_size))
    with progress_bar("sensitivity", len(batches) * (1 + n_evals), progress) as advance:
        for (x, _), a_logits in zip(batches, ann_logits):
            t = time.perf_counter()
            env = dict(zip(sg.base_outputs, sg.base.run(sg.base_outputs, {sg.input: x})))
            env[sg.input] = x
            t_base += time.perf_counter() - t
            t = time.perf_counter()
            base_n = symmetric_kl(a_logits, env[sg.logits])
            rows = slice(pos, pos + len(base_n))
            pos += len(base_n)
            base_per[rows] = base_n
            base_spk += [float(env[nr.spikes].sum()) for nr in neurons]
            t_kl += time.perf_counter() - t
            advance(1)
            for i in active:
                nr = neurons[i]
                xi = env[nr.x]
                tail = sg.tail(i, env) if plan[i] else None
                feeds = {b: env[b] for b in sg.boundary[i]}
                for kind, j, p, theta in plan[i]:
                    t = time.perf_counter()
                    cell = sg.cell(xi.ndim, nr.T, p)
                    y, s = cell.run(None, {"X": xi, "vth": theta})
                    if correction == "input":
                        y, s = cell.run(None, {"X": _mean_corrected(y, env[nr.y], target=xi), "vth": theta})
                    t_cell += time.perf_counter() - t
                    t = time.perf_counter()
                    if correction == "output":
                        y = _mean_corrected(y, env[nr.y])
                    feeds[nr.y] = y
                    lg = tail.run([sg.logits], feeds)[0]
                    t_tail += time.perf_counter() - t
                    t = time.perf_counter()
                    per[kind][i, j, rows] = symmetric_kl(a_logits, lg)
                    spk[kind][i, j] += float(s.sum())
                    t_kl += time.perf_counter() - t
                    advance(1, description=f"sensitivity {nr.name} {kind}")
    timings.update(baseline=t_base, neurons=t_cell, tails=t_tail, kl=t_kl)
    base_S = float(base_per.mean())
    base_spikes = base_spk / n

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
        fo = np.array([fanout[nr.name] for nr in neurons])
        keep = np.array(active, dtype=int)
        return Table(kind, tuple(neurons[i].name for i in keep), tuple(cands),
                     tuple(default_of(neurons[i]) for i in keep), S[keep], E[keep],
                     E[keep] * fo[keep, None], tuple(float(f) for f in fo[keep]), se[keep], per[kind][keep])

    timings["total"] = time.perf_counter() - t0
    return Measurement(
        psi=table("psi", psis, lambda nr: nr.psi), tau=table("tau", taus, lambda nr: nr.tau),
        samples=n, T=neurons[0].T, baseline_S=base_S,
        baseline_spikes=tuple(float(v) for v in base_spikes), timings=timings, notes=em.notes)


# ----------------------------------------------------------------------------- choosing
def _uniform_points(table: Table, E: np.ndarray):
    return {c: (float(E[:, j].sum()), float(table.S[:, j].sum())) for j, c in enumerate(table.candidates)}


def choose_bsr(table: Table, *, psi_target: int | None = None, ratio: float = 1.0,
               energy: str = "spikes") -> SearchChoice:
    """BSR (§8): psi per layer minimising sum S with sum E <= ratio * sum_i E_i(psi_target).

    psi_target defaults to the SNN's psi (which must then be uniform).
    """
    if table.kind != "psi":
        raise ConfigError(f"BSR needs the psi table, got {table.kind}")
    if not ratio > 0:
        raise ConfigError(f"--ratio must be > 0, got {ratio}")
    t = time.perf_counter()
    if psi_target is None:
        if len(set(table.defaults)) != 1:
            raise ConfigError(f"the SNN's psi differs between layers {sorted(set(table.defaults))}; "
                              "give --psi-target")
        psi_target = table.defaults[0]
    E = table.energy(energy)
    j = table.column(psi_target)
    budget = ratio * float(E[:, j].sum())
    r = pareto_select(E, table.S, budget, [list(table.candidates)] * len(table.layers))
    full = pareto_select(E, table.S, float(E.max(axis=1).sum())).frontier
    return SearchChoice(
        "bsr", "psi", energy, dict(zip(table.layers, (int(c) for c in r.choices))), budget,
        f"{ratio:g} * sum_i E_i(psi={psi_target})", (r.cost, r.profit), r.frontier,
        _uniform_points(table, E), time.perf_counter() - t, full)


def held_out_r(table: Table, *, r: float = 1.0, energy: str = "spikes", folds: int = 4,
               reference_tau: float = 1.0, steps: int = 14) -> float:
    """The SSC budget with the selection bias taken out (§8): the largest r_eff <= r such that
    the choice made at r_eff on the samples outside each of ``folds`` folds keeps, on that
    fold's own samples, sum S <= r * sum S(tau=1) -- on average over the folds.

    Choosing the least-energy taus on the same samples that measure S favours the candidates
    whose S came out low by chance, so the budget is met in-sample and spent out of it; with
    many layers and a fine grid the choice compresses past what r allows. Needs
    ``table.kl`` (the per-sample KL :func:`measure` records). Returns r when the budget holds
    out of sample already; at worst the least sensitive configuration's r.
    """
    if table.kl is None:
        raise ConfigError("a held-out SSC budget needs the per-sample KL (measure records it)")
    n = table.kl.shape[-1]
    if folds < 2 or n < 2 * folds:
        raise ConfigError(f"--ssc-folds must be >= 2 with at least 2 samples per fold; got {folds} folds "
                          f"for {n} samples")
    E = table.energy(energy)
    j1 = table.column(reference_tau)
    fold = np.arange(n) % folds
    rows = np.arange(len(table.layers))
    parts = [(table.kl[:, :, fold != f].mean(-1), table.kl[:, :, fold == f].mean(-1)) for f in range(folds)]
    # below this r some fold (or the whole table) has no feasible choice
    least = max(float(S_.min(axis=1).sum() / S_[:, j1].sum()) for S_ in [table.S] + [p[0] for p in parts])
    least *= 1 + 1e-12

    def excess(r_eff: float) -> float:
        total = 0.0
        for S_in, S_out in parts:
            k = pareto_select(S_in, E, r_eff * float(S_in[:, j1].sum())).indices
            total += float(S_out[rows, list(k)].sum() - r * S_out[:, j1].sum())
        return total

    if r <= least or excess(r) <= 0:
        return r
    lo, hi = least, r
    if excess(lo) > 0:
        return lo
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) <= 0 else (lo, mid)
    return lo


def choose_ssc(table: Table, *, r: float = 1.0, energy: str = "spikes",
               reference_tau: float = 1.0, z: float = 0.0, folds: int = 0,
               budget: float | None = None) -> SearchChoice:
    """SSC (§8): tau per layer minimising sum E with sum S <= r * sum_i S_i(tau=1).

    budget: this sensitivity budget instead of r's (the decision guard's back-off, a point of
    the frontier; ``tuning.guard``).

    z > 0 counts each candidate at S + z * SE (``table.se``: the standard error of its
    per-sample difference to the baseline), so that a tau whose gain is within the noise of
    the search samples does not spend the budget. folds >= 2 instead lowers the budget to the
    r_eff that holds on held-out samples (:func:`held_out_r`). z = 0 and folds = 0 are the
    paper's rule.

    (After BSR the budget is still that of the SNN SSC starts from. Budgeting against the
    uniform-psi SNN's sensitivity instead, to spend what BSR saved, was measured too loose:
    ResNet-20 T=4 BSR+SSC 87.87 % at 0.37x spikes against BS 92.30 %.)
    """
    if table.kind != "tau":
        raise ConfigError(f"SSC needs the tau table, got {table.kind}")
    if not r > 0:
        raise ConfigError(f"r must be > 0, got {r}")
    if z < 0:
        raise ConfigError(f"z must be >= 0, got {z}")
    if folds and z:
        raise ConfigError("choose one of the noise margin (z) and the held-out budget (folds)")
    t = time.perf_counter()
    E = table.energy(energy)
    j = table.column(reference_tau)
    S = table.sensitivity(z)
    rule = f"{r:g} * sum_i S_i(tau={reference_tau:g})"
    r_eff = r
    if folds and budget is None:
        r_eff = held_out_r(table, r=r, energy=energy, folds=folds, reference_tau=reference_tau)
        rule = f"{r_eff:.6g} * sum_i S_i(tau={reference_tau:g}) (r = {r:g}, held out over {folds} folds)"
    if budget is None:
        budget = r_eff * float(S[:, j].sum())
    else:
        rule = f"{budget:.6g}, a point of the frontier of {rule}"
    if z:
        rule += f", candidates at S + {z:g} SE"
    res = pareto_select(S, E, budget, [list(table.candidates)] * len(table.layers))
    full = pareto_select(S, E, float(S.max(axis=1).sum())).frontier
    return SearchChoice(
        "ssc", "tau", energy, dict(zip(table.layers, (float(c) for c in res.choices))), budget,
        rule, (res.profit, res.cost),
        tuple((e, s) for s, e in reversed(res.frontier)), _uniform_points(table, E), time.perf_counter() - t,
        tuple((e, s) for s, e in reversed(full)))


def search_bsr(ann, snn, data, *, psi_max: int = DEFAULT_PSI_MAX, psi_target: int | None = None,
               ratio: float = 1.0, energy: str = "spikes", vth_for_psi: VthProvider | None = None,
               **measure_kw) -> tuple[SearchChoice, Measurement]:
    """Measure the psi table (1..psi_max) and choose psi per layer by BSR.

    Returns (choice, measurement); ``choice.choice`` maps layer name -> psi. Afterwards the
    caller refits thresholds for the new psi and re-runs bias calibration (§8).
    """
    m = measure(ann, snn, data, psis=range(1, psi_max + 1), taus=None, vth_for_psi=vth_for_psi, **measure_kw)
    return choose_bsr(m.psi, psi_target=psi_target, ratio=ratio, energy=energy), m


def search_ssc(ann, snn, data, *, taus: Sequence[float] = DEFAULT_TAUS, r: float = 1.0,
               energy: str = "spikes", **measure_kw) -> tuple[SearchChoice, Measurement]:
    """Measure the tau table and choose tau per layer by SSC.

    Returns (choice, measurement); ``choice.choice`` maps layer name -> tau. Afterwards the
    caller sets the taus and re-runs bias calibration (§8).
    """
    if not any(math.isclose(t, 1.0) for t in taus):
        raise ConfigError(f"the tau candidates must include 1.0 (the SSC budget is r * sum S_i(1)), got {list(taus)}")
    m = measure(ann, snn, data, psis=None, taus=taus, **measure_kw)
    return choose_ssc(m.tau, r=r, energy=energy), m


# ----------------------------------------------------------------------------- the pipeline
def thresholds_from_converter(conv, data, psis: Sequence[int], *, stats=None, progress=None) -> VthProvider:
    """The §4 refit of every neuron for every psi in ``psis``, in one ANN pass, as a provider.

    conv: an ``onnx2burst.convert.Converter``; data: its ``CalibrationSet`` (the data the SNN's
    own thresholds were fitted on). Each neuron keeps its configured tau; its own psi (the
    baseline, never asked for by :func:`measure`) is fitted only on demand.
    """
    base = conv.settings()
    # every neuron needs a non-empty list; its own psi only where it has no other candidate
    settings = {name: [(int(p), t) for p in psis if int(p) != cur] or [(cur, t)] for name, (cur, t) in base.items()}
    fits = conv.fit_thresholds(data, stats, settings, progress=progress)

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
    guard: object | None = None                  # tuning.guard.GuardResult when SSC ran guarded
    guard_probe: object | None = None            # its AgreementProbe (measured pairs cached), for sweep_r

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
    """The rebuilt SNN's S on the samples ``m`` was measured on, next to what the tables predict."""
    from ..report.evaluate import evaluate

    tb = m.psi if choice.kind == "psi" else m.tau
    delta = sum(float(tb.S[i, tb.column(choice.choice[name])]) - m.baseline_S for i, name in enumerate(tb.layers))
    predicted = m.baseline_S + delta
    ev = evaluate(ann, model, data, limit=m.samples, threads=threads, kernel=kernel)
    return JointCheck(m.baseline_S, float(predicted), float(ev.sym_kl))


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


def tune(conv, data, *, bsr: bool = True, ssc: bool = True, snn: onnx.ModelProto | None = None,
         psi_max: int = DEFAULT_PSI_MAX, psi_target: int | None = None, ratio: float = 1.0,
         taus: Sequence[float] = DEFAULT_TAUS, r: float = 1.0, energy: str = "spikes",
         samples: int | None = 256, batch_size: int | None = 32, threads: int | None = None,
         kernel: bool | None = None, progress=None, show_progress: bool = False,
         ssc_z: float = 0.0, ssc_folds: int = 0, guard=None,
         guard_samples: int | None = DEFAULT_GUARD_SAMPLES, guard_z: float = DEFAULT_GUARD_Z,
         guard_mode: str = DEFAULT_GUARD_MODE, guard_tol: float = DEFAULT_GUARD_TOL,
         guard_checks: int = DEFAULT_GUARD_CHECKS) -> TuneResult:
    """BSR then SSC on a conversion, as ``onnx2burst convert --bsr --ssc`` runs them (§8).

    ssc_z: SSC counts each candidate at S + ssc_z * SE; ssc_folds >= 2: SSC's budget is lowered
    to what holds on held-out folds of the search samples (see :func:`choose_ssc`); 0 and 0
    are the paper's rule. guard: data (unlabeled is enough, not the search samples) for SSC's
    decision guard (``tuning.guard``; None: no guard, the paper's rule), on its first
    ``guard_samples``. guard_mode "model": SSC's choice is rebuilt and, if it loses more than
    ``guard_tol`` (a fraction) of agreement with the ANN there, backed off along its frontier
    (at most ``guard_checks`` rebuilds); "layer": a changed layer whose tau alone lowers the
    agreement by more than ``guard_z`` standard errors gets that tau forbidden, and SSC
    chooses again.

    conv: an ``onnx2burst.convert.Converter``; data: its ``CalibrationSet`` (the first
    ``samples`` of it measure the sensitivities; all of it fits thresholds and biases).
    snn: the SNN ``conv`` makes with its config (converted here when None).

    1. BSR: psi table on ``snn`` (thresholds refit per psi candidate), choose psi per layer,
       then refit thresholds for the chosen psi and recalibrate the biases;
    2. SSC: tau table on that SNN, choose tau per layer, recalibrate again.
    """
    from ..calibration.progress import NullProgress

    progress = progress or NullProgress()
    if not (bsr or ssc):
        raise ConfigError("tune: nothing to do (neither BSR nor SSC)")
    if ssc and not any(math.isclose(t_, 1.0) for t_ in taus):
        raise ConfigError(f"the tau candidates must include 1.0 (the SSC budget), got {list(taus)}")
    if guard is not None and guard_mode not in GUARD_MODES:
        raise ConfigError(f"guard mode must be one of {list(GUARD_MODES)}, got {guard_mode!r}")
    if guard is not None and guard_mode == "model" and not (guard_tol >= 0 and guard_checks >= 1):
        raise ConfigError(f"the guard needs a tolerance >= 0 and at least 1 check, got {guard_tol} and {guard_checks}")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    batch_size = batch_size or 32  # measured fastest per sample for the tails (16-64 alike)
    threads = threads if threads is not None else conv.config.calibration.threads
    kw = dict(samples=samples, batch_size=batch_size, threads=threads, kernel=kernel, progress=show_progress)
    stats = conv.activation_stats(data, progress)
    if snn is None:
        t = time.perf_counter()
        snn = rebuild(conv, data, stats, conv.settings(), progress=progress)
        timings["convert"] = time.perf_counter() - t
    settings = conv.settings()
    ann = conv.source
    out: dict[str, object] = {"bsr": None, "ssc": None}
    guarded = probe = None
    measurements: dict[str, Measurement] = {}
    ssc_start = after_bsr = None
    checks: dict[str, JointCheck] = {}
    if bsr:
        t = time.perf_counter()
        psis = list(range(1, psi_max + 1))
        provider = thresholds_from_converter(conv, data, psis, stats=stats, progress=progress)
        timings["bsr thresholds"] = time.perf_counter() - t
        m = measure(ann, snn, data, psis=psis, taus=None, vth_for_psi=provider, **kw)
        measurements["bsr"] = m
        c = choose_bsr(m.psi, psi_target=psi_target, ratio=ratio, energy=energy)
        out["bsr"] = c
        timings["bsr measure"] = m.timings["total"]
        old = {n.name: n for n in _neurons(snn)}
        settings = {k: (int(c.choice.get(k, p)), t_) for k, (p, t_) in settings.items()}
        # the thresholds for the chosen psi were fitted for the table already (or are the SNN's)
        vth = {k: old[k].vth if p == old[k].psi else provider(k, p) for k, (p, _) in settings.items()}
        t = time.perf_counter()
        snn = after_bsr = rebuild(conv, data, stats, settings, thresholds=vth, progress=progress)
        timings["bsr rebuild"] = time.perf_counter() - t
        t = time.perf_counter()
        checks["bsr"] = joint_check(ann, snn, data, c, m, threads=threads, kernel=kernel)
        timings["bsr check"] = time.perf_counter() - t
    if ssc:
        m = measure(ann, snn, data, psis=None, taus=taus, **kw)
        measurements["ssc"] = m
        ssc_start = dict(settings)
        timings["ssc measure"] = m.timings["total"]

        def choose(table, budget=None):
            return choose_ssc(table, r=r, energy=energy, z=ssc_z, folds=ssc_folds, budget=budget)

        built: dict[tuple, onnx.ModelProto] = {}   # the guard's rebuilt SNNs, by settings

        def settings_of(choice):
            return {k: (p, float(choice.get(k, t_))) for k, (p, t_) in ssc_start.items()}

        def build(st):
            key = tuple(sorted(st.items()))
            if key not in built:
                built[key] = rebuild(conv, data, stats, st, progress=progress)
            return built[key]

        if guard is not None and guard_mode == "model":
            from .guard import ModelProbe, backed_off_ssc

            t = time.perf_counter()
            mprobe = ModelProbe(ann, snn, guard, samples=guard_samples, threads=threads, kernel=kernel)
            guarded = backed_off_ssc(m.tau, choose, lambda ch: mprobe.loss(build(settings_of(ch))),
                                     tol=guard_tol, checks=guard_checks, samples=mprobe.samples)
            c = guarded.choice
            timings["ssc guard"] = time.perf_counter() - t
        elif guard is not None:
            from .guard import AgreementProbe, guarded_ssc

            t = time.perf_counter()
            probe = AgreementProbe(ann, snn, guard, samples=guard_samples, batch_size=64, threads=threads,
                                   kernel=kernel, progress=show_progress)
            guarded = guarded_ssc(m.tau, probe.losses, choose, z=guard_z, samples=probe.samples)
            c = guarded.choice
            timings["ssc guard"] = time.perf_counter() - t
        else:
            c = choose(m.tau)
        out["ssc"] = c
        settings = settings_of(c.choice)
        t = time.perf_counter()
        snn = build(settings)
        timings["ssc rebuild"] = time.perf_counter() - t
        t = time.perf_counter()
        checks["ssc"] = joint_check(ann, snn, data, c, m, threads=threads, kernel=kernel)
        timings["ssc check"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    res = TuneResult(snn, settings, out["bsr"], out["ssc"], measurements, timings, ssc_start, after_bsr, checks,
                     guarded, probe)
    import json

    p = snn.metadata_props.add()
    p.key, p.value = "onnx2burst.search", json.dumps(
        {"settings": res.to_dict()["settings"],
         "bsr": None if res.bsr is None else {"budget": res.bsr.budget, "rule": res.bsr.budget_rule, "energy": energy},
         "ssc": None if res.ssc is None else {"budget": res.ssc.budget, "rule": res.ssc.budget_rule, "energy": energy,
                                              "guard": None if guarded is None else guarded.meta()}})
    return res


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


def sweep_r(conv, data, res: TuneResult, rs: Sequence[float], eval_data, *, energy: str = "spikes",
            threads: int | None = None, progress=None, z: float = 0.0,
            folds: int = 0) -> tuple[SweepPoint, list[SweepPoint]]:
    """SSC at each budget ``r`` (§8) from the tau table ``tune`` measured: choose, rebuild
    (biases recalibrated), evaluate on ``eval_data`` -- the accuracy/spikes trade-off to pick from.
    When ``tune`` ran SSC with the per-layer guard (mode "layer"), every r is guarded too (with
    the pairs measured once); the whole-model guard (mode "model") backs off the chosen r only,
    and the sweep shows each r's own choice.

    Returns (the SNN SSC started from, as a point with r = 0; one point per r).
    """
    from ..report.evaluate import evaluate

    if res.ssc_start is None or "ssc" not in res.measurements:
        raise ConfigError("an r sweep needs the SSC table: run the search with SSC")
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
        ev = evaluate(conv.source, model, eval_data, threads=threads)
        e = ev.energy
        out.append(SweepPoint(0.0 if r is None else r, {k: t for k, (_, t) in settings.items()},
                              None if ev.snn.top1 is None else float(ev.snn.top1), float(ev.agreement),
                              float(e.spikes), float(e.synops), e.ratio, feasible, float(ev.sym_kl)))
    return out[0], out[1:]
