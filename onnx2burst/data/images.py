"""Folders of images as model input: header-checked (decompression bombs), resized and
normalised with Pillow."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ..config import ImageOptions
from ..errors import CalibrationDataError
from .files import subset

__all__ = ["IMAGE_EXTENSIONS", "read_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def _pixels(im, mode: str, c: int, size: tuple[int, int], Image) -> np.ndarray:
    """``[H, W, c]`` float32 on the 8-bit scale 0..255. A 16-bit grey image (PNG ``I;16``,
    read by Pillow as ``I``/``I;16*``) is scaled by 255/65535 instead of being clipped at 255."""
    w, h = size
    if im.mode == "I" or im.mode.startswith("I;16"):
        grey = (im if im.mode == "I" else im.convert("I")).convert("F").resize((w, h), Image.BILINEAR)
        a = np.asarray(grey, dtype=np.float32) * np.float32(255.0 / 65535.0)
        a = np.repeat(a[:, :, None], min(c, 3), axis=2)
        if c == 4:
            a = np.concatenate([a, np.full((h, w, 1), 255.0, np.float32)], axis=2)
        return a
    return np.asarray(im.convert(mode).resize((w, h), Image.BILINEAR), dtype=np.float32).reshape(h, w, c)


def read_image_folder(folder: Path, specs, samples: int, seed: int, image: ImageOptions) -> np.ndarray:
    """The images of ``folder`` (a seeded subset of ``samples``) as the one input ``[N, C, H, W]``
    float32 of ``specs``, normalised as ``(pixel/255 - mean) / std``."""
    if len(specs) != 1:
        raise CalibrationDataError(f"{folder}: images feed a single-input model; this one has inputs "
                                   f"{[s.name for s in specs]}")
    spec = specs[0]
    if spec.shape is None or len(spec.shape) != 4:
        raise CalibrationDataError(f"{folder}: images need a model input [N, C, H, W]; the model's is {spec.show()}")
    c, h, w = spec.shape[1:]
    if not isinstance(c, int) or c not in (1, 3, 4):
        if isinstance(spec.shape[3], int) and spec.shape[3] in (1, 3, 4):
            raise CalibrationDataError(f"{folder}: the model input {spec.name!r} is {spec.show()}, channels last "
                                       "(NHWC); image folders feed [N, C, H, W] inputs: give the data as .npy/.npz "
                                       "in the model's layout")
        raise CalibrationDataError(f"{folder}: the model input has {c} channels; images give 1, 3 or 4")
    if image.size is not None:
        h, w = image.size
    elif not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise CalibrationDataError(f"{folder}: the model input's H, W are not fixed ({spec.show()}); give --size")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise CalibrationDataError(f"{folder}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    sel = subset(len(files), samples, seed)
    files = [files[i] for i in sel] if sel is not None else files[:samples]
    try:
        from PIL import Image
    except ImportError:
        raise CalibrationDataError("reading an image folder needs Pillow (pip install pillow)") from None
    mean = np.array(image.mean, np.float32)
    std = np.array(image.std, np.float32)
    for name, v in (("--mean", mean), ("--std", std)):
        if v.size not in (1, c):
            raise CalibrationDataError(f"{name} has {v.size} values; the model input has {c} channels (give 1 or {c})")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    out = np.empty((len(files), c, h, w), np.float32)
    cap = int(image.max_pixels)
    limit_msg = f"the limit is {cap:,} pixels (ImageOptions.max_pixels, --max-image-pixels)"
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = cap  # Pillow's own check at open: warns above cap, raises above 2*cap
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for k, f in enumerate(files):
                try:
                    with Image.open(f) as im:  # lazy: reads the header, decodes nothing yet
                        iw, ih = im.size
                        if iw * ih > cap:
                            raise CalibrationDataError(
                                f"{f}: the image declares {iw}x{ih} = {iw * ih:,} pixels; {limit_msg}; refused "
                                "before decoding (a decompression bomb?)")
                        a = _pixels(im, mode, c, (w, h), Image)
                except CalibrationDataError:
                    raise
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                    n = re.search(r"\((\d+) pixels\)", str(e))  # Pillow's check at open, same cap
                    size = f"{int(n.group(1)):,} pixels" if n else f"too many pixels ({e})"
                    raise CalibrationDataError(f"{f}: the image declares {size}; {limit_msg}; refused before "
                                               "decoding (a decompression bomb?)") from None
                except Exception as e:  # noqa: BLE001
                    raise CalibrationDataError(f"{f}: cannot read the image: {e}") from None
                out[k] = a.transpose(2, 0, 1)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    out /= np.float32(255.0)
    out -= mean.reshape(-1, 1, 1)
    out /= std.reshape(-1, 1, 1)
    if out.dtype != spec.dtype:
        raise CalibrationDataError(f"{folder}: images give float32; the model expects {spec.show()}")
    return out


