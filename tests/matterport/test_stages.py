"""Each matterport stage of ours fed matterport's own inputs for that stage (so a discrete flip upstream cannot hide
an error downstream), against matterport's `run_graph` outputs (tests/oracles/matterport_dump.py).

Tolerances (facts §10.4 measured fp32 vs fp64 for torchvision's stages; here each stage gets the *exact* reference
input, so only the stage's own float32 rounding separates us from TensorFlow):
  * anchors, crop_and_resize sampling, levels, proposal / detection selection: exact (same float32 operations; the
    only transcendental, exp in apply_box_deltas, is within 1 ulp: coordinates within 4 ulp of 1, 5e-7);
  * C2..C5 from the molded image: one network of 50-100 convolutions whose accumulation order differs from oneDNN /
    Eigen's; facts §10.4: 3e-5 .. 2.5e-4 of max|x| for ResNet-50 + FPN, criterion 1e-3 of max;
  * P2..P6 from C2..C5, RPN from P2..P6, box head from pooled features, mask head from pooled features: 2-6 layers,
    relative float32 accumulation error ~ sqrt(K) * 6e-8 for K <= 12544 terms (7e-6 of the magnitude per layer);
    1e-4 of max for maps; probabilities (softmax / sigmoid derivative <= 1/4) within 1e-4 absolute; deltas within
    5e-4 (facts: RPN deltas), class logits 2e-3, mask probabilities 7.5e-4 (facts: mask logits 3e-3, times 1/4).
"""
import numpy as np
import pytest

import matterport_cases as mc
from minimaskrcnn.matterport import backbone as bb, fpn as fp, heads as hd, rpn as rp
from minimaskrcnn.matterport.anchors import pyramid_anchors
from minimaskrcnn.matterport.detection import detect, normalized_window
from minimaskrcnn.matterport.proposals import proposals
from minimaskrcnn.matterport.roi_align import pyramid_roi_align
from minimaskrcnn.matterport.unmold import unmold_boxes, unmold_masks

CASES = mc.all_photos()
COORD_ATOL = 5e-7


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def test_the_oracles_graph_computes_what_matterports_default_graph_does():
    """The dumps come from a graph built with TRAIN_BN = None (calibration without a second network,
    tests/oracles/matterport_dump.py); at phase 0 it must give what TRAIN_BN = False (matterport's default) gives,
    through run_graph and detect, bit for bit: every stage's largest difference 0, detect's result equal."""
    checks = mc.default_graph_checks()
    assert checks                                   # at least one case checks it
    for case, check in checks.items():
        print(f"{case}: {check}")
        assert check["uses_learning_phase"] is False
        assert set(check["max_abs_diff"]) >= {"res5c_out", "fpn_p2", "mrcnn_mask", "rois", "masks"}
        assert all(v == 0 for v in check["max_abs_diff"].values()), check


@pytest.mark.parametrize("case,stem", CASES)
def test_backbone_and_fpn(case, stem):
    d, net = mc.dump(case, stem), mc.model(case, stem)
    c = bb.backbone(mc.chw(d["molded"]), net.backbone)
    names = ["res2c_out", "res3d_out", "res4f_out" if net.cfg.BACKBONE == "resnet50" else "res4w_out", "res5c_out"]
    errs = [_rel(x.transpose(1, 2, 0), d["stage_" + n]) for x, n in zip(c, names)]
    p = fp.fpn([mc.chw(d["stage_" + n]) for n in names], net.fpn)
    perrs = [_rel(x.transpose(1, 2, 0), d[f"stage_fpn_p{k}"]) for k, x in zip(range(2, 7), p)]
    print(f"{case}/{stem}: C2..C5 rel-to-max {np.round(errs, 7)}, P2..P6 {np.round(perrs, 7)}")
    assert max(errs) < 1e-3 and max(perrs) < 1e-4


@pytest.mark.parametrize("case,stem", CASES)
def test_anchors_and_rpn_head(case, stem):
    d, net = mc.dump(case, stem), mc.model(case, stem)
    np.testing.assert_array_equal(pyramid_anchors(d["molded"].shape, net.cfg), d["anchors"])
    p = [mc.chw(d[f"stage_fpn_p{k}"]) for k in range(2, 7)]
    _, probs, deltas = rp.rpn_head(p, net.rpn)
    e_prob = np.abs(probs - d["stage_rpn_class"]).max()
    e_delta = np.abs(deltas - d["stage_rpn_bbox"]).max()
    print(f"{case}/{stem}: rpn probs {e_prob:.2e}, deltas {e_delta:.2e}")
    assert e_prob < 1e-4 and e_delta < 5e-4


@pytest.mark.parametrize("case,stem", CASES)
def test_proposals(case, stem):
    d, net = mc.dump(case, stem), mc.model(case, stem)
    rois = proposals(d["stage_rpn_class"], d["stage_rpn_bbox"], d["anchors"], net.cfg)
    ref = d["stage_ROI"]
    close = np.all(np.abs(rois - ref) <= COORD_ATOL, axis=1)
    zero_area = ((ref[:, 2] - ref[:, 0]) * (ref[:, 3] - ref[:, 1]) <= 0).sum()
    print(f"{case}/{stem}: {close.sum()}/{len(ref)} proposals equal, max diff {np.abs(rois - ref).max():.2e}, "
          f"zero-area rows in matterport's {zero_area}")
    assert close.all()


@pytest.mark.parametrize("case,stem", CASES)
def test_roi_align_and_box_head(case, stem):
    d, net = mc.dump(case, stem), mc.model(case, stem)
    maps = [np.ascontiguousarray(d[f"stage_fpn_p{k}"]) for k in range(2, 6)]
    pooled = pyramid_roi_align(d["stage_ROI"], maps, d["molded"].shape, net.cfg.POOL_SIZE)
    np.testing.assert_array_equal(pooled, d["stage_roi_align_classifier"])
    logits, probs, deltas = hd.box_head(d["stage_roi_align_classifier"], net.box_head)
    e = [np.abs(logits - d["stage_mrcnn_class_logits"]).max(), np.abs(probs - d["stage_mrcnn_class"]).max(),
         np.abs(deltas - d["stage_mrcnn_bbox"]).max()]
    print(f"{case}/{stem}: box head logits {e[0]:.2e}, probs {e[1]:.2e}, deltas {e[2]:.2e}")
    assert e[0] < 2e-3 and e[1] < 1e-4 and e[2] < 5e-4


@pytest.mark.parametrize("case,stem", CASES)
def test_detection_layer(case, stem):
    d, net = mc.dump(case, stem), mc.model(case, stem)
    win = normalized_window(d["window"], d["molded"].shape)
    dets = detect(d["stage_ROI"], d["stage_mrcnn_class"], d["stage_mrcnn_bbox"], win, net.cfg)
    ref = d["stage_mrcnn_detection"]
    n = int((ref[:, 4] > 0).sum())
    print(f"{case}/{stem}: {n} detections, max coord diff {np.abs(dets[:, :4] - ref[:, :4]).max():.2e}")
    assert n > 3                                    # the case is informative
    np.testing.assert_array_equal(dets[:, 4:], ref[:, 4:])
    np.testing.assert_allclose(dets[:, :4], ref[:, :4], rtol=0, atol=COORD_ATOL)


@pytest.mark.parametrize("case,stem", CASES)
def test_mask_head_and_unmold(case, stem):
    d, net = mc.dump(case, stem), mc.model(case, stem)
    maps = [np.ascontiguousarray(d[f"stage_fpn_p{k}"]) for k in range(2, 6)]
    det = d["stage_mrcnn_detection"]
    pooled = pyramid_roi_align(det[:, :4], maps, d["molded"].shape, net.cfg.MASK_POOL_SIZE)
    np.testing.assert_array_equal(pooled, d["stage_roi_align_mask"])
    masks = hd.mask_head(d["stage_roi_align_mask"], net.mask_head)
    e = np.abs(masks - d["stage_mrcnn_mask"]).max()
    print(f"{case}/{stem}: mask probabilities {e:.2e}")
    assert e < 7.5e-4
    boxes, class_ids, scores, rows = unmold_boxes(det, d["window"], d["molded"].shape, d["image"].shape)
    np.testing.assert_array_equal(boxes, d["rois"])
    np.testing.assert_array_equal(class_ids, d["class_ids"])
    np.testing.assert_array_equal(scores, d["scores"])
    own = d["stage_mrcnn_mask"][rows, :, :, class_ids]                  # matterport's own mask probabilities
    full = unmold_masks(own, boxes, d["image"].shape)
    np.testing.assert_array_equal(full >= 0.5, d["masks"])
