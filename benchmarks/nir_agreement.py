"""How closely the NIR importers run the exported SNN: Sinabs and Norse against onnxruntime.

For each bundled model, converted at T = 32, psi = 1 (--maxpool spikes, 512 calibration
samples) and exported with ``onnx2burst export-nir``, the first N test images run through
onnxruntime (the SNN) and through each importer: ``sinabs.from_nir`` as imported, the same with
``sinabs_as_burstif`` (MaxSpike(psi), no membrane floor), ``norse.torch.from_nir``, and Norse on
the ``--neuron cubalif`` export imported with ``reset_method=reset_subtract``; each presents the
input at every one of the T steps and averages the output over them. Reports the
top-1 agreement with the SNN, the largest absolute difference of the averaged outputs, and both
top-1 accuracies. Writes benchmarks/results/nir.md.

    python benchmarks/nir_agreement.py [--models vgg_fmnist,resnet20_fmnist] [--limit 1000]
"""
from __future__ import annotations

import time
from importlib.metadata import version

import numpy as np

import common

IMPORTERS = ("Sinabs", "Sinabs + sinabs_as_burstif", "Norse", "Norse, --neuron cubalif, reset_subtract")


def main() -> None:
    ap = common.parser(__doc__, out="nir.md", models=("vgg_fmnist", "resnet20_fmnist"), limit=1000)
    ap.add_argument("--T", type=int, default=32)
    args = ap.parse_args()

    import warnings

    import torch

    import onnx2burst
    from onnx2burst import ops
    from onnx2burst.interop.nir import NIRExportWarning, to_nir
    from onnx2burst.interop.nir_run import run_norse, run_sinabs

    torch.set_num_threads(1)     # two threads on two shared cores wait for each other at every op
    T = args.T
    x, labels = common.test_set("subset", args.limit)
    x = x.astype(np.float32)
    rows = []
    for name in args.models:
        snn = onnx2burst.convert(common.model_path(name), common.CALIB, T=T, psi=1, maxpool="spikes")
        ref = common.predict(ops.make_session(snn), x, 100)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NIRExportWarning)
            res = to_nir(snn)
        graph, cuba = res.graph, to_nir(snn, neuron="cubalif").graph
        kinds = sorted({type(n).__name__ for n in graph.nodes.values()})
        print(f"{name}: {len(graph.nodes)} NIR nodes ({', '.join(kinds)}), notes: {res.notes or 'none'}", flush=True)
        runs = {"Sinabs": lambda: run_sinabs(graph, x, T),
                "Sinabs + sinabs_as_burstif": lambda: run_sinabs(graph, x, T, burstif=True),
                "Norse": lambda: run_norse(graph, x, T),
                "Norse, --neuron cubalif, reset_subtract": lambda: run_norse(cuba, x, T)}
        for importer in IMPORTERS:
            t0 = time.perf_counter()
            y = runs[importer]().reshape(ref.shape)
            secs = time.perf_counter() - t0
            agree = float((y.argmax(1) == ref.argmax(1)).mean())
            rows.append((name, importer, len(x), agree, float(np.abs(y - ref).max()),
                         float((ref.argmax(1) == labels).mean()), float((y.argmax(1) == labels).mean()), secs))
            print(f"  {importer}: agreement {100 * agree:.1f} %, max |diff| {rows[-1][4]:.3g}, "
                  f"top-1 SNN {100 * rows[-1][5]:.1f} / importer {100 * rows[-1][6]:.1f} ({secs:.0f} s)", flush=True)
    vers = ", ".join(f"{p} {version(p)}" for p in ("sinabs", "norse", "nir", "nirtorch", "torch"))
    lines = [f"# NIR importers against the SNN ({common.machine()})", "",
             f"`python benchmarks/nir_agreement.py`: T = {T}, psi = 1, `--maxpool spikes`, 512 calibration samples, "
             f"the first {len(x)} test images of models/data/fmnist_test.npz; {vers}. Each importer gets the input at "
             f"every one of the {T} steps; its output averaged over them is compared with the SNN's (onnxruntime).",
             "",
             "| model | importer | top-1 agreement with the SNN | max abs. difference | SNN top-1 | importer top-1 |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {m} | {imp} | {100 * a:.1f} % | {d:.3g} | {100 * s:.1f} | {100 * i:.1f} |"
              for m, imp, _, a, d, s, i, _ in rows]
    lines += ["", "- Sinabs (`sinabs.from_nir`) makes each IF an `IAFSqueeze`: reset by subtraction like BurstIF, but "
              "`MultiSpike` (floor(v/threshold) spikes a step, no cap at psi) and the membrane floored at -threshold. "
              "`onnx2burst.interop.nir_run.sinabs_as_burstif` sets `MaxSpike(psi)` (psi from the IF's metadata) and "
              "no floor: then Sinabs computes BurstIF, and what differs is float rounding (torch sums in another "
              "order; the spike weight theta sits in the next layer's weights).",
              "- Norse (`norse.torch.from_nir`) makes each IF an `IAFCell`: reset to zero, as NIR's IF, and one spike "
              "a step. The charge above the threshold at each spike is lost, so rates come out lower, layer after "
              "layer: the deeper ResNet-20 loses far more than the VGG.",
              "- `export-nir --neuron cubalif` writes each IF as a CubaLIF that integrates like it under Euler steps "
              "of 1 ms (tau_syn = dt, tau_mem = 1e9 dt, r = tau_mem/dt); `norse.torch.from_nir(g, "
              "reset_method=reset_subtract, dt=1e-3)` then resets by subtraction like BurstIF (one spike a step, "
              "firing at v > threshold). Sinabs does not import CubaLIF.",
              f"- nir {version('nir')} as Sinabs pins it (nir <= 1.0.4; the file reads in nir 1.0.4 to 1.0.8)."]
    common.write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
