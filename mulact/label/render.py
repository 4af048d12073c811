"""Pictures of one query: the full image and a zoomed crop, the region outlined, the rest dimmed.

Rendered on the server with OpenCV, so the page, the export and the screenshot show exactly
the same thing and the browser never needs the superpixel map.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["crop_view", "full_view", "png"]

DIM = 0.4          # brightness of pixels outside the region
OUTLINE = (255, 230, 0)
HALO = (0, 0, 0)


def _outline(img: np.ndarray, mask: np.ndarray, thickness: int) -> np.ndarray:
    # The line runs just outside the region so that thin regions stay visible under it.
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=thickness + 1)
    contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, HALO, thickness + 2, lineType=cv2.LINE_AA)
    cv2.drawContours(img, contours, -1, OUTLINE, thickness, lineType=cv2.LINE_AA)
    return img


def _dim(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    out[~mask] *= DIM
    return np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))


def full_view(image: np.ndarray, regions: np.ndarray, region: int, bbox, max_width: int = 1024) -> np.ndarray:
    """RGB ``(h, w, 3)``: the whole image, region outlined, a box around it (small regions)."""
    h, w = regions.shape
    scale = min(1.0, max_width / w)
    mask = regions == region
    img = _dim(image, mask)
    if scale < 1.0:
        size = (int(round(w * scale)), int(round(h * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    img = _outline(img, mask, 1)
    x0, y0, x1, y1 = (int(round(v * scale)) for v in bbox)
    pad = 6
    cv2.rectangle(img, (max(x0 - pad, 0), max(y0 - pad, 0)), (min(x1 + pad, img.shape[1] - 1), min(y1 + pad, img.shape[0] - 1)),
                  OUTLINE, 1)
    return img


def crop_view(image: np.ndarray, regions: np.ndarray, region: int, bbox, size: int = 360) -> np.ndarray:
    """RGB ``(size', size', 3)``: the region's surroundings enlarged to about ``size`` pixels."""
    h, w = regions.shape
    x0, y0, x1, y1 = bbox
    side = max(x1 - x0, y1 - y0)
    half = max(side, 24)  # context: the region plus as much again around it
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    X0, Y0 = int(max(0, cx - half)), int(max(0, cy - half))
    X1, Y1 = int(min(w, cx + half)), int(min(h, cy + half))
    crop, mcrop = image[Y0:Y1, X0:X1], regions[Y0:Y1, X0:X1] == region
    scale = size / max(X1 - X0, Y1 - Y0)
    out = (int(round((X1 - X0) * scale)), int(round((Y1 - Y0) * scale)))
    crop = cv2.resize(crop, out, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    mask = cv2.resize(mcrop.astype(np.uint8), out, interpolation=cv2.INTER_NEAREST).astype(bool)
    return _outline(_dim(crop, mask), mask, 2)


def png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("could not encode PNG")
    return buf.tobytes()
