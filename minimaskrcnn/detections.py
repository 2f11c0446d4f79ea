"""`Detections`: what `model.predict` returns for one image, in torchvision's conventions.

Shape glossary
    N: number of detections (sorted by descending score)
    H, W: original image height and width (before the network's resize)
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
