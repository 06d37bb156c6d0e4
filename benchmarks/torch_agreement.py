"""How closely the PyTorch module of an SNN (``onnx2burst.torch.load``) follows onnxruntime.

For each bundled model, converted at T and psi (512 calibration samples), the first N test
images run through onnxruntime (the C++ kernel when built) and through the torch module:
the share of images whose class differs, and the largest absolute difference of the outputs.
Writes benchmarks/results/torch.md.

    python benchmarks/torch_agreement.py [--models resnet20_fmnist,vgg_fmnist] [--limit 1000] [--T 8] [--psi 4]
"""
from __future__ import annotations

import time

import numpy as np

import common


def main() -> None:
    ap = common.parser(__doc__, out="torch.md", models=("resnet20_fmnist", "vgg_fmnist"), limit=1000)
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--psi", type=int, default=4)
    args = ap.parse_args()

    import torch

    import onnx2burst
    import onnx2burst.torch as otorch
    from onnx2burst import ops

    x, _ = common.test_set("subset", args.limit)
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        snn = onnx2burst.convert(common.model_path(name), common.CALIB, T=args.T, psi=args.psi)
        sess = ops.make_session(snn)
        ort_out = common.predict(sess, x, 100)
        net = otorch.load(snn).eval()
        with torch.no_grad():
            torch_out = np.concatenate([net(torch.from_numpy(x[i:i + 100])).numpy() for i in range(0, len(x), 100)])
        changed = int((ort_out.argmax(1) != torch_out.argmax(1)).sum())
        rows.append((name, len(x), changed, float(np.abs(ort_out - torch_out).max()), ops.kernel_available(),
                     time.perf_counter() - t0))
        print(f"{name}: {changed} of {len(x)} change class, max |diff| {rows[-1][3]:.3g}", flush=True)
    lines = [f"# PyTorch module against onnxruntime ({common.machine()})", "",
             f"`python benchmarks/torch_agreement.py`: T = {args.T}, psi = {args.psi}, 512 calibration samples, the "
             "first test images of models/data/fmnist_test.npz. Torch sums its convolutions in another order "
             "than onnxruntime, so a membrane can cross its threshold one step apart: the outputs then differ by a spike's worth, and a class can change.", "",
             "| model | images | class changed | max abs. difference of the outputs | onnxruntime kernel |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {n} | {k} | {c} ({100 * c / k:.2f} %) | {d:.3g} | {'yes' if kern else 'fallback'} |"
              for n, k, c, d, kern, _ in rows]
    common.write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
