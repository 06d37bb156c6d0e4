"""``TorchStream``: the step API of ``StreamSession`` on PyTorch (docs/stream.md).

The streaming model's graph runs with torch ops (``onnx2burst.torch``, which maps each ONNX op
onto torch; ``.to(device)`` moves it), its state kept as tensors between calls. Torch's
convolutions round differently from onnxruntime's, so it agrees with ``StreamSession`` closely,
not bit for bit, as ``onnx2burst.torch`` agrees with the SNN.
"""
from __future__ import annotations

import os

import onnx

from ..errors import ConfigError

__all__ = ["TorchStream"]


class TorchStream:
    """reset / step / prediction of a streaming model (path or ModelProto) in torch."""

    def __init__(self, model, device: str = "cpu"):
        import torch

        from ..interop.torch import OnnxModule
        from ..io import load_model
        from .build import stream_info

        what = "the model" if isinstance(model, onnx.ModelProto) else os.fspath(model)
        m = model if isinstance(model, onnx.ModelProto) else load_model(model)
        info = stream_info(m)
        if info is None:
            raise ConfigError(f"{what} is not a streaming model: make one with `onnx2burst export-stream`")
        self._torch = torch
        self.module = OnnxModule(m).eval().to(device)
        self.device = device
        self.T = int(info["T"])
        self.inputs = list(info["inputs"])
        self.output_names = [o["name"] for o in info["outputs"]]
        self._states = info["states"]
        names = self.module.output_names
        self._step_at = [names.index(o["step"]) for o in info["outputs"]]
        self._pred_at = [names.index(o["name"]) for o in info["outputs"]]
        self._state_at = [names.index(s["out"]) for s in self._states]
        self._order = self.module.input_names
        self._state = None
        self._pred = None
        self.steps = 0

    def reset(self, batch_size: int = 1) -> None:
        """Zero every state for ``batch_size`` samples."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"reset: batch_size must be an integer >= 1, got {batch_size!r}")
        t = self._torch
        shared = ("steps", "shared")  # no batch axis
        self._state = {s["in"]: t.zeros(list(s["shape"]) if s["kind"] in shared else [batch_size, *s["shape"]],
                                        dtype=t.float32, device=self.device) for s in self._states}
        self._batch = batch_size
        self._pred = None
        self.steps = 0

    def step(self, feeds: dict) -> list:
        """One timestep; returns this step's outputs (torch tensors) in the SNN's output order."""
        if self._state is None:
            raise ConfigError("step before reset(): call reset(batch_size) first")
        missing = [k for k in self.inputs if k not in feeds]
        if missing or set(feeds) - set(self.inputs):
            raise ConfigError(f"step: the model's inputs are {self.inputs}, got {sorted(feeds)}")
        t = self._torch
        env = {k: t.as_tensor(v, dtype=t.float32, device=self.device) for k, v in feeds.items()}
        for k, v in env.items():
            if v.dim() == 0 or v.shape[0] != self._batch:
                raise ConfigError(f"step: input {k!r} has shape {list(v.shape)}; reset was for batch {self._batch}")
        env.update(self._state)
        with t.no_grad():
            outs = self.module(*[env[n] for n in self._order])
        outs = outs if isinstance(outs, tuple) else (outs,)
        self._state = {s["in"]: outs[i] for s, i in zip(self._states, self._state_at)}
        self._pred = [outs[i] for i in self._pred_at]
        self.steps += 1
        return [outs[i] for i in self._step_at]

    def prediction(self) -> list:
        """The any-time outputs after the steps so far (the SNN's head applied)."""
        if self._pred is None:
            raise ConfigError("prediction() before the first step")
        return list(self._pred)
