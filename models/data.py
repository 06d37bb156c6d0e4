"""Fashion-MNIST loading for the model zoo.

The images come from the Debian package ``dataset-fashion-mnist`` (idx files under
``/usr/share/datasets/fashion-mnist``); nothing is downloaded. Override the location
with the environment variable ``FMNIST_DIR``.

Normalisation: ``x = (pixel/255 - FMNIST_MEAN) / FMNIST_STD``, input ``[N,1,28,28]``
float32, the layout every model in ``models/zoo`` takes.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
FMNIST_SHAPE = (1, 28, 28)
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR = Path(__file__).resolve().parent / "data"
CALIB_NPZ = DATA_DIR / "fmnist_calib.npz"
TEST_NPZ = DATA_DIR / "fmnist_test.npz"

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

INSTALL_HINT = (
    "Fashion-MNIST not found. Install it with\n"
    "    sudo apt-get install dataset-fashion-mnist\n"
    "(or run `make data`), or point FMNIST_DIR at a folder holding the idx files "
    "(train-images-idx3-ubyte[.gz], ... , t10k-labels-idx1-ubyte[.gz])."
)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are missing; the message says how to install them."""


def fmnist_dir() -> Path:
    return Path(os.environ.get("FMNIST_DIR", DEFAULT_FMNIST_DIR))


def _open(base: Path, name: str):
    for cand, opener in ((base / name, open), (base / (name + ".gz"), gzip.open)):
        if cand.is_file():
            return opener(cand, "rb")
    raise DatasetNotFoundError(f"{base / name}[.gz] missing.\n{INSTALL_HINT}")


def _read_idx(base: Path, name: str) -> np.ndarray:
    with _open(base, name) as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{name}: not an unsigned-byte idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims).copy()


def load_fmnist_raw(split: str = "train", root: str | os.PathLike | None = None):
    """Return ``(images uint8 [N,28,28], labels int64 [N])`` for ``split`` in
    {"train", "test"}. Raises :class:`DatasetNotFoundError` with install instructions
    when the files are missing."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    base = Path(root) if root is not None else fmnist_dir()
    img_name, lbl_name = _FILES[split]
    images = _read_idx(base, img_name)
    labels = _read_idx(base, lbl_name).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def normalize(images_u8: np.ndarray) -> np.ndarray:
    """uint8 ``[N,28,28]`` (or ``[N,1,28,28]``) -> normalised float32 ``[N,1,28,28]``."""
    x = images_u8.astype(np.float32).reshape(-1, *FMNIST_SHAPE) / np.float32(255.0)
    return (x - np.float32(FMNIST_MEAN)) / np.float32(FMNIST_STD)


def load_fmnist(split: str = "train", root=None):
    """Return ``(x float32 [N,1,28,28] normalised, labels int64 [N])``."""
    images, labels = load_fmnist_raw(split, root)
    return normalize(images), labels


def load_fmnist_test(root=None):
    """The full 10k normalised test set, from the Debian package (not stored in the repo)."""
    return load_fmnist("test", root)


def load_fmnist_test_npz(path: str | os.PathLike | None = None):
    """Load a stored subset (``models/data/fmnist_test.npz`` by default, or
    ``fmnist_calib.npz``): returns ``(input float32 [N,1,28,28], labels int64 [N])``.
    Pass ``path="full"`` to get the full 10k test set from the Debian package instead."""
    if path == "full":
        return load_fmnist_test()
    p = Path(path) if path is not None else TEST_NPZ
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing: run `python -m models.make_data`")
    with np.load(p) as z:
        return z["input"].astype(np.float32, copy=False), z["labels"].astype(np.int64)


def load_fmnist_calib_npz(path: str | os.PathLike | None = None):
    """The stored calibration batch (512 normalised training images)."""
    return load_fmnist_test_npz(path if path is not None else CALIB_NPZ)


def load_fmnist_guard(n: int = 4096, seed: int = 1, root=None) -> np.ndarray:
    """``n`` normalised training images that are not in the stored calibration batch (a
    fixed-seed random pick, in file order): data for SSC's decision guard
    (``--guard-data``), which must not be the search samples. No labels."""
    images, _ = load_fmnist_raw("train", root)
    with np.load(CALIB_NPZ) as z:
        taken = z["index"]
    rest = np.setdiff1d(np.arange(len(images)), taken)
    if n > len(rest):
        raise ValueError(f"{n} guard images asked for, {len(rest)} training images are not calibration images")
    idx = np.sort(np.random.default_rng(seed).choice(rest, size=n, replace=False))
    return normalize(images[idx])


# ------------------------------------------------------------------ fmnist-dvs
# Event version of Fashion-MNIST (models/dvs.py, `python -m models.make_dvs`): voxel
# grids of B=9 time bins x 2 polarities, [N,18,34,34]. The stored counts (uint8) are
# normalised as x = (count - FMNIST_DVS_MEAN) / FMNIST_DVS_STD; the mean is 0 so that
# "no event" stays 0; the std is that of all voxel counts of the training events
# (1.0610 on the 30k recorded training images; their mean is 0.315).
FMNIST_DVS_MEAN = 0.0
FMNIST_DVS_STD = 1.061
FMNIST_DVS_BINS = 9
FMNIST_DVS_SHAPE = (2 * FMNIST_DVS_BINS, 34, 34)
DVS_CALIB_NPZ = DATA_DIR / "fmnist_dvs_calib.npz"
DVS_TEST_NPZ = DATA_DIR / "fmnist_dvs_test.npz"
DVS_HINT = ("fmnist-dvs events not found: generate them with\n"
            "    python -m models.make_dvs [--split train|test] [--limit N]\n"
            "(writes models/cache/fmnist_dvs/<split>.npz; needs dataset-fashion-mnist).")


def load_fmnist_dvs_raw(split: str = "train", root=None, return_index: bool = False):
    """Voxel grids of the cached fmnist-dvs events: ``(counts uint8 [N,18,34,34],
    labels int64 [N])`` (and the Fashion-MNIST indices with ``return_index``).

    ``root``: folder of ``<split>.npz`` (default ``models/cache/fmnist_dvs``). The voxel
    grids are cached beside the events as ``<split>_vox9.npz`` and rebuilt when the
    events file is newer."""
    from . import dvs
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    ev_path = dvs.events_path(split, root)
    if not ev_path.is_file():
        raise DatasetNotFoundError(f"{ev_path} missing.\n{DVS_HINT}")
    vox_path = ev_path.with_name(f"{split}_vox{FMNIST_DVS_BINS}.npy")
    lab_path = ev_path.with_name(f"{split}_vox{FMNIST_DVS_BINS}_labels.npz")
    fresh = (vox_path.is_file() and lab_path.is_file()
             and vox_path.stat().st_mtime >= ev_path.stat().st_mtime)
    if fresh:
        vox = np.load(vox_path, mmap_mode=None, allow_pickle=False)
        with np.load(lab_path, allow_pickle=False) as z:
            labels, index = z["labels"].astype(np.int64), z["index"].astype(np.int64)
    else:
        events, labels, index = dvs.load_events(ev_path)
        vox = dvs.voxel_grids(events, FMNIST_DVS_BINS, events.extra["params"].sensor,
                              0.0, events.extra["params"].duration_us)
        tmp = vox_path.with_name(vox_path.name + ".tmp.npy")
        np.save(tmp, vox)
        tmp.replace(vox_path)
        np.savez(lab_path, labels=labels, index=index)
    return (vox, labels, index) if return_index else (vox, labels)


def normalize_dvs(counts: np.ndarray) -> np.ndarray:
    """Voxel counts [N,18,34,34] -> normalised float32 (the models' input)."""
    x = np.asarray(counts, dtype=np.float32)
    return (x - np.float32(FMNIST_DVS_MEAN)) / np.float32(FMNIST_DVS_STD)


def load_fmnist_dvs(split: str = "train", root=None):
    """``(x float32 [N,18,34,34] normalised, labels int64 [N])`` from the cached events."""
    vox, labels = load_fmnist_dvs_raw(split, root)
    return normalize_dvs(vox), labels


def load_fmnist_dvs_npz(path: str | os.PathLike | None = None):
    """The stored fmnist-dvs test subset (``models/data/fmnist_dvs_test.npz``, or
    another path such as ``DVS_CALIB_NPZ``): ``(input float32 [N,18,34,34], labels)``."""
    p = Path(path) if path is not None else DVS_TEST_NPZ
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing: run `python -m models.make_dvs --npz`")
    with np.load(p) as z:
        return z["input"].astype(np.float32, copy=False), z["labels"].astype(np.int64)
