"""BSR / SSC acceptance (issue: search), a table like the paper's Table V.

For each model and T: uniform psi=4 (BS), + BSR (ratio 1.0), + SSC (r = 1.0), + both; top-1 on
the test set and total spikes per sample relative to BS. Writes benchmarks/results/search.md.

    python benchmarks/search_acceptance.py [--models resnet20_fmnist,vgg_fmnist] [--Ts 8,4]
        [--limit 10000] [--search-samples 256] [--taus GRID] [--guard 4096]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of mean(a) - mean(b) for per-sample scores of the same samples (top-1:
    1 right, 0 wrong): what the difference of two top-1s on this test set is known to."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20_fmnist,vgg_fmnist")
    ap.add_argument("--Ts", default="8,4")
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--search-samples", type=int, default=256)
    ap.add_argument("--taus", default="1:10:0.5", help="SSC tau grid, e.g. 1:3:0.1,3.5:10:0.5")
    ap.add_argument("--configs", default="+BSR,+SSC,+BSR+SSC", help="which of +BSR, +SSC, +BSR+SSC to run")
    ap.add_argument("--z", type=float, default=0.0, help="SSC: candidates at S + z * SE (0: the paper's rule)")
    ap.add_argument("--folds", type=int, default=0, help="SSC: budget held out over this many folds (0: the paper's rule)")
    ap.add_argument("--guard", type=int, default=0,
                    help="SSC decision guard on this many training images that are not calibration images "
                         "(models.data.load_fmnist_guard; 0: no guard, the paper's rule)")
    ap.add_argument("--guard-z", type=float, default=2.0, help="the guard flags a loss beyond this many SE")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search.md"))
    args = ap.parse_args(argv)

    from models.data import load_fmnist_test_npz
    from onnx2burst.config import ConvertConfig
    from onnx2burst.convert import Converter
    from onnx2burst.report.evaluate import evaluate
    from onnx2burst.tuning import search as S

    x, labels = load_fmnist_test_npz("full")
    x, labels = x[: args.limit], labels[: args.limit]
    calib = ROOT / "models" / "data" / "fmnist_calib.npz"
    guard = None
    if args.guard:
        from models.data import load_fmnist_guard

        guard = load_fmnist_guard(args.guard)
    extra = dict(taus=S.parse_grid(args.taus), ssc_z=args.z, ssc_folds=args.folds, guard=guard,
                 guard_samples=args.guard or None, guard_z=args.guard_z)

    def write():  # after every row, so that a long run that stops keeps what it measured
        text = ("# BSR / SSC acceptance\n\nCommand: `python benchmarks/search_acceptance.py`. "
                f"Test samples: {len(labels)}; search on {args.search_samples} calibration samples; "
                f"BSR ratio 1.0, psi 1..8; SSC r = 1.0, tau {args.taus}"
                + (f", candidates at S + {args.z:g} SE" if args.z else "")
                + (f", budget held out over {args.folds} folds" if args.folds else "")
                + (f", decision guard on {args.guard} training images that are not calibration images "
                   f"(z = {args.guard_z:g})" if args.guard else "") + ". ± SE: the standard "
                "error of the top-1 difference to BS (paired, per test sample); sym. KL: §6's measure "
                "against the ANN on the test samples.\n\n" + "\n".join(lines) + "\n")
        Path(args.out).write_text(text)
        return text

    lines = ["| model | T | config | top-1 | vs BS (points) | ± SE | agreement | sym. KL | spikes/sample | spikes vs BS | search s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.models.split(","):
        ann = ROOT / "models" / "zoo" / f"{name}.onnx"
        for T in (int(t) for t in args.Ts.split(",")):
            conv = Converter(ann, ConvertConfig(T=T, psi=4))
            data = conv.load_data(calib)
            bs = conv.run(data).model
            rows = {"BS": (bs, 0.0)}
            want = args.configs.split(",")
            if "+BSR" in want or "+BSR+SSC" in want:  # one run gives both: the SNN after BSR is kept
                t0 = time.perf_counter()
                res = S.tune(conv, data, bsr=True, ssc=True, snn=bs, samples=args.search_samples, **extra)
                secs = time.perf_counter() - t0
                t_bsr = sum(v for k, v in res.timings.items() if k.startswith("bsr"))
                if "+BSR" in want:
                    rows["+BSR"] = (res.after_bsr, t_bsr)
                both = (res.model, secs)
            if "+SSC" in want:
                t0 = time.perf_counter()
                res = S.tune(conv, data, bsr=False, ssc=True, snn=bs, samples=args.search_samples, **extra)
                rows["+SSC"] = (res.model, time.perf_counter() - t0)
            if "+BSR+SSC" in want:
                rows["+BSR+SSC"] = both
            base = None
            for label, (snn, secs) in rows.items():
                r = evaluate(str(ann), snn, (x, labels))
                top1, spikes = r.snn.top1 * 100, r.energy.spikes
                right = (r.snn_pred == labels).astype(np.float64)
                base = base or (top1, spikes, right)
                se = 100 * paired_se(right, base[2])
                line = (f"| {name} | {T} | {label} | {top1:.2f} | {top1 - base[0]:+.2f} | {se:.2f} | "
                        f"{r.agreement * 100:.2f} | {r.sym_kl:.4f} | {spikes:,.0f} | {spikes / base[1]:.3f} | {secs:.0f} |")
                print(line, f"(ANN {r.ann.top1 * 100:.2f})", flush=True)
                lines.append(line)
                write()
    text = write()
    print(text)


if __name__ == "__main__":
    main()
