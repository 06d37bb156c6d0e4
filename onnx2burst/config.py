"""Configuration of a conversion: frozen dataclasses, validated on construction.

``ConvertConfig`` holds everything ``onnx2burst.convert`` needs besides the model and the
data; its parts are ``ThresholdConfig`` (§4), ``CalibrationConfig`` (how data is read and
the model run), ``ImageOptions`` (image folders) and per-layer ``LayerConfig`` overrides
(psi/tau per neuron, as chosen by BSR/SSC, §8). Use ``dataclasses.replace`` (or
``ConvertConfig.with_layers``) to derive a changed copy.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .errors import ConfigError

__all__ = ["MAXPOOL_MODES", "THRESHOLD_METHODS", "ENERGY_MODES", "GUARD_MODES", "DEFAULT_TAU_GRID", "LayerConfig",
           "ThresholdConfig", "ImageOptions", "CalibrationConfig", "ConvertConfig", "GuardConfig", "SearchConfig",
           "parse_grid", "MAX_T", "MAX_PSI", "MAX_SAMPLES", "MAX_BATCH", "MAX_THREADS", "MAX_SEED"]

#: MaxPool handling (§3). "lateral" (the default: measured best, see ``onnx2burst.graph.maxpool``):
#: lateral inhibition, each window passes its input with the most spikes so far; "spikes": keep
#: MaxPool, applied per timestep on the spike maps; "avg": AveragePool instead.
MAXPOOL_MODES = ("lateral", "spikes", "avg")
#: Threshold rule (§4). "search": the 95-candidate error search; "max": theta = channel max
#: (plain max-normalisation, the classic baseline).
THRESHOLD_METHODS = ("search", "max")
#: E_i(k) of the search (§7): a layer's spikes per sample, or its synaptic operations.
ENERGY_MODES = ("spikes", "synops")
#: what the search's sensitivity measures (``evaluation.sensitivity``)
SENSITIVITIES = ("auto", "kl", "mse")
#: SSC guard (§10): rebuild and check the whole model, or check each changed layer alone.
GUARD_MODES = ("model", "layer")
#: SSC's tau candidates (§8): 1.0, 1.5, ..., 10.0.
DEFAULT_TAU_GRID = "1:10:0.5"
#: the most candidates a tau grid may hold (each costs one run of every layer's suffix).
MAX_GRID = 1000
#: upper bounds of the numbers (the CLI's options use them too): T, timesteps (the time-folded
#: batch is T x the batch size); psi, the C++ kernel's limit (custom_ops/burst_if.cc, kMaxPsi:
#: a tile's spike count stays inside int32); samples (calibration, search, guard): int32, more
#: than any data set held in memory; the batch size; onnxruntime threads; the seed (uint32).
MAX_T = 4096
MAX_PSI = 65536
MAX_SAMPLES = 2**31 - 1
MAX_BATCH = 2**16
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")


def _check_pos(name: str, value, *, zero: bool = False) -> None:
    try:
        ok = math.isfinite(float(value)) and (float(value) >= 0 if zero else float(value) > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be a finite number {'>=' if zero else '>'} 0, got {value!r}")


def parse_grid(spec: str) -> tuple[float, ...]:
    """``"1:10:0.5"`` (start:stop:step, stop included), ``"1,1.5,3"``, or a comma list mixing
    both (``"1:3:0.1,3.5:10:0.5"``) -> sorted unique finite values > 0, at most 1000."""
    vals: list[float] = []
    bad = ConfigError(f"--tau-grid {spec!r}: expected start:stop:step (e.g. 1:10:0.5), a comma list, "
                      f"or both (1:3:0.1,3.5:10:0.5) of finite numbers > 0, at most {MAX_GRID} values")
    try:
        for part in (p.strip() for p in str(spec).split(",")):
            if not part:
                continue
            if ":" in part:
                a, b, s = (float(v) for v in part.split(":"))
                if not all(math.isfinite(v) for v in (a, b, s)) or s <= 0 or b < a:
                    raise ValueError
                n = int(math.floor((b - a) / s + 1e-9)) + 1
                if n + len(vals) > MAX_GRID:
                    raise ValueError
                vals += [round(a + i * s, 10) for i in range(n)]
            else:
                vals.append(float(part))
    except ValueError:
        raise bad from None
    if not vals or len(vals) > MAX_GRID or any(not (math.isfinite(v) and v > 0) for v in vals):
        raise bad
    return tuple(sorted(set(vals)))


@dataclass(frozen=True)
class LayerConfig:
    """Per-neuron override of psi (most spikes per step) and/or tau (threshold ratio)."""

    psi: int | None = None
    tau: float | None = None

    def __post_init__(self):
        if self.psi is not None:
            _check_int("LayerConfig.psi", self.psi, 1)
        if self.tau is not None:
            _check_pos("LayerConfig.tau", self.tau)


@dataclass(frozen=True)
class ThresholdConfig:
    """Threshold fit (§4): candidates ``theta = m_c * (1 - step*i)``, i < ``candidates``."""

    method: str = "search"
    candidates: int = 95
    step: float = 0.01
    per_channel: bool = True

    def __post_init__(self):
        if self.method not in THRESHOLD_METHODS:
            raise ConfigError(f"threshold method must be one of {THRESHOLD_METHODS}, got {self.method!r}")
        _check_int("ThresholdConfig.candidates", self.candidates, 1)
        _check_pos("ThresholdConfig.step", self.step)
        if self.step * (self.candidates - 1) >= 1:
            raise ConfigError(f"ThresholdConfig: step*(candidates-1) = {self.step * (self.candidates - 1):g} "
                              "must stay below 1 (candidates must be positive)")


@dataclass(frozen=True)
class ImageOptions:
    """How a folder of images becomes an input tensor ``[N, C, H, W]`` float32.

    ``size`` (H, W): resize to it (default: the model input's static H, W). ``mean``/``std``:
    one value or one per channel, applied as ``(pixel/255 - mean) / std``. ``max_pixels``:
    an image declaring more pixels (width x height, read from its header) is refused before
    it is decoded (decompression bombs).
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    max_pixels: int = 2**26

    def __post_init__(self):
        _check_int("--max-image-pixels", self.max_pixels, 1)
        if self.size is not None:
            if len(self.size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.size):
                raise ConfigError(f"--size must be two positive integers (H, W), got {self.size!r}")
        for s in self.std:
            _check_pos("--std", s)
        if not self.mean or not self.std:
            raise ConfigError("--mean and --std need at least one value")


@dataclass(frozen=True)
class CalibrationConfig:
    """How calibration data is read and the model run.

    samples: at most this many samples are used (a seeded random subset of a larger file or
    folder; the first ``samples`` of a reader). batch_size: samples per onnxruntime run (None:
    the largest of 64, 32, ..., 1 whose plan fits the memory budget, see ``max_memory``).
    seed: the subset choice. threads: onnxruntime intra-op threads (None: its default).
    kernel: use the C++ BurstIF kernel (None: when available). cache_mb: memory the bias
    calibration may use to keep spike maps between layers in memory (beyond it they go to a
    temporary folder on disk; 0 disables the cache; results are the same, only slower).
    max_memory: the memory budget, bytes or a size such as ``"8G"`` (``--max-memory``): the
    batch size is chosen to fit it, and a plan that needs more even at batch 1 (or at the
    batch given) is refused (``ResourceLimitError``) before anything runs.
    None: the smaller of 4 GiB and a quarter of the memory available chooses the batch, and
    only a plan above the memory available is refused (``onnx2burst.limits``).
    """

    samples: int = 512
    batch_size: int | None = None
    seed: int = 0
    threads: int | None = None
    kernel: bool | None = None
    cache_mb: int = 512
    image: ImageOptions = field(default_factory=ImageOptions)
    max_memory: int | str | None = None

    def __post_init__(self):
        from .limits import parse_bytes

        try:
            object.__setattr__(self, "max_memory", parse_bytes(self.max_memory))
        except OverflowError:  # "9" * 400: a float too large for an integer
            raise ConfigError(f"--max-memory must be a size such as 8G, 512M or a number of bytes, got "
                              f"{str(self.max_memory)[:40]!r}") from None
        _check_int("--calib-samples", self.samples, 1, MAX_SAMPLES)
        if self.batch_size is not None:
            _check_int("--batch-size", self.batch_size, 1, MAX_BATCH)
        _check_int("--seed", self.seed, 0, MAX_SEED)
        if self.threads is not None:
            _check_int("--threads", self.threads, 1, MAX_THREADS)
        _check_int("cache_mb", self.cache_mb, 0, 2**40)


@dataclass(frozen=True)
class ConvertConfig:
    """Everything a conversion needs besides the model and the calibration data.

    T: timesteps; psi: most spikes per step; tau: threshold ratio (neurons fire at tau*vth).
    ``layers`` maps a neuron name (as ``onnx2burst inspect`` lists it) to a ``LayerConfig``
    overriding psi/tau for that neuron only. maxpool: "lateral", "spikes" or "avg" (§3).
    per_timestep_output: add a second output ``<name>_per_timestep`` ``[T, N, K]``.
    bias_calibration: run §5 after the thresholds. allow_inexact: convert even when ops
    between neurons cannot be converted exactly (§3). signed: LeakyRelu/PRelu become signed
    neurons (§2); False converts them as ReLU neurons, an inexact conversion.
    """

    T: int = 8
    psi: int = 4
    tau: float = 1.0
    maxpool: str = "lateral"
    per_timestep_output: bool = False
    bias_calibration: bool = True
    allow_inexact: bool = False
    signed: bool = True
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    layers: Mapping[str, LayerConfig] = field(default_factory=dict)

    def __post_init__(self):
        _check_int("--T", self.T, 1, MAX_T)
        _check_int("--psi", self.psi, 1, MAX_PSI)
        _check_pos("--tau", self.tau)
        if self.maxpool not in MAXPOOL_MODES:
            raise ConfigError(f"--maxpool must be one of {MAXPOOL_MODES}, got {self.maxpool!r}")
        layers = {}
        for name, lc in dict(self.layers).items():
            if isinstance(lc, Mapping):
                lc = LayerConfig(**lc)
            if not isinstance(lc, LayerConfig):
                raise ConfigError(f"layers[{name!r}] must be a LayerConfig, got {type(lc).__name__}")
            if lc.psi is not None:
                _check_int(f"layers[{name!r}].psi", lc.psi, 1, MAX_PSI)
            layers[str(name)] = lc
        object.__setattr__(self, "layers", MappingProxyType(layers))
        object.__setattr__(self, "tau", float(self.tau))

    def layer(self, name: str) -> tuple[int, float]:
        """Effective ``(psi, tau)`` of neuron ``name``: its override, else the global value."""
        lc = self.layers.get(name)
        psi = lc.psi if lc is not None and lc.psi is not None else self.psi
        tau = lc.tau if lc is not None and lc.tau is not None else self.tau
        return int(psi), float(tau)

    def with_layers(self, layers: Mapping[str, LayerConfig | Mapping]) -> "ConvertConfig":
        """A copy whose per-layer overrides are ``layers`` (merged over the current ones)."""
        merged = dict(self.layers)
        merged.update(layers)
        return dataclasses.replace(self, layers=merged)


@dataclass(frozen=True)
class GuardConfig:
    """SSC's decision guard (docs/method.md §10): check SSC's choice against the ANN's class
    on held-out inputs.

    data: the guard inputs (anything ``onnx2burst.data.load_data`` reads; labels not needed;
    not the calibration samples), of which the first ``samples`` are used. mode "model": the
    chosen SNN is rebuilt and run whole; if it loses more than ``tol`` points of agreement with
    the ANN against the SNN SSC started from, SSC backs off along its frontier (at most
    ``checks`` rebuilds). mode "layer": each changed layer alone must not lose more than ``z``
    standard errors of agreement, else that tau is forbidden and SSC chooses again.
    """

    data: object
    samples: int = 4096
    mode: str = "model"
    tol: float = 0.5
    checks: int = 8
    z: float = 2.0

    def __post_init__(self):
        if self.data is None:
            raise ConfigError("--guard-data: the guard needs data")
        _check_int("--guard-samples", self.samples, 2)
        if self.mode not in GUARD_MODES:
            raise ConfigError(f"--guard-mode must be one of {GUARD_MODES}, got {self.mode!r}")
        _check_pos("--guard-tol", self.tol, zero=True)
        _check_int("--guard-checks", self.checks, 1)
        _check_pos("--guard-z", self.z, zero=True)

    @property
    def tol_fraction(self) -> float:
        """``tol`` as a fraction of the samples (points / 100)."""
        return self.tol / 100


@dataclass(frozen=True)
class SearchConfig:
    """BSR and SSC (docs/method.md §6-§8, §10): what to search and how.

    bsr / ssc: run Burst Spike Reallocation (psi per layer, candidates 1..``psi_max``, within
    ``energy_ratio`` x the energy of uniform ``psi_target``, default the SNN's psi) and/or
    Sensitivity Spike Compression (tau per layer from ``tau_grid``, which must hold 1.0,
    within ``r`` x the sensitivity at tau = 1). ssc_z: count each tau at S + z standard errors;
    ssc_folds (0 or >= 2): lower r to what holds on held-out folds of the search samples (one
    of the two at most; 0 and 0 are the paper's rule). energy: E_i(k) as ``"spikes"`` or
    ``"synops"``. samples: the first this many calibration samples measure the tables.
    batch_size: samples per onnxruntime run of the search (None: 32; the sensitivity's mean
    correction is per batch, so it is part of the result). kernel: use the C++ kernel (None:
    when built). guard: SSC's decision guard, or None. workers: run the tables' cells as Ray
    tasks on a local Ray instance of this many CPUs (0: in this process); ray_address: join
    the Ray cluster there instead. prune: skip the table cells no choice within the budget
    can hold (BSR: exact; SSC: each layer's taus in increasing order, stopped two taus past its
    slack, docs/method.md §8; False measures every cell, for complete tables). sensitivity: what S
    measures (``evaluation.sensitivity``): ``"auto"`` (the symmetric KL of class scores, the
    normalised squared error of any other output, summed over the outputs), ``"kl"``, ``"mse"``.
    """

    bsr: bool = False
    ssc: bool = False
    psi_max: int = 8
    psi_target: int | None = None
    energy_ratio: float = 1.0
    tau_grid: tuple[float, ...] | str = DEFAULT_TAU_GRID
    r: float = 1.0
    ssc_z: float = 0.0
    ssc_folds: int = 0
    energy: str = "spikes"
    samples: int = 256
    batch_size: int | None = None
    kernel: bool | None = None
    guard: GuardConfig | None = None
    workers: int = 0
    ray_address: str | None = None
    prune: bool = True
    sensitivity: str = "auto"

    #: the search's batch size when none is given (measured fastest per sample for the tails)
    DEFAULT_BATCH = 32

    def __post_init__(self):
        grid = parse_grid(self.tau_grid) if isinstance(self.tau_grid, str) else \
            parse_grid(",".join(repr(float(t)) for t in self.tau_grid))
        object.__setattr__(self, "tau_grid", grid)
        _check_int("--psi-max", self.psi_max, 1)
        if self.psi_max > 64:
            raise ConfigError(f"--psi-max must be at most 64, got {self.psi_max}")
        if self.psi_target is not None:
            _check_int("--psi-target", self.psi_target, 1)
            if self.psi_target > self.psi_max:
                raise ConfigError(f"--psi-target {self.psi_target} is above --psi-max {self.psi_max}")
        _check_pos("--energy-ratio", self.energy_ratio)
        _check_pos("--r", self.r)
        _check_pos("--ssc-z", self.ssc_z, zero=True)
        _check_int("--ssc-folds", self.ssc_folds, 0)
        if self.ssc_folds == 1:
            raise ConfigError("--ssc-folds must be 0 (off) or at least 2")
        if self.ssc_folds and self.ssc_z:
            raise ConfigError("give one of --ssc-z and --ssc-folds, not both")
        if self.energy not in ENERGY_MODES:
            raise ConfigError(f"--energy must be one of {ENERGY_MODES}, got {self.energy!r}")
        if self.sensitivity not in SENSITIVITIES:
            raise ConfigError(f"--sensitivity must be one of {', '.join(SENSITIVITIES)}, got {self.sensitivity!r}")
        _check_int("--search-samples", self.samples, 1)
        if self.batch_size is not None:
            _check_int("--batch-size", self.batch_size, 1)
        if self.ssc and not any(math.isclose(t, 1.0) for t in self.tau_grid):
            raise ConfigError(f"--tau-grid must include 1.0 (the SSC budget is r * sum S_i(tau=1)), "
                              f"got {list(self.tau_grid)}")
        if self.guard is not None and not isinstance(self.guard, GuardConfig):
            raise ConfigError(f"guard must be a GuardConfig, got {type(self.guard).__name__}")
        if self.guard is not None and not self.ssc:
            raise ConfigError("--guard-data guards SSC's choice: give --ssc too")
        _check_int("--workers", self.workers, 0)
        if self.workers > 4096:
            raise ConfigError(f"--workers must be at most 4096, got {self.workers}")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise ConfigError(f"--ray-address must be a cluster address (host:port or ray://host:port), "
                              f"got {self.ray_address!r}")
        if self.ray_address and self.workers:
            raise ConfigError("give one of --workers (a local Ray instance) and --ray-address (a running cluster)")

    @property
    def search_batch(self) -> int:
        return self.batch_size or self.DEFAULT_BATCH

    @property
    def any(self) -> bool:
        """Whether there is anything to search."""
        return self.bsr or self.ssc
