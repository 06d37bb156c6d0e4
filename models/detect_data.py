"""Multi-object Fashion-MNIST: canvases of 1-4 garments with boxes and classes (no downloads).

    python -m models.detect_data [--test 400] [--calib 256] [--out models/data]

Each canvas is ``CANVAS x CANVAS`` (64x64) grey pixels, black background. Each of its 1-4
items is a Fashion-MNIST image scaled to 16..32 pixels (bilinear) and pasted at a random
position (pixel-wise maximum with what is there; a placement overlapping an earlier box by
IoU > 0.3 is drawn again). The box is the tight box of the scaled item's pixels above 24/255,
``[x1, y1, x2, y2]`` in pixels (x2, y2 exclusive); the class is its Fashion-MNIST label.

Split: training canvases use Fashion-MNIST *training* images only, test canvases *test*
images only; seeds are fixed, so the sets are the same on every run. Input of the detectors:
``pixel / 255`` as float32 ``[N, 1, 64, 64]``.

Stored (``models/data``): ``det_fmnist_test.npz`` (the first ``--store-test`` test canvases:
``input`` float32, ``coco`` the COCO-format annotations as UTF-8 JSON bytes (uint8), and
``boxes``/``classes``/``counts`` flat), ``det_fmnist_calib.npz`` (canvases of training images,
drawn with their own seed: calibration data, ``input`` only) and ``det_fmnist_test.coco.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import data as D

CANVAS = 64
MAX_ITEMS = 4
SIZE_RANGE = (16, 32)
PIXEL_ON = 24
TEST_NPZ = D.DATA_DIR / "det_fmnist_test.npz"
CALIB_NPZ = D.DATA_DIR / "det_fmnist_calib.npz"
COCO_JSON = D.DATA_DIR / "det_fmnist_test.coco.json"
SEEDS = {"train": 11, "test": 12, "calib": 13}


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_canvases(images: np.ndarray, labels: np.ndarray, n: int, seed: int):
    """``n`` canvases from ``images`` uint8 [M,28,28]: ``(canvas uint8 [n,64,64],
    objects)``, objects a list per canvas of ``(x1, y1, x2, y2, class)``."""
    rng = np.random.default_rng(seed)
    canvases = np.zeros((n, CANVAS, CANVAS), np.uint8)
    objects = []
    for i in range(n):
        objs = []
        for _ in range(int(rng.integers(1, MAX_ITEMS + 1))):
            k = int(rng.integers(len(images)))
            size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
            sprite = _resize(images[k], size)
            ys, xs = np.nonzero(sprite > PIXEL_ON)
            if len(xs) == 0:
                continue
            for _attempt in range(10):
                ox, oy = (int(v) for v in rng.integers(0, CANVAS - size + 1, size=2))
                box = (ox + int(xs.min()), oy + int(ys.min()), ox + int(xs.max()) + 1, oy + int(ys.max()) + 1)
                if all(_iou(box, o[:4]) <= 0.3 for o in objs):
                    region = canvases[i, oy:oy + size, ox:ox + size]
                    np.maximum(region, sprite, out=region)
                    objs.append(box + (int(labels[k]),))
                    break
        objects.append(objs)
    return canvases, objects


def to_input(canvases_u8: np.ndarray) -> np.ndarray:
    """uint8 [N,64,64] -> the detectors' input, float32 [N,1,64,64] in [0, 1]."""
    return (canvases_u8.astype(np.float32) / np.float32(255.0))[:, None]


def coco_dict(objects) -> dict:
    """COCO-format ground truth: image ids 0..N-1, category ids = class + 1, bbox [x, y, w, h]."""
    images = [{"id": i, "width": CANVAS, "height": CANVAS, "file_name": f"canvas_{i:05d}"} for i in range(len(objects))]
    anns = []
    for i, objs in enumerate(objects):
        for x1, y1, x2, y2, c in objs:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1,
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                         "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
    cats = [{"id": c + 1, "name": name} for c, name in enumerate(D.FMNIST_CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}


def flat_objects(objects):
    counts = np.array([len(o) for o in objects], np.int64)
    flat = [o for objs in objects for o in objs]
    boxes = np.array([o[:4] for o in flat], np.float32).reshape(-1, 4)
    classes = np.array([o[4] for o in flat], np.int64)
    return boxes, classes, counts


def split(name: str, n: int):
    """The canvases of split ``name`` (train/test/calib), deterministic."""
    images, labels = D.load_fmnist_raw("test" if name == "test" else "train")
    return make_canvases(images, labels, n, SEEDS[name])


def load_test(path=TEST_NPZ):
    """``(input float32 [N,1,64,64], coco dict)`` of the stored test canvases."""
    with np.load(path, allow_pickle=False) as z:
        return z["input"].astype(np.float32), json.loads(bytes(z["coco"]).decode())


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m models.detect_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test", type=int, default=400, help="test canvases stored (default 400)")
    p.add_argument("--calib", type=int, default=256, help="calibration canvases stored (default 256)")
    p.add_argument("--out", default=str(D.DATA_DIR))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    canv, objs = split("test", args.test)
    coco = coco_dict(objs)
    boxes, classes, counts = flat_objects(objs)
    text = json.dumps(coco, separators=(",", ":"))
    np.savez_compressed(out / TEST_NPZ.name, input=to_input(canv), coco=np.frombuffer(text.encode(), np.uint8),
                        boxes=boxes, classes=classes, counts=counts)
    (out / COCO_JSON.name).write_text(text + "\n")
    canv_c, _ = split("calib", args.calib)
    np.savez_compressed(out / CALIB_NPZ.name, input=to_input(canv_c))
    for f in (TEST_NPZ.name, CALIB_NPZ.name, COCO_JSON.name):
        print(f"wrote {out / f} ({(out / f).stat().st_size / 1e6:.2f} MB)")
    print(f"test: {len(canv)} canvases, {len(classes)} objects; calib: {len(canv_c)} canvases")


if __name__ == "__main__":
    main()
