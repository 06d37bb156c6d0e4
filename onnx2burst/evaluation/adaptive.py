"""Adaptive timesteps on data (docs/stream.md): every sample's any-time output after each step,
the exit rule chosen on calibration data, and what exiting costs and saves.

The streaming model runs all T steps on each batch once; since the any-time output after
step t depends only on the first t steps, the exit of each sample under any rule is then read
off these outputs, and its spikes are counted over the steps it ran. This equals what
``StreamSession.run_adaptive`` computes sample by sample (tested), at the cost of one full run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import ConfigError, onnxruntime_errors
from ..progress import Progress, progress_or_null

__all__ = ["AnytimeRun", "AdaptiveResult", "anytime_run", "classifier_problem", "attach_exit_rule",
           "adaptive_evaluate"]


@dataclass(frozen=True)
class AnytimeRun:
    """``preds`` ``[T, N, ...]``: the first output's any-time value after each step; ``spikes``
    ``[T, layers, N]``: each step's spikes; ``head``: the op applied after the mean (or None);
    ``steps`` ``[T, N, ...]``: each step's own output (before the mean and the head)."""

    preds: np.ndarray
    spikes: np.ndarray
    head: str | None
    layers: tuple[str, ...]
    steps: np.ndarray | None = None

    def scores(self, kind: str) -> np.ndarray:
        """``[T, N]``: the exit rule's score after each step (``stream.rule.scores``)."""
        from ..stream.rule import scores

        return np.stack([scores(self.preds[t], self.head, kind, None if self.steps is None else self.steps[t])
                         for t in range(self.preds.shape[0])])


def anytime_run(stream, ds, *, batch_size: int = 256, progress: Progress | None = None,
                stage: str = "any-time") -> AnytimeRun:
    """Run the ``StreamSession`` ``stream`` for T steps over every batch of ``ds`` (a ``CalibrationSet``)."""
    preds, spikes, own = [], [], []
    with progress_or_null(progress).stage(stage, len(ds)) as st:
        for feeds in ds.batches(batch_size):
            n = len(next(iter(feeds.values())))
            stream.reset(n)
            p, s, o = [], [], []
            for _ in range(stream.T):
                o.append(stream.step(feeds)[0])
                p.append(stream.prediction()[0])
                s.append(stream.step_spikes())
            preds.append(np.stack(p))
            spikes.append(np.stack(s))
            own.append(np.stack(o))
            st.advance(n)
    return AnytimeRun(np.concatenate(preds, axis=1), np.concatenate(spikes, axis=2), stream.heads[0],
                      tuple(stream.layers), np.concatenate(own, axis=1))


def classifier_problem(stream) -> str | None:
    """Why no exit rule applies to this model's outputs (None: one output of class scores)."""
    if len(stream.output_names) != 1:
        return f"it has {len(stream.output_names)} outputs ({', '.join(stream.output_names)}), not one of class scores"
    if stream.heads[0] not in (None, "Softmax", "LogSoftmax"):
        return f"its output {stream.output_names[0]!r} ends in {stream.heads[0]}, not in class scores"
    return None


def _stream_of(snn: onnx.ModelProto, threads):
    from ..stream import StreamSession, export_stream

    return StreamSession(export_stream(snn), threads=threads)


def _ann_classes(ann: onnx.ModelProto, ds, batch_size: int, threads) -> np.ndarray:
    from .. import ops

    with onnxruntime_errors("the ANN"):
        sess = ops.make_session(ann, kernel=False, threads=threads)
        out = ann.graph.output[0].name
        return np.concatenate([sess.run([out], f)[0].reshape(len(next(iter(f.values()))), -1).argmax(1)
                               for f in ds.batches(batch_size)])


def attach_exit_rule(snn: onnx.ModelProto, ann: onnx.ModelProto, calib, *, tol: float = 0.0,
                     kind: str = "confidence", t_min: int | None = None, samples: int | None = None,
                     batch_size: int = 256, threads=None, progress: Progress | None = None):
    """Choose the exit rule on ``calib`` and store it in ``snn``'s metadata (in place).

    Returns ``(rule, summary)``; ``(None, reason)`` for a model whose outputs are not class
    scores (no rule is stored: it runs all T steps).
    """
    from ..data import load_data
    from ..stream.rule import RULE_KEY, choose_rule

    from ..errors import GraphError

    outputs = [o.name for o in snn.graph.output if not o.name.endswith("_per_timestep")]
    if len(outputs) != 1:
        return None, f"no exit rule: it has {len(outputs)} outputs ({', '.join(outputs)}), not one of class scores"
    try:
        stream = _stream_of(snn, threads)
    except GraphError as e:
        return None, f"no exit rule: the SNN has no streaming form ({e})"
    why = classifier_problem(stream)
    if why:
        return None, f"no exit rule: {why}; the SNN runs all T steps"
    ds = load_data(calib, ann, samples=samples)
    run = anytime_run(stream, ds, batch_size=batch_size, progress=progress, stage="exit rule")
    rule, summary = choose_rule(run.preds, _ann_classes(ann, ds, batch_size, threads), tol=tol, kind=kind,
                                head=run.head, t_min=t_min, steps=run.steps)
    keep = [p for p in snn.metadata_props if p.key != RULE_KEY]
    del snn.metadata_props[:]
    snn.metadata_props.extend(keep)
    p = snn.metadata_props.add()
    p.key, p.value = RULE_KEY, rule.to_metadata()
    return rule, summary


@dataclass(frozen=True)
class AdaptiveResult:
    """Adaptive timesteps against all T steps on the same samples (percent, per sample)."""

    rule: dict
    samples: int
    T: int
    mean_timesteps: float
    timesteps: dict                 # exit step -> number of samples
    top1: float | None              # percent
    top1_full_T: float | None
    top1_drop_se: float | None      # standard error of the paired top-1 difference, points
    agreement: float                # with the ANN, percent
    agreement_full_T: float
    spikes: float                   # per sample, over the steps run
    spikes_full_T: float
    energy_pj: float                # E_SNN per sample over the steps run (docs/method.md §7)
    energy_full_T_pj: float
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        d = dict(vars(self))
        d["timesteps"] = {str(k): v for k, v in self.timesteps.items()}
        d["notes"] = list(self.notes)
        return d


def summarize(run: AnytimeRun, exits: np.ndarray, ann_pred: np.ndarray, labels, energy, ann_macs, *,
              rule: dict, e_ac_pj: float, e_mac_pj: float, notes=()) -> AdaptiveResult:
    """The figures of ``AdaptiveResult`` from an any-time run and each sample's exit step."""
    T, n = run.preds.shape[:2]
    cls = run.preds.reshape(T, n, -1).argmax(axis=2)
    pick = cls[exits - 1, np.arange(n)]
    full = cls[-1]
    steps = np.arange(1, T + 1)[:, None]
    ran = (steps <= exits[None, :]).astype(np.float64)                       # [T, N]
    sp_ad = (run.spikes * ran[:, None, :]).sum(axis=0)                      # [layers, N]
    sp_full = run.spikes.sum(axis=0)
    e_ad = energy.estimate(sp_ad.mean(axis=1), ann_macs=ann_macs, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj)
    e_full = energy.estimate(sp_full.mean(axis=1), ann_macs=ann_macs, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj)
    top1 = top1_full = se = None
    if labels is not None:
        ok_a, ok_f = (pick == labels).astype(float), (full == labels).astype(float)
        top1, top1_full = 100 * ok_a.mean(), 100 * ok_f.mean()
        se = 100 * float(np.std(ok_a - ok_f, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    hist = {int(t): int((exits == t).sum()) for t in range(1, T + 1)}
    return AdaptiveResult(rule, n, T, float(exits.mean()), hist, top1, top1_full, se,
                          100 * float((pick == ann_pred).mean()), 100 * float((full == ann_pred).mean()),
                          float(sp_ad.sum(axis=0).mean()), float(sp_full.sum(axis=0).mean()),
                          e_ad.e_snn_pj, e_full.e_snn_pj, tuple(notes))


def adaptive_evaluate(ann, snn, data, *, confidence: float | None = None, t_min: int | None = None,
                      kind: str | None = None, batch_size: int = 256, threads=None, limit: int | None = None,
                      e_ac_pj: float = 0.9, e_mac_pj: float = 4.6, progress: Progress | None = None) -> AdaptiveResult:
    """Adaptive timesteps of ``snn`` on ``data`` against all T steps (see ``AdaptiveResult``).

    The rule is the one ``convert --adaptive`` stored, with ``confidence``/``t_min``/``kind``
    overriding its fields; without a stored rule ``confidence`` is required.
    """
    from ..data import load_data
    from ..stream.rule import ExitRule, exit_steps
    from .energy import ann_macs, energy_model
    from .evaluate import load_onnx

    from ..interop.portable import fold_back

    ann, snn = load_onnx(ann), fold_back(load_onnx(snn))
    stored = ExitRule.from_metadata({p.key: p.value for p in snn.metadata_props})
    if stored is None and confidence is None:
        raise ConfigError("the SNN holds no exit rule (convert it with --adaptive) and no --exit-confidence was given")
    base = stored or ExitRule(float(confidence))
    rule = ExitRule(float(confidence) if confidence is not None else base.c, int(t_min or base.t_min),
                    kind or base.kind, base.tol if confidence is None else None)
    stream = _stream_of(snn, threads)
    why = classifier_problem(stream)
    if why:
        raise ConfigError(f"adaptive timesteps need class scores: {why}; no exit rule applies to this model")
    ds = load_data(data, ann, samples=limit)
    run = anytime_run(stream, ds, batch_size=batch_size, progress=progress)
    exits = exit_steps(run.scores(rule.kind), rule.c, rule.t_min)
    notes = [] if stored is None or confidence is None else [f"--exit-confidence {confidence:g} overrides the "
                                                             f"stored c = {stored.c:g}"]
    notes.append("energy counts the layers before the first neuron once per sample (the input is static)")
    return summarize(run, exits, _ann_classes(ann, ds, batch_size, threads), ds.labels, energy_model(snn),
                     ann_macs(ann), rule={"kind": rule.kind, "c": rule.c, "t_min": rule.t_min, "tol": rule.tol},
                     e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj, notes=notes)
