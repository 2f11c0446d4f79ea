"""MatterportMaskRCNN.predict against matterport's `detect` on photos, per case (tests/matterport_cases.py).

Criteria: the torchvision parity criteria of the issue: >= 98% of detections matched (same label, box IoU > 0.99,
order-insensitive; minimaskrcnn.crosscheck.matching), boxes within 0.1 px, scores within 3e-3, >= 95% of masks with
IoU >= 0.97 (binarized at 0.5: our `masks >= 0.5` against matterport's boolean masks). The boxes are matterport's
integer pixels on both sides, so a box differs by 0 or >= 1 px; the 0.1 px bound means "equal".
"""
import numpy as np
import pytest

import matterport_cases as mc
from minimaskrcnn.crosscheck.matching import match_detections


@pytest.mark.parametrize("case,stem", mc.all_photos())
def test_predict_equals_detect(case, stem):
    d, net = mc.dump(case, stem), mc.model(case, stem)
    det = net.predict(d["image"])
    ref_boxes = d["rois"][:, [1, 0, 3, 2]].astype(np.float64)              # y1, x1, y2, x2 -> x1, y1, x2, y2
    assert len(d["class_ids"]) >= 3, "the calibrated model should detect something on this photo"
    stats = match_detections(ref_boxes, d["class_ids"], d["scores"], det.boxes, det.labels, det.scores,
                             d["masks"].astype(np.float32), det.masks)
    print(f"{case}/{stem} ({len(d['class_ids'])} matterport detections): {stats.summary()}")
    assert stats.matched_fraction >= 0.98
    assert stats.max_box_diff <= 0.1
    assert stats.max_score_diff <= 3e-3
    assert stats.fraction_masks_above(0.97) >= 0.95
