"""`explain` (issue 8): a picture of every stage and an index.html, drawn from the trace of a calibrated random
Mask R-CNN (tests/tv_models.py) on a shared photo; the two things explain derives from the trace (RPN candidates
before NMS, the proposal of each detection) reproduce the trace exactly; Faster R-CNN gets no mask pictures.
"""
import html
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import oracle
import tv_models
from conftest import IMAGES, ROOT
from minimaskrcnn.render import draw as drawing
from minimaskrcnn.study import view as view_mod
from minimaskrcnn.study import explain

PHOTO = IMAGES / "dog.jpg"
MASK_PICTURES = ["01_input", "02_fpn", "03_anchors", "04_objectness", "05_proposals", "06_roi_levels",
                 "07_refinement", "08_mask_probs", "09_pasted", "10_result"]


def _converted(torch_model, folder):
    from weights_convert import convert
    oracle.torch().save(torch_model.state_dict(), folder / "model.pth")
    npz = convert(folder / "model.pth", folder / "model.npz")
    (folder / "model.pth").unlink()
    return npz


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import minimaskrcnn
    torch_model = tv_models.calibrated_model("maskrcnn_resnet50_fpn", tv_models.load_photo(PHOTO))
    return minimaskrcnn.load(_converted(torch_model, tmp_path_factory.mktemp("explain")))


@pytest.fixture(scope="module")
def explained(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain-out")
    return explain.explain(model, str(PHOTO), out, score_threshold=0.9, anchor_location="P4:20,30",
                           note="calibrated random weights"), out


def test_every_stage_has_a_picture(explained):
    result, out = explained
    assert [os.path.basename(s.path)[:-4] for s in result.sections] == MASK_PICTURES
    assert 0 < len(result.detections) < 100
    for name in MASK_PICTURES:
        path = out / f"{name}.png"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert 400 <= im.width <= 2400 and 150 <= im.height <= 2400, (name, im.size)
            pixels = np.asarray(im)
        assert pixels.std() > 20, f"{name} is nearly uniform"                 # a picture, not a blank canvas
        assert 5_000 < path.stat().st_size < 4_000_000


def test_index_walks_through_the_stages(explained):
    result, out = explained
    page = (out / "index.html").read_text(encoding="utf-8")
    positions = [page.index(f"src='{name}.png'") for name in MASK_PICTURES]
    assert positions == sorted(positions)                                      # in forward order
    for s in result.sections:
        assert html.escape(s.title) in page and html.escape(s.text) in page
    trace = result.trace
    for name in ("normalized", "P2", "P6", "anchors", "proposals", "roi_levels", "box_features", "mask_probs",
                 "masks"):
        assert f"<td>{name}</td><td>{tuple(trace[name].shape)}</td>" in page, name
    for citation in ("Ren et al. 2015", "Lin et al. 2017", "FPN Eq. 1", "He et al. 2017", "Eq. 2"):
        assert citation in page, citation
    assert "calibrated random weights" in page
    assert "(backbone, fpn:" in page and page.count("(rpn:") == 1             # each stage's time, once


def test_derived_from_the_trace_exactly(explained, model):
    trace = explained[0].trace
    (boxes, scores, levels), proposals = view_mod.rpn_candidates(trace, model.config)
    np.testing.assert_array_equal(proposals, trace["proposals"])
    assert len(boxes) > len(proposals) and np.all(np.diff(levels) >= 0)      # candidates, level by level
    source, residual = view_mod.detection_sources(trace, model.config)
    assert len(source) == len(trace["boxes"]) and np.all(residual == 0)       # exact reproduction
    assert len(set(source.tolist())) > 1


def test_no_detections_still_draws(explained, model):
    """A run that keeps no detection (an empty set at every per-detection stage) still gets every picture."""
    from minimaskrcnn.study import figures
    from minimaskrcnn.detections import Detections
    trace = dict(explained[0].trace)
    for name in ("boxes", "scores", "labels", "mask_features", "mask_logits", "mask_probs", "final_boxes", "masks"):
        trace[name] = trace[name][:0]
    view = view_mod.View(trace, model.config, 500)
    empty = Detections(trace["final_boxes"], trace["labels"], trace["scores"], trace["masks"],
                       model.config.class_names, view.original.shape[:2])
    pictures = [figures.picture_refinement(view, 6), figures.picture_mask_probs(view, 6),
                figures.picture_pasted(view, 6), figures.picture_result(view, empty),
                figures.picture_proposals(view, 5)]
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8 for p in pictures)


def test_anchor_locations(explained, model):
    view = view_mod.View(explained[0].trace, model.config, 800)
    assert view_mod.parse_location("P4:20,30", view) == (20 * 16, 30 * 16)
    h, w = view.original.shape[:2]
    y, x = view_mod.parse_location(f"{h // 2},{w // 4}", view)               # original pixels -> resized
    assert y == pytest.approx(h // 2 * view.size[0] / h) and x == pytest.approx(w // 4 * view.size[1] / w)
    for bad, why in (("P4:99,0", "outside P4"), ("P9:1,1", "no level P9"), ("1;2", "expected Y,X"),
                     (f"{h * 3},0", "outside the image")):
        with pytest.raises(ValueError, match=why):
            view_mod.parse_location(bad, view)


def test_faster_rcnn_has_no_mask_pictures(tmp_path):
    import minimaskrcnn
    image = tv_models.structured_image(240, 320, 5)
    small = {"min_size": 320, "max_size": 480}
    torch_model = tv_models.calibrated_model("fasterrcnn_resnet50_fpn", image, 2, **small)
    model = minimaskrcnn.load(_converted(torch_model, tmp_path))
    result = explain.explain(model, image, tmp_path / "out", score_threshold=0.3, max_side=600, compact=True)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["01_input.png", "02_fpn.png", "03_anchors.png", "04_objectness.png", "05_proposals.png",
                     "06_roi_levels.png", "07_refinement.png", "08_result.png", "index.html"]
    with Image.open(result.sections[0].path) as im:
        assert im.mode == "P"                                                  # compact: palette PNG


def test_cli_usage_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cases = [(["--anchor-location", "middle"], 2, "--anchor-location"), ([], 1, "no such file")]
    for extra, status, text in cases:
        image = PHOTO if extra else tmp_path / "missing.jpg"
        p = subprocess.run([sys.executable, "-m", "minimaskrcnn", "explain", str(image), "-o", str(tmp_path / "o"),
                            "--weights", "unused.npz", *extra], capture_output=True, text=True, cwd=ROOT, env=env)
        assert p.returncode == status and text in p.stderr and p.stderr.count("\n") == 1, p.stderr
        assert "Traceback" not in p.stderr


def test_colormap_and_edges():
    ramp = drawing.colormap(np.linspace(0, 1, 9), 0, 1).astype(float)        # (9, 3)
    luminance = ramp @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(luminance) > 0)                                     # dark to bright, monotonic
    assert drawing.colormap(np.array([-5.0, 7.0]), 0, 1).tolist() == [ramp[0].tolist(), ramp[-1].tolist()]
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    edge = drawing.edges(mask)
    assert edge.sum() == 8 and not edge[2, 2]
