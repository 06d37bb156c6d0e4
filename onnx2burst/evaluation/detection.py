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

__all__ = ["nms", "detections", "coco_ground_truth", "has_coco", "coco_map", "map_with_se", "detection_outputs"]


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


def map_with_se(gt: dict, results: list[dict], n_images: int, *, boot: int = 0, seed: int = 0):
    """mAP@0.5 and @0.5:0.95 and, with ``boot`` > 0, their bootstrap standard errors over images
    (images drawn with replacement, ``boot`` resamples): ``(m50, m5095, se50, se5095)``."""
    coco = _coco(gt)
    ids = [im["id"] for im in gt["images"]][:n_images]
    m50, m = _coco_eval(coco, results, ids)
    if boot <= 0:
        return m50, m, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    by_img: dict = {}
    for r in results:
        by_img.setdefault(r["image_id"], []).append(r)
    anns: dict = {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    s50, s = [], []
    for _ in range(boot):
        pick = rng.choice(ids, size=len(ids), replace=True)
        images, gts, dts = [], [], []
        for new, old in enumerate(pick):
            images.append({"id": new, "width": 64, "height": 64})
            gts += [{**a, "id": len(gts) + 1, "image_id": new} for a in anns.get(old, [])]
            dts += [{**r, "image_id": new} for r in by_img.get(old, [])]
        b = _coco({"images": images, "annotations": gts, "categories": gt["categories"]})
        a50, a = _coco_eval(b, dts, range(len(images)))
        s50.append(a50)
        s.append(a)
    return m50, m, float(np.std(s50, ddof=1)), float(np.std(s, ddof=1))


def detection_outputs(names) -> tuple[str, str]:
    """The (boxes, scores) output names of a detector: outputs named ``boxes`` and ``scores``."""
    names = list(names)
    if "boxes" in names and "scores" in names:
        return "boxes", "scores"
    raise Onnx2BurstError(f"--task detection needs outputs named 'boxes' [N,K,4] and 'scores' [N,K,C]; "
                         f"the model's outputs are {names}")
