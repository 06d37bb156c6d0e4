"""The streaming form of an SNN and adaptive timesteps (docs/stream.md).

- ``export_stream(snn)``: a model that runs one timestep per call, its state as inputs and outputs;
- ``StreamSession``: reset / step / prediction / run_adaptive on such a model;
- ``ExitRule`` / ``choose_rule``: stop a sample once its any-time output is confident enough;
- ``TorchStream``: the same step API on PyTorch (imported on first use).
"""
from __future__ import annotations

from .export import export_stream, stream_info
from .rule import ExitRule, choose_rule
from .session import AdaptiveRun, StreamSession, StreamState

__all__ = ["export_stream", "stream_info", "StreamSession", "StreamState", "AdaptiveRun", "ExitRule", "choose_rule",
           "TorchStream"]


def __getattr__(name):
    if name == "TorchStream":  # torch only when asked for
        from .torch_step import TorchStream

        return TorchStream
    raise AttributeError(f"module 'onnx2burst.stream' has no attribute {name!r}")
