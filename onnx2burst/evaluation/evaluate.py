"""``evaluate``: an ANN against its SNN on labelled (or unlabelled) data (docs/method.md §6-§7)."""
from __future__ import annotations

import time

import numpy as np
import onnx

from .. import ops
from ..data import load_data
from ..progress import Progress, progress_or_null
from ..snn import read_snn
from .energy import ann_macs, energy_model, with_spike_outputs
from .metrics import KLMeter
from .results import EvalResult, ModelStats


def load_onnx(model) -> onnx.ModelProto:
    """A ModelProto from a ModelProto or a path (``io.load_model``: external data checked)."""
    if isinstance(model, onnx.ModelProto):
        return model
    from ..io import load_model

    return load_model(model)


def _timed_runs(sess, batches, out_names, advance):
    """Run every batch (an input dict) once after one untimed warm-up on the first; returns
    outputs, seconds."""
    outs, seconds = [], 0.0
    for i, feeds in enumerate(batches):
        if i == 0:
            sess.run(out_names, feeds)
        t0 = time.perf_counter()
        outs.append(sess.run(out_names, feeds))
        seconds += time.perf_counter() - t0
        advance(len(next(iter(feeds.values()))))
    return outs, seconds


def evaluate(ann, snn, data, *, batch_size: int = 256, threads: int | None = None,
             kernel: bool | None = None, limit: int | None = None, e_ac_pj: float = 0.9,
             e_mac_pj: float = 4.6, progress: Progress | None = None, max_memory=None) -> EvalResult:
    """Compare an ANN with its SNN on ``data`` (anything ``onnx2burst.data.load_data`` reads;
    the first ``limit`` samples, all when None).

    Returns top-1 of both (with labels), top-1 agreement, the mean symmetric KL, spikes per
    sample per layer, SynOps, the energy estimate against the ANN's MACs, and ms per sample.
    max_memory: ``ResourceLimitError`` before any session is made when the two models at
    this batch size (the SNN at T*batch) need more (``onnx2burst.limits``; None: the memory
    available).
    """
    from ..limits import MemoryEstimate, enforce, estimate

    ann, snn = load_onnx(ann), load_onnx(snn)
    T = read_snn(snn, require=False).T
    enforce(MemoryEstimate.combined({"ANN": estimate(ann, batch_size=batch_size),
                                     "SNN": estimate(snn, batch_size=batch_size, T=T)}),
            max_memory, f"evaluating (batch {batch_size}, T={T})")
    ds = load_data(data, ann, samples=limit, max_memory=max_memory)
    em = energy_model(snn)
    snn_run, spike_names = with_spike_outputs(snn)
    use_kernel = ops.kernel_available() if kernel is None else kernel
    a_sess = ops.make_session(ann, kernel=False, threads=threads)
    s_sess = ops.make_session(snn_run, kernel=use_kernel, threads=threads)
    a_out, s_out = ann.graph.output[0].name, snn.graph.output[0].name
    xs = list(ds.batches(batch_size))

    with progress_or_null(progress).stage("ANN", 2 * len(ds)) as st:
        a_res, a_sec = _timed_runs(a_sess, xs, [a_out], st.advance)
        st.advance(0, description="SNN")
        s_res, s_sec = _timed_runs(s_sess, xs, [s_out] + spike_names, st.advance)

    a_logits = np.concatenate([r[0] for r in a_res])
    s_logits = np.concatenate([r[0] for r in s_res])
    spikes = np.stack([np.concatenate([r[1 + j] for r in s_res]) for j in range(len(spike_names))])
    kl = KLMeter()
    kl.update(a_logits.reshape(len(ds), -1), s_logits.reshape(len(ds), -1))
    a_pred = a_logits.reshape(len(ds), -1).argmax(1)
    s_pred = s_logits.reshape(len(ds), -1).argmax(1)

    def top1(pred):
        return None if ds.labels is None else float((pred == ds.labels).mean())

    est = em.estimate(spikes.astype(np.float64).mean(axis=1), ann_macs=ann_macs(ann),
                      e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj)
    return EvalResult(
        samples=len(ds), T=T,
        ann=ModelStats(top1(a_pred), 1e3 * a_sec / len(ds)),
        snn=ModelStats(top1(s_pred), 1e3 * s_sec / len(ds)),
        agreement=float((a_pred == s_pred).mean()), sym_kl=kl.value, energy=est,
        kernel=bool(use_kernel), batch_size=batch_size, threads=threads, notes=em.notes, snn_pred=s_pred)
