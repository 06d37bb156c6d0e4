"""Write the small Fashion-MNIST arrays stored in the repository.

    python -m models.make_data [--seed 0] [--out models/data]

- ``fmnist_calib.npz``: 512 normalised *training* images (51 or 52 per class, a
  fixed-seed random pick), keys ``input`` float32 [512,1,28,28], ``labels`` int64.
- ``fmnist_test.npz``: 1000 normalised *test* images, 100 per class (stratified,
  fixed seed), same keys.

Both are in the order of the original files' indices (also stored, key ``index``).

With ``--guard N`` it also writes ``models/cache/fmnist_guard.npz`` (not stored in the
repository): N training images that are not calibration images, key ``input``, for SSC's
decision guard (``onnx2burst search/convert --guard-data``).
The full 10k test set is not stored: ``models.data.load_fmnist_test()`` reads it
from the Debian package ``dataset-fashion-mnist``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import data as D


def stratified_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices spread evenly over the classes (remainder to the first classes),
    random within a class, returned sorted."""
    classes = np.unique(labels)
    per, rem = divmod(n, len(classes))
    picks = []
    for i, c in enumerate(classes):
        k = per + (1 if i < rem else 0)
        picks.append(rng.choice(np.flatnonzero(labels == c), size=k, replace=False))
    return np.sort(np.concatenate(picks))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.make_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib", type=int, default=512, help="calibration images")
    p.add_argument("--test", type=int, default=1000, help="test-subset images")
    p.add_argument("--out", default=str(D.DATA_DIR))
    p.add_argument("--guard", type=int, default=0,
                   help="also write models/cache/fmnist_guard.npz with this many training images that are not "
                        "calibration images (SSC's --guard-data)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for split, n, fname in (("train", args.calib, "fmnist_calib.npz"),
                            ("test", args.test, "fmnist_test.npz")):
        images, labels = D.load_fmnist_raw(split)
        idx = stratified_indices(labels, n, rng)
        x = D.normalize(images[idx])
        y = labels[idx].astype(np.int64)
        np.savez_compressed(out / fname, input=x, labels=y, index=idx.astype(np.int64),
                            mean=np.float32(D.FMNIST_MEAN), std=np.float32(D.FMNIST_STD))
        print(f"wrote {out / fname}: {split} {x.shape} {x.dtype}, "
              f"classes {np.bincount(y, minlength=10).tolist()}, "
              f"{(out / fname).stat().st_size / 1e6:.2f} MB")
    if args.guard:
        import io

        from onnx2burst.io import write_file

        x = D.load_fmnist_guard(args.guard)
        buf = io.BytesIO()
        np.savez_compressed(buf, input=x)
        dest = D.DATA_DIR.parent / "cache" / "fmnist_guard.npz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_file(dest, buf.getvalue())
        print(f"wrote {dest}: {x.shape} {x.dtype}, {dest.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
