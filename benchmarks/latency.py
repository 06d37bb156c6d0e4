"""Latency (ms per sample) of the ANN and its SNN in onnxruntime: the kernel in both layouts and the fallback.

ms per sample of the ANN and of the SNN (T=8, psi=4) at 1 and 2 intra-op threads, the SNN
with the C++ kernel -- in onnxruntime's blocked NCHWc layout (``make_session``'s default,
onnx2burst.ops.layout) and in plain NCHW with a layout reorder around every neuron -- and
with the standard-op fallback, and the ratio SNN / (T x ANN): a
dense runtime cannot do much better than 1.0, since the SNN runs every layer T times.
Medians of interleaved repeats. Writes benchmarks/results/latency.md.

    python benchmarks/latency.py [--models resnet20_fmnist,vgg_fmnist] [--batches 64,16,1] [--repeats 7]
"""
from __future__ import annotations

import numpy as np

from common import CALIB, int_list, interleave, median, model_path, parser, ratio, session, write_text


def main(argv=None):
    ap = parser(__doc__, out="latency.md", models=("resnet20_fmnist", "vgg_fmnist"))
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--batches", type=int_list, default="64,16,1", help="batch sizes (samples per run), comma-separated")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)

    import onnx2burst
    from onnx2burst.io import load_model

    with np.load(CALIB, allow_pickle=False) as z:
        xs = z["input"]
    lines = ["| model | batch | threads | ANN ms/sample | SNN kernel ms/sample | kernel, plain layout | SNN fallback ms/sample | "
             "kernel SNN / (T x ANN) | plain layout / (T x ANN) | fallback SNN / (T x ANN) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.models:
        ann = load_model(model_path(name))
        snn = onnx2burst.convert(ann, str(CALIB), T=args.T, psi=4, samples=128)
        inp = ann.graph.input[0].name
        for batch in args.batches:
            feeds = {inp: xs[:batch]}
            for threads in (1, 2):
                # idle pool threads sleep (common.session): interleaved sessions' spinning workers would steal the cores
                sess = {"ann": session(ann, threads, kernel=False),
                        "kernel": session(snn, threads, kernel=True),
                        "plain": session(snn, threads, kernel=True, layout="plain"),
                        "fallback": session(snn, threads, kernel=False)}
                times = interleave({k: (lambda s=s: s.run(None, feeds)) for k, s in sess.items()}, args.repeats)
                n = len(feeds[inp])
                m = {k: median(v) * 1e3 / n for k, v in times.items()}
                r = {k: ratio(v, times["ann"], args.T) for k, v in times.items()}
                line = (f"| {name} | {batch} | {threads} | {m['ann']:.3f} | {m['kernel']:.3f} | {m['plain']:.3f} | {m['fallback']:.3f} | "
                        f"**{r['kernel']:.2f}** | {r['plain']:.2f} | {r['fallback']:.2f} |")
                print(line, flush=True)
                lines.append(line)
    text = (f"# Latency, ANN vs SNN (T={args.T}, psi=4)\n\nCommand: `python benchmarks/latency.py`; batch sizes "
            f"{','.join(map(str, args.batches))} (the SNN runs T x batch samples through each layer), medians of {args.repeats} "
            "interleaved repeats; a ratio is the median of the per-repeat ratios and is what to read; idle pool "
            "threads sleep (no spinning).\n\n"
            + "\n".join(lines) + "\n")
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
