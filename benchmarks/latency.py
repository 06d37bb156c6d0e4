"""Latency of the ANN and its SNN in onnxruntime (issue: model zoo and benchmarks).

ms per sample of the ANN and of the SNN (T=8, psi=4) at 1 and 2 intra-op threads, the SNN
with the C++ kernel -- in onnxruntime's blocked NCHWc layout (``make_session``'s default,
onnx2burst.ops.layout) and in plain NCHW with a layout reorder around every neuron -- and
with the standard-op fallback, and the ratio SNN / (T x ANN): a
dense runtime cannot do much better than 1.0, since the SNN runs every layer T times.
Medians of interleaved repeats. Writes benchmarks/results/latency.md.

    python benchmarks/latency.py [--models resnet20_fmnist,vgg_fmnist] [--batches 64,16,1] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20_fmnist,vgg_fmnist")
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--batches", default="64,16,1", help="batch sizes (samples per run), comma-separated")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency.md"))
    args = ap.parse_args(argv)

    import onnx2burst
    from onnx2burst import ops
    from onnx2burst.io import load_model

    calib = ROOT / "models" / "data" / "fmnist_calib.npz"
    batches = [int(b) for b in args.batches.split(",")]
    xs = np.load(calib, allow_pickle=False)["input"]
    lines = ["| model | batch | threads | ANN ms/sample | SNN kernel ms/sample | kernel, plain layout | SNN fallback ms/sample | "
             "kernel SNN / (T x ANN) | plain layout / (T x ANN) | fallback SNN / (T x ANN) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.models.split(","):
        ann = load_model(ROOT / "models" / "zoo" / f"{name}.onnx")
        snn = onnx2burst.convert(ann, str(calib), T=args.T, psi=4, samples=128)
        inp = ann.graph.input[0].name
        for batch in batches:
            x = xs[:batch]
            for threads in (1, 2):
                # idle pool threads sleep: interleaved sessions' spinning workers would steal the cores
                opts = dict(threads=threads, spinning=False)
                sess = {"ann": ops.make_session(ann, kernel=False, **opts),
                        "kernel": ops.make_session(snn, kernel=True, **opts),
                        "plain": ops.make_session(snn, kernel=True, layout="plain", **opts),
                        "fallback": ops.make_session(snn, kernel=False, **opts)}
                times = {k: [] for k in sess}
                for s in sess.values():
                    s.run(None, {inp: x})
                for _ in range(args.repeats):
                    for k, s in sess.items():
                        t0 = time.perf_counter()
                        s.run(None, {inp: x})
                        times[k].append((time.perf_counter() - t0) * 1e3 / len(x))
                m = {k: statistics.median(v) for k, v in times.items()}
                # per-repeat ratios (measured back to back), then their median: load drift cancels
                r = {k: statistics.median(a / (args.T * b) for a, b in zip(v, times["ann"])) for k, v in times.items()}
                line = (f"| {name} | {batch} | {threads} | {m['ann']:.3f} | {m['kernel']:.3f} | {m['plain']:.3f} | {m['fallback']:.3f} | "
                        f"**{r['kernel']:.2f}** | {r['plain']:.2f} | {r['fallback']:.2f} |")
                print(line, flush=True)
                lines.append(line)
    text = (f"# Latency, ANN vs SNN (T={args.T}, psi=4)\n\nCommand: `python benchmarks/latency.py`; batch sizes "
            f"{args.batches} (the SNN runs T x batch samples through each layer), medians of {args.repeats} "
            "interleaved repeats; a ratio is the median of the per-repeat ratios and is what to read; idle pool "
            "threads sleep (no spinning).\n\n"
            + "\n".join(lines) + "\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
