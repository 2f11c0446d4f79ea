"""Label maps of one image: semantic (class id per pixel) and instance (rank per pixel), and a colour preview.

Shape glossary
    N: number of detections      H, W: image height and width

Where instances overlap, the higher-scoring one wins. Masks are binarized as `mask >= mask_threshold`; box-only
(Faster R-CNN) detections stand in their box (`detections.binary_masks`).
"""
from __future__ import annotations

import numpy as np

from minimaskrcnn.detections import binary_masks, rank_order
from minimaskrcnn.render.draw import class_colors

__all__ = ["semantic_map", "instance_map", "colorize", "paint", "ranks"]


def ranks(det) -> np.ndarray:
    """(N,) 1-based rank of each detection by descending score."""
    ranks = np.empty(len(det), dtype=np.int64)                       # (N,)
    ranks[rank_order(det)] = np.arange(1, len(det) + 1)
    return ranks


def paint(det, masks: np.ndarray, values: np.ndarray, dtype) -> np.ndarray:
    """(H, W) map: values[i] where masks[i] covers a pixel, the highest-ranked detection winning; 0 elsewhere."""
    out = np.zeros(tuple(det.image_size), dtype=dtype)               # (H, W)
    for i in rank_order(det)[::-1]:                                  # lowest score first, so higher ones overwrite
        out[masks[i]] = values[i]
    return out


def semantic_map(det, mask_threshold: float = 0.5) -> np.ndarray:
    """(H, W) class ids, 0 = background; uint8 when the model has at most 256 classes, else uint16."""
    dtype = np.uint8 if len(det.class_names) <= 256 else np.uint16
    return paint(det, binary_masks(det, mask_threshold), np.asarray(det.labels), dtype)


def instance_map(det, mask_threshold: float = 0.5) -> np.ndarray:
    """(H, W) instance ids, 0 = background, k = k-th detection by descending score; uint8 when N <= 255, else uint16."""
    return paint(det, binary_masks(det, mask_threshold), ranks(det), np.uint8 if len(det) <= 255 else np.uint16)


def colorize(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8 preview of a semantic map with `class_colors`."""
    return class_colors(max(num_classes, int(label_map.max()) + 1))[label_map]   # (H, W) -> (H, W, 3)
