"""Detection: the bundled detectors against their SNNs in COCO mAP (docs/detection.md).

    python benchmarks/detection.py [--T 4,8,16] [--boot 60] [--out benchmarks/results/detection.md]

Rows: the ReLU detector (models/zoo/det_fmnist.onnx) converted with psi=4 at each --T (bursting
spikes, thresholds and biases calibrated on models/data/det_fmnist_calib.npz), and the same with
BSR (psi per layer in 1..8 within the energy of uniform psi=4; the sensitivity is the normalised
squared error of the four outputs, docs/method.md §6; --no-bsr leaves these out); the LeakyReLU(0.1)
detector at the largest T with signed neurons (the default), with BSR, and converted as ReLU-only
(``--no-signed --allow-inexact``: the negative slope dropped). Every model is scored on the 400
bundled test canvases (models/data/det_fmnist_test.npz): numpy NMS (IoU 0.5, scores > 0.01, 100
per image) and pycocotools. Standard errors are bootstrap over images (--boot resamples); the
difference to the ANN has a paired one (both models on the same resampled images). Spikes,
SynOps and the energy ratio are per image (docs/method.md §7); ms per image of both models are
measured in the same evaluation, one after the other (noisy on a shared machine). Also writes
benchmarks/results/detection.png (the ANN's and the T=16 SNN's detections on six canvases) and
benchmarks/results/detection.json.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np

import onnx2burst
from onnx2burst.evaluation.detection import bootstrap_maps, coco_ground_truth, detection_figure, evaluate_detection
from onnx2burst.io import save_model

ROOT = common.ROOT
CALIB = ROOT / "models" / "data" / "det_fmnist_calib.npz"
TEST = ROOT / "models" / "data" / "det_fmnist_test.npz"


_ANN_BOOT: dict = {}


def _row(label, ann, snn, boot, threads):
    """One row; the bootstrap resamples are the same for every row (seed 0), so the ANN's are
    computed once per ANN and each SNN pairs with them."""
    r = evaluate_detection(ann, snn, TEST, boot=0, threads=threads, keep=True)
    gt, n = coco_ground_truth(TEST), r["samples"]
    done = [0]

    def tick(k):
        done[0] += k
        if done[0] % 20 == 0:
            print(f"    bootstrap {done[0]}", flush=True)
    if ann not in _ANN_BOOT:
        _ANN_BOOT[ann] = bootstrap_maps(gt, r["ann"]["detections"], n, boot, advance=tick)
    ba, bs = _ANN_BOOT[ann], bootstrap_maps(gt, r["snn"]["detections"], n, boot, advance=tick)
    for key, b in (("ann", ba), ("snn", bs)):
        r[key]["map50_se"], r[key]["map50_95_se"] = (float(v) for v in np.std(b, 0, ddof=1))
        del r[key]["detections"]
    d = bs - ba
    r["diff_se"] = {"map50": float(np.std(d[:, 0], ddof=1)), "map50_95": float(np.std(d[:, 1], ddof=1))}
    return {"row": label, **r}


def main(argv=None):
    p = common.parser(__doc__, out="detection.md", threads=True)
    p.add_argument("--T", type=common.int_list, default=[4, 8, 16], help="timesteps of the ReLU rows (default 4,8,16)")
    p.add_argument("--psi", type=int, default=4)
    p.add_argument("--boot", type=int, default=60, help="bootstrap resamples for the standard errors (default 60)")
    p.add_argument("--no-bsr", dest="bsr", action="store_false", help="leave out the +BSR rows")
    args = p.parse_args(argv)
    relu, leaky = common.model_path("det_fmnist"), common.model_path("det_leaky_fmnist")
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = [(f"ReLU, BS psi={args.psi}, T={T}", relu, dict(T=T)) for T in args.T]
        if args.bsr:
            plan += [(f"ReLU, BS + BSR (psi 1..8, energy of psi={args.psi}), T={T}", relu,
                      dict(T=T, search=onnx2burst.SearchConfig(bsr=True))) for T in args.T]
        Tl = max(args.T)
        plan += [(f"LeakyReLU, signed neurons, psi={args.psi}, T={Tl}", leaky, dict(T=Tl))]
        if args.bsr:
            plan += [(f"LeakyReLU, signed neurons + BSR (psi 1..8, energy of psi={args.psi}), T={Tl}", leaky,
                      dict(T=Tl, search=onnx2burst.SearchConfig(bsr=True)))]
        plan += [(f"LeakyReLU converted as ReLU (--no-signed --allow-inexact), psi={args.psi}, T={Tl}", leaky,
                  dict(T=Tl, signed=False, allow_inexact=True))]
        for k, (label, ann, opts) in enumerate(plan):
            print(f"[{time.time() - t0:5.0f}s] converting: {label}", flush=True)
            snn = onnx2burst.convert(str(ann), str(CALIB), psi=args.psi, **opts)
            path = tmp / f"snn{k}.onnx"
            save_model(snn, path)
            print(f"[{time.time() - t0:5.0f}s] scoring", flush=True)
            rows.append(_row(label, str(ann), str(path), args.boot, args.threads))
            r = rows[-1]
            meta = {p.key: p.value for p in snn.metadata_props}
            if "onnx2burst.search" in meta:
                r["psi_per_layer"] = [v["psi"] for v in json.loads(meta["onnx2burst.search"])["settings"].values()]
            print(f"    ANN {r['ann']['map50']:.2f}  SNN {r['snn']['map50']:.2f} mAP@0.5", flush=True)
            if ann == relu and opts["T"] == Tl and "search" not in opts:
                fig = detection_figure(str(ann), str(path), TEST, args.out.with_suffix(".png"))
                print(f"    wrote {fig}", flush=True)
    common.write_json(args.out.with_suffix(".json"), {"machine": common.machine(), "rows": rows})
    common.write_text(args.out, _markdown(rows, args, time.time() - t0))
    print(f"wrote {args.out}")


def _markdown(rows, args, seconds) -> str:
    def pm(v, se):
        return f"{v:.2f} ± {se:.2f}"
    lines = [
        "# Detection: the bundled detectors and their SNNs",
        "",
        f"Made by `python benchmarks/detection.py --T {','.join(map(str, args.T))} --psi {args.psi} --boot {args.boot}"
        f"{'' if args.bsr else ' --no-bsr'}` "
        f"in {seconds:.0f} s on "
        f"{common.machine()}. Test set: the {rows[0]['samples']} bundled canvases "
        "(`models/data/det_fmnist_test.npz`, 1-4 Fashion-MNIST items each); calibration: the 256 canvases "
        "of `models/data/det_fmnist_calib.npz`. mAP in points, pycocotools after numpy NMS "
        "(docs/detection.md); ± is a bootstrap standard error over images "
        f"({args.boot} resamples), paired for the difference.",
        "",
        "| model | T | ANN mAP@0.5 | SNN mAP@0.5 | SNN - ANN | ANN mAP@0.5:0.95 | SNN mAP@0.5:0.95 | "
        "spikes / image | SynOps / image | energy SNN/ANN | ms / image ANN, SNN |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, s, e, d = r["ann"], r["snn"], r["energy"], r["diff_se"]
        lines.append(
            f"| {r['row']} | {r['T']} | {pm(a['map50'], a['map50_se'])} | {pm(s['map50'], s['map50_se'])} | "
            f"{pm(s['map50'] - a['map50'], d['map50'])} | {pm(a['map50_95'], a['map50_95_se'])} | "
            f"{pm(s['map50_95'], s['map50_95_se'])} | {e['spikes']:.0f} | {e['synops'] / 1e6:.2f} M | "
            f"{e['ratio']:.3f} | {a['ms_per_sample']:.2f}, {s['ms_per_sample']:.2f} |")
    bsr = [r for r in rows if "psi_per_layer" in r]
    if bsr:
        lines += ["", "BSR's psi per layer (the 7 neurons in graph order): " + "; ".join(
            f"{'LeakyReLU' if r['row'].startswith('Leaky') else 'ReLU'} T={r['T']}: "
            f"{', '.join(map(str, r['psi_per_layer']))}" for r in bsr) + "."]
    lines += ["", "![ANN and SNN detections](detection.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
