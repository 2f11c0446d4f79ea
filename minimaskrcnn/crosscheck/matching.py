"""Order-insensitive matching of two detection sets: the parity protocol (facts §10.4).

Two implementations of the same model never agree on the order of near-equal scores, and detections near a threshold
or a cut-off may come and go. So detections are matched one to one by (same label, box IoU > min_iou), and the
continuous differences are measured on the matched pairs only.

Shape glossary
    N: detections of the reference (e.g. torchvision)      M: detections of the candidate (e.g. minimaskrcnn)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minimaskrcnn.ops import box_iou


@dataclass
class MatchStats:
    """The parity figures of one image's matching, or of several images' summed by `combine`."""

    pairs: np.ndarray            # (Q, 2) int64 matched (reference index, candidate index); (0, 2) when combined
    n_reference: int
    n_candidate: int
    max_box_diff: float          # px, over matched pairs
    max_score_diff: float
    mask_ious: np.ndarray        # (Q,) binarized-mask IoU per matched pair (empty when no masks)
    matched: int = -1            # matched pairs (len(pairs) for one image)
    compared: int = -1           # max(n_reference, n_candidate), summed over images when combined

    def __post_init__(self):
        if self.matched < 0:
            self.matched = len(self.pairs)
        if self.compared < 0:
            self.compared = max(self.n_reference, self.n_candidate)

    @classmethod
    def combine(cls, stats) -> "MatchStats":
        """The figures of several images together: counts summed, maxima of the differences, all mask IoUs."""
        stats = list(stats)
        return cls(np.zeros((0, 2), np.int64), sum(s.n_reference for s in stats), sum(s.n_candidate for s in stats),
                   max((s.max_box_diff for s in stats), default=0.0), max((s.max_score_diff for s in stats), default=0.0),
                   np.concatenate([s.mask_ious for s in stats]) if stats else np.zeros(0),
                   sum(s.matched for s in stats), sum(s.compared for s in stats))

    @property
    def matched_fraction(self) -> float:
        """Matched pairs over the larger of the two counts, per image (1.0 when both are empty)."""
        return 1.0 if self.compared == 0 else self.matched / self.compared

    def fraction_masks_above(self, iou: float = 0.97) -> float:
        return 1.0 if self.mask_ious.size == 0 else float(np.mean(self.mask_ious >= iou))

    def summary(self) -> str:
        s = (f"matched {self.matched} of {self.n_reference} reference / {self.n_candidate} candidate detections "
             f"({100 * self.matched_fraction:.2f}%), max box diff {self.max_box_diff:.3g} px, max score diff "
             f"{self.max_score_diff:.3g}")
        if self.mask_ious.size:
            s += (f", masks with IoU >= 0.97: {100 * self.fraction_masks_above(0.97):.2f}% (min IoU "
                  f"{self.mask_ious.min():.4f})")
        return s


def match_detections(ref_boxes, ref_labels, ref_scores, cand_boxes, cand_labels, cand_scores,
                     ref_masks=None, cand_masks=None, min_iou: float = 0.99, mask_threshold: float = 0.5):
    """Greedy one-to-one matching, reference detections in descending score order, each taking the unmatched
    candidate of the same label with the highest box IoU above `min_iou`. Boxes (N, 4) / (M, 4) as x1, y1, x2, y2."""
    ref_boxes, cand_boxes = np.asarray(ref_boxes, np.float64), np.asarray(cand_boxes, np.float64)
    iou = box_iou(ref_boxes, cand_boxes) if len(ref_boxes) and len(cand_boxes) else np.zeros((len(ref_boxes),
                                                                                              len(cand_boxes)))
    iou = np.where(np.asarray(ref_labels)[:, None] == np.asarray(cand_labels)[None, :], iou, 0.0)  # (N, M)
    taken = np.zeros(len(cand_boxes), bool)
    pairs = []
    for i in np.argsort(-np.asarray(ref_scores), kind="stable"):
        row = np.where(taken, 0.0, iou[i])                                       # (M,)
        if row.size and row.max() > min_iou:
            j = int(row.argmax())
            taken[j] = True
            pairs.append((int(i), j))
    pairs = np.array(pairs, np.int64).reshape(-1, 2)                             # (Q, 2)
    ri, ci = pairs[:, 0], pairs[:, 1]
    box_diff = float(np.abs(ref_boxes[ri] - cand_boxes[ci]).max()) if len(pairs) else 0.0
    score_diff = float(np.abs(np.asarray(ref_scores, np.float64)[ri]
                              - np.asarray(cand_scores, np.float64)[ci]).max()) if len(pairs) else 0.0
    mask_ious = np.zeros(0)
    if ref_masks is not None and cand_masks is not None and len(pairs):
        a = np.asarray(ref_masks)[ri] >= mask_threshold                          # (Q, H, W)
        b = np.asarray(cand_masks)[ci] >= mask_threshold
        inter = (a & b).reshape(len(pairs), -1).sum(1)
        union = (a | b).reshape(len(pairs), -1).sum(1)
        mask_ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)       # (Q,) empty masks agree
    return MatchStats(pairs, len(ref_boxes), len(cand_boxes), box_diff, score_diff, mask_ious)
