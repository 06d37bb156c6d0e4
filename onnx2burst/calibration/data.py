"""Calibration data: every source becomes a ``CalibrationSet`` (the samples in memory, one
array per model input, checked against the model's inputs).

Sources (``load_calibration``):

- a ``.npy`` file: the one input of a single-input model, ``[N, ...]``;
- a ``.npz`` file: one array per input name, plus optional ``labels``; other arrays are
  ignored (for a single-input model, a lone array under another name is taken too);
- a folder of images (png, jpg, bmp, gif, tif, webp; searched recursively), resized to
  ``ImageOptions.size`` (default: the model's H, W) and normalised as
  ``(pixel/255 - mean) / std``; needs Pillow. An image whose header declares more than
  ``ImageOptions.max_pixels`` pixels is refused before it is decoded;
- from Python: a numpy array (single input), a mapping ``{input name: array}``, an
  onnxruntime-style reader (``get_next()`` returning an input dict or None; ``rewind()``
  is called first when it has one), or any iterable of input dicts (or of arrays, for a
  single input). Items may be batched ``[B, ...]`` or single samples.

At most ``samples`` samples are kept: a seeded random subset of a larger file or folder,
the first ones of a reader. Files are always read with ``allow_pickle=False``; in an
``.npz`` only the arrays used are decompressed, after their headers were checked: an object
dtype (a pickle) is refused unread, and arrays larger than the memory limit (``max_memory``,
see ``onnx2burst.limits``) raise ``ResourceLimitError`` (zip bombs); so do the samples of an
``.npy`` (a file map) before they are copied.
Errors (``CalibrationDataError``) name the file and input and show both shapes: empty
data, NaN/inf, a wrong rank, shape or dtype, pickled objects.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import onnx
from onnx import helper

from ..config import ImageOptions
from ..errors import CalibrationDataError, ResourceLimitError
from ..limits import format_bytes, memory_limit

__all__ = ["InputSpec", "CalibrationSet", "load_calibration", "input_specs", "npz_headers", "npz_arrays",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
LABELS = "labels"


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


def _subset(n: int, samples: int, seed: int) -> np.ndarray | None:
    if n <= samples:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))


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
    sel = _subset(count, samples, seed)
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


# ------------------------------------------------------------------ files
def _np_load(path: Path):
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if path.suffix == ".npy" else None)
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise CalibrationDataError(f"{path}: holds pickled Python objects; refused (only plain numeric "
                                       "arrays are read, never pickles)") from None
        raise CalibrationDataError(f"{path}: not a readable numpy file: {e}") from None
    except Exception as e:  # noqa: BLE001 - OSError, EOFError, BadZipFile, ...: a damaged file
        raise CalibrationDataError(f"{path}: not a readable numpy file: {e}") from None


def _npz_header(z, key: str, path: Path, used: bool = True) -> tuple[tuple, np.dtype] | None:
    """Shape and dtype of array ``key`` of an open ``.npz``, from its .npy header only (None
    for an unreadable member that is not ``used``); an object dtype is refused."""
    fmt = np.lib.format
    member = key + ".npy" if key + ".npy" in z.zip.namelist() else key
    try:
        with z.zip.open(member) as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
    except Exception as e:  # noqa: BLE001 - not .npy magic, a damaged header, a zip error
        if not used:
            return None
        raise CalibrationDataError(f"{path}: member {member!r} is not a readable numpy array: {e}") from None
    if dtype.hasobject:
        raise CalibrationDataError(f"{path}: array {key!r} holds pickled Python objects ({dtype}); refused unread "
                                   "(only plain numeric arrays are read, never pickles)")
    return tuple(shape), dtype


def npz_headers(z, path) -> dict[str, tuple[tuple, np.dtype] | None]:
    """``{name: (shape, dtype)}`` of every array of an open ``.npz`` (``np.load(...,
    allow_pickle=False)``), read from the .npy headers only: nothing is decompressed. An
    object dtype (a pickle) anywhere raises ``CalibrationDataError``; a member that is not
    an .npy array gives None."""
    try:
        keys = list(z.files)
    except Exception as e:  # noqa: BLE001
        raise CalibrationDataError(f"{path}: not a readable .npz archive: {e}") from None
    return {k: _npz_header(z, k, Path(path), used=False) for k in keys}


def npz_arrays(z, path, wanted, max_memory=None) -> dict[str, np.ndarray]:
    """Arrays ``wanted`` of an open ``.npz``, decompressed only after ``npz_headers`` and a
    check of their total size against the memory limit (``ResourceLimitError``: zip bombs)."""
    headers = npz_headers(z, path)
    for k in wanted:
        if headers[k] is None:
            _npz_header(z, k, Path(path))  # raises, naming the member
    need = sum(int(np.prod(headers[k][0], dtype=np.float64)) * headers[k][1].itemsize for k in wanted)
    limit, source = memory_limit(max_memory)
    if need > limit:
        shown = ", ".join(f"{k!r} {list(headers[k][0])} {headers[k][1]}" for k in wanted)
        raise ResourceLimitError(
            f"{path}: its arrays {shown} need {format_bytes(need)} ({need:,} bytes) once decompressed, more "
            f"than the limit of {format_bytes(limit)} ({limit:,} bytes; {source}); refused before reading them")
    out = {}
    for k in wanted:
        try:
            out[k] = z[k]
        except ValueError as e:
            raise CalibrationDataError(f"{path}: array {k!r} holds pickled Python objects; refused ({e})") from None
        except Exception as e:  # noqa: BLE001 - zip/CRC errors of a damaged file
            raise CalibrationDataError(f"{path}: cannot read array {k!r}: {e}") from None
    return out


def _load_npz(path: Path, specs, samples, seed, max_memory=None) -> CalibrationSet:
    z = _np_load(path)
    if not hasattr(z, "files"):
        raise CalibrationDataError(f"{path}: expected an .npz archive")
    with z:
        keys = list(z.files)
        names = [s.name for s in specs]
        others = [k for k in keys if k != LABELS]
        if len(specs) == 1 and names[0] not in keys and len(others) == 1:
            wanted = list(others)  # a lone array for a single-input model (as _from_arrays takes it)
        else:
            wanted = [k for k in names if k in keys]
        wanted += [LABELS] if LABELS in keys else []
        arrays: dict = dict.fromkeys(keys)  # arrays not used are never decompressed
        arrays.update(npz_arrays(z, path, wanted, max_memory))
    return _from_arrays(arrays, specs, str(path), samples, seed)


def npy_array(path, samples: int | None = None, max_memory=None) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped (no pickles, no objects), refused when its
    first ``samples`` rows (all when None) would need more than the memory limit."""
    path = Path(path)
    a = _np_load(path)
    if not isinstance(a, np.ndarray):
        raise CalibrationDataError(f"{path}: expected a .npy array")
    if a.dtype == object:
        raise CalibrationDataError(f"{path}: holds Python objects; refused")
    rows = (a.shape[0] if samples is None else min(a.shape[0], samples)) if a.ndim else 0
    need = rows * int(np.prod(a.shape[1:], dtype=np.float64)) * a.dtype.itemsize
    limit, source = memory_limit(max_memory)
    if need > limit:  # a (sparse) file declaring huge samples: the copy out of the map is bounded
        raise ResourceLimitError(
            f"{path}: {rows} samples of shape {list(a.shape[1:])} {a.dtype} need {format_bytes(need)} ({need:,} "
            f"bytes), more than the limit of {format_bytes(limit)} ({limit:,} bytes; {source}); refused before "
            "reading them")
    return a


def _load_npy(path: Path, specs, samples, seed, max_memory=None) -> CalibrationSet:
    if len(specs) != 1:
        raise CalibrationDataError(f"{path}: a .npy file holds one array, but the model has {len(specs)} inputs "
                                   f"{[s.name for s in specs]}; use an .npz with one array per input")
    a = npy_array(path, samples, max_memory)
    return _from_arrays({specs[0].name: a}, specs, str(path), samples, seed)


def _load_images(folder: Path, specs, samples, seed, image: ImageOptions) -> CalibrationSet:
    if len(specs) != 1:
        raise CalibrationDataError(f"{folder}: images feed a single-input model; this one has inputs "
                                   f"{[s.name for s in specs]}")
    spec = specs[0]
    if spec.shape is None or len(spec.shape) != 4:
        raise CalibrationDataError(f"{folder}: images need a model input [N, C, H, W]; the model's is {spec.show()}")
    c, h, w = spec.shape[1:]
    if not isinstance(c, int) or c not in (1, 3, 4):
        raise CalibrationDataError(f"{folder}: the model input has {c} channels; images give 1, 3 or 4")
    if image.size is not None:
        h, w = image.size
    elif not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise CalibrationDataError(f"{folder}: the model input's H, W are not fixed ({spec.show()}); give --size")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise CalibrationDataError(f"{folder}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    sel = _subset(len(files), samples, seed)
    files = [files[i] for i in sel] if sel is not None else files[:samples]
    try:
        from PIL import Image
    except ImportError:
        raise CalibrationDataError("reading an image folder needs Pillow (pip install pillow)") from None
    mean = np.array(image.mean, np.float32)
    std = np.array(image.std, np.float32)
    for name, v in (("--mean", mean), ("--std", std)):
        if v.size not in (1, c):
            raise CalibrationDataError(f"{name} has {v.size} values; the model input has {c} channels (give 1 or {c})")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    out = np.empty((len(files), c, h, w), np.float32)
    cap = int(image.max_pixels)
    limit_msg = f"the limit is {cap:,} pixels (ImageOptions.max_pixels, --max-image-pixels)"
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = cap  # Pillow's own check at open: warns above cap, raises above 2*cap
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for k, f in enumerate(files):
                try:
                    with Image.open(f) as im:  # lazy: reads the header, decodes nothing yet
                        iw, ih = im.size
                        if iw * ih > cap:
                            raise CalibrationDataError(
                                f"{f}: the image declares {iw}x{ih} = {iw * ih:,} pixels; {limit_msg}; refused "
                                "before decoding (a decompression bomb?)")
                        im = im.convert(mode).resize((w, h), Image.BILINEAR)
                        a = np.asarray(im, dtype=np.float32).reshape(h, w, c)
                except CalibrationDataError:
                    raise
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                    n = re.search(r"\((\d+) pixels\)", str(e))  # Pillow's check at open, same cap
                    size = f"{int(n.group(1)):,} pixels" if n else f"too many pixels ({e})"
                    raise CalibrationDataError(f"{f}: the image declares {size}; {limit_msg}; refused before "
                                               "decoding (a decompression bomb?)") from None
                except Exception as e:  # noqa: BLE001
                    raise CalibrationDataError(f"{f}: cannot read the image: {e}") from None
                out[k] = a.transpose(2, 0, 1)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    out /= np.float32(255.0)
    out -= mean.reshape(-1, 1, 1)
    out /= std.reshape(-1, 1, 1)
    if out.dtype != spec.dtype:
        raise CalibrationDataError(f"{folder}: images give float32; the model expects {spec.show()}")
    return CalibrationSet({spec.name: _check(out, spec, str(folder))}, None, str(folder))


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


def load_calibration(source, specs: list[InputSpec] | onnx.ModelProto, *, samples: int = 512, seed: int = 0,
                     image: ImageOptions | None = None, max_memory=None) -> CalibrationSet:
    """Read ``source`` (see the module docstring) into a checked ``CalibrationSet``.

    max_memory: the most bytes the arrays read from an ``.npz``, or the samples copied out of
    an ``.npy``, may take (bytes or ``"8G"``; None: the memory available now)."""
    if isinstance(specs, onnx.ModelProto):
        specs = input_specs(specs)
    image = image or ImageOptions()
    if isinstance(source, CalibrationSet):
        return _from_arrays({**source.inputs, **({LABELS: source.labels} if source.labels is not None else {})},
                            specs, source.source, samples, seed, allow_single_rename=False)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise CalibrationDataError(f"calibration data not found: {path}")
        if path.is_dir():
            return _load_images(path, specs, samples, seed, image)
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
    if isinstance(source, Mapping):
        return _from_arrays(source, specs, "dict of arrays", samples, seed, allow_single_rename=False)
    if hasattr(source, "get_next") or hasattr(source, "__iter__"):
        return _from_reader(source, specs, samples)
    raise CalibrationDataError(f"cannot read calibration data from a {type(source).__name__}")
