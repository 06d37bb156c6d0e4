"""Model input data, for calibration, search, guard and evaluation alike: every source
becomes a ``CalibrationSet`` (the samples in memory, one array per model input, optional
labels, checked against the model's inputs).

Sources (``load_data``):

- a ``.npy`` file: the one input of a single-input model, ``[N, ...]``;
- a ``.npz`` file: one array per input name, plus optional ``labels`` (or ``label``, ``y``,
  ``targets``); other arrays are ignored. For a single-input model the input may also be
  named ``input``, ``x``, ``inputs``, ``data`` or ``images``, or be the only array;
- a folder of images (png, jpg, bmp, gif, tif, webp; searched recursively), resized to
  ``ImageOptions.size`` (default: the model's H, W) and normalised as
  ``(pixel/255 - mean) / std``; needs Pillow. An image whose header declares more than
  ``ImageOptions.max_pixels`` pixels is refused before it is decoded;
- from Python: a numpy array (single input), an ``(inputs, labels)`` pair (single input), a
  mapping ``{input name: array}``, a ``CalibrationSet``, an
  onnxruntime-style reader (``get_next()`` returning an input dict or None; ``rewind()``
  is called first when it has one), or any iterable of input dicts (or of arrays, for a
  single input). Items may be batched ``[B, ...]`` or single samples.

At most ``samples`` samples are kept: with a ``seed``, a seeded random subset of a larger
file or folder; without, the first ones (always the first ones of a reader). Files are always read with ``allow_pickle=False``; in an
``.npz`` only the arrays used are decompressed, after their headers were checked: an object
dtype (a pickle) is refused unread, and arrays larger than the memory limit (``max_memory``,
see ``onnx2burst.limits``) raise ``ResourceLimitError`` (zip bombs); so do the samples of an
``.npy`` (a file map) before they are copied.
Errors (``CalibrationDataError``) name the file and input and show both shapes: empty
data, NaN/inf, a wrong rank, shape or dtype, pickled objects.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import onnx
from onnx import helper

from ..config import ImageOptions
from ..errors import CalibrationDataError
from .files import np_load, npy_array, npz_arrays, subset
from .images import read_image_folder

__all__ = ["InputSpec", "CalibrationSet", "load_data", "input_specs"]

LABELS = "labels"
#: other names an .npz may use for the labels, and for the input of a single-input model
LABEL_KEYS = (LABELS, "label", "y", "targets")
INPUT_KEYS = ("input", "x", "inputs", "data", "images")


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype, dims (int, symbol or None; axis 0 is the batch)."""

    name: str
    dtype: np.dtype
    shape: tuple | None

    def show(self) -> str:
        if self.shape is None:
            return f"{self.name} (any shape, {self.dtype})"
        return f"[{', '.join('?' if d is None else str(d) for d in self.shape)}] {self.dtype}"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype(np.float32)
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


class CalibrationSet:
    """Calibration samples in memory: ``inputs`` (name -> array, samples on axis 0),
    optional ``labels``, and ``source`` (a description for messages and metadata)."""

    def __init__(self, inputs: Mapping[str, np.ndarray], labels: np.ndarray | None = None, source: str = "arrays"):
        self.inputs = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        sizes = {k: v.shape[0] for k, v in self.inputs.items()}
        if len(set(sizes.values())) > 1:
            raise CalibrationDataError(f"{source}: the inputs have different numbers of samples: {sizes}")
        self.labels = None if labels is None else np.asarray(labels)
        self.source = source

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0] if self.inputs else 0

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Input dicts of at most ``batch_size`` samples, in order (views, not copies)."""
        n = len(self)
        for s in range(0, n, batch_size):
            yield {k: v[s:s + batch_size] for k, v in self.inputs.items()}

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def head(self, n: int) -> "CalibrationSet":
        """The first ``n`` samples."""
        return CalibrationSet({k: v[:n] for k, v in self.inputs.items()},
                              None if self.labels is None else self.labels[:n], self.source)


# ------------------------------------------------------------------ checks
def _check_layout(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """Dtype and shape against ``spec``; reads no values (a file map stays unread)."""
    arr = np.asarray(arr)
    if arr.dtype == object:
        raise CalibrationDataError(f"{where}: input {spec.name!r} holds Python objects, not numbers")
    if spec.shape is not None:
        want = spec.shape
        if arr.ndim != len(want) or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(want[1:], arr.shape[1:])):
            raise CalibrationDataError(
                f"{where}: input {spec.name!r} has shape {list(arr.shape)} (rank {arr.ndim}); the model "
                f"expects {spec.show()} (rank {len(want)}; axis 0 is the batch)")
    if arr.dtype != spec.dtype:
        raise CalibrationDataError(
            f"{where}: input {spec.name!r} is {arr.dtype} with shape {list(arr.shape)}; the model expects "
            f"{spec.show()} (convert it, e.g. x.astype(np.{spec.dtype.name}))")
    return arr


def _check(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    arr = _check_layout(arr, spec, where)
    if arr.shape[0] == 0:
        raise CalibrationDataError(f"{where}: input {spec.name!r} is empty (0 samples)")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise CalibrationDataError(f"{where}: input {spec.name!r} has NaN or inf values in "
                                       f"{int(bad.sum())} sample(s) (first: sample {first})")
    return arr


def _from_arrays(arrays: Mapping[str, np.ndarray], specs: list[InputSpec], where: str, samples: int, seed: int,
                 allow_single_rename: bool = True) -> CalibrationSet:
    arrays = dict(arrays)
    labels = arrays.pop(LABELS, None)
    names = [s.name for s in specs]
    if len(specs) == 1 and names[0] not in arrays and len(arrays) == 1 and allow_single_rename:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationDataError(f"{where}: has arrays {sorted(arrays)}; the model's inputs are {names} "
                                   f"(missing: {missing})")
    arrays = {k: arrays[k] for k in names}  # other arrays (metadata) are ignored
    n = {k: np.shape(v)[0] if np.ndim(v) else 0 for k, v in arrays.items()}
    if len(set(n.values())) > 1:
        raise CalibrationDataError(f"{where}: the inputs have different numbers of samples: {n}")
    count = next(iter(n.values()))
    if count == 0:
        raise CalibrationDataError(f"{where}: the calibration data is empty (0 samples)")
    sel = subset(count, samples, seed)
    out = {}
    for spec in specs:
        a = arrays[spec.name]
        if np.ndim(a) == 0:
            raise CalibrationDataError(f"{where}: input {spec.name!r} is a scalar; the model expects {spec.show()}")
        _check_layout(a, spec, where)  # before anything is copied out of a file map
        a = np.array(a[sel] if sel is not None else a[:samples])  # in memory, not a file map
        out[spec.name] = _check(a, spec, where)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype == object or labels.ndim == 0 or labels.shape[0] != count:
            raise CalibrationDataError(f"{where}: 'labels' must be a numeric array of {count} values, "
                                       f"got shape {list(labels.shape)} {labels.dtype}")
        labels = labels[sel] if sel is not None else labels[:samples]
    return CalibrationSet(out, labels, where)


def _load_npz(path: Path, specs, samples, seed, max_memory=None) -> CalibrationSet:
    z = np_load(path)
    if not hasattr(z, "files"):
        raise CalibrationDataError(f"{path}: expected an .npz archive")
    with z:
        keys = list(z.files)
        names = [s.name for s in specs]
        lab = next((k for k in LABEL_KEYS if k in keys), None)
        others = [k for k in keys if k != lab]
        rename = {lab: LABELS} if lab else {}
        if len(specs) == 1 and names[0] not in keys:  # a single input under a usual name, or alone
            alias = next((k for k in INPUT_KEYS if k in others), None) or (others[0] if len(others) == 1 else None)
            if alias:
                rename[alias] = names[0]
        wanted = [k for k in keys if k in names or k in rename]
        arrays: dict = dict.fromkeys(k for k in keys if k not in rename)  # arrays not used are never decompressed
        for k, v in npz_arrays(z, path, wanted, max_memory).items():
            arrays[rename.get(k, k)] = v
    return _from_arrays(arrays, specs, str(path), samples, seed)


def _load_npy(path: Path, specs, samples, seed, max_memory=None) -> CalibrationSet:
    if len(specs) != 1:
        raise CalibrationDataError(f"{path}: a .npy file holds one array, but the model has {len(specs)} inputs "
                                   f"{[s.name for s in specs]}; use an .npz with one array per input")
    a = npy_array(path, samples, max_memory)
    return _from_arrays({specs[0].name: a}, specs, str(path), samples, seed)


# ------------------------------------------------------------------ readers and iterables
def _items(source):
    if hasattr(source, "get_next"):
        if hasattr(source, "rewind"):
            source.rewind()
        while True:
            item = source.get_next()
            if item is None:
                return
            yield item
    else:
        yield from source


def _from_reader(source, specs: list[InputSpec], samples: int) -> CalibrationSet:
    where = f"calibration reader {type(source).__name__}"
    parts: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    labels: list[np.ndarray] = []
    count = 0
    for k, item in enumerate(_items(source)):
        if isinstance(item, np.ndarray):
            if len(specs) != 1:
                raise CalibrationDataError(f"{where}: item {k} is an array; the model has inputs "
                                           f"{[s.name for s in specs]}, give dicts")
            item = {specs[0].name: item}
        if not isinstance(item, Mapping):
            raise CalibrationDataError(f"{where}: item {k} is a {type(item).__name__}, expected a dict of arrays")
        item = dict(item)
        lab = item.pop(LABELS, None)
        missing = [s.name for s in specs if s.name not in item]
        if missing or len(item) != len(specs):
            raise CalibrationDataError(f"{where}: item {k} has keys {sorted(item)}; the model's inputs are "
                                       f"{[s.name for s in specs]}")
        n = None
        for s in specs:
            a = np.asarray(item[s.name])
            if s.shape is not None and a.ndim == len(s.shape) - 1:
                a = a[None]  # a single sample
            _check(a, s, f"{where}, item {k}")
            if n is not None and a.shape[0] != n:
                raise CalibrationDataError(f"{where}: item {k}: inputs with different batch sizes")
            n = a.shape[0]
            parts[s.name].append(a)
        if lab is not None:
            labels.append(np.asarray(lab).reshape(-1))
        count += n
        if count >= samples:
            break
    if count == 0:
        raise CalibrationDataError(f"{where}: the calibration data is empty (it gave no samples)")
    inputs = {k: np.concatenate(v)[:samples] for k, v in parts.items()}
    lab = np.concatenate(labels)[:samples] if labels and sum(len(x) for x in labels) >= min(count, samples) else None
    return CalibrationSet(inputs, lab, where)


def load_data(source, specs: list[InputSpec] | onnx.ModelProto, *, samples: int | None = None,
              seed: int | None = None, image: ImageOptions | None = None, max_memory=None) -> CalibrationSet:
    """Read ``source`` (see the module docstring) into a checked ``CalibrationSet``.

    samples: keep at most this many (None: all). seed: which ones when there are more (a
    seeded random subset); None: the first ``samples``.

    max_memory: the most bytes the arrays read from an ``.npz``, or the samples copied out of
    an ``.npy``, may take (bytes or ``"8G"``; None: the memory available now)."""
    if isinstance(specs, onnx.ModelProto):
        specs = input_specs(specs)
    if samples is None:
        samples = sys.maxsize
    image = image or ImageOptions()
    if isinstance(source, CalibrationSet):
        return _from_arrays({**source.inputs, **({LABELS: source.labels} if source.labels is not None else {})},
                            specs, source.source, samples, seed, allow_single_rename=False)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise CalibrationDataError(f"calibration data not found: {path}")
        if path.is_dir():
            out = read_image_folder(path, specs, samples, seed, image)
            return CalibrationSet({specs[0].name: _check(out, specs[0], str(path))}, None, str(path))
        if not path.is_file():  # a FIFO would block the read forever, a device never end
            raise CalibrationDataError(f"{path} is not a regular file (a pipe, a device or a socket); refused")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _load_npz(path, specs, samples, seed, max_memory)
        if suffix == ".npy":
            return _load_npy(path, specs, samples, seed, max_memory)
        raise CalibrationDataError(f"{path}: unsupported calibration file; give a .npy, an .npz or a folder of images")
    if isinstance(source, np.ndarray):
        if len(specs) != 1:
            raise CalibrationDataError(f"an array was given, but the model has inputs {[s.name for s in specs]}; "
                                       "give a dict {input name: array}")
        return _from_arrays({specs[0].name: source}, specs, "array", samples, seed)
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], np.ndarray) and len(specs) == 1:
        x, y = source  # (inputs, labels)
        return _from_arrays({specs[0].name: x, **({LABELS: y} if y is not None else {})}, specs, "arrays", samples,
                            seed)
    if isinstance(source, Mapping):
        return _from_arrays(source, specs, "dict of arrays", samples, seed, allow_single_rename=False)
    if hasattr(source, "get_next") or hasattr(source, "__iter__"):
        return _from_reader(source, specs, samples)
    raise CalibrationDataError(f"cannot read calibration data from a {type(source).__name__}")
