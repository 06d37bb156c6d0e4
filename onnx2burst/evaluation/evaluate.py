"""``evaluate``: an ANN against its SNN on labelled (or unlabelled) data (docs/method.md §6-§7)."""
from __future__ import annotations

import time

import numpy as np
import onnx

from .. import ops
from ..data import load_data
from ..errors import ConfigError, onnxruntime_errors
from ..interop.portable import fold_back
from ..io import file_sha256, model_sha256
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


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size a model's first data input is fixed at (None: symbolic)."""
    inits = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits:
            dims = i.type.tensor_type.shape.dim
            return int(dims[0].dim_value) if len(dims) and dims[0].dim_value > 0 else None
    return None


def _batches(ds, batch_size: int, fixed: int | None):
    """Input dicts of ``batch_size`` samples; for a model fixed at batch ``fixed``, batches of
    exactly that size, the last one padded with copies of its last sample. Yields (feeds, real)."""
    size = fixed or batch_size
    for feeds in ds.batches(size):
        real = len(next(iter(feeds.values())))
        if fixed and real < fixed:
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], fixed - real, axis=0)]) for k, v in feeds.items()}
        yield feeds, real


def _timed_runs(sess, batches, out_names, advance):
    """Run every batch (feeds, real samples) once after one untimed warm-up on the first;
    returns the outputs (the real samples' rows) and the seconds."""
    outs, seconds = [], 0.0
    for i, (feeds, real) in enumerate(batches):
        if i == 0:
            sess.run(out_names, feeds)
        t0 = time.perf_counter()
        res = sess.run(out_names, feeds)
        seconds += time.perf_counter() - t0
        outs.append([r[:real] for r in res])
        advance(real)
    return outs, seconds


def check_source(ann, ann_model: onnx.ModelProto, snn_meta, *, other_ok: bool = False) -> str | None:
    """The SNN's metadata names the sha256 of the model it was converted from: a different ANN
    is an error (``ConfigError``), or with ``other_ok`` a note (returned). None: it matches, or
    the SNN does not say."""
    want = snn_meta.get("source_sha256")
    if not want:
        return None
    have = {model_sha256(ann_model)}
    if not isinstance(ann, onnx.ModelProto):
        have.add(file_sha256(ann))
    if want in have:
        return None
    what = "ANN" if isinstance(ann, onnx.ModelProto) else str(ann)
    msg = (f"the SNN was converted from another model (sha256 {want[:12]}...), not from {what} "
           f"({sorted(have)[0][:12]}...)")
    if other_ok:
        return msg
    raise ConfigError(msg + "; pass --other-ann to compare them anyway")


def evaluate(ann, snn, data, *, batch_size: int = 256, threads: int | None = None,
             kernel: bool | None = None, limit: int | None = None, e_ac_pj: float = 0.9,
             e_mac_pj: float = 4.6, progress: Progress | None = None, max_memory=None,
             other_ann: bool = False) -> EvalResult:
    """Compare an ANN with its SNN on ``data`` (anything ``onnx2burst.data.load_data`` reads;
    the first ``limit`` samples, all when None).

    Returns top-1 of both (with labels), top-1 agreement, the mean symmetric KL, spikes per
    sample per layer, SynOps, the energy estimate against the ANN's MACs, and ms per sample
    (a portable file is folded back to its BurstIF nodes; spikes and energy are None for a
    file without BurstIF nodes and without the record of them).
    A model whose batch axis is fixed runs at that batch. max_memory: ``ResourceLimitError``
    before any session is made when the two models at this batch size (the SNN at T*batch)
    need more (``onnx2burst.limits``; None: the memory available). other_ann: compare even
    when the SNN's metadata says it was converted from another model (a note instead of an
    error).
    """
    from ..limits import MemoryEstimate, enforce, estimate

    ann_path = ann
    ann, snn = load_onnx(ann), fold_back(load_onnx(snn))
    view = read_snn(snn, require=False)
    if not view.neurons and not view.metadata:
        raise ConfigError("the second model is not an onnx2burst SNN: no BurstIF node and no onnx2burst metadata")
    notes = [n for n in [check_source(ann_path, ann, view.metadata, other_ok=other_ann)] if n]
    T = view.T
    a_batch, s_batch = _fixed_batch(ann), _fixed_batch(snn)
    enforce(MemoryEstimate.combined({"ANN": estimate(ann, batch_size=a_batch or batch_size),
                                     "SNN": estimate(snn, batch_size=s_batch or batch_size, T=T)}),
            max_memory, f"evaluating (batch {batch_size}, T={T})")
    ds = load_data(data, ann, samples=limit, max_memory=max_memory)
    if view.neurons:
        em = energy_model(snn)
        snn_run, spike_names = with_spike_outputs(snn)
        notes += list(em.notes)
    else:
        em, snn_run, spike_names = None, snn, []
        notes.append("no BurstIF node and no record of them (a portable file made by an older version): "
                     "spikes and energy are not counted")
    use_kernel = (ops.kernel_available() if kernel is None else kernel) and bool(view.neurons)
    with onnxruntime_errors("the ANN"):
        a_sess = ops.make_session(ann, kernel=False, threads=threads)
    with onnxruntime_errors("the SNN"):
        s_sess = ops.make_session(snn_run, kernel=use_kernel, threads=threads)
    a_out, s_out = ann.graph.output[0].name, snn.graph.output[0].name

    with progress_or_null(progress).stage("ANN", 2 * len(ds)) as st:
        with onnxruntime_errors(f"the ANN on the data (batch {a_batch or batch_size})"):
            a_res, a_sec = _timed_runs(a_sess, _batches(ds, batch_size, a_batch), [a_out], st.advance)
        st.advance(0, description="SNN")
        with onnxruntime_errors(f"the SNN on the data (batch {s_batch or batch_size})"):
            s_res, s_sec = _timed_runs(s_sess, _batches(ds, batch_size, s_batch), [s_out] + spike_names, st.advance)

    a_logits = np.concatenate([r[0] for r in a_res])
    s_logits = np.concatenate([r[0] for r in s_res])
    if a_logits.shape != s_logits.shape:
        raise ConfigError(f"the ANN's output {a_out!r} has shape {list(a_logits.shape)}, the SNN's {s_out!r} "
                          f"{list(s_logits.shape)}: not an ANN and its SNN")
    kl = KLMeter()
    kl.update(a_logits.reshape(len(ds), -1), s_logits.reshape(len(ds), -1))
    a_pred = a_logits.reshape(len(ds), -1).argmax(1)
    s_pred = s_logits.reshape(len(ds), -1).argmax(1)

    def top1(pred):
        return None if ds.labels is None else float((pred == ds.labels).mean())

    est = None
    if em is not None:
        spikes = np.stack([np.concatenate([r[1 + j] for r in s_res]) for j in range(len(spike_names))])
        est = em.estimate(spikes.astype(np.float64).mean(axis=1), ann_macs=ann_macs(ann),
                          e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj)
    return EvalResult(
        samples=len(ds), T=T,
        ann=ModelStats(top1(a_pred), 1e3 * a_sec / len(ds)),
        snn=ModelStats(top1(s_pred), 1e3 * s_sec / len(ds)),
        agreement=float((a_pred == s_pred).mean()), sym_kl=kl.value, energy=est,
        kernel=bool(use_kernel), batch_size=batch_size, threads=threads, notes=tuple(notes), snn_pred=s_pred)
