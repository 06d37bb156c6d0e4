"""Speed of the BurstIF kernel against onnxruntime's Relu and the standard-op fallback, by tensor size and threads.

In one run, on [T*N, 64, 14, 14] tensors of about 1e5, 1e6 and 1e7 elements with T = 8:
the C++ kernel against onnxruntime's own Relu over the same tensor (a memory-bound floor)
and against the standard-op fallback, at 1 and 2 intra-op threads. Medians of interleaved
repeats; the table's ratios are what to read (the machine is shared and noisy). A second
table times one sample of several layer shapes of about 1e5 elements at 1 thread: a Gemm's
[C] and feature maps small and large take different paths through the kernel.

    python benchmarks/kernel.py [--repeats 15] [--out benchmarks/results/kernel.md]
"""
from __future__ import annotations

import sys

import numpy as np
from onnx import TensorProto, helper

from common import int_list, interleave, median, parser, ratio, session, write_text
from onnx2burst import ops

T, PSI, TAU = 8, 4, 1.0
C, H, W = 64, 14, 14


def _relu_model(dims=(C, H, W)):
    vi = helper.make_tensor_value_info
    g = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "relu",
                          [vi("X", TensorProto.FLOAT, ["B", *dims])], [vi("Y", TensorProto.FLOAT, ["B", *dims])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _burst_model(dims=(C, H, W)):
    vi = helper.make_tensor_value_info
    node = ops.make_node("X", "vth", "Y", T=T, psi=PSI, tau=TAU, spikes="S")
    g = helper.make_graph([node], "burst", [vi("X", TensorProto.FLOAT, ["B", *dims]), vi("vth", TensorProto.FLOAT, [dims[0]])],
                          [vi("Y", TensorProto.FLOAT, ["B", *dims]), vi("S", TensorProto.FLOAT, ["N"])])
    return ops.attach_function(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


# Layer shapes of about 1e5 elements at T = 8 (one sample): a Gemm's [C] (one neuron per
# channel), small and large feature maps. They take different paths through the kernel.
LAYER_SHAPES = ((12544,), (1024, 3, 3), (256, 7, 7), (64, 14, 14), (4, 56, 56))


def _measure(relu, burst, x, vth, threads, repeats, fallback):
    """Medians (ms) of interleaved repeats of Relu, the kernel (and the fallback) on x, and the
    medians of the per-repeat ratios. Idle pool threads sleep (``common.session``): spinning
    workers would steal the cores from the next onnxruntime session's run and skew the 2-thread columns."""
    sessions = {
        "relu": (session(relu, threads, kernel=False), {"X": x}),
        "kernel": (session(burst, threads, kernel=True), {"X": x, "vth": vth}),
    }
    if fallback:
        sessions["fallback"] = (session(burst, threads, kernel=False), {"X": x, "vth": vth})
    reps = repeats if x.size <= 2_000_000 else max(5, repeats // 3)
    times = interleave({k: (lambda s=s, f=f: s.run(None, f)) for k, (s, f) in sessions.items()}, reps)
    med = {k: median(v) * 1e3 for k, v in times.items()}
    med["kernel/relu"] = ratio(times["kernel"], times["relu"])
    if "fallback" in times:
        med["fallback/kernel"] = ratio(times["fallback"], times["kernel"])
    return med


def main(argv=None):
    ap = parser(__doc__, out="kernel.md")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sizes", type=int_list, default="1,10,100", help="N values (elements = 8*N*64*14*14)")
    ap.add_argument("--no-fallback", action="store_true", help="skip the (slow) fallback column")
    args = ap.parse_args(argv)
    if not ops.kernel_available():
        sys.exit("the BurstIF kernel is not built: " + ops.kernel_status()[1])
    relu, burst = _relu_model(), _burst_model()
    rng = np.random.default_rng(0)
    rows = []
    for N in args.sizes:
        x = rng.normal(size=(T * N, C, H, W)).astype(np.float32)
        vth = rng.uniform(0.2, 1.0, C).astype(np.float32)
        for threads in (1, 2):
            med = _measure(relu, burst, x, vth, threads, args.repeats, not args.no_fallback)
            rows.append((x.size, threads, med))
            print(f"{x.size:>10,d} elems  {threads} thr  " + "  ".join(f"{k} {v:8.3f}" for k, v in med.items()), flush=True)
    shapes = []
    for dims in LAYER_SHAPES:
        x = rng.normal(size=(T, *dims)).astype(np.float32)
        vth = rng.uniform(0.2, 1.0, dims[0]).astype(np.float32)
        med = _measure(_relu_model(dims), _burst_model(dims), x, vth, 1, args.repeats, False)
        shapes.append((dims, x.size, med))
        print(f"{str(list(x.shape)):>18}  1 thr  " + "  ".join(f"{k} {v:8.3f}" for k, v in med.items()), flush=True)
    lines = ["| elements | threads | Relu ms | kernel ms | fallback ms | kernel / Relu | fallback / kernel |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, thr, med in rows:
        fb = med.get("fallback")
        lines.append(f"| {n:,} | {thr} | {med['relu']:.3f} | {med['kernel']:.3f} | "
                     f"{fb:.3f} | " if fb else f"| {n:,} | {thr} | {med['relu']:.3f} | {med['kernel']:.3f} | - | ")
        lines[-1] += f"{med['kernel/relu']:.2f} | " + (f"{med['fallback/kernel']:.1f} |" if fb else "- |")
    table = "\n".join(lines)
    lines = ["", "Layer shapes (one sample, T = 8, 1 thread): the paths through the kernel -- per neuron "
             "(a Gemm's [C], feature maps under 16 positions) and runs of one channel.", "",
             "| X | elements | Relu ms | kernel ms | kernel / Relu |", "|---|---:|---:|---:|---:|"]
    for dims, n, med in shapes:
        lines.append(f"| [{T}, {', '.join(map(str, dims))}] | {n:,} | {med['relu']:.3f} | {med['kernel']:.3f} | "
                     f"{med['kernel/relu']:.2f} |")
    table += "\n" + "\n".join(lines)
    header = (f"# BurstIF kernel benchmark\n\nT={T}, psi={PSI}, X = [T*N, {C}, {H}, {W}], medians of interleaved "
              f"repeats; a ratio is the median of the per-repeat ratios; idle pool threads sleep (no spinning). Command: `python benchmarks/kernel.py`. Target: kernel <= 1.5x Relu.\n\n")
    print("\n" + table)
    write_text(args.out, header + table + "\n")


if __name__ == "__main__":
    main()
