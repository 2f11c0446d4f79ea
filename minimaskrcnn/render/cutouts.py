"""Cut-outs: each object of an image cropped to its box, transparent outside its mask, and their file names.

Shape glossary
    N: number of detections      H, W: image height and width
    h, w: height and width of one cut-out (its box rounded outward and clipped to the image)
"""
from __future__ import annotations

import os
import re

import numpy as np

from minimaskrcnn.detections import binary_masks, pixel_box, rank_order
from minimaskrcnn.io.files import write_png
from minimaskrcnn.render.draw import to_uint8

__all__ = ["cutouts", "write_cutouts"]


def cutouts(image, det, mask_threshold: float = 0.5) -> list:
    """[(rank, label name, (h, w, 4) uint8 RGBA)] in rank order: each object cropped to its box rounded outward and
    clipped to the image, alpha = 255 on the binarized mask (on the whole box for box-only detections), 0 elsewhere."""
    rgb = to_uint8(np.asarray(image))                               # (H, W, 3)
    h, w = rgb.shape[:2]
    masks = binary_masks(det, mask_threshold)                        # (N, H, W)
    names, out = det.label_names, []
    for rank, i in enumerate(rank_order(det), start=1):
        x1, y1, x2, y2 = pixel_box(np.asarray(det.boxes)[i], h, w)
        alpha = masks[i, y1:y2, x1:x2].astype(np.uint8) * np.uint8(255)          # (h, w)
        out.append((rank, names[i], np.dstack([rgb[y1:y2, x1:x2], alpha])))      # (h, w, 4)
    return out


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "-", label).strip("-") or "object"


def write_cutouts(outdir, stem: str, image, det, mask_threshold: float = 0.5, protected=frozenset()) -> list:
    """Write `<stem>_<rank>_<label>.png` for each cut-out (rank zero-padded to the width of N); returns the paths."""
    items = cutouts(image, det, mask_threshold)
    width = len(str(len(items)))
    paths = []
    for rank, name, rgba in items:
        path = os.path.join(outdir, f"{stem}_{rank:0{width}d}_{_safe_name(name)}.png")
        write_png(rgba, path, protected)
        paths.append(path)
    return paths
