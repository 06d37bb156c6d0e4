"""Scoring detectors: decoded boxes and scores -> per-class NMS (numpy) -> COCO mAP.

A detector's ONNX outputs ``boxes [N, K, 4]`` (``x1, y1, x2, y2`` in pixels) and
``scores [N, K, C]`` (per class, in [0, 1]) are reduced per image and class by greedy
non-maximum suppression (IoU > ``iou`` suppressed), the best ``max_det`` detections kept,
and scored against COCO-format ground truth with pycocotools (the ``detection`` extra):
mAP@0.5 and mAP@0.5:0.95, in points (0..100). Category ids are class index + 1.
The ground truth comes from the data file: an ``.npz`` with a ``coco`` array (UTF-8 JSON
bytes of a COCO dict, as ``models/detect_data.py`` writes) or a ``.json`` file beside it
(``<data stem>.coco.json``). docs/detection.md describes the whole task.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from ..errors import CalibrationDataError, Onnx2BurstError

__all__ = ["nms", "detections", "coco_ground_truth", "has_coco", "coco_map", "map_with_se", "bootstrap_maps",
           "detection_outputs",
           "evaluate_detection", "detection_table", "detection_figure"]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Indices kept by greedy NMS, best score first (``boxes [K, 4]`` x1 y1 x2 y2)."""
    order = np.argsort(-scores, kind="stable")
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0)
        h = np.maximum(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0)
        inter = w * h
        union = area[i] + area[rest] - inter
        ov = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        order = rest[ov <= iou]
    return np.asarray(keep, np.int64)


def detections(boxes: np.ndarray, scores: np.ndarray, *, score_min: float = 0.01, iou: float = 0.5,
               max_det: int = 100, image_ids=None) -> list[dict]:
    """COCO result records of a batch: per image and class, boxes above ``score_min`` after NMS."""
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    out = []
    for n in range(boxes.shape[0]):
        img = int(image_ids[n]) if image_ids is not None else n
        found = []
        for c in range(scores.shape[2]):
            sel = np.flatnonzero(scores[n, :, c] > score_min)
            if sel.size == 0:
                continue
            kept = sel[nms(boxes[n, sel], scores[n, sel, c], iou)]
            found += [(float(scores[n, k, c]), c, k) for k in kept]
        found.sort(key=lambda r: -r[0])
        for s, c, k in found[:max_det]:
            x1, y1, x2, y2 = (float(v) for v in boxes[n, k])
            out.append({"image_id": img, "category_id": c + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    return out


def has_coco(path) -> bool:
    """Whether data file ``path`` carries COCO ground truth (an npz ``coco`` array or a .coco.json beside it)."""
    p = Path(path)
    if p.suffix == ".npz" and p.is_file():
        try:
            with np.load(p, allow_pickle=False) as z:
                if "coco" in z.files:
                    return True
        except Exception:  # noqa: BLE001 - not ours to judge here: the data reader reports it
            return False
    return p.with_suffix(".coco.json").is_file()


def coco_ground_truth(path) -> dict:
    """The COCO dict of data file ``path`` (see the module docstring); one-line errors."""
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "coco" in z.files:
                raw = bytes(np.asarray(z["coco"], np.uint8))
                try:
                    gt = json.loads(raw.decode())
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise CalibrationDataError(f"{p}: array 'coco' is not UTF-8 JSON: {e}") from None
                return _check_gt(gt, str(p))
    side = p.with_suffix(".coco.json")
    if not side.is_file():
        raise CalibrationDataError(f"{p}: no COCO annotations (an npz array 'coco' or {side.name}) for --task detection")
    try:
        return _check_gt(json.loads(side.read_text()), str(side))
    except json.JSONDecodeError as e:
        raise CalibrationDataError(f"{side}: not JSON: {e}") from None


def _check_gt(gt, where: str) -> dict:
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")):
        raise CalibrationDataError(f"{where}: COCO annotations need lists 'images', 'annotations', 'categories'")
    return gt


def _coco_eval(gt_coco, results: list[dict], img_ids) -> tuple[float, float]:
    from pycocotools.cocoeval import COCOeval
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt_coco.loadRes(results)
        ev = COCOeval(gt_coco, dt, "bbox")
        ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100.0 * max(float(ev.stats[1]), 0.0), 100.0 * max(float(ev.stats[0]), 0.0)


def _coco(gt: dict):
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise Onnx2BurstError("detection scoring needs pycocotools: pip install 'onnx2burst[detection]'") from None
    c = COCO()
    c.dataset = {**gt, "info": gt.get("info", {}), "licenses": gt.get("licenses", [])}
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex()
    return c


def coco_map(gt: dict, results: list[dict], n_images: int | None = None) -> tuple[float, float]:
    """``(mAP@0.5, mAP@0.5:0.95)`` in points of ``results`` against ``gt`` (its first ``n_images``)."""
    ids = [im["id"] for im in gt["images"]][:n_images]
    return _coco_eval(_coco(gt), results, ids)


def bootstrap_maps(gt: dict, results: list[dict], n_images: int, boot: int, seed: int = 0,
                   advance=None) -> np.ndarray:
    """``[boot, 2]``: mAP@0.5 and mAP@0.5:0.95 of ``results`` on ``boot`` resamples of the first
    ``n_images`` images (drawn with replacement). The same ``seed`` draws the same resamples, so
    two models' arrays pair up for the standard error of their difference."""
    rng = np.random.default_rng(seed)
    ids = [im["id"] for im in gt["images"]][:n_images]
    anns: dict = {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    by_img: dict = {}
    for r in results:
        by_img.setdefault(r["image_id"], []).append(r)
    out = np.zeros((boot, 2))
    for k in range(boot):
        pick = rng.choice(ids, size=len(ids), replace=True)
        images, gts, dts = [], [], []
        for new, old in enumerate(pick):
            images.append({"id": new, "width": 64, "height": 64})
            gts += [{**a, "id": len(gts) + 1, "image_id": new} for a in anns.get(old, [])]
            dts += [{**r, "image_id": new} for r in by_img.get(old, [])]
        coco = _coco({"images": images, "annotations": gts, "categories": gt["categories"]})
        out[k] = _coco_eval(coco, dts, range(len(images)))
        if advance is not None:
            advance(1)
    return out


def map_with_se(gt: dict, results: list[dict], n_images: int, *, boot: int = 0, seed: int = 0):
    """``(mAP@0.5, mAP@0.5:0.95, se50, se5095)``: the standard errors over ``boot`` bootstrap
    resamples of the images (NaN when ``boot`` is 0)."""
    m50, m = coco_map(gt, results, n_images)
    if boot <= 1:
        return m50, m, float("nan"), float("nan")
    b = bootstrap_maps(gt, results, n_images, boot, seed)
    return m50, m, float(np.std(b[:, 0], ddof=1)), float(np.std(b[:, 1], ddof=1))


def detection_outputs(names) -> tuple[str, str]:
    """The (boxes, scores) output names of a detector: outputs named ``boxes`` and ``scores``."""
    names = list(names)
    if "boxes" in names and "scores" in names:
        return "boxes", "scores"
    raise Onnx2BurstError(f"--task detection needs outputs named 'boxes' [N,K,4] and 'scores' [N,K,C]; "
                         f"the model's outputs are {names}")


def _decoded(sess, batches, names, advance):
    from .evaluate import _timed_runs
    outs, sec = _timed_runs(sess, batches, names, advance)
    return [np.concatenate([o[j] for o in outs]) for j in range(len(names))], sec


def evaluate_detection(ann, snn, data, *, batch_size: int = 64, threads: int | None = None,
                       kernel: bool | None = None, limit: int | None = None, e_ac_pj: float = 0.9,
                       e_mac_pj: float = 4.6, boot: int = 50, progress=None, other_ann: bool = False,
                       keep: bool = False) -> dict:
    """A detector against its SNN on ``data`` (an .npz with COCO ground truth, see the module
    docstring): mAP@0.5 and mAP@0.5:0.95 of both (with bootstrap standard errors over images,
    ``boot`` resamples, and of the SNN-minus-ANN difference, paired), spikes, SynOps and energy
    per image (docs/method.md §7), ms per image. Returns a JSON-ready dict (``keep``: also each
    model's ``detections`` and ``boot`` arrays)."""
    from .. import ops
    from ..data import load_data
    from ..errors import onnxruntime_errors
    from ..interop.portable import fold_back
    from ..progress import progress_or_null
    from ..snn import read_snn
    from .energy import ann_macs, energy_model, with_spike_outputs
    from .evaluate import _batches, _fixed_batch, check_source, load_onnx

    gt = coco_ground_truth(data)
    ann_path = ann
    ann, snn = load_onnx(ann), fold_back(load_onnx(snn))
    view = read_snn(snn)
    notes = [n for n in [check_source(ann_path, ann, view.metadata, other_ok=other_ann)] if n]
    a_names = detection_outputs([o.name for o in ann.graph.output])
    detection_outputs([o.name for o in snn.graph.output])
    ds = load_data(data, ann, samples=limit)
    n = len(ds)
    if n > len(gt["images"]):
        raise CalibrationDataError(f"{data}: {n} inputs but annotations for {len(gt['images'])} images")
    em = energy_model(snn)
    snn_run, spike_names = with_spike_outputs(snn)
    use_kernel = ops.kernel_available() if kernel is None else kernel
    with onnxruntime_errors("the ANN"):
        a_sess = ops.make_session(ann, kernel=False, threads=threads)
    with onnxruntime_errors("the SNN"):
        s_sess = ops.make_session(snn_run, kernel=use_kernel, threads=threads)
    fixed_a, fixed_s = _fixed_batch(ann), _fixed_batch(snn)
    with progress_or_null(progress).stage("ANN", 2 * n) as st:
        with onnxruntime_errors("the ANN on the data"):
            a_out, a_sec = _decoded(a_sess, _batches(ds, batch_size, fixed_a), list(a_names), st.advance)
        st.advance(0, description="SNN")
        with onnxruntime_errors("the SNN on the data"):
            s_out, s_sec = _decoded(s_sess, _batches(ds, batch_size, fixed_s), list(a_names) + spike_names, st.advance)
    res = {}
    with progress_or_null(progress).stage("mAP, bootstrap", 2 * max(boot, 0) + 2) as st:
        for key, (b, s) in (("ann", a_out[:2]), ("snn", s_out[:2])):
            r = detections(b, s)
            m50, m = coco_map(gt, r, n)
            st.advance(1)
            res[key] = {"map50": m50, "map50_95": m, "map50_se": None, "map50_95_se": None, "detections": r}
            if boot > 1:
                res[key]["boot"] = bootstrap_maps(gt, r, n, boot, advance=st.advance)
                res[key]["map50_se"], res[key]["map50_95_se"] = (float(v) for v in np.std(res[key]["boot"], 0,
                                                                                          ddof=1))
    if boot > 1:
        d = res["snn"]["boot"] - res["ann"]["boot"]
        res["diff_se"] = {"map50": float(np.std(d[:, 0], ddof=1)), "map50_95": float(np.std(d[:, 1], ddof=1))}
    spikes = np.stack([s_out[2 + j] for j in range(len(spike_names))]).astype(np.float64).mean(axis=1)
    est = em.estimate(spikes, ann_macs=ann_macs(ann), e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj)
    drop = () if keep else ("detections", "boot")
    out = {"task": "detection", "samples": n, "T": view.T, "kernel": bool(use_kernel), "notes": notes + list(em.notes),
           "energy": est.to_dict(), "ann": {k: v for k, v in res["ann"].items() if k not in drop},
           "snn": {k: v for k, v in res["snn"].items() if k not in drop}}
    out["ann"]["ms_per_sample"] = 1e3 * a_sec / n
    out["snn"]["ms_per_sample"] = 1e3 * s_sec / n
    out["diff_se"] = res.get("diff_se")
    return out


def detection_table(r: dict):
    """A rich table of ``evaluate_detection``'s result."""
    from rich.table import Table
    t = Table(title=f"detector ANN vs SNN, {r['samples']} images, T={r['T']}")
    for c in ("", "ANN", "SNN"):
        t.add_column(c, justify="left" if not c else "right")
    a, s, e = r["ann"], r["snn"], r["energy"]

    def pm(v, se):
        return f"{v:.2f}" + ("" if se is None or not np.isfinite(se) else f" ± {se:.2f}")
    t.add_row("mAP@0.5", pm(a["map50"], a["map50_se"]), pm(s["map50"], s["map50_se"]))
    t.add_row("mAP@0.5:0.95", pm(a["map50_95"], a["map50_95_se"]), pm(s["map50_95"], s["map50_95_se"]))
    if r.get("diff_se"):
        t.add_row("SNN - ANN, mAP@0.5", "", pm(s["map50"] - a["map50"], r["diff_se"]["map50"]) + " (paired SE)")
    t.add_row("spikes / image", "", f"{e['spikes']:.4g}")
    t.add_row("SynOps / image", "", f"{e['synops']:.4g}")
    t.add_row("energy / image (uJ)", f"{(e.get('e_ann_pj') or 0) / 1e6:.4g}", f"{e['e_snn_pj'] / 1e6:.4g}")
    t.add_row("ms / image", f"{a['ms_per_sample']:.3f}", f"{s['ms_per_sample']:.3f}" + ("" if r["kernel"]
                                                                                       else " (fallback)"))
    return t


def detection_figure(ann, snn, data, out, *, count: int = 6, score_min: float = 0.3) -> str:
    """A PNG of the first ``count`` images of ``data`` with the ground truth (white), the ANN's
    (green, top row) and the SNN's (orange, bottom row) detections above ``score_min``, written
    atomically to ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import ops
    from ..io import write_file
    from .evaluate import load_onnx

    gt = coco_ground_truth(data)
    with np.load(data, allow_pickle=False) as z:
        x = np.asarray(z["input"][:count], np.float32)
    cats = {c["id"]: c["name"] for c in gt["categories"]}
    fig, axes = plt.subplots(2, len(x), figsize=(2.2 * len(x), 4.8))
    axes = np.asarray(axes).reshape(2, -1)
    for row, (model, colour, label) in enumerate(((ann, "lime", "ANN"), (snn, "orange", "SNN"))):
        b, s = ops.make_session(load_onnx(model)).run(["boxes", "scores"], {_input_name(load_onnx(model)): x})
        dets = detections(b, s, score_min=score_min)
        for i, ax in enumerate(axes[row]):
            ax.imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            for a in gt["annotations"]:
                if a["image_id"] == gt["images"][i]["id"]:
                    bx, by, bw, bh = a["bbox"]
                    ax.add_patch(plt.Rectangle((bx - 0.5, by - 0.5), bw, bh, fill=False, ec="white", lw=0.8, ls="--"))
            for d in dets:
                if d["image_id"] == i:
                    bx, by, bw, bh = d["bbox"]
                    ax.add_patch(plt.Rectangle((bx - 0.5, by - 0.5), bw, bh, fill=False, ec=colour, lw=1.2))
                    ax.text(bx, by - 1, f"{cats.get(d['category_id'], d['category_id'])} {d['score']:.2f}",
                            color=colour, fontsize=5, va="bottom")
            if i == 0:
                ax.set_ylabel(label)
    fig.suptitle("ground truth (dashed white), ANN (top), SNN (bottom)", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    write_file(out, buf.getvalue())
    return str(out)


def _input_name(model) -> str:
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)

