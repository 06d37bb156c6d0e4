"""Train the YOLO-style detectors of the zoo on multi-object Fashion-MNIST and export them.

    python -m models.train --arch detector --epochs 12 --det-train 10000 --lr 0.004 --threads 1
    python -m models.train --arch detector --act leaky --epochs 12 --det-train 10000 --lr 0.004 --threads 1

(``models.train`` hands ``--arch detector`` to :func:`main` here.) Canvases come from
``models/detect_data.py``: each epoch draws fresh training canvases from the Fashion-MNIST
training images (seed + epoch); the test canvases are fixed.

Targets (one box per cell): an object goes to the stride-4 head when its longer side is at
most ``SPLIT`` pixels, else to the stride-8 head, in the cell holding its centre:
``sigmoid(tx), sigmoid(ty)`` = the centre's offset in the cell, ``exp(tw) * PRIOR`` = width
(the same for h), objectness 1, class one-hot. Loss: BCE on objectness (every cell), on the
classes and the centre offsets (object cells), smooth-L1 on ``tw, th``. AdamW, one-cycle LR.

The exported file has four outputs: the raw head maps ``head_s4 [N,15,16,16]`` and
``head_s8 [N,15,8,8]``, and the decoded ``boxes [N,320,4]`` (x1 y1 x2 y2, pixels) and
``scores [N,320,10]`` (sigmoid(objectness) * sigmoid(class)), written as ONNX nodes after the
heads by :func:`add_decoding` (Reshape, Transpose, Slice, Sigmoid, Exp, Add, Mul, Sub,
Concat). :func:`decode` is the same in numpy. NMS is the evaluation's
(``onnx2burst.evaluation.detection``).
"""
from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from . import detect_data as DD

STRIDES = (4, 8)
PRIORS = {4: 16.0, 8: 28.0}
SPLIT = 22
NUM_CLASSES = 10
OUTPUTS = ("head_s4", "head_s8", "boxes", "scores")


def targets(objects, num_classes: int = NUM_CLASSES):
    """Per stride: ``obj [N,G,G]``, ``box [N,4,G,G]`` (offsets and log sizes), ``cls [N,G,G]`` (-1: none)."""
    out = {}
    n = len(objects)
    for s in STRIDES:
        g = DD.CANVAS // s
        out[s] = (np.zeros((n, g, g), np.float32), np.zeros((n, 4, g, g), np.float32), np.full((n, g, g), -1, np.int64))
    for i, objs in enumerate(objects):
        for x1, y1, x2, y2, c in objs:
            w, h = x2 - x1, y2 - y1
            s = 4 if max(w, h) <= SPLIT else 8
            cx, cy = (x1 + x2) / 2 / s, (y1 + y2) / 2 / s
            gx, gy = min(int(cx), DD.CANVAS // s - 1), min(int(cy), DD.CANVAS // s - 1)
            obj, box, cls = out[s]
            obj[i, gy, gx] = 1
            box[i, :, gy, gx] = (cx - gx, cy - gy, math.log(w / PRIORS[s]), math.log(h / PRIORS[s]))
            cls[i, gy, gx] = c
    return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def decode(heads) -> tuple[np.ndarray, np.ndarray]:
    """numpy decoding of the raw head maps ``[N,5+C,G,G]`` (strides 4, 8): ``(boxes [N,K,4], scores [N,K,C])``."""
    all_b, all_s = [], []
    for h, s in zip(heads, STRIDES):
        n, c, g, _ = h.shape
        p = np.asarray(h, np.float32).reshape(n, c, g * g).transpose(0, 2, 1)
        gy, gx = np.divmod(np.arange(g * g), g)
        grid = np.stack([gx, gy], 1).astype(np.float32)
        xy = (_sigmoid(p[..., 0:2]) + grid) * s
        wh = np.exp(p[..., 2:4]) * PRIORS[s]
        all_b.append(np.concatenate([xy - wh / 2, xy + wh / 2], 2))
        all_s.append(_sigmoid(p[..., 4:5]) * _sigmoid(p[..., 5:]))
    return np.concatenate(all_b, 1), np.concatenate(all_s, 1)


def add_decoding(model, heads=("head_s4", "head_s8")):
    """Append the decoding of ``decode`` as ONNX nodes; outputs ``boxes`` and ``scores`` join the heads."""
    from onnx import TensorProto, helper, numpy_helper
    g = model.graph

    def const(name, v):
        g.initializer.append(numpy_helper.from_array(np.asarray(v), name))
        return name
    boxes, scores = [], []
    for head, s in zip(heads, STRIDES):
        gsz = DD.CANVAS // s
        gy, gx = np.divmod(np.arange(gsz * gsz), gsz)
        p = f"dec{s}_"
        nodes = [
            helper.make_node("Reshape", [head, const(p + "shape", np.array([0, 5 + NUM_CLASSES, -1], np.int64))],
                             [p + "flat"], name=p + "flatten"),
            helper.make_node("Transpose", [p + "flat"], [p + "cells"], perm=[0, 2, 1], name=p + "cells_last"),
        ]
        for part, (a, b) in {"txy": (0, 2), "twh": (2, 4), "tobj": (4, 5), "tcls": (5, 5 + NUM_CLASSES)}.items():
            nodes.append(helper.make_node("Slice", [p + "cells", const(p + part + "_a", np.array([a], np.int64)),
                                                    const(p + part + "_b", np.array([b], np.int64)),
                                                    const(p + part + "_ax", np.array([2], np.int64))],
                                          [p + part], name=p + "slice_" + part))
        nodes += [
            helper.make_node("Sigmoid", [p + "txy"], [p + "sxy"], name=p + "sigmoid_xy"),
            helper.make_node("Add", [p + "sxy", const(p + "grid", np.stack([gx, gy], 1).astype(np.float32))],
                             [p + "gxy"], name=p + "add_grid"),
            helper.make_node("Mul", [p + "gxy", const(p + "stride", np.float32(s))], [p + "xy"], name=p + "times_stride"),
            helper.make_node("Exp", [p + "twh"], [p + "ewh"], name=p + "exp_wh"),
            helper.make_node("Mul", [p + "ewh", const(p + "prior", np.float32(PRIORS[s] / 2))], [p + "half"],
                             name=p + "half_size"),
            helper.make_node("Sub", [p + "xy", p + "half"], [p + "x1y1"], name=p + "corner1"),
            helper.make_node("Add", [p + "xy", p + "half"], [p + "x2y2"], name=p + "corner2"),
            helper.make_node("Concat", [p + "x1y1", p + "x2y2"], [p + "boxes"], axis=2, name=p + "boxes_of"),
            helper.make_node("Sigmoid", [p + "tobj"], [p + "sobj"], name=p + "sigmoid_obj"),
            helper.make_node("Sigmoid", [p + "tcls"], [p + "scls"], name=p + "sigmoid_cls"),
            helper.make_node("Mul", [p + "sobj", p + "scls"], [p + "scores"], name=p + "scores_of"),
        ]
        g.node.extend(nodes)
        boxes.append(p + "boxes")
        scores.append(p + "scores")
    g.node.append(helper.make_node("Concat", boxes, ["boxes"], axis=1, name="boxes_concat"))
    g.node.append(helper.make_node("Concat", scores, ["scores"], axis=1, name="scores_concat"))
    k = sum((DD.CANVAS // s) ** 2 for s in STRIDES)
    g.output.append(helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", k, 4]))
    g.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k, NUM_CLASSES]))
    return model


def loss_fn(outs, tg):
    import torch
    import torch.nn.functional as F
    total = 0.0
    n = outs[0].shape[0]
    for out, s in zip(outs, STRIDES):
        obj, box, cls = (torch.from_numpy(a) for a in tg[s])
        total = total + F.binary_cross_entropy_with_logits(out[:, 4], obj, reduction="sum")
        pos = obj > 0
        if pos.any():
            o = out.permute(0, 2, 3, 1)[pos]            # [P, 5+C]
            b = box.permute(0, 2, 3, 1)[pos]
            onehot = F.one_hot(cls[pos], NUM_CLASSES).float()
            total = total + F.binary_cross_entropy_with_logits(o[:, 5:], onehot, reduction="sum")
            total = total + F.binary_cross_entropy_with_logits(o[:, 0:2], b[:, 0:2], reduction="sum")
            total = total + 2 * F.smooth_l1_loss(o[:, 2:4], b[:, 2:4], reduction="sum", beta=0.1)
    return total / n


def evaluate_map(heads_fn, canvases, objects, bs=250):
    """mAP@0.5 and @0.5:0.95 (points) of raw-head function ``heads_fn`` on the canvases."""
    from onnx2burst.evaluation.detection import coco_map, detections
    gt = DD.coco_dict(objects)
    res = []
    for i in range(0, len(canvases), bs):
        b, s = decode(heads_fn(DD.to_input(canvases[i:i + bs])))
        res += detections(b, s, image_ids=range(i, i + len(b)))
    return coco_map(gt, res)


def main(args) -> dict:
    """Train, export and record one detector (``args`` from ``models.train``)."""
    import onnx
    import onnxruntime as ort
    import torch

    from .archs import detector
    from .train import CACHE_DIR, export_onnx

    act = args.act
    name = args.name or ("det_fmnist" if act == "relu" else "det_leaky_fmnist")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = DD.D.load_fmnist_raw("train")
    test_c, test_o = DD.split("test", args.det_test)
    model = detector(NUM_CLASSES, act)
    nparams = sum(p.numel() for p in model.parameters())
    per_epoch = args.det_train
    steps = math.ceil(per_epoch / args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps,
                                                pct_start=0.2)
    print(f"{name}: detector act={act} params={nparams} canvases/epoch={per_epoch} epochs={args.epochs}", flush=True)
    t_start = time.time()
    for ep in range(1, args.epochs + 1):
        t0 = time.time()
        canv, objs = DD.make_canvases(images, labels, per_epoch, DD.SEEDS["train"] * 1000 + ep)
        model.train()
        tot = 0.0
        for i in range(steps):
            sl = slice(i * args.batch_size, (i + 1) * args.batch_size)
            xb = torch.from_numpy(DD.to_input(canv[sl]))
            loss = loss_fn(model(xb), targets(objs[sl]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * xb.shape[0]
        model.eval()
        with torch.no_grad():
            m50, m = evaluate_map(lambda x: [h.numpy() for h in model(torch.from_numpy(x))], test_c[:500], test_o[:500])
        print(f"epoch {ep:2d}/{args.epochs}  loss {tot / per_epoch:.3f}  test mAP@0.5 {m50:.2f}  "
              f"mAP@0.5:0.95 {m:.2f}  {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t_start
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "act": act}, CACHE_DIR / f"{name}.pt")

    path = out / f"{name}.onnx"
    x_check = DD.to_input(test_c[:64])

    class Heads(torch.nn.Module):  # export_onnx names one output; rename after
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)
    _export(Heads(model), path, x_check)
    m = add_decoding(onnx.load(str(path)))
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = [h.numpy() for h in model(torch.from_numpy(x_check))]
    got = sess.run(list(OUTPUTS), {"input": x_check})
    rb, rs = decode(ref)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref + [rb, rs], got))
    if not diff < 1e-3:
        raise RuntimeError(f"ONNX export mismatch: max |torch - onnxruntime| = {diff:.3g}")
    m50, mall = evaluate_map(lambda x: sess.run(["head_s4", "head_s8"], {"input": x}), test_c, test_o)
    info = {"name": name, "arch": "detector", "act": act, "dataset": "multi-object fmnist (models/detect_data.py)",
            "epochs": args.epochs, "canvases_per_epoch": per_epoch, "batch_size": args.batch_size, "lr": args.lr,
            "weight_decay": args.wd, "optimizer": "AdamW, OneCycle", "params": nparams, "seed": args.seed,
            "test_canvases": len(test_c), "test_map50": m50, "test_map50_95": mall,
            "accuracy_measured_with": "onnxruntime + numpy NMS + pycocotools",
            "onnx_vs_torch_max_abs_diff": diff, "input_name": "input", "input_shape": ["N", 1, 64, 64],
            "normalization": {"formula": "pixel / 255"}, "outputs": list(OUTPUTS), "opset": 17,
            "onnx_ops": sorted({n.op_type for n in m.graph.node}), "onnx_bytes": path.stat().st_size,
            "training_seconds": round(train_s, 1), "threads": args.threads, "torch_version": torch.__version__,
            "cpu": platform.processor() or platform.machine()}
    (out / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): onnxruntime mAP@0.5 {m50:.2f}, "
          f"mAP@0.5:0.95 {mall:.2f} on {len(test_c)} test canvases, trained {train_s:.0f}s", flush=True)
    return info


def _export(model, path: Path, x_check: np.ndarray):
    import onnx
    import torch

    from .train import inline_identity_initializers
    model = model.eval()
    kw = dict(opset_version=17, input_names=["input"], output_names=["head_s4", "head_s8"],
              dynamic_axes={"input": {0: "N"}, "head_s4": {0: "N"}, "head_s8": {0: "N"}}, do_constant_folding=True)
    torch.onnx.export(model, (torch.from_numpy(x_check[:2].copy()),), str(path), dynamo=False, **kw)
    onnx.save(inline_identity_initializers(onnx.load(str(path))), str(path))
