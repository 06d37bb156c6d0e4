"""Running a model over calibration data with onnxruntime, batch by batch."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import onnx

from .. import ops
from ..data import CalibrationSet

__all__ = ["Runner"]


class Runner:
    """An onnxruntime session (the BurstIF kernel registered when available) over ``model``.

    ``iterate(data, batch_size, outputs)`` yields ``(batch size, [output arrays])`` per batch.
    """

    def __init__(self, model: onnx.ModelProto, *, threads: int | None = None, kernel: bool | None = None):
        # calibration makes one session per layer, one after the other: one arena per session
        # would stay with the process (measured: 5x the peak of one run), no arena allocates
        # every tensor anew on every run; the shared arena holds one run's peak
        self.session = ops.make_session(model, kernel=kernel, threads=threads, layout="plain", arena="shared")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return self.session.run(list(outputs) if outputs else None, feeds)

    def iterate(self, data: CalibrationSet, batch_size: int, outputs: Sequence[str] | None = None,
                stage=None) -> Iterator[tuple[int, list[np.ndarray]]]:
        for feeds in data.batches(batch_size):
            n = next(iter(feeds.values())).shape[0]
            yield n, self.run(feeds, outputs)
            if stage is not None:
                stage.advance()
