"""Top-1 of `onnx2burst convert`'s SNNs of the Fashion-MNIST zoo against their ANNs, and one conversion's time and memory.

For each model in models/zoo (vgg_fmnist, vgg_max_fmnist, resnet20_fmnist): ANN top-1 and
SNN top-1 on the 10k test set for

    T=8 psi=4, T=16 psi=4, T=4 psi=4, T=32 psi=1   (threshold search + bias calibration)
    T=32 psi=1 "max-norm"                          (threshold = channel max, no bias calibration)

with 512 calibration samples (models/data/fmnist_calib.npz); for the MaxPool VGG also
--maxpool spikes (MaxPool per timestep) and --maxpool avg (AveragePool instead of MaxPool) at
T=8 and T=16 psi=4; and the conversion time and peak memory (ru_maxrss of a fresh process) of
the ResNet at T=8 with 512 samples; with ``--big``, the same for an ImageNet-size ResNet-50
(224x224, random weights, default options: the batch size follows the memory budget) at 64 and
512 calibration samples.
Prints a markdown table and writes benchmarks/results/convert.md.

    python benchmarks/convert_acceptance.py [--limit 2000] [--models resnet20_fmnist] [--threads 2] [--big]

Targets: T=8,psi=4 within 1.0 point of the ANN; T=16,psi=4 within 0.5; T=32,psi=1 within 2.0.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import CALIB, ROOT, ZOO_MODELS, load_store, machine, model_path, parser, session, top1, write_json, write_text

# (label, T, psi, thresholds method, bias calibration, maxpool)
CONFIGS = [
    ("T=8 psi=4", 8, 4, "search", True, "lateral"),
    ("T=16 psi=4", 16, 4, "search", True, "lateral"),
    ("T=4 psi=4", 4, 4, "search", True, "lateral"),
    ("T=32 psi=1", 32, 1, "search", True, "lateral"),
    ("T=32 psi=1 max-norm", 32, 1, "max", False, "lateral"),
]
# the other MaxPool settings, for the MaxPool VGG (the default, lateral, is in the main table)
MAXPOOL_OTHER = [("T=8 psi=4 --maxpool spikes", 8, 4, "search", True, "spikes"),
                 ("T=16 psi=4 --maxpool spikes", 16, 4, "search", True, "spikes"),
                 ("T=8 psi=4 --maxpool avg", 8, 4, "search", True, "avg"),
                 ("T=16 psi=4 --maxpool avg", 16, 4, "search", True, "avg")]
TARGETS = {"T=8 psi=4": 1.0, "T=16 psi=4": 0.5, "T=32 psi=1": 2.0}


def test_set(model_json: Path, limit: int | None):
    """The 10k test images normalised as the model's JSON says, the first ``limit``."""
    from models.data import load_fmnist_raw

    meta = json.loads(model_json.read_text())
    mean = np.float32(meta["normalization"]["mean"][0])
    std = np.float32(meta["normalization"]["std"][0])
    images, labels = load_fmnist_raw("test")
    x = ((images.astype(np.float32).reshape(-1, 1, 28, 28) / np.float32(255.0)) - mean) / std
    if limit:
        x, labels = x[:limit], labels[:limit]
    return x, labels


def convert_one(path: Path, T, psi, method, bias, maxpool, threads, stats_cache):
    from onnx2burst.config import CalibrationConfig, ConvertConfig, ThresholdConfig
    from onnx2burst.convert import Converter

    cfg = ConvertConfig(T=T, psi=psi, maxpool=maxpool, bias_calibration=bias,
                        thresholds=ThresholdConfig(method=method), calibration=CalibrationConfig(threads=threads))
    conv = Converter(path, cfg)
    key = (path, maxpool)
    if key not in stats_cache:
        data = conv.load_data(CALIB)
        stats_cache[key] = (data, conv.activation_stats(data))
    data, stats = stats_cache[key]
    vth = conv.fit_thresholds(data, stats)
    snn = conv.build(vth)
    model = conv.calibrate(snn, data, stats).model if bias else snn.model
    return conv, model


def timed_conversion(path: Path, threads, calib: Path = CALIB, samples: int = 512) -> dict:
    """Convert in a fresh process (T=8, psi=4, ``samples`` of ``calib``, the batch size from the
    memory budget): wall seconds, peak RSS and the batch size chosen.

    Run before this process holds anything big: Linux carries the parent's RSS at fork into
    the child's ru_maxrss. VmHWM (peak RSS of the child's own address space) is reported too."""
    code = (
        "import json,resource,time,sys;t=time.perf_counter();"
        "from onnx2burst.convert import Converter;from onnx2burst.config import ConvertConfig,CalibrationConfig;"
        f"c=Converter({str(path)!r},ConvertConfig(T=8,psi=4,calibration=CalibrationConfig(samples={samples},"
        f"threads={threads!r})));r=c.run({str(calib)!r});"
        "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')];"
        "print(json.dumps({'seconds':time.perf_counter()-t,'stages':r.stage_seconds,"
        "'maxrss_mb':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,"
        "'vmhwm_mb':int(hwm[0].split()[1])/1024 if hwm else None,'samples':r.samples,"
        "'batch':c.calibration.batch_size,'note':c.batch_note}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "conversion failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def big_model(samples: int) -> tuple[Path, Path]:
    """The ImageNet-size ResNet-50 (models/cache/resnet50_224.onnx, built once by tests/corpus.py)
    and ``samples`` standard-normal 224x224 inputs for it (models/cache/resnet50_224_<N>.npy)."""
    import onnx

    from tests import corpus

    cache = ROOT / "models" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "resnet50_224.onnx"
    if not path.is_file():
        onnx.save(corpus.imagenet_resnet50(), path)
    data = cache / f"resnet50_224_{samples}.npy"
    if not data.is_file():
        np.save(data, np.random.default_rng(0).standard_normal((samples, 3, 224, 224)).astype(np.float32))
    return path, data


def main(argv=None):
    ap = parser(__doc__, out="convert.md", models=ZOO_MODELS, threads=True, limit=None)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--timing-only", action="store_true", help="only the ResNet conversion time and memory")
    ap.add_argument("--fresh", action="store_true", help="forget the results of earlier runs (convert.json)")
    ap.add_argument("--big", action="store_true", help="only the 224x224 ResNet-50's conversion time and memory")
    ap.add_argument("--big-samples", default="64,512", help="calibration samples of the --big runs")
    args = ap.parse_args(argv)

    # results accumulate in convert.json beside the table, so models can be measured one by one
    store_path = args.out.with_suffix(".json")
    store = load_store(store_path, args.fresh)
    if store.get("limit") != args.limit:
        store = {}
    store["limit"] = args.limit
    rows_by_model = store.setdefault("rows", {})
    maxpool_store = store.setdefault("maxpool", {})
    timing = store.get("timing")
    resnet = model_path("resnet20_fmnist")
    if not args.skip_timing and resnet.is_file() and ("resnet20_fmnist" in args.models or args.timing_only):
        timing = store["timing"] = timed_conversion(resnet, args.threads)   # first: this process is still small
        print(f"resnet20 conversion T=8 psi=4 512 samples: {timing}", flush=True)
    if args.big:
        big = store.setdefault("big", {})
        for n in (int(v) for v in args.big_samples.split(",")):
            path, data = big_model(n)
            big[str(n)] = timed_conversion(path, args.threads, data, n)
            print(f"resnet50 224x224, {n} samples: {big[str(n)]}", flush=True)
            write_json(store_path, store)
    if args.timing_only or args.big:
        args.models = []
    for name in args.models:
        path = model_path(name)
        if not path.is_file():
            print(f"skip {name}: {path} missing", file=sys.stderr)
            continue
        x, labels = test_set(path.with_suffix(".json"), args.limit)
        maxpool_rows = []
        ann_acc = top1(session(path, args.threads), x, labels)
        row = {"model": name, "ANN": ann_acc, "threads": args.threads}
        stats_cache: dict = {}
        configs = CONFIGS + (MAXPOOL_OTHER if "max" in name else [])
        for label, T, psi, method, bias, maxpool in configs:
            t = time.perf_counter()
            conv, model = convert_one(path, T, psi, method, bias, maxpool, args.threads, stats_cache)
            tc = time.perf_counter() - t
            acc = top1(session(model, args.threads), x, labels, batch=max(32, 2048 // T))
            print(f"{name:16s} {label:26s} top-1 {acc:6.2f}  (ANN {ann_acc:.2f}, convert {tc:.1f}s, "
                  f"eval {time.perf_counter() - t - tc:.1f}s)", flush=True)
            if maxpool == "avg":  # the ANN it approximates is the one with AveragePool
                ann_avg = top1(session(conv.canonical.model, args.threads), x, labels)
                maxpool_rows.append((name, label, acc, ann_avg))
            elif maxpool != "lateral":
                maxpool_rows.append((name, label, acc, ann_acc))
            else:
                row[label] = acc
        rows_by_model[name] = row
        if maxpool_rows:
            maxpool_store[name] = maxpool_rows
        write_json(store_path, store)
    write_json(store_path, store)
    rows = [rows_by_model[m] for m in ZOO_MODELS if m in rows_by_model]
    maxpool_rows = [tuple(r) for v in maxpool_store.values() for r in v]

    n_test = args.limit or 10000
    lines = [f"# `onnx2burst convert` acceptance (Fashion-MNIST, {n_test} test images, 512 calibration samples)", "",
             "| model | ANN | " + " | ".join(c[0] for c in CONFIGS) + " |",
             "|---|---|" + "---|" * len(CONFIGS)]
    for r in rows:
        cells = []
        for c in CONFIGS:
            v = r.get(c[0])
            if v is None:
                cells.append("-")
                continue
            d = v - r["ANN"]
            tgt = TARGETS.get(c[0])
            mark = "" if tgt is None else (" ✓" if -d <= tgt else " ✗")
            cells.append(f"{v:.2f} ({d:+.2f}){mark}")
        lines.append(f"| {r['model']} | {r['ANN']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Top-1 %, (difference to the ANN); ✓/✗: within the target (T=8,psi=4: 1.0; T=16,psi=4: 0.5; "
              "T=32,psi=1: 2.0 points). max-norm: threshold = channel max, no bias calibration."]
    if maxpool_rows:
        lines += ["", "## MaxPool handling (vgg_max_fmnist)", "",
                  "| setting | SNN top-1 | ANN top-1 (the ANN the SNN approximates) |", "|---|---|---|"]
        mx = next((r for r in rows if r["model"] == "vgg_max_fmnist"), None)
        if mx:
            for c in ("T=8 psi=4", "T=16 psi=4"):
                if c in mx:
                    lines.append(f"| {c} --maxpool lateral (lateral inhibition, the default) | {mx[c]:.2f} | "
                                 f"{mx['ANN']:.2f} |")
        how = {"spikes": "MaxPool per timestep", "avg": "AveragePool instead"}
        for name, label, acc, ann_ref in maxpool_rows:
            lines.append(f"| {label} ({how[label.rsplit(' ', 1)[1]]}) | {acc:.2f} | {ann_ref:.2f} |")
    if timing:
        lines += ["", "## Conversion cost (resnet20_fmnist, T=8, psi=4, 512 samples, fresh process)", "",
                  f"- wall time: {timing['seconds']:.1f} s (target < 60 s); stages: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in timing["stages"].items()),
                  f"- peak memory: ru_maxrss {timing['maxrss_mb']:.0f} MB, VmHWM {timing.get('vmhwm_mb') or 0:.0f} MB "
                  "(whole process: Python, onnx, onnxruntime, the data)"]
    if store.get("big"):
        lines += ["", "## An ImageNet-size ResNet-50 (224x224, random weights), T=8, psi=4, default options, "
                  "fresh process", "",
                  "The batch size follows the memory budget (the smaller of 4 GiB and a quarter of the memory "
                  "available).", "",
                  "| samples | batch chosen | wall time | peak RSS (VmHWM) | data itself | stages |",
                  "|---:|---:|---:|---:|---:|---|"]
        for n, b in sorted(store["big"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {n} | {b.get('batch')} | {b['seconds']:.0f} s | {b.get('vmhwm_mb') or 0:.0f} MB | "
                         f"{int(n) * 3 * 224 * 224 * 4 / 2**20:.0f} MB | "
                         + ", ".join(f"{k} {v:.0f} s" for k, v in b["stages"].items()) + " |")
        big_rows = sorted(store["big"].items(), key=lambda kv: int(kv[0]))
        if len(big_rows) > 1:
            (n0, b0), (n1, b1) = big_rows[0], big_rows[-1]
            data_mb = (int(n1) - int(n0)) * 3 * 224 * 224 * 4 / 2**20
            lines += ["", f"From {n0} to {n1} samples the peak moves by "
                      f"{(b1.get('vmhwm_mb') or 0) - (b0.get('vmhwm_mb') or 0):+.0f} MB while the data grows by "
                      f"{data_mb:.0f} MB; the wall time goes from {b0['seconds'] / int(n0):.1f} to "
                      f"{b1['seconds'] / int(n1):.1f} s per sample (every pass runs every sample; a row measured "
                      "while other jobs shared the cores comes out slower)."]
    threads = ", ".join(f"{r['model']} {r.get('threads') or 'default'}" for r in rows)
    lines += ["", f"Machine: {machine()}, shared with other work; onnxruntime threads: {threads}."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
