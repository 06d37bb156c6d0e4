"""The conversion pipeline: ``convert(model, calib, T=8, psi=4, tau=1.0) -> onnx.ModelProto``.

Stages (``Converter`` runs them one by one; ``convert`` runs them all):

0. resource check (``limits``): the declared sizes of the weights (external data not read
   yet), of every tensor and of the calibration plan against ``max_memory`` (default: the
   memory available), before constants are folded and again on the canonical graph with
   the neurons known, before any data is read or onnxruntime session made;
1. canonicalise (``graph.canonicalize``): opset >= 13, constants folded, BatchNorm folded,
   Identity/Dropout dropped, symbolic batch;
2. analyse (``rewrite.analyze``): neurons, analog layers, ops that cannot be converted
   exactly (an error unless ``allow_inexact``), all before any heavy work;
3. thresholds (``tuning.thresholds``): pass 1 (per-channel max and mean of the ANN), pass 2
   (the 95-candidate error search, §4), streamed over calibration batches;
4. rewrite (``rewrite.build_snn``): BurstIF neurons, Tile before the first one, mean over T;
5. bias calibration (``tuning.bias``, §5), layer by layer, folded into the biases;
6. metadata (version, T, per-layer psi/tau/vth, calibration size, source sha256).

Writing the file is ``io.save_model``'s job (the CLI does it).

For BSR/SSC (§8) use the stages directly::

    conv = Converter("model.onnx", ConvertConfig(T=8, psi=4))
    data = conv.load_data("calib.npz")
    stats = conv.activation_stats(data)                       # pass 1, once
    settings = conv.settings(psi={"relu1": 2})               # per-neuron (psi, tau)
    vth = conv.fit_thresholds(data, stats, settings)          # pass 2 (refit per psi)
    snn = conv.build(vth, settings)                           # SNN (uncalibrated)
    snn = conv.calibrate(snn, data, stats)                    # bias calibration
    model = conv.finalize(snn.model, ...)                     # or conv.run(data) for all
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from . import __version__
from .data import CalibrationSet, input_specs, load_data
from .progress import NullProgress
from .config import CalibrationConfig, ConvertConfig, SearchConfig, ThresholdConfig
from .errors import ConfigError, GraphError, UnsupportedModelError, onnxruntime_errors
from .graph import Canonical, canonicalize
from .io import file_sha256, load_model, model_sha256, read_external_data
from .limits import enforce, estimate, format_bytes, memory_budget, process_memory
from .rewrite import SNN, Analysis, NeuronParams, analyze, build_snn
from .tuning.bias import calibrate_biases
from .tuning.thresholds import ActivationStats, activation_stats, search_thresholds

__all__ = ["convert", "Converter", "ConversionResult", "METADATA_PREFIX"]


METADATA_PREFIX = "onnx2burst."
#: the batch sizes a conversion without --batch-size chooses from, largest first
BATCH_CHOICES = (64, 32, 16, 8, 4, 2, 1)
_OTHER_FLOATS = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.DOUBLE: "float64",
                 onnx.TensorProto.BFLOAT16: "bfloat16"}


def _check_interface(model: onnx.ModelProto, what: str) -> None:
    """Refuse, naming the tensor, what the converter cannot take: a model computing in another
    float type than float32, an input without a batch axis (rank 0 or 1)."""
    if any(p.key == "onnx2burst.stream" for p in model.metadata_props):
        raise GraphError(f"{what} is a streaming model (export-stream); convert takes the ANN (a ReLU network)")
    g = model.graph
    inits = {t.name for t in g.initializer}
    for vi in list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.elem_type in _OTHER_FLOATS:
            raise GraphError(f"{what}: {vi.name!r} is {_OTHER_FLOATS[tt.elem_type]}; onnx2burst converts float32 "
                             "models: convert the model to float32 first")
        if vi.name not in inits and vi.name not in {o.name for o in g.output} and tt.HasField("shape") \
                and len(tt.shape.dim) < 2:
            dims = [d.dim_value or d.dim_param or "?" for d in tt.shape.dim]
            raise GraphError(f"{what}: input {vi.name!r} has shape {dims}, no batch axis: onnx2burst needs inputs "
                             "[N, ...] (export the model with a batch axis)")
    for t in g.initializer:
        if t.data_type in _OTHER_FLOATS:
            raise GraphError(f"{what}: weight {t.name!r} is {_OTHER_FLOATS[t.data_type]}; onnx2burst converts float32 "
                             "models: convert the model to float32 first")


@dataclass
class ConversionResult:
    """What ``Converter.run`` produced: the SNN ``model`` and how it got there."""

    model: onnx.ModelProto
    analysis: Analysis
    snn: SNN
    thresholds: dict[str, np.ndarray]
    settings: dict[str, tuple[int, float]]
    deltas: dict[str, np.ndarray]
    skipped_bias: dict[str, str]
    notes: list[str]
    samples: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def threshold_range(self) -> tuple[float, float]:
        vals = np.concatenate([np.asarray(v).reshape(-1) for v in self.thresholds.values()])
        vals = vals[vals > 0]
        return (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)


class Converter:
    """The pipeline on one model; see the module docstring.

    model: a path or an ``onnx.ModelProto``. Stages 0-2 run on construction, so a model too
    large for ``calibration.max_memory`` and unsupported ops are reported before any data
    is read.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, config: ConvertConfig | None = None):
        self.config = config or ConvertConfig()
        if isinstance(model, onnx.ModelProto):
            self.source, self.source_path = model, None
            self.check_resources(model, "the model")
            self.source_sha256 = model_sha256(model)
        else:
            self.source_path = Path(model)
            self.source = load_model(self.source_path, load_external_data=False)
            self.check_resources(self.source, str(self.source_path))
            read_external_data(self.source, self.source_path)
            self.source_sha256 = file_sha256(self.source_path)
        _check_interface(self.source, str(self.source_path or "the model"))
        self.canonical: Canonical = canonicalize(self.source, maxpool=self.config.maxpool)
        self.analysis: Analysis = analyze(self.canonical, self.config.maxpool, signed=self.config.signed)
        a = self.analysis
        self.batch_note = self.plan_batch(self.canonical.model, str(self.source_path or "the model"),
                                          info=self.canonical.info, keep=[n.output for n in a.neurons])
        if a.unsupported:
            raise UnsupportedModelError([(i.node, i.op_type, i.reason) for i in a.unsupported],
                                        hint="not even with --allow-inexact: such a node must come before the first "
                                             "Relu or after the output")
        if a.shape_issues:
            raise UnsupportedModelError([(i.node, i.op_type, i.reason) for i in a.shape_issues],
                                        hint="compute the shape from the tensor it applies to")
        if a.inexact and not self.config.allow_inexact:
            raise UnsupportedModelError([(i.node, i.op_type, i.reason) for i in a.inexact])
        if not a.neurons:
            raise GraphError("the model has no Relu or Clip(min=0) to turn into spiking neurons")
        unknown = sorted(set(self.config.layers) - set(a.neuron_names))
        if unknown:
            raise ConfigError(f"per-layer settings name unknown neuron(s) {unknown}; "
                              f"the neurons are {a.neuron_names}")
        self._stats: list[tuple[CalibrationSet, ActivationStats]] = []
        self._loaded: list[CalibrationSet] = []   # the sets load_data returned: run() takes them as they are
        # pass-2 fits per (data set, pass-1 stats, threshold config): (neuron, psi, tau) -> vth
        self._fits: list[tuple[CalibrationSet, ActivationStats, ThresholdConfig, dict]] = []

    # ------------------------------------------------------------ stages
    @property
    def calibration(self) -> CalibrationConfig:
        return self.config.calibration

    def _estimate(self, model, batch: int, info, keep):
        c = self.calibration
        return estimate(model, batch_size=batch, T=self.config.T, samples=c.samples, keep=keep,
                        candidates=self.config.thresholds.candidates if keep else 0, cache_mb=c.cache_mb, info=info)

    def check_resources(self, model: onnx.ModelProto, what: str, *, info: dict | None = None, keep=()) -> None:
        """Stage 0: ``ResourceLimitError`` when ``model`` (declared sizes only) with this plan
        (batch size, T, samples, threshold candidates, cache) needs more than ``max_memory``
        (without a batch size: at batch 1, the least any batch needs)."""
        c = self.calibration
        batch = c.batch_size or 1
        enforce(self._estimate(model, batch, info, keep), c.max_memory,
                f"converting {what} (batch {batch}, T={self.config.T}, {c.samples} samples)")

    def plan_batch(self, model: onnx.ModelProto, what: str, *, info: dict | None = None, keep=()) -> str | None:
        """Stage 0 with no batch size given: the largest of 64, 32, ..., 1 whose plan fits the
        memory budget (``limits.memory_budget``) becomes the config's batch size. Returns a note
        for the user (None when the batch size was given)."""
        c = self.calibration
        if c.batch_size is not None:
            self.check_resources(model, what, info=info, keep=keep)
            return None
        budget, source = memory_budget(c.max_memory)
        held = process_memory()  # the budget is for the whole process: Python, onnxruntime, the model
        for batch in BATCH_CHOICES:
            est = self._estimate(model, batch, info, keep)
            if held + est.total <= budget:
                break
        else:  # nothing fits the budget: a --max-memory is a limit; the default budget is not
            enforce(est, c.max_memory, f"converting {what} (batch 1, T={self.config.T}, {c.samples} samples)")
        self.config = dataclasses.replace(self.config, calibration=dataclasses.replace(c, batch_size=batch))
        within = "within" if held + est.total <= budget else "above"
        return (f"batch size {batch}: the plan needs about {format_bytes(est.total)} besides the "
                f"{format_bytes(held)} held, {within} the memory budget of {format_bytes(budget)} ({source})")

    def load_data(self, calib) -> CalibrationSet:
        """Read and check calibration data against the model's inputs (``onnx2burst.data``)."""
        c = self.calibration
        data = load_data(calib, input_specs(self.canonical.model), samples=c.samples, seed=c.seed,
                         image=c.image, max_memory=c.max_memory)
        if self.batch_note is not None and len(data) < c.samples:
            # the batch was planned for c.samples samples; the data holds fewer: plan again for them
            self.config = dataclasses.replace(self.config, calibration=dataclasses.replace(
                c, samples=len(data), batch_size=None))
            self.batch_note = self.plan_batch(self.canonical.model, str(self.source_path or "the model"),
                                              info=self.canonical.info, keep=[n.output for n in self.analysis.neurons])
        self._loaded.append(data)
        return data

    def settings(self, psi: Mapping[str, int] | None = None, tau: Mapping[str, float] | None = None) \
            -> dict[str, tuple[int, float]]:
        """Per-neuron ``(psi, tau)``: the config's (global and per-layer), overridden by ``psi``/``tau``."""
        out = {}
        for name in self.analysis.neuron_names:
            p, t = self.config.layer(name)
            if psi and name in psi:
                p = int(psi[name])
            if tau and name in tau:
                t = float(tau[name])
            out[name] = (p, t)
        return out

    def reuse_stats(self, other: "Converter") -> None:
        """Take ``other``'s pass-1 statistics (they depend on the ANN and the data only, not on
        T, psi or tau): a sweep over configurations of one model runs pass 1 once."""
        if other.source_sha256 != self.source_sha256:
            raise ConfigError("reuse_stats: the two converters hold different models")
        self._stats = other._stats

    @onnxruntime_errors()
    def activation_stats(self, data: CalibrationSet, progress=None) -> ActivationStats:
        """Pass 1 (cached per data set)."""
        for seen, stats in self._stats:
            if seen is data:
                return stats
        c = self.calibration
        stats = activation_stats(self.canonical, self.analysis, data, batch_size=c.batch_size,
                                 threads=c.threads, progress=progress)
        self._stats.append((data, stats))
        return stats

    @onnxruntime_errors()
    def fit_thresholds(self, data: CalibrationSet, stats: ActivationStats | None = None,
                       settings: Mapping | None = None, *, thresholds: ThresholdConfig | None = None,
                       progress=None, also: Mapping[str, Sequence[tuple[int, float]]] | None = None) -> dict:
        """Pass 2 (§4) for ``settings`` (default ``self.settings()``); see ``search_thresholds``.

        also: more ``(psi, tau)`` per neuron to fit in the same pass (e.g. BSR's psi candidates).
        Every fit is kept per data set: a later call on the same data, stats and threshold
        config gets what was fitted already without a pass (the same values: a fit depends on
        nothing else), and fits only what is missing.
        """
        stats = stats or self.activation_stats(data, progress)
        cfg = thresholds or self.config.thresholds
        settings = settings or self.settings()
        multi = any(isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)) for v in settings.values())
        want = {k: [tuple(x) for x in v] if multi else [tuple(v)] for k, v in settings.items()}
        cache = next((f for d, s, c, f in self._fits if d is data and s is stats and c == cfg), None)
        if cache is None:
            cache = {}
            self._fits.append((data, stats, cfg, cache))
        todo = {n.name: [] for n in self.analysis.neurons}
        for k, v in list(want.items()) + list((also or {}).items()):
            todo[k].extend(x for x in ((int(p), float(t)) for p, t in v) if (k, *x) not in cache and x not in todo[k])
        if any(todo.values()):
            c = self.calibration
            cache.update(search_thresholds(self.canonical, self.analysis, data, stats, T=self.config.T,
                                           settings=todo, config=cfg, batch_size=c.batch_size, threads=c.threads,
                                           progress=progress))
        if multi:
            return {(k, *x): cache[(k, int(x[0]), float(x[1]))] for k, v in want.items() for x in v}
        return {k: cache[(k, int(v[0][0]), float(v[0][1]))] for k, v in want.items()}

    def build(self, thresholds: Mapping[str, np.ndarray], settings: Mapping[str, tuple[int, float]] | None = None,
              *, T: int | None = None) -> SNN:
        """The SNN graph with these thresholds (uncalibrated biases)."""
        settings = settings or self.settings()
        params = {n: NeuronParams(np.asarray(thresholds[n], np.float32), *settings[n]) for n in self.analysis.neuron_names}
        return build_snn(self.canonical, self.analysis, params, T=T or self.config.T,
                         per_timestep_output=self.config.per_timestep_output, allow_inexact=self.config.allow_inexact)

    @onnxruntime_errors()
    def calibrate(self, snn: SNN, data: CalibrationSet, stats: ActivationStats | None = None, *,
                  neurons=None, progress=None):
        """Bias calibration (§5): returns ``tuning.bias.BiasCalibration`` (``.model``, ``.deltas``)."""
        stats = stats or self.activation_stats(data, progress)
        c = self.calibration
        return calibrate_biases(snn, stats.mean, data, batch_size=c.batch_size, threads=c.threads, kernel=c.kernel,
                                cache_mb=c.cache_mb, neurons=neurons, progress=progress,
                                keep_arena=self._arena_fits())

    #: how much more than the plan's estimate a memory arena kept from run to run may hold
    #: (measured: a 224x224 ResNet-50 at batch 16, 5.4 GB against 3.3 GB without an arena)
    ARENA_FACTOR = 3

    def _arena_fits(self) -> bool:
        """Whether the memory budget leaves room for calibration's runs to keep their arena:
        ``ARENA_FACTOR`` times the plan's estimate at the chosen batch size."""
        c = self.calibration
        est = self._estimate(self.canonical.model, c.batch_size or 1, self.canonical.info,
                             [n.output for n in self.analysis.neurons])
        return process_memory() + self.ARENA_FACTOR * est.total <= memory_budget(c.max_memory)[0]

    def finalize(self, model: onnx.ModelProto, snn: SNN, thresholds: Mapping[str, np.ndarray], samples: int,
                 calibrated: set[str] | None = None) -> onnx.ModelProto:
        """Add the metadata (``onnx2burst.*`` keys) to ``model`` in place and return it."""
        layers = []
        for n in snn.neurons:
            v = np.asarray(thresholds[n.name], np.float64).reshape(-1)
            layers.append({"name": n.name, "psi": n.psi, "tau": n.tau, "channels": int(v.size),
                           "vth_min": float(v.min()), "vth_max": float(v.max()), "vth_mean": float(v.mean()),
                           "bias_calibrated": bool(calibrated and n.name in calibrated)})
        meta = {
            "version": __version__,
            "T": str(snn.T),
            "layers": json.dumps(layers),
            "calibration_samples": str(samples),
            "source_sha256": self.source_sha256,
            "maxpool": self.config.maxpool,
            "thresholds": self.config.thresholds.method,
            "bias_calibration": str(bool(calibrated)).lower(),
            "outputs": json.dumps({"mean_over_T": snn.outputs, "per_timestep": snn.per_timestep_outputs}),
        }
        keep = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
        del model.metadata_props[:]
        model.metadata_props.extend(keep)
        for k, v in meta.items():
            p = model.metadata_props.add()
            p.key, p.value = METADATA_PREFIX + k, v
        model.producer_name = "onnx2burst"
        model.producer_version = __version__
        return model

    @onnxruntime_errors()
    def run(self, calib, progress=None, *, also_fit: Mapping[str, Sequence[tuple[int, float]]] | None = None) \
            -> ConversionResult:
        """All stages on ``calib`` (anything ``load_data`` reads, or a ``CalibrationSet``).

        also_fit: more ``(psi, tau)`` per neuron whose thresholds pass 2 fits alongside the
        SNN's own (``fit_thresholds``' ``also``), for a search that follows on the same data.
        """
        progress = progress or NullProgress()
        t0 = time.perf_counter()
        times = {}
        data = calib if any(calib is d for d in self._loaded) else self.load_data(calib)
        times["load data"] = time.perf_counter() - t0
        t = time.perf_counter()
        stats = self.activation_stats(data, progress)
        times["pass 1"] = time.perf_counter() - t
        t = time.perf_counter()
        settings = self.settings()
        vth = self.fit_thresholds(data, stats, settings, progress=progress, also=also_fit)
        times["pass 2"] = time.perf_counter() - t
        t = time.perf_counter()
        snn = self.build(vth, settings)
        times["rewrite"] = time.perf_counter() - t
        deltas, skipped, model = {}, {}, snn.model
        if self.config.bias_calibration:
            t = time.perf_counter()
            cal = self.calibrate(snn, data, stats, progress=progress)
            model, deltas, skipped = cal.model, cal.deltas, cal.skipped
            times["bias calibration"] = time.perf_counter() - t
        self.finalize(model, snn, vth, len(data), set(deltas))
        onnx.checker.check_model(model)
        notes = list(self.analysis.notes) + ([self.batch_note] if self.batch_note else []) + stats.notes + [f"bias calibration skipped for {k}: {v}"
                                                           for k, v in skipped.items()]
        return ConversionResult(model=model, analysis=self.analysis, snn=snn, thresholds=vth, settings=settings,
                                deltas=deltas, skipped_bias=skipped, notes=notes, samples=len(data),
                                seconds=time.perf_counter() - t0, stage_seconds=times)


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ConvertConfig)}
_CALIB_FIELDS = {f.name for f in dataclasses.fields(CalibrationConfig)}


def convert(model: str | os.PathLike | onnx.ModelProto, calib, T: int | None = None, psi: int | None = None,
            tau: float | None = None, *, config: ConvertConfig | None = None, search: SearchConfig | None = None,
            progress=None, **options) -> onnx.ModelProto:
    """Convert a ReLU ANN (path or ModelProto) into a burst-spiking SNN ModelProto.

    calib: a .npy/.npz path, an image folder, an array, a dict of arrays, or a reader/iterable
    of input dicts (see ``onnx2burst.data``). T/psi/tau: override ``config``.
    options: any other ``ConvertConfig`` field (``maxpool``, ``per_timestep_output``,
    ``bias_calibration``, ``allow_inexact``, ``layers``, ``thresholds``) or
    ``CalibrationConfig`` field (``samples``, ``batch_size``, ``seed``, ``threads``,
    ``kernel``, ``cache_mb``, ``image``, ``max_memory``: refuse, before running anything, a
    model whose declared sizes and this plan need more memory than this, e.g. ``"8G"``;
    default: the memory available). search: a ``SearchConfig`` with ``bsr`` and/or ``ssc``
    set: per-layer psi/tau are searched after the conversion (``onnx2burst.search.tune``).

    Example::

        import onnx2burst
        snn = onnx2burst.convert("vgg.onnx", "calib.npz", T=8, psi=4)
        onnx2burst.io.save_model(snn, "vgg.snn.onnx")
        tuned = onnx2burst.convert("vgg.onnx", "calib.npz", T=8, psi=4,
                                   search=onnx2burst.SearchConfig(bsr=True, ssc=True))
    """
    config = config or ConvertConfig()
    top = {k: v for k, v in (("T", T), ("psi", psi), ("tau", tau)) if v is not None}
    cfg_opts = {k: v for k, v in options.items() if k in _CONFIG_FIELDS}
    cal_opts = {k: v for k, v in options.items() if k in _CALIB_FIELDS}
    unknown = sorted(set(options) - _CONFIG_FIELDS - _CALIB_FIELDS)
    if unknown:
        raise ConfigError(f"convert() got unknown option(s) {unknown}; known: "
                          f"{sorted((_CONFIG_FIELDS | _CALIB_FIELDS) - {'calibration'})}")
    if cal_opts:
        cfg_opts["calibration"] = dataclasses.replace(config.calibration, **cal_opts)
    config = dataclasses.replace(config, **top, **cfg_opts)
    conv = Converter(model, config)
    if search is None or not search.any:
        return conv.run(calib, progress).model
    from .search import search_fits, tune

    data = conv.load_data(calib)
    snn = conv.run(data, progress, also_fit=search_fits(conv, search)).model
    return tune(conv, data, search, snn=snn, progress=progress).model


class _CallableModule(types.ModuleType):
    """``onnx2burst.convert`` names both this module and the function: once the module is
    imported, Python binds the package attribute to the module, so the module forwards
    calls to ``convert``."""

    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
