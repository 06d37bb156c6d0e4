"""Running a model over calibration data with onnxruntime, batch by batch."""
from __future__ import annotations

import functools
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

    def __init__(self, model: onnx.ModelProto, *, threads: int | None = None, kernel: bool | None = None,
                 keep_arena: bool = True):
        # calibration makes one session per layer, one after the other. Their tensors come from
        # the process's shared arena, kept from one run to the next when ``keep_arena`` (no
        # arena allocates and faults in every tensor anew on every run: bias calibration
        # 1.6-1.9x slower on the bundled models) and handed back after a layer's last run
        # (``run(..., last=True)``); kept, the arena can hold well over one run's peak (a
        # 224x224 ResNet-50: 5.4 GB against 3.3 without), so where that does not fit the
        # memory budget the caller passes keep_arena=False and it goes back after every run
        self.keep_arena = keep_arena
        self.session = ops.make_session(model, kernel=kernel, threads=threads, layout="plain", arena="shared")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None, *,
            last: bool = False) -> list[np.ndarray]:
        """One run; last: the last run of this model, after which the arena's free memory goes back."""
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        release = last or not self.keep_arena
        return self.session.run(list(outputs) if outputs else None, feeds, _release() if release else None)

    def iterate(self, data: CalibrationSet, batch_size: int, outputs: Sequence[str] | None = None,
                stage=None) -> Iterator[tuple[int, list[np.ndarray]]]:
        total = data.num_batches(batch_size)
        for k, feeds in enumerate(data.batches(batch_size)):
            n = next(iter(feeds.values())).shape[0]
            yield n, self.run(feeds, outputs, last=k == total - 1)
            if stage is not None:
                stage.advance()


@functools.lru_cache(maxsize=1)
def _release():
    """Run options that shrink the CPU arena at the end of the run (made once)."""
    import onnxruntime as ort

    ro = ort.RunOptions()
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ro
