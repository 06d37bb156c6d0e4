"""Reading numpy files safely: no pickles, headers checked before anything is decompressed,
sizes bounded by the memory limit (``onnx2burst.limits``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CalibrationDataError, ResourceLimitError
from ..limits import format_bytes, memory_limit

__all__ = ["np_load", "npz_headers", "npz_arrays", "npy_array", "subset"]


def subset(n: int, samples: int, seed: int | None) -> np.ndarray | None:
    """Sorted indices of a seeded random choice of ``samples`` of ``n``; None: take the first
    ``samples`` (all of them fit, or ``seed`` is None)."""
    if n <= samples or seed is None:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))


def np_load(path: Path):
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


def npy_array(path, samples: int | None = None, max_memory=None) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped (no pickles, no objects), refused when its
    first ``samples`` rows (all when None) would need more than the memory limit."""
    path = Path(path)
    a = np_load(path)
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


