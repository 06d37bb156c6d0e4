"""The unit of work of the sensitivity tables (docs/method.md §6): one batch, one layer, some of
its candidates.

``run_layer`` turns layer ``i``'s input ``X_i`` (from the baseline run of the batch) into each
candidate's output with the one-node cell, applies the mean correction, runs the layer's tail
and scores the model's outputs against the ANN's with ``metric`` (the sensitivity of §6,
``evaluation.sensitivity``: the symmetric KL of class scores, the normalised error of any
other output). The in-process loop and the Ray
workers (``cluster``) call the same function on the same arrays, so both give the same
numbers; the caller adds them up in one fixed order.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from .graphs import SearchGraphs, channel_mean, mean_corrected

__all__ = ["Candidate", "Metric", "layer_inputs", "run_layer"]

#: (kind "psi"|"tau", column in its table, psi, theta = tau * vth float32 [C])
Candidate = tuple[str, int, int, np.ndarray]
#: ``metric(ANN outputs, SNN outputs) -> float64 [N]`` (lists in the model's output order), each
#: value >= 0; e.g. an ``evaluation.sensitivity.Sensitivity``
Metric = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], np.ndarray]


def layer_inputs(sg: SearchGraphs, i: int) -> list[str]:
    """The tensors of the baseline run that layer ``i``'s candidates read: its input, its
    baseline output (the mean correction's reference), its tail's boundary and the model outputs
    it does not reach."""
    nr = sg.neurons[i]
    names = [nr.x, nr.y] + [b for b in sg.boundary[i] if b not in (nr.x, nr.y)]
    return names + [o for o in sg.outputs if o not in sg.tail_outputs[i] and o not in names]


def run_layer(sg: SearchGraphs, i: int, env: Mapping[str, np.ndarray], ann_outputs: Sequence[np.ndarray],
              todo: Sequence[Candidate], correction: str, metric: Metric,
              timings: dict | None = None) -> list[tuple[np.ndarray, float]]:
    """Per candidate of ``todo``: (``metric`` per sample, float64 [N]; the layer's spikes summed
    over the batch). ``env`` holds at least :func:`layer_inputs`; correction: "output",
    "input" or "none" (§6)."""
    import time

    nr = sg.neurons[i]
    xi, ybase = env[nr.x], env[nr.y]
    feeds = {b: env[b] for b in sg.boundary[i]}
    out = []
    t_cell = t_tail = 0.0
    base_mean = channel_mean(ybase) if correction != "none" else None  # once per layer and batch
    for _, _, p, theta in todo:
        t = time.perf_counter()
        cell = sg.cell(xi.ndim, nr.T, p, nr.alpha)
        y, s = cell.run(None, {"X": xi, "vth": theta})
        if correction == "input":
            y, s = cell.run(None, {"X": mean_corrected(y, ybase, target=xi, base_mean=base_mean), "vth": theta})
        t_cell += time.perf_counter() - t
        t = time.perf_counter()
        if correction == "output":
            y = mean_corrected(y, ybase, base_mean=base_mean)
        feeds[nr.y] = y
        outs = sg.outputs_after(i, env, feeds)
        t_tail += time.perf_counter() - t
        out.append((np.asarray(metric(ann_outputs, outs), np.float64), float(s.sum())))
    if timings is not None:
        timings["neurons"] = timings.get("neurons", 0.0) + t_cell
        timings["tails"] = timings.get("tails", 0.0) + t_tail
    return out
