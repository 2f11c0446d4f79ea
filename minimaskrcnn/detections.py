"""`Detections`: what `model.predict` returns for one image, in torchvision's conventions.

Shape glossary
    N: number of detections (sorted by descending score)
    H, W: original image height and width (before the network's resize)

`rank_order` and `binary_masks` are the two conventions every writer shares (render/, io/coco.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class Detections:
    """Instances found in one image.

    boxes:  (N, 4) float32 as x1, y1, x2, y2 in original-image pixels (not clipped after rescale, as torchvision)
    labels: (N,) int64, indices into `class_names` (for COCO weights the index equals the COCO category id)
    scores: (N,) float32 softmax probability of the label
    masks:  (N, H, W) float32 probabilities in [0, 1] (Mask R-CNN), or None (Faster R-CNN). Binarize as you like;
            torchvision's convention is `masks >= 0.5`.
    class_names: all class names of the model, index 0 = background
    image_size: (H, W) of the original image
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: Optional[np.ndarray]
    class_names: tuple
    image_size: tuple

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def label_names(self) -> list:
        """Class name of each detection."""
        return [self.class_names[i] for i in self.labels]

    def select(self, keep) -> "Detections":
        """A subset: `keep` is a boolean mask or an index array over the N detections."""
        keep = np.asarray(keep)
        return Detections(self.boxes[keep], self.labels[keep], self.scores[keep],
                          None if self.masks is None else self.masks[keep], self.class_names, self.image_size)

    def __repr__(self) -> str:
        head = f"Detections({len(self)} in {self.image_size[0]}x{self.image_size[1]}"
        items = [f"{n} {s:.2f}" for n, s in zip(self.label_names[:5], self.scores[:5])]
        more = ", ..." if len(self) > 5 else ""
        return head + (": " + ", ".join(items) + more if items else "") + ")"


def rank_order(det) -> np.ndarray:
    """(N,) detection indices by descending score, stable."""
    return np.argsort(-np.asarray(det.scores, dtype=np.float64), kind="stable")


def pixel_box(box, h: int, w: int) -> tuple:
    """A box x1, y1, x2, y2 rounded outward to whole pixels and clipped to the image, at least one pixel."""
    x1 = min(max(int(np.floor(box[0])), 0), w - 1)
    y1 = min(max(int(np.floor(box[1])), 0), h - 1)
    x2 = min(max(int(np.ceil(box[2])), x1 + 1), w)
    y2 = min(max(int(np.ceil(box[3])), y1 + 1), h)
    return x1, y1, x2, y2


def binary_masks(det, mask_threshold: float = 0.5) -> np.ndarray:
    """(N, H, W) bool: `masks >= mask_threshold`, or the rounded boxes for box-only detections."""
    h, w = det.image_size
    if det.masks is not None:
        return np.asarray(det.masks) >= mask_threshold              # (N, H, W)
    out = np.zeros((len(det), h, w), dtype=bool)                     # (N, H, W)
    for i, box in enumerate(np.asarray(det.boxes)):
        x1, y1, x2, y2 = pixel_box(box, h, w)
        out[i, y1:y2, x1:x2] = True
    return out
