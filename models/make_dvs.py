"""Make the fmnist-dvs event dataset (Fashion-MNIST recorded by a simulated DVS along
three saccades, see models/dvs.py) and its small stored arrays.

    python -m models.make_dvs [--split train|test|both] [--limit N] [--seed 0]
    python -m models.make_dvs --figure        # models/fmnist_dvs_samples.png
    python -m models.make_dvs --npz           # models/data/fmnist_dvs_{calib,test}.npz

Events go to ``models/cache/fmnist_dvs/<split>.npz`` (git-ignored): x, y uint8, t uint32
(us), p bool, concatenated over samples, with ``offsets`` [N+1], ``labels``, ``index``
(position in the Fashion-MNIST file) and the simulator ``params`` (JSON). ``--limit N``
records the first N images of the split. The noise of batch k is seeded by
(seed, split, k*batch), so a run is reproducible for a given --batch.

``--npz`` writes voxel grids (B=9, 18 channels, normalised as in models/data.py,
float32, key ``input``) of a stratified pick of training samples (calibration) and
of test samples (test subset), both from the cached events.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import data as D
from . import dvs

SPLIT_ID = {"train": 0, "test": 1}
FIGURE = Path(__file__).resolve().parent / "fmnist_dvs_samples.png"


def _progress():
    try:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn())
    except ImportError:  # pragma: no cover
        return None


def generate(split: str, limit: int | None, seed: int, batch: int, out: Path,
             params: dvs.DVSParams = dvs.DVSParams()) -> Path:
    images, labels = D.load_fmnist_raw(split)
    n = len(labels) if limit is None else min(limit, len(labels))
    images, labels = images[:n], labels[:n]
    parts = []
    t0 = time.time()
    prog = _progress()
    task = None
    if prog is not None:
        prog.start()
        task = prog.add_task(f"fmnist-dvs {split}", total=n)
    try:
        for a in range(0, n, batch):
            b = min(n, a + batch)
            rng = np.random.default_rng([seed, SPLIT_ID[split], a])
            parts.append(dvs.simulate_images(images[a:b], params, rng))
            if prog is not None:
                prog.update(task, advance=b - a)
            else:
                print(f"{split}: {b}/{n}", flush=True)
    finally:
        if prog is not None:
            prog.stop()
    events = dvs.EventBatch.concatenate(parts)
    sim_s = time.time() - t0
    path = dvs.events_path(split, out)
    counts = events.counts
    meta = {"split": split, "n": int(n), "seed": seed, "batch_size": batch,
            "events": int(events.offsets[-1]), "events_per_sample_mean": float(counts.mean()),
            "events_per_sample_min": int(counts.min()), "events_per_sample_max": int(counts.max()),
            "on_fraction": float(events.p.mean()), "simulation_seconds": round(sim_s, 1)}
    dvs.save_events(path, events, labels, np.arange(n), params, **meta)
    meta["bytes"] = path.stat().st_size
    meta["total_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(meta), flush=True)
    print(f"wrote {path}: {n} samples, {events.offsets[-1]} events "
          f"({counts.mean():.0f}/sample), {path.stat().st_size / 1e6:.1f} MB, "
          f"{sim_s:.0f}s simulation", flush=True)
    return path


# ------------------------------------------------------------------ stored subsets
def write_npz(n_calib: int, n_test: int, seed: int, out: Path, root=None):
    from .make_data import stratified_indices
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, n, name in (("train", n_calib, D.DVS_CALIB_NPZ.name),
                           ("test", n_test, D.DVS_TEST_NPZ.name)):
        vox, labels, index = D.load_fmnist_dvs_raw(split, root=root, return_index=True)
        pick = stratified_indices(labels, n, rng)
        x = D.normalize_dvs(vox[pick])
        y = labels[pick].astype(np.int64)
        path = out / name
        np.savez_compressed(path, input=x, labels=y, index=index[pick].astype(np.int64),
                            mean=np.float32(D.FMNIST_DVS_MEAN), std=np.float32(D.FMNIST_DVS_STD))
        print(f"wrote {path}: {split} {x.shape} {x.dtype}, classes "
              f"{np.bincount(y, minlength=10).tolist()}, {path.stat().st_size / 1e6:.2f} MB")


# ------------------------------------------------------------------ figure
def make_figure(path: Path = FIGURE, root=None, n: int = 6, seed: int = 0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels_all = D.load_fmnist_raw("test")
    try:
        events, labels, index = dvs.load_events(dvs.events_path("test", root))
        params = events.extra["params"]
    except FileNotFoundError:
        params = dvs.DVSParams()
        events = dvs.simulate_images(images[:200], params, np.random.default_rng([seed, 1, 0]))
        labels, index = labels_all[:200], np.arange(200)
    # one sample of each of n different classes
    picks, seen = [], set()
    for i, c in enumerate(labels):
        if int(c) not in seen:
            seen.add(int(c))
            picks.append(i)
        if len(picks) == n:
            break
    B = dvs.N_BINS
    T = params.duration_us
    rows = 5
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n, 1.7 * rows))

    def onoff_rgb(vox):  # vox [2B,H,W] counts -> RGB: ON red, OFF blue
        off, on = vox[:B].sum(0), vox[B:].sum(0)
        m = max(float(np.percentile(np.concatenate([on.ravel(), off.ravel()]), 99.5)), 1.0)
        rgb = np.ones((*on.shape, 3), np.float32)
        rgb[..., 1] -= np.clip((on + off) / m, 0, 1)
        rgb[..., 0] -= np.clip(off / m, 0, 1)
        rgb[..., 2] -= np.clip(on / m, 0, 1)
        return np.clip(rgb, 0, 1)

    for j, i in enumerate(picks):
        ev = events.events(i)
        vox = dvs.voxel_grid(ev, B, (params.sensor, params.sensor), 0, T)
        ax = axes[0, j]
        ax.imshow(images[index[i]], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{D.FMNIST_CLASSES[labels[i]]}\n{len(ev)} events", fontsize=7)
        ax = axes[1, j]
        ax.imshow(onoff_rgb(vox), interpolation="nearest")
        if j == 0:
            ax.set_ylabel("all 300 ms", fontsize=7)
        for s in range(3):  # one row per saccade = 3 voxel bins
            sub = np.concatenate([vox[3 * s:3 * s + 3], vox[B + 3 * s:B + 3 * s + 3]])
            sub = np.concatenate([sub[:3], np.zeros((B - 3, *sub.shape[1:])),
                                  sub[3:], np.zeros((B - 3, *sub.shape[1:]))])
            ax = axes[2 + s, j]
            ax.imshow(onoff_rgb(sub), interpolation="nearest")
            if j == 0:
                ax.set_ylabel(f"saccade {s + 1}\n(bins {3 * s}-{3 * s + 2})", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("fmnist-dvs: image, events (ON red, OFF blue), per saccade", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.make_dvs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="both", choices=["train", "test", "both"])
    p.add_argument("--limit", type=int, default=None, help="first N images of the split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=500, help="images simulated together")
    p.add_argument("--out", default=str(dvs.CACHE_DIR), help="folder of <split>.npz")
    p.add_argument("--figure", action="store_true",
                   help=f"only draw {FIGURE.relative_to(FIGURE.parent.parent)} (from the cached test events)")
    p.add_argument("--npz", action="store_true",
                   help="only write the stored calibration / test voxel subsets")
    p.add_argument("--calib", type=int, default=512, help="--npz: calibration samples")
    p.add_argument("--test", type=int, default=1000, help="--npz: test samples")
    p.add_argument("--npz-out", default=str(D.DATA_DIR))
    args = p.parse_args(argv)
    if args.figure or args.npz:
        if args.figure:
            make_figure(root=args.out, seed=args.seed)
        if args.npz:
            write_npz(args.calib, args.test, args.seed, Path(args.npz_out), root=args.out)
        return
    splits = ["train", "test"] if args.split == "both" else [args.split]
    for s in splits:
        generate(s, args.limit, args.seed, args.batch, Path(args.out))


if __name__ == "__main__":
    main()
