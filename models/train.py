"""Train a model-zoo ANN on CPU and export it to ONNX.

Example:
    python -m models.train --arch vgg --dataset fmnist --epochs 12
    python -m models.train --arch vgg --pool max --dataset fmnist --epochs 12
    python -m models.train --arch resnet20 --dataset fmnist --epochs 15
    python -m models.train --arch resnet18 --dataset fmnist-dvs --epochs 5 --threads 1
    python -m models.train --arch detector --act leaky --epochs 12 --det-train 10000 --lr 0.004 --threads 1

Writes ``<out>/<name>.onnx`` (opset 17, input ``input`` [N,1,28,28], or the
[N,18,34,34] voxel grids for fmnist-dvs, with a dynamic batch axis, output ``logits`` [N,10]) and ``<out>/<name>.json`` (the recipe and the
test accuracy measured with onnxruntime on the full 10k test set). The torch weights
go to ``models/cache/<name>.pt`` (not tracked).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .archs import build

DATASETS = ("fmnist", "fmnist-dvs")
CACHE_DIR = Path(__file__).resolve().parent / "cache"


def model_name(arch: str, pool: str, dataset: str) -> str:
    return f"{arch}{'_max' if pool == 'max' else ''}_{dataset.replace('-', '_')}"


def load_dataset(name: str):
    """Return (train_u8 [N,1,H,W] uint8, train_y, test_u8, test_y, meta)."""
    if name == "fmnist":
        xtr, ytr = D.load_fmnist_raw("train")
        xte, yte = D.load_fmnist_raw("test")
        meta = {"mean": [D.FMNIST_MEAN], "std": [D.FMNIST_STD], "num_classes": 10,
                "input_shape": [1, *D.FMNIST_SHAPE[1:]]}
        return xtr[:, None], ytr, xte[:, None], yte, meta
    if name == "fmnist-dvs":
        # voxel grids (B=9 bins x 2 polarities) of the events cached by
        # `python -m models.make_dvs`; uint8 counts, normalised as (count - mean) / std
        from . import dvs
        xtr, ytr = D.load_fmnist_dvs_raw("train")
        xte, yte = D.load_fmnist_dvs_raw("test")
        events, _, _ = dvs.load_events(dvs.events_path("train"))
        info = {"voxel_bins": D.FMNIST_DVS_BINS, "voxel_layout": "channel = p*B + bin (OFF first)",
                "voxel_window_us": [0, events.extra["params"].duration_us],
                "simulator": json.loads(events.extra["params"].to_json()),
                "train_events": events.extra["meta"]}
        del events
        meta = {"mean": [D.FMNIST_DVS_MEAN], "std": [D.FMNIST_DVS_STD], "scale": 1.0,
                "formula": "(voxel_count - mean) / std", "num_classes": 10,
                "input_shape": list(D.FMNIST_DVS_SHAPE), "info": info}
        return xtr, ytr, xte, yte, meta
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")


def augment(xb_u8: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, on a uint8
    batch [B,C,H,W], vectorised."""
    b, c, h, w = xb_u8.shape
    if pad > 0:
        padded = F.pad(xb_u8, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        iy = (oy[:, None] + torch.arange(h))[:, None, :, None]   # [B,1,H,1]
        ix = (ox[:, None] + torch.arange(w))[:, None, None, :]   # [B,1,1,W]
        bi = torch.arange(b)[:, None, None, None]
        ci = torch.arange(c)[None, :, None, None]
        xb_u8 = padded[bi, ci, iy, ix]
    flip = torch.rand(b, generator=gen) < 0.5
    xb_u8 = torch.where(flip[:, None, None, None], xb_u8.flip(3), xb_u8)
    return xb_u8


def to_float(xb_u8: torch.Tensor, mean, std, scale=None) -> torch.Tensor:
    """``(x*scale - mean) / std``; the default scale is 1/255 (pixels)."""
    x = xb_u8.float().div_(255.0) if scale is None else xb_u8.float().mul_(scale)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


@torch.no_grad()
def evaluate(model, x_u8, y, meta, bs=1000, channels_last=True):
    model.eval()
    correct = 0
    for i in range(0, len(y), bs):
        xb = to_float(x_u8[i:i + bs], meta["mean"], meta["std"], meta.get("scale"))
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        correct += (model(xb).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(y)


def inline_identity_initializers(m):
    """The TorchScript exporter deduplicates equal constants (e.g. the zero biases of
    BN-folded convs of an untrained net) and shares them through ``Identity`` nodes.
    Replace each Identity whose input is an initializer by a copy of the initializer
    under the Identity's output name, so that every weight is a plain initializer."""
    import onnx
    from onnx import numpy_helper
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for node in m.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            m.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    if len(keep) != len(m.graph.node):
        del m.graph.node[:]
        m.graph.node.extend(keep)
        used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
        alive = [t for t in m.graph.initializer if t.name in used]
        del m.graph.initializer[:]
        m.graph.initializer.extend(alive)
    return m


def export_onnx(model, path: Path, input_shape, x_check: np.ndarray, threads: int):
    import onnx
    import onnxruntime as ort
    model = model.to(memory_format=torch.contiguous_format).eval()
    dummy = torch.from_numpy(x_check[:2].copy())
    kw = dict(opset_version=17, input_names=["input"], output_names=["logits"],
              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True)
    try:
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, **kw)
    except TypeError:  # torch without the dynamo switch
        torch.onnx.export(model, (dummy,), str(path), **kw)
    m = inline_identity_initializers(onnx.load(str(path)))
    onnx.save(m, str(path))
    onnx.checker.check_model(m, full_check=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x_check)).numpy()
    got = sess.run(["logits"], {"input": x_check})[0]
    diff = float(np.abs(ref - got).max())
    if not diff < 1e-4:
        raise RuntimeError(f"ONNX export mismatch: max |torch - onnxruntime| = {diff:.3g}")
    return sess, diff, [n.op_type for n in m.graph.node]


def ort_accuracy(sess, x: np.ndarray, y: np.ndarray, bs: int = 1000) -> float:
    correct = 0
    for i in range(0, len(y), bs):
        logits = sess.run(["logits"], {"input": x[i:i + bs]})[0]
        correct += int((logits.argmax(1) == y[i:i + bs]).sum())
    return correct / len(y)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m models.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=["vgg", "resnet20", "resnet18", "detector"],
                   help="detector: the YOLO-style detector on multi-object canvases (models/detect.py)")
    p.add_argument("--act", default="relu", choices=["relu", "leaky"],
                   help="detector activation: ReLU or LeakyReLU(0.1) (default relu)")
    p.add_argument("--det-train", type=int, default=12000, help="detector: training canvases per epoch")
    p.add_argument("--det-test", type=int, default=1000, help="detector: test canvases scored")
    p.add_argument("--dataset", default="fmnist", choices=DATASETS)
    p.add_argument("--pool", default="avg", choices=["avg", "max"],
                   help="pooling of the VGG (default avg)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak LR of the one-cycle schedule")
    p.add_argument("--wd", type=float, default=5e-4, help="weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--pad", type=int, default=2, help="random-crop padding (0: no crop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "zoo"))
    p.add_argument("--name", default=None, help="output base name (default derived)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    if args.arch == "detector":
        from . import detect
        return detect.main(args)
    if args.arch != "vgg" and args.pool != "avg":
        sys.exit("--pool max only applies to --arch vgg")

    xtr, ytr, xte, yte, meta = load_dataset(args.dataset)
    name = args.name or model_name(args.arch, args.pool, args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xte_t, yte_t = torch.from_numpy(xte), torch.from_numpy(yte)
    model = build(args.arch, xtr.shape[1], meta["num_classes"], args.pool)
    model = model.to(memory_format=torch.channels_last)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{name}: {args.arch} pool={args.pool} params={nparams} train={len(ytr)} "
          f"test={len(yte)} epochs={args.epochs} bs={args.batch_size} lr={args.lr} "
          f"threads={args.threads}", flush=True)

    decay, no_decay = [], []
    for n_, p_ in model.named_parameters():
        (no_decay if p_.ndim <= 1 else decay).append(p_)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.wd},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    steps = math.ceil(len(ytr) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps, pct_start=0.25,
        div_factor=10.0, final_div_factor=1000.0)
    gen = torch.Generator().manual_seed(args.seed)

    t_start = time.time()
    test_acc = 0.0
    for ep in range(1, args.epochs + 1):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        tot_loss, correct, seen = 0.0, 0, 0
        for i in range(steps):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb = to_float(augment(xtr_t[idx], args.pad, gen), meta["mean"], meta["std"],
                          meta.get("scale"))
            xb = xb.contiguous(memory_format=torch.channels_last)
            yb = ytr_t[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
        test_acc = evaluate(model, xte_t, yte_t, meta)
        print(f"epoch {ep:3d}/{args.epochs}  loss {tot_loss / seen:.4f}  "
              f"train {100 * correct / seen:6.2f}%  test {100 * test_acc:6.2f}%  "
              f"{time.time() - t0:6.1f}s", flush=True)
    train_s = time.time() - t_start

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "args": vars(args)}, CACHE_DIR / f"{name}.pt")

    x_test = to_float(xte_t, meta["mean"], meta["std"], meta.get("scale")).numpy()
    onnx_path = out / f"{name}.onnx"
    sess, diff, ops = export_onnx(model, onnx_path, meta["input_shape"], x_test[:64],
                                  args.threads)
    onnx_acc = ort_accuracy(sess, x_test, yte)
    info = {
        "name": name, "arch": args.arch, "pool": args.pool if args.arch == "vgg" else None,
        "dataset": args.dataset, "epochs": args.epochs, "seed": args.seed,
        "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.wd,
        "label_smoothing": args.label_smoothing, "crop_pad": args.pad, "hflip": True,
        "optimizer": "SGD nesterov momentum 0.9, OneCycle", "params": nparams,
        "test_accuracy": onnx_acc, "test_accuracy_torch": test_acc,
        "test_set_size": int(len(yte)), "accuracy_measured_with": "onnxruntime",
        "onnx_vs_torch_max_abs_diff": diff,
        "normalization": {"mean": meta["mean"], "std": meta["std"],
                          "formula": meta.get("formula", "(pixel/255 - mean) / std")},
        "train_set_size": int(len(ytr)),
        "input_name": "input", "output_name": "logits",
        "input_shape": ["N", *meta["input_shape"]], "opset": 17,
        "onnx_ops": sorted(set(ops)), "onnx_bytes": onnx_path.stat().st_size,
        "training_seconds": round(train_s, 1), "threads": args.threads,
        "torch_version": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    if "info" in meta:
        info["dataset_info"] = meta["info"]
    (out / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), "
          f"onnxruntime test accuracy {100 * onnx_acc:.2f}% (10k), max diff {diff:.2e}, "
          f"trained {train_s:.0f}s", flush=True)
    return info


if __name__ == "__main__":
    main()
