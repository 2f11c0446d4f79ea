"""MatterportMaskRCNN against matterport's `detect` on photos, per case (tests/matterport_cases.py).

Criteria: the torchvision parity criteria of the issue: >= 98% of detections matched (same label, box IoU > 0.99,
order-insensitive; minimaskrcnn.crosscheck.matching), boxes within 0.1 px, scores within 3e-3, >= 95% of masks with
IoU >= 0.97 (binarized at 0.5: our `masks >= 0.5` against matterport's boolean masks). The boxes are matterport's
integer pixels on both sides, so a box differs by 0 or >= 1 px; the 0.1 px bound means "equal".

Two entry points:
  * `detect_molded` on matterport's own molded image: the whole network and unmolding, every case;
  * `predict` on the photo itself, where our molded image equals matterport's. Where the image is resized, it can
    differ by one grey level in a few pixels (skimage's resize matrix comes from an SVD whose last bits depend on
    the LAPACK build: test_mold.py), and the calibrated random ResNet-101 is chaotic enough to turn that into a
    different model output (measured on messi5.jpg with the pad64_r101 config: 4 molded values one level off -> C5
    1.7e-2 of max apart, 57/60 matched), so the photo-level test asserts only where the molds are equal (grace_hopper
    in pad64_r101, not resized) and reports the rest.
"""
import numpy as np
import pytest

import matterport_cases as mc
from minimaskrcnn.crosscheck.matching import match_detections
from minimaskrcnn.matterport.mold import mold_image


def _check(d, det, label):
    ref_boxes = d["rois"][:, [1, 0, 3, 2]].astype(np.float64)              # y1, x1, y2, x2 -> x1, y1, x2, y2
    stats = match_detections(ref_boxes, d["class_ids"], d["scores"], det.boxes, det.labels, det.scores,
                             d["masks"].astype(np.float32), det.masks)
    print(f"{label} ({len(d['class_ids'])} matterport detections): {stats.summary()}")
    return stats


def _assert_parity(stats):
    assert stats.matched_fraction >= 0.98
    assert stats.max_box_diff <= 0.1
    assert stats.max_score_diff <= 3e-3
    assert stats.fraction_masks_above(0.97) >= 0.95


@pytest.mark.parametrize("case,stem", mc.all_photos())
def test_detect_molded_equals_detect(case, stem):
    d, net = mc.dump(case, stem), mc.model(case, stem)
    assert len(d["class_ids"]) >= 3, "the calibrated model should detect something on this photo"
    det = net.detect_molded(d["molded"], d["window"], d["image"].shape)
    _assert_parity(_check(d, det, f"{case}/{stem} from matterport's molded image"))


@pytest.mark.parametrize("case,stem", mc.all_photos())
def test_predict_equals_detect(case, stem):
    d, net = mc.dump(case, stem), mc.model(case, stem)
    molded, _, scale = mold_image(d["image"], net.cfg)
    flips = int((molded != d["molded"]).sum())
    stats = _check(d, net.predict(d["image"]), f"{case}/{stem} from the photo ({flips} molded values differ)")
    if scale == 1:                     # no resize (pad64_r101/grace_hopper): the molds must be equal, bit for bit
        assert flips == 0
    if flips == 0:
        _assert_parity(stats)
