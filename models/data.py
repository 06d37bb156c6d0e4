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
