"""Bias calibration (§5, "light" calibration of Li et al.), layer by layer.

For each neuron in topological order, with the corrections of the earlier ones in place:
``delta_c = mean_{N,H,W}(mean_T SNN output) - mean_{N,H,W}(ANN output)`` and the bias of
the layer feeding it (``SpikingNeuron.bias``: the Conv/Gemm, or the main-branch conv of a
residual sum) gets ``b_c -= delta_c`` (divided by a Gemm's beta). The ANN means come from
pass 1 of the threshold fit (``ActivationStats.mean``). The corrections end up in the bias
initializers: the calibrated model has no extra node.

Execution: every run is onnxruntime with the BurstIF kernel, batched, on the part of the
SNN graph needed for the neuron at hand (onnxruntime runs every node of a session
whatever outputs are requested, so the needed part is cut out of the graph). To keep the
cost linear in depth rather than quadratic, the spike maps of an articulation point (a
neuron output that is the only tensor the rest of the graph reads, e.g. a ResNet block
output) are kept as integer spike counts (exact: ``Y = count * tau * vth``), in memory
when they fit in ``cache_mb``, else in a temporary folder on disk (one ``.npy`` per batch,
removed at the end) when the disk has room; later layers start from there. Only when neither
holds does a layer recompute from the model input (quadratic in depth). The result is the
same with or without the cache, in memory or on disk.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..calibration.augment import add_channel_reduce, extract
from ..data import CalibrationSet
from ..progress import NullProgress
from ..calibration.runner import Runner
from ..calibration.stats import RunningMean
from ..graph import GraphIndex, default_opset
from ..graph.shapes import infer_shapes, tensor_info
from ..rewrite.rewriter import SNN, SpikingNeuron

__all__ = ["BiasCalibration", "calibrate_biases", "articulation_points"]


@dataclass
class BiasCalibration:
    """Result: ``model`` (a copy of the SNN with corrected biases), ``deltas`` (neuron ->
    the per-channel delta applied), ``skipped`` (neuron -> why it was not calibrated)."""

    model: onnx.ModelProto
    deltas: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def articulation_points(model: onnx.ModelProto, candidates: set[str]) -> set[str]:
    """Tensors of ``candidates`` that are the only tensor alive right after they are produced
    (in the graph's topological order): everything later depends on them alone."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    pos = {}
    last_use: dict[str, int] = {}
    for k, node in enumerate(g.node):
        for i in node.input:
            if i and i not in inits:
                last_use[i] = k
        for o in node.output:
            pos[o] = k
    end = len(g.node)
    for o in g.output:
        last_use[o.name] = end
    born = {i.name: -1 for i in g.input if i.name not in inits}
    born.update(pos)
    # sweep: alive after step k = born <= k < last_use
    events: dict[int, int] = {}
    for t, b in born.items():
        lu = last_use.get(t)
        if lu is None or lu <= b:
            continue
        events[b] = events.get(b, 0) + 1      # alive from after b
        events[lu] = events.get(lu, 0) - 1    # dead from lu on
    alive, count = {}, 0
    for k in range(-1, end):
        count += events.get(k, 0)
        alive[k] = count
    out = set()
    for t in candidates:
        k = pos.get(t)
        lu = last_use.get(t)
        if k is not None and lu is not None and lu > k and alive.get(k) == 1:
            out.add(t)
    return out


class _Cache:
    """Spike counts (uint8/uint16) of one neuron output for every calibration batch, in memory
    or, once :meth:`spill` moved them, as one ``.npy`` file per batch in ``folder``.

    The graph converts them: ``<y>__counts = Cast(Round(y / theta))`` when they are made,
    and ``y = Cast(counts) * theta`` when they are fed back, the same float32 product the
    BurstIF computes, so the feed equals the original output bit for bit."""

    def __init__(self, name: str, theta: np.ndarray, dtype):
        self.name, self.theta, self.dtype = name, theta, dtype
        self.counts_name = f"{name}__counts"
        self.batches: list[np.ndarray | Path] = []
        self.folder: Path | None = None
        self.nbytes = 0

    def add(self, counts: np.ndarray) -> None:
        self.nbytes += counts.nbytes
        self.batches.append(self._stored(len(self.batches), counts))

    def _stored(self, k: int, counts: np.ndarray) -> np.ndarray | Path:
        if self.folder is None:
            return counts
        path = self.folder / f"{k}.npy"
        np.save(path, counts)
        return path

    def spill(self, folder: Path) -> None:
        """Move the batches held in memory to ``folder`` and write every later one there."""
        folder.mkdir(parents=True, exist_ok=False)
        self.folder = folder
        self.batches = [self._stored(k, c) for k, c in enumerate(self.batches)]

    def feeds(self):
        for c in self.batches:
            yield {self.counts_name: np.load(c) if isinstance(c, Path) else c}

    def drop(self) -> None:
        self.batches = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _theta(idx: GraphIndex, n: SpikingNeuron) -> np.ndarray:
    vth = np.asarray(idx.const(n.vth), np.float32).reshape(-1)
    return (np.float32(n.tau) * vth).astype(np.float32)


def _theta_shape(theta: np.ndarray, rank: int | None) -> np.ndarray:
    return theta.reshape((1, -1) + (1,) * ((rank or 4) - 2))


def _segment(work: onnx.ModelProto, cache: "_Cache | None", outputs: list[str], ranks: dict) -> onnx.ModelProto:
    """The part of ``work`` computing ``outputs``, starting from the cached spike counts."""
    if cache is None:
        return extract(work, [], outputs, ranks)
    part = extract(work, [cache.name], outputs, ranks)
    g = part.graph
    for k, vi in enumerate(g.input):
        if vi.name == cache.name:
            r = ranks.get(cache.name)
            g.input[k].CopyFrom(helper.make_tensor_value_info(
                cache.counts_name, helper.np_dtype_to_tensor_dtype(np.dtype(cache.dtype)), None if r is None else [None] * r))
    th = f"{cache.name}__theta"
    g.initializer.append(numpy_helper.from_array(_theta_shape(cache.theta, ranks.get(cache.name)), th))
    g.node.insert(0, helper.make_node("Mul", [f"{cache.counts_name}__f", th], [cache.name], name=f"{cache.name}__decode"))
    g.node.insert(0, helper.make_node("Cast", [cache.counts_name], [f"{cache.counts_name}__f"], to=TensorProto.FLOAT,
                                      name=f"{cache.name}__cast"))
    return part


def calibrate_biases(snn: SNN, ann_means: dict[str, np.ndarray], data: CalibrationSet, *, batch_size: int = 64,
                     threads: int | None = None, kernel: bool | None = None, cache_mb: int = 512,
                     neurons: list[str] | None = None, progress=None, keep_arena: bool = True) -> BiasCalibration:
    """Run §5 on ``snn`` and return the calibrated copy (see the module docstring).

    ann_means: neuron -> the ANN's mean output along its bias axis (``ActivationStats.mean``).
    neurons: calibrate only these (default: all with a bias target), in topological order.
    keep_arena: the runs' memory arena is kept from one run of a layer to the next
    (``calibration.runner.Runner``); False when the memory budget has no room for it.
    """
    progress = progress or NullProgress()
    model = onnx.ModelProto()
    model.CopyFrom(snn.model)
    opset = default_opset(model)
    work = onnx.ModelProto()          # the same graph, plus reduction nodes; biases kept in step
    work.CopyFrom(model)
    widx = GraphIndex(work.graph)
    midx = GraphIndex(model.graph)
    info = tensor_info(infer_shapes(model))
    ranks = {k: (len(v[1]) if v[1] is not None else None) for k, v in info.items()}
    for n in snn.neurons:  # a BurstIF output has its input's shape (inference may not get through the function)
        if ranks.get(n.output) is None:
            ranks[n.output] = ranks.get(n.input)
    outputs = {n.output for n in snn.neurons}
    cuts = articulation_points(model, outputs)
    chosen = set(neurons) if neurons is not None else None
    result = BiasCalibration(model)
    cache: _Cache | None = None
    budget = int(float(cache_mb) * 2**20)
    nb = data.num_batches(batch_size)

    def batches():
        if cache is None:
            yield from data.batches(batch_size)
        else:
            yield from cache.feeds()

    todo = [n for n in snn.neurons if chosen is None or n.name in chosen]
    with tempfile.TemporaryDirectory(prefix="onnx2burst-bias-") as spill_root, \
            progress.stage("bias calibration (SNN)", len(todo) * nb) as st:
        for k, n in enumerate(snn.neurons):
            if n in todo:
                if n.bias is None:
                    result.skipped[n.name] = "no Conv/Gemm bias found in front of it"
                    st.advance(nb)
                elif n.name not in ann_means or ann_means[n.name] is None:
                    result.skipped[n.name] = "no ANN statistics"
                    st.advance(nb)
                else:
                    red = add_channel_reduce(work, widx, n.output, "ReduceMean", n.bias_axis, rank=ranks.get(n.output),
                                             opset=opset, tag="snn_mean")
                    part = _segment(work, cache, [red], ranks)
                    runner = Runner(part, threads=threads, kernel=kernel, keep_arena=keep_arena)
                    mean = RunningMean()
                    for j, feeds in enumerate(batches()):
                        nrows = next(iter(feeds.values())).shape[0]
                        mean.update(np.asarray(runner.run(feeds, [red], last=j == nb - 1)[0]).reshape(-1), nrows)
                        st.advance()
                    delta = mean.value - np.asarray(ann_means[n.name], np.float64).reshape(-1)
                    bias = np.asarray(midx.const(n.bias), np.float32)
                    if bias.size != delta.size:
                        result.skipped[n.name] = f"bias has {bias.size} values, the layer output {delta.size} channels"
                    else:
                        new = (bias.reshape(-1).astype(np.float64) - delta / n.bias_scale).astype(np.float32)
                        midx.set_const(n.bias, new.reshape(bias.shape))
                        widx.set_const(n.bias, new.reshape(bias.shape))
                        result.deltas[n.name] = delta
            # keep this neuron's spike maps when everything after it reads only them
            if n.output in cuts and budget > 0 and any(m in todo for m in snn.neurons[k + 1:]):
                new = _materialise(work, cache, n, widx, ranks, batches, nb, budget, threads, kernel,
                                   snn.T * len(data), Path(spill_root) / f"{k}", keep_arena)
                if new is not None:
                    if cache is not None:
                        cache.drop()
                    cache = new
    return result


def _disk_room(folder: Path) -> int:
    """Bytes the spill folder may take: the free space less a margin of 1 GiB."""
    try:
        return shutil.disk_usage(folder.parent).free - 2**30
    except OSError:
        return 0


def _materialise(work, cache, n: SpikingNeuron, widx, ranks, batches, nb: int, budget, threads, kernel,
                 total_rows, folder: Path, keep_arena: bool = True):
    """The spike counts of ``n.output`` for every batch, in memory when they fit ``budget``, else
    spilled to ``folder``; None when the disk has no room for them either."""
    if n.alpha is not None:  # signed neuron: -psi .. psi per step
        dtype = np.int8 if n.psi <= 127 else np.int16 if n.psi <= 32767 else np.int32
    else:
        dtype = np.uint8 if n.psi <= 255 else np.uint16
    new = _Cache(n.output, _theta(widx, n), dtype)
    part = _segment(work, cache, [n.output], ranks)
    g = part.graph
    th = f"{n.output}__inv_theta_src"
    safe = np.where(new.theta > 0, new.theta, np.float32(1)).astype(np.float32)
    g.initializer.append(numpy_helper.from_array(_theta_shape(safe, ranks.get(n.output)), th))
    g.node.extend([
        helper.make_node("Div", [n.output, th], [f"{n.output}__q"], name=f"{n.output}__q"),
        helper.make_node("Round", [f"{n.output}__q"], [f"{n.output}__r"], name=f"{n.output}__r"),
        helper.make_node("Cast", [f"{n.output}__r"], [new.counts_name], to=helper.np_dtype_to_tensor_dtype(
            np.dtype(new.dtype)), name=f"{n.output}__counts"),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(new.counts_name, helper.np_dtype_to_tensor_dtype(np.dtype(new.dtype)), None))
    runner = Runner(part, threads=threads, kernel=kernel, keep_arena=keep_arena)
    rows = 0
    for j, feeds in enumerate(batches()):
        c = runner.run(feeds, [new.counts_name], last=j == nb - 1)[0]
        new.add(c)
        rows += c.shape[0]
        projected = new.nbytes / rows * total_rows
        if new.folder is None and projected > budget:
            if projected > _disk_room(folder):
                new.drop()
                return None
            new.spill(folder)
    return new
