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

__all__ = ["MAXPOOL_MODES", "THRESHOLD_METHODS", "LayerConfig", "ThresholdConfig", "ImageOptions",
           "CalibrationConfig", "ConvertConfig"]

#: MaxPool handling (§3). "lateral" (the default: measured best, see ``onnx2burst.graph.maxpool``):
#: lateral inhibition, each window passes its input with the most spikes so far; "spikes": keep
#: MaxPool, applied per timestep on the spike maps; "avg": AveragePool instead.
MAXPOOL_MODES = ("lateral", "spikes", "avg")
#: Threshold rule (§4). "search": the 95-candidate error search; "max": theta = channel max
#: (plain max-normalisation, the classic baseline).
THRESHOLD_METHODS = ("search", "max")


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")


def _check_pos(name: str, value) -> None:
    try:
        ok = math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


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
    folder; the first ``samples`` of a reader). batch_size: samples per onnxruntime run.
    seed: the subset choice. threads: onnxruntime intra-op threads (None: its default).
    kernel: use the C++ BurstIF kernel (None: when available). cache_mb: memory the bias
    calibration may use to keep spike maps between layers (0 disables the cache; results
    are the same, only slower). max_memory: refuse (``ResourceLimitError``) before running
    anything when the model's declared sizes, weights and this plan would need more memory
    than this: bytes, or a size such as ``"8G"`` (``--max-memory``); None: the memory
    available when the conversion starts (``onnx2burst.limits``).
    """

    samples: int = 512
    batch_size: int = 64
    seed: int = 0
    threads: int | None = None
    kernel: bool | None = None
    cache_mb: int = 512
    image: ImageOptions = field(default_factory=ImageOptions)
    max_memory: int | str | None = None

    def __post_init__(self):
        from .limits import parse_bytes

        object.__setattr__(self, "max_memory", parse_bytes(self.max_memory))
        _check_int("--calib-samples", self.samples, 1)
        _check_int("--batch-size", self.batch_size, 1)
        _check_int("--seed", self.seed, 0)
        if self.threads is not None:
            _check_int("--threads", self.threads, 1)
        _check_int("cache_mb", self.cache_mb, 0)


@dataclass(frozen=True)
class ConvertConfig:
    """Everything a conversion needs besides the model and the calibration data.

    T: timesteps; psi: most spikes per step; tau: threshold ratio (neurons fire at tau*vth).
    ``layers`` maps a neuron name (as ``onnx2burst inspect`` lists it) to a ``LayerConfig``
    overriding psi/tau for that neuron only. maxpool: "lateral", "spikes" or "avg" (§3).
    per_timestep_output: add a second output ``<name>_per_timestep`` ``[T, N, K]``.
    bias_calibration: run §5 after the thresholds. allow_inexact: convert even when ops
    between neurons cannot be converted exactly (§3).
    """

    T: int = 8
    psi: int = 4
    tau: float = 1.0
    maxpool: str = "lateral"
    per_timestep_output: bool = False
    bias_calibration: bool = True
    allow_inexact: bool = False
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    layers: Mapping[str, LayerConfig] = field(default_factory=dict)

    def __post_init__(self):
        _check_int("--T", self.T, 1)
        _check_int("--psi", self.psi, 1)
        _check_pos("--tau", self.tau)
        if self.maxpool not in MAXPOOL_MODES:
            raise ConfigError(f"--maxpool must be one of {MAXPOOL_MODES}, got {self.maxpool!r}")
        layers = {}
        for name, lc in dict(self.layers).items():
            if isinstance(lc, Mapping):
                lc = LayerConfig(**lc)
            if not isinstance(lc, LayerConfig):
                raise ConfigError(f"layers[{name!r}] must be a LayerConfig, got {type(lc).__name__}")
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
