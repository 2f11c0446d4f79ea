"""The synthetic shapes generator and the AP / parity evaluation (`minimaskrcnn.shapes`, `minimaskrcnn.evaluate`).

AP@0.5 is checked against pycocotools' COCOeval (the reference definition of COCO AP) on prediction sets built
from generated ground truth: perfect, shifted (boxes and masks moved by amounts that straddle IoU 0.5), with
missing, duplicated, mislabelled and false detections, and with tied scores.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from minimaskrcnn.demo import shapes
from minimaskrcnn.crosscheck.evaluate import average_precision, box_iou_coco, mask_iou, parity
from minimaskrcnn.demo.shapes import CLASS_NAMES, make_sample, make_samples


# --- generator --------------------------------------------------------------------------------------------------------

def _equal(a, b):
    for name in ("image", "boxes", "labels", "masks", "full_masks"):
        if not np.array_equal(getattr(a, name), getattr(b, name)):
            return False
    return True


def test_deterministic_per_seed_and_index():
    a, b = make_sample(7, 3), make_sample(7, 3)
    assert _equal(a, b)
    assert _equal(make_samples(7, 4)[3], a)                  # image i does not depend on how many are drawn
    assert not np.array_equal(make_sample(8, 3).image, a.image)
    assert not np.array_equal(make_sample(7, 4).image, a.image)


def test_types_and_shapes():
    s = make_sample(0, 0, height=200, width=300)
    n = len(s)
    assert s.image.shape == (200, 300, 3) and s.image.dtype == np.uint8
    assert s.boxes.shape == (n, 4) and s.boxes.dtype == np.float32
    assert s.labels.shape == (n,) and s.labels.dtype == np.int64
    assert s.masks.shape == s.full_masks.shape == (n, 200, 300) and s.masks.dtype == bool
    assert CLASS_NAMES == ("__background__", "circle", "square", "triangle")


def test_variety():
    samples = make_samples(1, 40)
    labels = np.concatenate([s.labels for s in samples])
    assert set(labels.tolist()) == {1, 2, 3}
    assert min(np.bincount(labels)[1:]) >= 0.2 * len(labels)             # classes drawn evenly
    counts = [len(s) for s in samples]
    assert min(counts) >= 1 and max(counts) >= 5
    sizes = np.concatenate([np.sqrt(s.full_masks.sum((1, 2))) for s in samples])
    assert sizes.min() < 25 and sizes.max() > 70                        # small and large shapes
    assert len({tuple(np.round(s.image.reshape(-1, 3).mean(0))) for s in samples}) == len(samples)
    assert sum(_overlapping(s) for s in samples) >= 5                   # occlusion is common


def _overlapping(s) -> bool:
    f = s.full_masks.reshape(len(s), -1).astype(int)
    return bool(((f @ f.T) - np.diag(np.diag(f @ f.T))).any())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_boxes_and_occlusion(seed):
    for s in make_samples(seed, 15):
        n = len(s)
        assert (s.masks.sum((1, 2)) > 0).all()
        # visible = own pixels not covered by any shape painted later (later = on top)
        for i in range(n):
            on_top = s.full_masks[i + 1:].any(axis=0)
            np.testing.assert_array_equal(s.masks[i], s.full_masks[i] & ~on_top)
            assert s.masks[i].sum() >= 0.6 * s.full_masks[i].sum()      # min_visible
        assert s.masks.sum(axis=0).max() <= 1                            # visible masks never overlap
        np.testing.assert_array_equal(s.masks[-1], s.full_masks[-1])     # the top shape is whole
        # boxes are the tight boxes of the visible masks, in pixel edges
        for box, m in zip(s.boxes, s.masks):
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])


def test_shapes_look_like_their_class():
    """Unoccluded shapes fill their (rotated) outline as the geometry says: a circle fills pi/4 of its box, a
    square's area over its box ranges 0.5..1 with rotation, an equilateral triangle's is at most ~0.5."""
    fills = {1: [], 2: [], 3: []}
    for s in make_samples(3, 30):
        for i in range(len(s)):
            if not np.array_equal(s.masks[i], s.full_masks[i]) or s.masks[i].sum() < 900:
                continue
            x1, y1, x2, y2 = s.boxes[i]
            fills[int(s.labels[i])].append(s.masks[i].sum() / ((x2 - x1) * (y2 - y1)))
    assert all(len(v) >= 3 for v in fills.values()), {k: len(v) for k, v in fills.items()}
    assert all(abs(f - np.pi / 4) < 0.06 for f in fills[1]), fills[1]
    assert all(0.47 <= f <= 1.0 for f in fills[2]), fills[2]
    assert all(0.38 <= f <= 0.56 for f in fills[3]), fills[3]


def test_shapes_are_visible_in_the_image():
    """Each visible mask's mean colour stands out from the ring of pixels just outside its shape."""
    for s in make_samples(4, 10):
        img = s.image.astype(float)
        everything = s.full_masks.any(0)
        for m, f in zip(s.masks, s.full_masks):
            if m.sum() < 200:
                continue
            ring = _dilate(f, 3) & ~everything
            if ring.sum() < 50:
                continue
            assert np.linalg.norm(img[m].mean(0) - img[ring].mean(0)) > 25


def _dilate(m, r):
    out = m.copy()
    for _ in range(r):
        p = np.pad(out, 1)
        out = out | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return out


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(index=1.5), dict(height=10), dict(max_objects=0),
                                    dict(min_size=50, max_size=40), dict(min_visible=1.5)])
def test_bad_arguments(kwargs):
    args = dict(seed=0, index=0) | kwargs
    with pytest.raises(ValueError):
        make_sample(**args)


# --- AP against COCOeval ----------------------------------------------------------------------------------------------

def _coco_ap(gts, dets, kind):
    """COCOeval's AP@0.5 (stats[1]: IoU 0.5, area all, maxDets 100) on the same data."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(m):
        return mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))

    def xywh(b):
        b = [float(v) for v in b]
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    h, w = gts[0].masks.shape[1:]
    images, anns = [], []
    for i, g in enumerate(gts, start=1):
        images.append({"id": i, "height": h, "width": w})
        for box, label, m in zip(g.boxes, g.labels, g.masks):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(label), "bbox": xywh(box),
                         "area": float(m.sum()), "iscrowd": 0, "segmentation": rle(m)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k, "name": n} for k, n in enumerate(CLASS_NAMES) if k]}
    results = []
    for i, d in enumerate(dets, start=1):
        for box, label, score, m in zip(d["boxes"], d["labels"], d["scores"], d["masks"]):
            r = {"image_id": i, "category_id": int(label), "score": float(score)}
            r.update({"bbox": xywh(box)} if kind == "box" else {"segmentation": rle(m >= 0.5)})
            results.append(r)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox" if kind == "box" else "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[1]


def _shift(m, dy, dx):
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = m[max(-dy, 0):h - max(dy, 0),
                                                                  max(-dx, 0):w - max(dx, 0)]
    return out


def _prediction_sets(gts, rng):
    """name -> one detection record per image."""
    def record(boxes, labels, scores, masks):
        return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64),
                "scores": np.asarray(scores, np.float32), "masks": np.asarray(masks, np.float32)}

    sets = {"perfect": [record(g.boxes, g.labels, rng.uniform(0.5, 1, len(g)), g.masks) for g in gts]}
    shifted = []
    for g in gts:
        boxes, masks = [], []
        for box, m in zip(g.boxes, g.masks):
            size = max(box[2] - box[0], box[3] - box[1])
            d = int(rng.uniform(0.0, 0.6) * size)                        # some below IoU 0.5, some above
            dy, dx = int(rng.integers(-d, d + 1)), d
            boxes.append(box + np.array([dx, dy, dx, dy], np.float32))
            masks.append(_shift(m, dy, dx) * rng.uniform(0.5, 1.0))     # probabilities, binarized at 0.5
        shifted.append(record(boxes, g.labels, rng.uniform(0, 1, len(g)), masks))
    sets["shifted"] = shifted
    messy = []
    for g in gts:
        keep = rng.uniform(size=len(g)) > 0.3                           # missing detections
        boxes, labels, masks = list(g.boxes[keep]), list(g.labels[keep]), list(g.masks[keep].astype(float))
        for i in np.flatnonzero(keep)[:1]:                              # a duplicate and a wrong label
            boxes += [g.boxes[i] + 2, g.boxes[i]]
            labels += [g.labels[i], g.labels[i] % 3 + 1]
            masks += [_shift(g.masks[i], 2, 2).astype(float), g.masks[i].astype(float)]
        for _ in range(int(rng.integers(0, 3))):                        # false positives
            x, y = rng.uniform(0, 200, 2)
            m = np.zeros(g.masks.shape[1:])
            m[int(y):int(y) + 30, int(x):int(x) + 30] = 1.0
            boxes.append(np.array([x, y, x + 30, y + 30], np.float32))
            labels.append(int(rng.integers(1, 4)))
            masks.append(m)
        scores = rng.choice([0.3, 0.5, 0.9], size=len(labels))          # many tied scores
        messy.append(record(boxes, labels, scores, np.array(masks).reshape(-1, *g.masks.shape[1:])))
    sets["messy"] = messy
    sets["empty_image"] = [record(np.zeros((0, 4)), [], [], np.zeros((0,) + g.masks.shape[1:])) if i == 0
                           else messy[i] for i, g in enumerate(gts)]
    return sets


@pytest.mark.parametrize("seed", [0, 1])
def test_ap_equals_cocoeval(seed):
    rng = np.random.default_rng(seed)
    gts = make_samples(100 + seed, 6)
    seen = set()
    for name, dets in _prediction_sets(gts, rng).items():
        for kind in ("box", "mask"):
            ours = average_precision(gts, dets, kind).ap
            ref = _coco_ap(gts, dets, kind)
            assert ours == pytest.approx(ref, abs=1e-12), (name, kind, ours, ref)
            seen.add((name, round(ours, 6)))
    values = dict(seen)
    assert values["perfect"] == 1.0
    assert 0.0 < values["shifted"] < 1.0 and 0.0 < values["messy"] < 1.0


def test_ap_per_class_and_max_dets():
    gts = make_samples(5, 4)
    dets = [{"boxes": g.boxes, "labels": g.labels, "scores": np.ones(len(g)), "masks": g.masks} for g in gts]
    r = average_precision(gts, dets, "mask")
    assert r.ap == 1.0 and set(r.per_class) == set(np.concatenate([g.labels for g in gts]).tolist())
    # a detection beyond max_dets per image and class is not counted
    capped = average_precision(gts, dets, "box", max_dets=1)
    assert capped.ap < 1.0 or all(np.bincount(g.labels).max() == 1 for g in gts)


def test_iou_helpers():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float32)
    np.testing.assert_allclose(box_iou_coco(a, a[:1]), [[1.0], [25 / 175]])
    m = np.zeros((2, 20, 20), bool)
    m[0, :10, :10] = True
    m[1, 5:15, 5:15] = True
    np.testing.assert_allclose(mask_iou(m, m[:1]), [[1.0], [25 / 175]])
    assert mask_iou(np.zeros((0, 20, 20), bool), m).shape == (0, 2)


def test_parity_summed_over_images():
    gts = make_samples(6, 3)
    ref = [{"boxes": g.boxes, "labels": g.labels, "scores": np.linspace(0.9, 0.5, len(g)),
            "masks": g.masks.astype(np.float32)} for g in gts]
    same = parity(ref, ref)
    assert same.matched == same.compared == sum(len(g) for g in gts)
    assert same.max_box_diff == 0 and same.max_score_diff == 0 and same.fraction_masks_above(0.97) == 1.0
    moved = [dict(r, boxes=r["boxes"] + np.float32(0.05), scores=r["scores"] + 1e-3) for r in ref]
    moved[0] = dict(moved[0], labels=moved[0]["labels"] % 3 + 1)        # image 0: every label wrong
    p = parity(ref, moved)
    assert p.matched == same.matched - len(gts[0]) and p.compared == same.compared
    assert p.max_box_diff == pytest.approx(0.05, abs=1e-5) and p.max_score_diff == pytest.approx(1e-3, abs=1e-6)
