"""How fast BSR+SSC runs, against a plain conversion and against the previous implementation,
and what a 224x224 ResNet-18 would take on 1, 8 and 64 workers.

Part 1, the bundled ResNet-20 (Fashion-MNIST, T=8, psi=4, 256 search samples, psi 1..8, the
19-value tau grid): in separate processes, one after the other in this run, each one times a
plain conversion, then ``convert --bsr --ssc`` as the command runs it on a fresh converter (the
conversion, whose threshold pass also fits BSR's psi candidates where the implementation does
that, then ``search.tune``): the previous implementation (a git worktree of ``--old``), this one
in process, and this one with ``--workers 2`` (a local Ray instance). Each row: plain seconds,
``convert --bsr --ssc`` seconds, their ratio (its cost in plain conversions), the table cells
run and pruned, seconds per cell (a cell: one layer, one candidate, one batch of 32), peak
memory, and whether the psi/tau per layer equal the previous implementation's.

Part 2, a ResNet-18 of ImageNet's shape (7x7/2 stem, max pool, 4 stages of 2 basic blocks,
widths 64-512, 1000 classes) with random weights, 224x224 inputs, T=8, psi=4: converted on
``--samples 32`` random inputs, then one tau cell of every layer measured on those 32 samples
(batches of 8: a batch of all layers' activations at T=8 and batch 32 would not fit this
machine). From the per-layer cell cost it projects a full search (25 candidates per layer)
on 1, 8 and 64 workers; the assumptions are printed under the table.

    python benchmarks/search_speed.py [--old 904f1b9] [--skip-big] [--out benchmarks/results/search_speed.md]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CALIB, ROOT, machine, parser, write_text

OLD = "904f1b9"   # the search before pruning, the shared threshold fit and Ray
MODEL = ROOT / "models" / "zoo" / "resnet20_fmnist.onnx"


def _child(spec: dict) -> dict:
    """Run one measurement in a fresh process (its own peak memory); returns its JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        out = subprocess.run([sys.executable, __file__, "--child", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise SystemExit(f"{spec['what']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(spec: dict) -> dict:
    """In the child: plain conversion, then the search (part 1) or the cells (part 2)."""
    if spec.get("root"):
        sys.path.insert(0, str(ROOT / "tests"))
        from search_choices import use_root

        use_root(spec["root"])
    from onnx2burst.config import CalibrationConfig, ConvertConfig, SearchConfig
    from onnx2burst.convert import Converter

    conv = Converter(spec["model"], ConvertConfig(T=8, psi=4, calibration=CalibrationConfig(
        samples=spec["samples"], max_memory=16 << 30)))
    data = conv.load_data(spec["calib"])
    t = time.perf_counter()
    snn = conv.run(data).model
    plain = time.perf_counter() - t
    out = {"plain": plain}
    if spec["what"] == "cells":
        import numpy as np

        from onnx2burst import ops
        from onnx2burst.data import load_data
        from onnx2burst.evaluation.sensitivity import fit_sensitivity, plan_sensitivity
        from onnx2burst.search.cells import layer_inputs, run_layer
        from onnx2burst.search.graphs import SearchGraphs

        sg = SearchGraphs(snn, None, ops.kernel_available())
        ann = ops.make_session(conv.source, kernel=False)
        out["layers"] = [{"name": nr.name, "seconds": 0.0, "tail_nodes": len(sg.tail_nodes[i]), "bytes_per_8": 0}
                         for i, nr in enumerate(sg.neurons)]
        out["baseline"] = 0.0
        batches = list(load_data(spec["calib"], conv.source, samples=spec["samples"]).batches(8))
        logits = [ann.run(None, feeds) for feeds in batches]
        # what measure scores a cell with: the sensitivity with its scales fitted on the ANN's outputs
        metric = fit_sensitivity(plan_sensitivity(conv.source, "auto"), logits)
        for feeds, a_logits in zip(batches, logits):
            t = time.perf_counter()
            env = sg.run_base(feeds)
            out["baseline"] += time.perf_counter() - t
            for i, nr in enumerate(sg.neurons):
                theta = (np.float32(2.0) * nr.vth).astype(np.float32)   # the tau = 2 candidate
                t = time.perf_counter()
                run_layer(sg, i, env, a_logits, [("tau", 1, nr.psi, theta)], "output", metric)
                row = out["layers"][i]
                row["seconds"] += time.perf_counter() - t
                row["bytes_per_8"] = int(sum(env[n].nbytes for n in layer_inputs(sg, i)))
            del env
        out["peak_mb"] = _peak_mb()
        return out
    import onnx2burst.search as S

    # `convert --bsr --ssc` as the command runs it, on a fresh converter: the conversion (whose
    # threshold pass fits BSR's candidates too, where the implementation does that), then tune
    kw = {"workers": spec["workers"]} if spec.get("workers") else {}
    cfg = SearchConfig(bsr=True, ssc=True, **kw)
    t = time.perf_counter()
    conv = Converter(spec["model"], conv.config)
    data = conv.load_data(spec["calib"])
    fits = getattr(S, "search_fits", None)
    snn = conv.run(data, also_fit=fits(conv, cfg)).model if fits else conv.run(data).model
    out["conversion"] = time.perf_counter() - t
    res = S.tune(conv, data, cfg, snn=snn)
    out["full"] = time.perf_counter() - t
    out["search"] = out["full"] - out["conversion"]
    out["settings"] = {k: list(v) for k, v in res.settings.items()}
    ms = {k: m.timings for k, m in res.measurements.items()}
    out["cells_run"] = sum(t.get("cells run", 0.0) for t in ms.values())
    out["cells_pruned"] = sum(t.get("cells pruned", 0.0) for t in ms.values())
    out["cell_seconds"] = sum(t.get("neurons", 0.0) + t.get("tails", 0.0) for t in ms.values())
    out["measure"] = sum(t["total"] for t in ms.values())
    out["timings"] = {k: v for k, v in res.timings.items()}
    out["peak_mb"] = _peak_mb()
    return out


def old_worktree(rev: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"onnx2burst_search_{rev}"
    if not (path / "onnx2burst").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True,
                       capture_output=True)
    return path


def resnet18_imagenet(path: Path) -> None:
    import torch
    from torch import nn

    from models.archs import BasicBlock

    torch.manual_seed(0)
    blocks, c = [], 64
    for i, w in enumerate((64, 128, 256, 512)):
        for j in range(2):
            blocks.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1))
            c = w
    net = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                        nn.MaxPool2d(3, 2, 1), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):   # random but not degenerate statistics and scales
            m.weight.data.uniform_(0.5, 1.0)
            m.bias.data.uniform_(-0.1, 0.1)
    net.eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, dynamo=False)


def main(argv=None) -> int:
    ap = parser(__doc__, out="search_speed.md")
    ap.add_argument("--old", default=OLD, help="the commit of the previous implementation")
    ap.add_argument("--skip-big", action="store_true", help="part 1 only")
    ap.add_argument("--child", help=argparse_hidden())
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(Path(args.child).read_text()))))
        return 0
    base = {"model": str(MODEL), "calib": str(CALIB), "samples": 512, "what": "search"}
    rows = {}
    for name, extra in (("previous implementation", {"root": str(old_worktree(args.old))}),
                        ("this one, in process", {}), ("this one, --workers 2", {"workers": 2})):
        t = time.perf_counter()
        rows[name] = _child({**base, **extra})
        print(f"{name}: plain {rows[name]['plain']:.1f} s, convert --bsr --ssc {rows[name]['full']:.1f} s "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    ref = rows["previous implementation"]
    lines = [
        "# Search speed", "",
        f"`python benchmarks/search_speed.py` on {machine()}, one run, each row its own process, one after the "
        "other; the machine was shared, so compare within the table. ResNet-20 (bundled), Fashion-MNIST "
        "calibration (512 samples), T = 8, psi = 4, `--bsr --ssc` with the defaults (256 search samples in "
        "batches of 32, psi 1..8, tau 1..10 step 0.5). *plain*: a conversion without search; *full*: `convert "
        "--bsr --ssc` as the command runs it (the conversion, then the search), on a fresh converter in the same "
        "process; *cost* = full / plain, what the search costs in plain conversions. A cell is one layer, one "
        "candidate, one batch.", "",
        "| implementation | plain s | full s | cost (plain conversions) | speed-up | cells run | cells pruned "
        "| s per cell | peak MB | same psi/tau |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        cells = r.get("cells_run") or None
        # with Ray the cells run in the workers, whose clocks are not reported back
        per = f"{r['cell_seconds'] / cells:.3f}" if cells and r["cell_seconds"] else "-"
        lines.append(f"| {name} | {r['plain']:.1f} | {r['full']:.1f} | {r['full'] / r['plain']:.1f} "
                     f"| {ref['full'] / r['full']:.2f}x | {int(cells) if cells else '-'} "
                     f"| {int(r['cells_pruned']) if cells else '-'} | {per} | {r['peak_mb']:.0f} "
                     f"| {'yes' if r['settings'] == ref['settings'] else 'NO'} |")
    new = rows["this one, in process"]
    lines += ["", f"Where this implementation's time goes (in process, seconds): conversion {new['conversion']:.1f} "
              f"(plain: {new['plain']:.1f}), then " + ", ".join(
                  f"{k} {v:.1f}" for k, v in new["timings"].items() if k != "bsr thresholds" or v >= 0.05) + ".", "",
        "Cells pruned: SSC's taus are measured in increasing order, two per open layer and pass over the "
        "batches, and a layer stops two taus past its slack (docs/method.md §8); BSR's psi table is measured "
        "whole (its bound never binds here). A cell's time is almost all the layer's tail in onnxruntime; the "
        "search's sessions allocate from one shared memory arena.", "",
        f"The cells alone took {new['cell_seconds']:.1f} s, {new['cell_seconds'] / new['plain']:.1f} plain "
        "conversions: every cell these choices read is run (each candidate's S is a mean over all 256 "
        "samples, and a layer's tail runs T steps of the SNN's convolutions, at the speed onnxruntime runs the "
        "SNN itself), so on this machine the cells set the floor of the cost; only more workers "
        "(`--workers`, on more cores) or fewer cells (fewer samples or candidates, which changes the choice) "
        "lower it.", ""]
    if not args.skip_big:
        lines += big_part()
    elif args.out.is_file() and "\n## A 224x224" in args.out.read_text():
        # --skip-big keeps the projection of an earlier run, said so
        kept = args.out.read_text().split("\n## A 224x224", 1)[1].split("\nReading it:", 1)[0]
        lines += ["## A 224x224" + kept.rstrip(), "",
                  "(This section comes from an earlier run of the benchmark: `--skip-big` re-measured part 1 only.)", ""]
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def big_part() -> list[str]:
    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        onnx_path, data_path = Path(d) / "resnet18_224.onnx", Path(d) / "x.npy"
        resnet18_imagenet(onnx_path)
        np.save(data_path, np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32))
        r = _child({"model": str(onnx_path), "calib": str(data_path), "samples": 32, "what": "cells"})
    layers = r["layers"]
    K = 7 + 18                          # psi 2..8 other than the SNN's, taus other than 1: as the defaults
    per_layer = [row["seconds"] for row in layers]   # one cell of each layer on 32 samples (4 batches of 8)
    cells_total = K * len(layers)
    work = K * sum(per_layer)           # every cell once, no pruning: an upper bound
    serial = 3 * r["plain"] + 2 * r["baseline"]  # conversion + two rebuilds (bias calibration), the baseline runs
    transfer_gb = sum(row["bytes_per_8"] * 4 for row in layers) / 1e9   # every layer's tensors, 32 samples
    out = ["## A 224x224 ResNet-18, projected", "",
           f"ImageNet-shaped ResNet-18, random weights, 17 neuron layers, T = 8, psi = 4, 32 random inputs: plain "
           f"conversion {r['plain']:.0f} s, peak {r['peak_mb']:.0f} MB. One tau cell of every layer on the 32 samples "
           "(4 batches of 8):", "",
           "| layer | tail nodes | s per cell (32 samples) | tensors per batch of 8 (MB) |", "|---|---:|---:|---:|"]
    for row in layers:
        out.append(f"| {row['name']} | {row['tail_nodes']} | {row['seconds']:.1f} | {row['bytes_per_8'] / 1e6:.0f} |")
    out += ["", "| workers | projected search wall time |", "|---:|---:|"]
    for w in (1, 8, 64):
        wall = serial + work / min(w, cells_total) + (transfer_gb if w > 1 else 0.0)
        out.append(f"| {w} | {wall / 60:.0f} min ({wall / 3600:.1f} h) |")
    out += ["", "Model: wall = serial + (25 candidates x sum over layers of one cell's seconds) / workers + "
            "transfer. serial = 3 plain conversions (the conversion and the two rebuilds, each a bias "
            "calibration) + the baseline runs, which stay on the driver. Every cell is run (pruning, which "
            "skips cells on a trained model, is left out: an upper bound). A worker is one core like this "
            "machine's and runs one cell at a time; tasks spread evenly (17 x 25 = 425 cells per batch round). "
            f"transfer: each layer's input, output and boundary tensors go to the object store once per batch "
            f"({transfer_gb:.1f} GB for the 32 samples), read at 1 GB/s by the nodes (1 s per GB, counted once). "
            "Search samples 32: the defaults' 256 would cost 8x the cell part."]
    return out


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
