"""Stage 0 and the last stage: torchvision's GeneralizedRCNNTransform (models/detection/transform.py; facts §1).

Before the network: normalize with the ImageNet mean/std, resize so the short side is 800 (long side at most 1333),
pad with zeros to a multiple of 32. After the network: rescale boxes to the original image and paste the 28x28 mask
probabilities into full-size masks.

Shape glossary
    H, W: original image size            h, w: resized size (before padding)
    Hp, Wp: padded size (multiples of 32) N: number of detections            M: mask resolution (28)
"""
from __future__ import annotations

import math

import numpy as np

from minimaskrcnn import ops
from minimaskrcnn.config import Config


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """(image - mean) / std per channel, a true float32 division as torchvision does (bitwise equal). (3, H, W)"""
    mean = np.asarray(mean, np.float32)[:, None, None]          # (3, 1, 1)
    std = np.asarray(std, np.float32)[:, None, None]            # (3, 1, 1)
    return (image - mean) / std                                  # (3, H, W)


def pad_to_multiple(image: np.ndarray, divisor: int) -> np.ndarray:
    """Zero-pad bottom and right to the next multiple of `divisor` (torchvision batch_images). (3, Hp, Wp)

    Padding comes after normalization, so the pad value is 0 in normalized space (facts §1).
    """
    c, h, w = image.shape
    hp, wp = math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor
    padded = np.zeros((c, hp, wp), np.float32)                  # (3, Hp, Wp)
    padded[:, :h, :w] = image
    return padded


def preprocess(image: np.ndarray, cfg: Config) -> tuple[np.ndarray, tuple[int, int]]:
    """(3, H, W) float32 in [0, 1] -> network input (3, Hp, Wp) and the resized, unpadded size (h, w).

    Order as torchvision: normalize first, then resize (bilinear, align_corners=False, no antialias), then pad.
    """
    x = normalize(image, cfg.image_mean, cfg.image_std)          # (3, H, W)
    x = ops.resize_image(x, cfg.min_size, cfg.max_size)          # (3, h, w)
    resized_size = x.shape[1:]
    return pad_to_multiple(x, cfg.size_divisible), resized_size  # (3, Hp, Wp)


def rescale_boxes(boxes: np.ndarray, resized_size, original_size) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 from resized-image to original-image pixels (torchvision resize_boxes).

    Each axis has its own float32 ratio orig/resized; this is not 1/scale because the resized size was floored
    (e.g. 640 -> 1066 gives ratio_w = 0.600375, ratio_h = 0.6). No clipping afterwards, as torchvision.
    """
    ratio_h = np.float32(original_size[0]) / np.float32(resized_size[0])
    ratio_w = np.float32(original_size[1]) / np.float32(resized_size[1])
    ratios = np.array([ratio_w, ratio_h, ratio_w, ratio_h], np.float32)  # (4,) for x1, y1, x2, y2
    return (boxes * ratios).astype(np.float32)                  # (N, 4)


def paste(mask_probs: np.ndarray, boxes: np.ndarray, original_size) -> np.ndarray:
    """(N, M, M) mask probabilities and (N, 4) original-image boxes -> (N, H, W) float32 (facts §7)."""
    return ops.paste_masks(mask_probs, boxes, tuple(original_size), padding=1)
