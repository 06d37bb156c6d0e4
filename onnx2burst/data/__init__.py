"""One data path for every stage that feeds a model: calibration, the search, the SSC guard
and evaluation.

``load_data(source, model, samples=None, seed=None)`` reads any source -- ``.npy``, ``.npz``
(inputs by name, optional labels), a folder of images, arrays, or a :class:`DataReader` --
into a checked :class:`CalibrationSet`: one array per model input (so multi-input models
work everywhere), optional labels, batches as input dicts.
"""
from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np

from .files import npy_array, npz_arrays, npz_headers
from .images import IMAGE_EXTENSIONS
from .sources import LABELS, CalibrationSet, InputSpec, input_specs, load_data

__all__ = ["DataReader", "CalibrationSet", "InputSpec", "input_specs", "load_data", "LABELS",
           "IMAGE_EXTENSIONS", "npy_array", "npz_arrays", "npz_headers"]


class DataReader(Protocol):
    """onnxruntime's ``CalibrationDataReader`` shape: ``get_next()`` returns one input dict
    (``{input name: array}``, a batch ``[B, ...]`` or one sample; an optional ``"labels"``
    entry) or None when done. ``rewind()``, when present, is called before reading."""

    def get_next(self) -> Mapping[str, np.ndarray] | None: ...
