"""Input batches for evaluation and search: arrays, an ``.npy`` of inputs, or an ``.npz`` with
inputs and labels.

An ``.npz`` holds the input under the model's input name, ``input``, or ``x`` (or as its
only array), and optionally labels under ``labels``, ``label`` or ``y``. It is read as
calibration files are (``calibration.data.npz_arrays``): no pickles, headers checked, only
the two arrays used decompressed, within the memory limit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

_INPUT_KEYS = ("input", "x", "inputs", "data", "images")
_LABEL_KEYS = ("labels", "label", "y", "targets")


@dataclass(frozen=True)
class Dataset:
    """Inputs ``[N, ...]`` float32 and optional int64 labels ``[N]``."""

    x: np.ndarray
    labels: np.ndarray | None = None
    source: str = "<arrays>"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def limit(self, n: int | None) -> "Dataset":
        if n is None or n >= len(self):
            return self
        return Dataset(self.x[:n], None if self.labels is None else self.labels[:n], self.source)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        for s in range(0, len(self), batch_size):
            yield self.x[s:s + batch_size], None if self.labels is None else self.labels[s:s + batch_size]


def load_dataset(data, input_name: str | None = None, max_memory=None) -> Dataset:
    """A Dataset from a Dataset, a ``CalibrationSet`` (one input), an array, an
    ``(x, labels)`` pair, an ``.npy`` path (inputs only), or an ``.npz`` path (its arrays within
    ``max_memory``, see
    ``onnx2burst.limits``)."""
    if isinstance(data, Dataset):
        return data
    inputs = getattr(data, "inputs", None)
    if isinstance(inputs, dict):  # onnx2burst.calibration.data.CalibrationSet
        if len(inputs) != 1:
            raise ValueError(f"{getattr(data, 'source', 'data')}: one input expected, got {sorted(inputs)}")
        labels = getattr(data, "labels", None)
        return Dataset(np.ascontiguousarray(next(iter(inputs.values())), dtype=np.float32),
                       None if labels is None else np.asarray(labels).astype(np.int64),
                       str(getattr(data, "source", "calibration set")))
    if isinstance(data, np.ndarray):
        return Dataset(np.ascontiguousarray(data, dtype=np.float32))
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        return Dataset(np.ascontiguousarray(x, dtype=np.float32),
                       None if y is None else np.asarray(y).astype(np.int64))
    path = os.fspath(data)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    from ..calibration.data import npy_array, npz_arrays, npz_headers
    from ..errors import CalibrationDataError  # a ValueError: a clean message at the CLI

    if path.endswith(".npy"):  # one input array, no labels
        a = npy_array(path, None, max_memory)
        if a.ndim < 2:
            raise CalibrationDataError(f"{path}: expected inputs [N, ...], got an array of shape {list(a.shape)}")
        return Dataset(np.ascontiguousarray(a, dtype=np.float32), None, path)
    with np.load(path, allow_pickle=False) as z:
        headers = npz_headers(z, path)  # no array decompressed yet; pickles refused
        keys = list(headers)
        xk = next((k for k in ((input_name,) if input_name else ()) + _INPUT_KEYS if k in keys), None)
        arrays = [k for k, h in headers.items() if h is not None and len(h[0]) >= 2]
        if xk is None and len(arrays) == 1:
            xk = arrays[0]
        if xk is None:
            want = list(dict.fromkeys(((input_name,) if input_name else ()) + _INPUT_KEYS))
            raise CalibrationDataError(f"{path}: no input array; expected one of {want}, found {keys}")
        yk = next((k for k in _LABEL_KEYS if k in keys), None)
        got = npz_arrays(z, path, [xk] + ([yk] if yk else []), max_memory)
        x = np.ascontiguousarray(got[xk], dtype=np.float32)
        y = None if yk is None else got[yk].astype(np.int64).reshape(-1)
    if y is not None and y.shape[0] != x.shape[0]:
        raise CalibrationDataError(f"{path}: {x.shape[0]} inputs but {y.shape[0]} labels")
    return Dataset(x, y, path)


def data_input(model) -> str:
    """The name of the model's one data input (graph inputs that are not initializers)."""
    from ..errors import ConfigError

    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ConfigError(f"expected one data input, the model has {names}")
    return names[0]
