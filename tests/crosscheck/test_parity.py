"""Parity with torchvision: stage by stage (each stage fed torchvision's own inputs) and end to end.

Protocol (issue 4, facts §10): a calibrated random torchvision model per (architecture, image), calibrated on the very
image it is tested on, saved with torch.save, converted by weights_convert and loaded by minimaskrcnn.load. Stage
tolerances are facts §10.4's; end-to-end criteria are the issue's:
  >= 98% of detections matched (same label, box IoU > 0.99), matched boxes within 0.1 px, scores within 3e-3,
  >= 95% of matched instances with binarized mask IoU >= 0.97.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import naive
import oracle
import tv_models
from conftest import COCO_39769, IMAGES

from minimaskrcnn import ops

from minimaskrcnn.stages import backbone, box_head, fpn, mask_head, rpn, transform
from minimaskrcnn.crosscheck.matching import match_detections
from minimaskrcnn.crosscheck.torch_trace import torchvision_trace

torch = oracle.torch()
oracle.torchvision()

MASK = "maskrcnn_resnet50_fpn"
FASTER = "fasterrcnn_resnet50_fpn"


def _image(source: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] for a case's image source."""
    if source.startswith("structured:"):
        h, w, seed = (int(v) for v in source.split(":")[1].split("x"))
        return tv_models.structured_image(h, w, seed)
    if source.startswith("coco:"):
        return tv_models.load_photo(COCO_39769 / source.split(":", 1)[1])
    return tv_models.load_photo(IMAGES / source)


@functools.lru_cache(maxsize=1)
def run_case(arch: str, source: str, tmp_root: str):
    """Calibrate, capture torchvision's trace, convert the weights, run minimaskrcnn. The last case is cached, and the
    `case` fixture runs every test of a case before the next: the 14 cases all cached held 18 GB (measured), which
    with the rest of the suite could exhaust a 24 GB machine."""
    import minimaskrcnn
    from weights_convert import convert

    image = _image(source)
    model = tv_models.calibrated_model(arch, image)
    pth = f"{tmp_root}/{arch}-{abs(hash(source))}.pth"
    torch.save(model.state_dict(), pth)
    npz = convert(pth, pth.replace(".pth", ".npz"))
    ours = minimaskrcnn.load(npz)
    os.remove(pth), os.remove(npz)       # loaded into memory; 14 cases would otherwise leave ~5 GB behind
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))                     # (3, H, W)
    torch.set_num_threads(2)     # pinned: torch's 1-thread bilinear kernel strays 5.2e-6 from the formula (assert_stages)
    tv = torchvision_trace(model, chw)
    # the report from the trace's outputs, not from a second forward (~4 s per case on a 2-core CI machine)
    outputs = {"boxes": tv["final_boxes"], "scores": tv["scores"], "labels": tv["labels"]}
    if "masks" in tv:
        outputs["masks"] = tv["masks"][:, None]                             # (D, 1, H, W), as torchvision's
    report = tv_models.sanity_report(model, image, [{k: torch.from_numpy(v) for k, v in outputs.items()}])
    det, trace = ours.predict(image, trace=True)
    return ours, tv, det, trace, report


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("parity"))


def rel_to_max(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def assert_end_to_end(tv, det, masks: bool):
    stats = match_detections(tv["final_boxes"], tv["labels"], tv["scores"], det.boxes, det.labels, det.scores,
                             tv.get("masks"), det.masks)
    print(stats.summary())
    assert len(tv["labels"]) > 0, "the reference produced no detection: the test would prove nothing"
    assert stats.matched_fraction >= 0.98, stats.summary()
    assert stats.max_box_diff <= 0.1, stats.summary()
    assert stats.max_score_diff <= 3e-3, stats.summary()
    if masks:
        assert stats.fraction_masks_above(0.97) >= 0.95, stats.summary()


def assert_stages(model, tv):
    """Every stage fed torchvision's own inputs for that stage (facts §10.4 tolerances)."""
    cfg, w = model.config, model.weights
    size = tuple(int(v) for v in tv["image_size"])
    measured = {}                                  # printed (pytest -s) for the README's table of worst cases
    # transform: normalize is bitwise (test_normalize_bitwise); the resized size is exact. The resize is bounded per
    # pixel by naive.resize_error_bound (derived there): torch builds evaluate the float32 source coordinate
    # s*(d + 1/2) - 1/2 with or without an FMA (torch 2.14.1 + torchvision 0.29.1 here, with 1 or 2 threads, differ
    # from our two-rounding evaluation by up to 1 ulp of the coordinate, 6.1e-5 at x ~ 600), which moves the weights
    # by that much and the value by that times the local neighbour difference. A bound of 5 ulp of max|x| held for
    # the build it was measured on (torchvision 0.29.2) and failed on this one (5.2e-6 measured). The padding is 0
    # on both sides, exactly.
    x, got_size = transform.preprocess(tv["image"], cfg)
    assert tuple(got_size) == size and x.shape == tv["normalized"].shape
    oh, ow = size
    err = np.abs(x.astype(np.float64) - tv["normalized"])                 # (3, Hp, Wp)
    bound = naive.resize_error_bound(transform.normalize(tv["image"], cfg.image_mean, cfg.image_std), oh, ow)
    measured["resize"] = float(err.max())
    measured["resize / bound"] = float((err[:, :oh, :ow] / bound).max())
    assert measured["resize / bound"] <= 1 and not err[:, oh:].any() and not err[:, :, ow:].any(), measured
    # ResNet body and FPN, from torchvision's input / C maps: within 1e-3 of each map's max
    c_names = [f"C{i}" for i in range(2, 6)]
    p_names = [f"P{i}" for i in range(2, 7)]
    for name, got in zip(c_names, backbone.backbone_forward(w.backbone, tv["normalized"])):
        measured[name] = rel_to_max(got, tv[name])
        assert measured[name] <= 1e-3, name
    pyramid = [tv[n] for n in p_names]
    for name, got in zip(p_names, fpn.fpn_forward(w.fpn, [tv[n] for n in c_names])):
        measured[name] = rel_to_max(got, tv[name])
        assert measured[name] <= 1e-3, name
    # RPN head from torchvision's P maps; anchors bitwise
    objectness, deltas = rpn.rpn_head_forward(w.rpn_head, pyramid)
    logits, rpn_deltas = rpn.flatten_head_outputs(objectness, deltas)
    measured["rpn logits"] = np.abs(logits - tv["objectness"]).max()
    measured["rpn deltas"] = np.abs(rpn_deltas - tv["rpn_deltas"]).max()
    assert measured["rpn logits"] <= 5e-3 and measured["rpn deltas"] <= 5e-4, measured
    anchors = ops.grid_anchors([p.shape[1:] for p in pyramid], tv["normalized"].shape[1:], cfg.anchor_sizes,
                               cfg.aspect_ratios)
    np.testing.assert_array_equal(anchors, tv["anchors"])
    # proposal selection from torchvision's logits and deltas: the same proposals (as a set; tied scores may swap)
    level_sizes = [o.size for o in objectness]
    _, (proposals, scores) = rpn.select_proposals(tv["objectness"], tv["rpn_deltas"], tv["anchors"], level_sizes,
                                                  size, cfg)
    stats = match_detections(tv["proposals"], np.zeros(len(tv["proposals"])), tv["proposal_scores"], proposals,
                             np.zeros(len(proposals)), scores, min_iou=0.999)
    assert stats.matched_fraction >= 0.99 and stats.max_box_diff <= 1e-3 and stats.max_score_diff <= 1e-6, \
        stats.summary()
    # RoI levels (FPN Eq. 1) and multi-scale RoIAlign from torchvision's maps and proposals: bitwise
    np.testing.assert_array_equal(ops.fpn_levels(tv["proposals"]), tv["roi_levels"])
    box_features = ops.multiscale_roi_align(pyramid[:-1], tv["proposals"], size, cfg.box_roi_size,
                                            cfg.sampling_ratio)
    np.testing.assert_array_equal(box_features, tv["box_features"])
    # box head from torchvision's pooled features
    class_logits, box_deltas = box_head.box_head_forward(w.box_head, tv["box_features"])
    measured["class logits"] = np.abs(class_logits - tv["class_logits"]).max()
    measured["box deltas"] = np.abs(box_deltas - tv["box_deltas"]).max()
    assert measured["class logits"] <= 2e-3 and measured["box deltas"] <= 2e-3, measured
    # box post-processing from torchvision's logits, deltas and proposals: same detections, scores within 3e-7
    _, (boxes, scores, labels) = box_head.postprocess_detections(tv["class_logits"], tv["box_deltas"],
                                                                  tv["proposals"], size, cfg, cfg.box_score_thresh)
    stats = match_detections(tv["boxes"], tv["labels"], tv["scores"], boxes, labels, scores, min_iou=0.9999)
    assert stats.matched_fraction == 1.0 and stats.max_box_diff <= 1e-4 and stats.max_score_diff <= 3e-7, \
        stats.summary()
    # rescale to the original image: bitwise
    np.testing.assert_array_equal(transform.rescale_boxes(tv["boxes"], size, tv["image"].shape[1:]),
                                  tv["final_boxes"])
    if cfg.masks:
        mask_features = ops.multiscale_roi_align(pyramid[:-1], tv["boxes"], size, cfg.mask_roi_size,
                                                 cfg.sampling_ratio)
        np.testing.assert_array_equal(mask_features, tv["mask_features"])
        mask_logits = mask_head.mask_head_forward(w.mask_head, tv["mask_features"], tv["labels"])
        measured["mask logits"] = np.abs(mask_logits - tv["mask_logits"]).max()
        assert measured["mask logits"] <= 3e-3, measured
        # paste resizes each padded mask with the same bilinear kernel, so it is bounded as the resize above, per
        # pixel (facts §10.4's 1e-6 held for one build: 1.25e-6 with torch 2.14.1 on this case)
        masks = transform.paste(tv["mask_probs"], tv["final_boxes"], tv["image"].shape[1:])
        err = np.abs(masks.astype(np.float64) - tv["masks"])                  # (N, H, W)
        measured["paste"] = float(err.max())
        measured["paste / bound"] = float((err / paste_bound(tv["mask_probs"], tv["final_boxes"],
                                                             tv["image"].shape[1:])).max())
        assert measured["paste / bound"] <= 1, measured
    print("stage errors:", ", ".join(f"{k} {v:.2g}" for k, v in measured.items()))


def paste_bound(mask_probs, boxes, image_shape) -> np.ndarray:
    """(N, H, W) per-pixel bound on two correct float32 pastes: naive.resize_error_bound of each 1-padded mask at its
    box's size (the grown box truncated to int64, as both compute it), placed where the box lies in the image; 0
    elsewhere (both write exact zeros there). A 0/0 of two exact zeros is excluded by a tiny floor."""
    n, m = mask_probs.shape[:2]
    height, width = image_shape
    boxes_i = ops.paste.expand_boxes(np.asarray(boxes, np.float32), np.float32((m + 2) / m)).astype(np.int64)
    padded = np.pad(mask_probs, ((0, 0), (1, 1), (1, 1)))                   # (N, M+2, M+2)
    out = np.full((n, height, width), 1e-30)                                # (N, H, W)
    for k, (x1, y1, x2, y2) in enumerate(boxes_i):
        h, w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        ys, ye, xs, xe = max(y1, 0), min(y2 + 1, height), max(x1, 0), min(x2 + 1, width)
        if ys < ye and xs < xe:
            bound = naive.resize_error_bound(padded[k][None], h, w)[0]     # (h, w)
            out[k, ys:ye, xs:xe] = bound[ys - y1:ye - y1, xs - x1:xe - x1]
    return out


MASK_V2 = "maskrcnn_resnet50_fpn_v2"
FASTER_V2 = "fasterrcnn_resnet50_fpn_v2"
# Real photos of every kind the shared set has: colour RGB (dog, horses, person), greyscale (camera), a PNG with a
# square aspect (astronaut), and the COCO val2017 image; plus structured synthetic images of two aspect ratios.
# Every architecture runs on at least one synthetic and one real image.
CASES = [(MASK, "structured:480x640x0"), (MASK, "structured:600x400x1"), (MASK, "dog.jpg"), (MASK, "horses.jpg"),
         (MASK, "person.jpg"), (MASK, "camera.png"), (MASK, "astronaut.png"), (MASK, "coco:000000039769.png"),
         (FASTER, "structured:480x640x2"), (FASTER, "coco:000000039769.png"),
         (MASK_V2, "structured:480x640x3"), (MASK_V2, "grace_hopper.jpg"), (MASK_V2, "coco:000000039769.png"),
         (FASTER_V2, "horses.jpg")]   # v2 Faster R-CNN calibrated on messi5.jpg or giraffe.jpg saturates (score > 0.999)


@pytest.fixture(scope="module", params=CASES, ids=[f"{arch}-{source}" for arch, source in CASES])
def case(request, tmp_root):
    """(arch, run_case's result): module-scoped and parametrized, so pytest runs the tests of one case together."""
    arch, source = request.param
    return arch, run_case(arch, source, tmp_root)


def test_stages(case):
    _, (model, tv, det, trace, report) = case
    assert_stages(model, tv)


def test_end_to_end(case):
    arch, (model, tv, det, trace, report) = case
    assert report.ok, report
    assert_end_to_end(tv, det, masks=arch in (MASK, MASK_V2))


@settings(max_examples=1, deadline=None)
@example(h=161, w=242)      # resize floor edge case: 161 * (800/161) = 799.999..., resized to 799x1202 (facts §1)
@given(h=st.integers(120, 900), w=st.integers(120, 900))
def test_end_to_end_sizes(h, w, tmp_path_factory):
    source = f"structured:{h}x{w}x7"
    model, tv, det, trace, report = run_case(MASK, source, str(tmp_path_factory.mktemp("sizes")))
    assert det.masks.shape == (len(det), h, w)
    assert report.ok, report
    assert_end_to_end(tv, det, masks=True)


@pytest.mark.parametrize("case", [CASES[0]], ids=["first case"], indirect=True)
def test_deterministic(case):
    _, (model, tv, det, trace, report) = case
    again = model.predict(tv["image"].transpose(1, 2, 0))
    for field in ("boxes", "labels", "scores", "masks"):
        np.testing.assert_array_equal(getattr(again, field), getattr(det, field))


@pytest.mark.parametrize("case", [CASES[0]], ids=["first case"], indirect=True)
def test_trace_names_and_summary(case):
    _, (model, tv, det, trace, report) = case
    expected = ["image", "normalized", "C2", "C5", "P2", "P6", "anchors", "objectness", "proposals", "roi_levels",
                "box_features", "class_logits", "box_deltas", "candidate_boxes", "boxes", "mask_probs", "masks"]
    assert all(name in trace for name in expected)
    assert set(tv) <= set(trace)           # the torchvision capture uses the same names
    text = trace.summary()
    assert "P2" in text and "float32" in text and len(text.splitlines()) == len(trace) + 1


def test_normalize_bitwise():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    image = tv_models.structured_image(97, 131, 3).transpose(2, 0, 1).copy()
    cfg = minimaskrcnn_config()
    ref = GeneralizedRCNNTransform(cfg.min_size, cfg.max_size, list(cfg.image_mean), list(cfg.image_std))
    np.testing.assert_array_equal(transform.normalize(image, cfg.image_mean, cfg.image_std),
                                  ref.normalize(torch.from_numpy(image)).numpy())


def minimaskrcnn_config():
    from minimaskrcnn.config import MASKRCNN_RESNET50_FPN
    return MASKRCNN_RESNET50_FPN
