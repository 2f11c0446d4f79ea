"""outputs: overlay, cut-outs, semantic and instance maps, COCO results JSON, atomic input-protecting writes."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import COCO_39769
from minimaskrcnn import atomic
from minimaskrcnn.io import coco
from minimaskrcnn.render import cutouts
from minimaskrcnn.render import draw
from minimaskrcnn.io import files
from minimaskrcnn.render import labelmaps
from minimaskrcnn.render import overlay
from minimaskrcnn.io import coco as rle
from minimaskrcnn.config import COCO_CATEGORIES
from minimaskrcnn.detections import Detections

H, W = 40, 60
CAT, DOG = 17, 18


def _image():
    y, x = np.mgrid[:H, :W]
    return np.stack([x * 4, y * 6, (x + y) * 2], axis=2).astype(np.uint8)     # (H, W, 3)


def _two_squares(masks=True):
    """A cat (score 0.6) listed before a dog (0.9) that overlaps it: rank 1 is the dog.

    Cat mask: rows 5..24, cols 5..24 at 0.8; dog: rows 15..34, cols 15..34 at 0.5 (exactly the threshold: kept),
    with its last column at 0.49 (dropped). Both have a faint 0.3 halo one pixel around (dropped).
    """
    m = np.zeros((2, H, W), np.float32)
    m[0, 4:26, 4:26] = 0.3
    m[0, 5:25, 5:25] = 0.8
    m[1, 14:36, 14:36] = 0.3
    m[1, 15:35, 15:35] = 0.5
    m[1, 15:35, 34] = 0.49
    boxes = np.array([[4.6, 5.0, 24.2, 25.0], [15.0, 15.0, 34.0, 35.0]], np.float32)
    return Detections(boxes, np.array([CAT, DOG], np.int64), np.array([0.6, 0.9], np.float32),
                      m if masks else None, COCO_CATEGORIES, (H, W))


def _cat_region():
    r = np.zeros((H, W), bool)
    r[5:25, 5:25] = True
    return r


def _dog_region():
    r = np.zeros((H, W), bool)
    r[15:35, 15:34] = True
    return r


# --- maps ---------------------------------------------------------------------------------------------------------------

def test_semantic_map_higher_score_wins():
    sem = labelmaps.semantic_map(_two_squares())
    assert sem.dtype == np.uint8 and sem.shape == (H, W)
    expected = np.zeros((H, W), np.uint8)
    expected[_cat_region()] = CAT
    expected[_dog_region()] = DOG
    np.testing.assert_array_equal(sem, expected)


def test_instance_map_ids_in_score_order():
    inst = labelmaps.instance_map(_two_squares())
    expected = np.zeros((H, W), np.uint8)
    expected[_cat_region()] = 2
    expected[_dog_region()] = 1
    np.testing.assert_array_equal(inst, expected)


def test_mask_threshold_option():
    sem = labelmaps.semantic_map(_two_squares(), mask_threshold=0.25)      # now the 0.3 halos count too
    assert sem[4, 4] == CAT and sem[35, 35] == DOG and sem[15, 34] == DOG
    assert labelmaps.semantic_map(_two_squares(), mask_threshold=0.9).max() == 0


def test_instance_map_uint16_beyond_255_detections():
    n = 300
    boxes = np.array([[i % W, 0, i % W + 1, 1] for i in range(n)], np.float32)
    det = Detections(boxes, np.ones(n, np.int64), np.linspace(1, 0.5, n).astype(np.float32), None,
                     COCO_CATEGORIES, (H, W))
    inst = labelmaps.instance_map(det)
    assert inst.dtype == np.uint16
    assert inst[0, 0] == 1 and inst[0, 59] == 60                        # boxes 0 and 60 share column 0: rank 1 wins


def test_box_only_maps_use_boxes():
    det = _two_squares(masks=False)
    sem = labelmaps.semantic_map(det)
    assert sem[5, 4] == CAT and sem[24, 10] == CAT and sem[20, 20] == DOG and sem[34, 33] == DOG
    assert sem[4, 4] == 0 and sem[25, 4] == 0 and sem[35, 34] == 0


def test_colorize_and_palette():
    sem = labelmaps.semantic_map(_two_squares())
    color = labelmaps.colorize(sem, len(COCO_CATEGORIES))
    assert color.shape == (H, W, 3) and color.dtype == np.uint8
    assert (color[0, 0] == 0).all()
    np.testing.assert_array_equal(color[6, 6], draw.class_colors(91)[CAT])
    pal = draw.palette(20).astype(int)
    dist = np.abs(pal[:, None] - pal[None]).sum(-1) + 1000 * np.eye(20, dtype=int)
    assert dist.min() >= 60                                           # pairwise distinguishable (L1 distance)
    np.testing.assert_array_equal(draw.palette(5), draw.palette(20)[:5])   # stable prefix


# --- overlay ------------------------------------------------------------------------------------------------------------

def test_overlay_tints_masks_and_keeps_the_rest():
    img = np.full((H, W, 3), 100, np.uint8)
    det = _two_squares()
    ov = overlay.render_overlay(img, det)
    assert ov.shape == (H, W, 3) and ov.dtype == np.uint8
    pal = draw.palette(2).astype(np.float32)
    np.testing.assert_array_equal(ov[38, 55], [100, 100, 100])        # far from everything
    np.testing.assert_array_equal(ov[28, 25], np.rint(100 * 0.5 + pal[0] * 0.5))   # dog interior: rank 1 colour
    np.testing.assert_array_equal(ov[20, 20], np.rint(100 * 0.5 + pal[0] * 0.5))   # overlap: dog on top
    np.testing.assert_array_equal(ov[22, 8], np.rint(100 * 0.5 + pal[1] * 0.5))    # cat only (below its label)


def test_overlay_boxes_only_and_float_image():
    img = np.full((H, W, 3), 0.5, np.float32)
    ov = overlay.render_overlay(img, _two_squares(masks=False))
    np.testing.assert_array_equal(ov[28, 25], [128, 128, 128])        # inside a box: no tint
    assert (ov[35, 15:34] == draw.palette(2)[0]).all()              # the dog's bottom box edge


def test_overlay_of_no_detections_is_the_image():
    det = _two_squares().select(np.zeros(2, bool))
    np.testing.assert_array_equal(overlay.render_overlay(_image(), det), _image())


# --- cut-outs -----------------------------------------------------------------------------------------------------------

def test_cutouts_crop_box_outward_with_mask_alpha():
    img, det = _image(), _two_squares()
    (r1, n1, dog), (r2, n2, cat) = cutouts.cutouts(img, det)
    assert (r1, n1, r2, n2) == (1, "dog", 2, "cat")
    assert cat.shape == (20, 21, 4) and dog.shape == (20, 19, 4)      # cat box x 4.6..24.2 -> columns 4..24
    np.testing.assert_array_equal(cat[:, :, :3], img[5:25, 4:25])
    np.testing.assert_array_equal(cat[:, :, 3], _cat_region()[5:25, 4:25] * 255)
    np.testing.assert_array_equal(dog[:, :, 3], _dog_region()[15:35, 15:34] * 255)


def test_cutouts_clip_to_image_and_box_only_alpha():
    det = _two_squares(masks=False)
    det.boxes[1] = [50.5, -3.0, 70.0, 10.2]
    (_, _, dog), (_, _, cat) = cutouts.cutouts(_image(), det)
    assert dog.shape == (11, 10, 4) and (dog[:, :, 3] == 255).all()
    np.testing.assert_array_equal(dog[:, :, :3], _image()[0:11, 50:60])


def test_write_cutouts_names_and_content(tmp_path):
    paths = cutouts.write_cutouts(tmp_path, "photo", _image(), _two_squares())
    assert [os.path.basename(p) for p in paths] == ["photo_1_dog.png", "photo_2_cat.png"]
    back = np.asarray(Image.open(paths[1]))
    assert back.shape == (20, 21, 4)
    np.testing.assert_array_equal(back[:, :, 3], _cat_region()[5:25, 4:25] * 255)


def test_cutout_names_are_file_safe(tmp_path):
    det = _two_squares()
    det.labels[:] = [10, 10]                                          # "traffic light"
    paths = cutouts.write_cutouts(tmp_path, "x", _image(), det)
    assert [os.path.basename(p) for p in paths] == ["x_1_traffic-light.png", "x_2_traffic-light.png"]


# --- COCO results -------------------------------------------------------------------------------------------------------

def test_coco_results_fields():
    res = coco.coco_results(_two_squares(), 7, "a.png")
    assert [r["category_id"] for r in res] == [DOG, CAT]
    dog = res[0]
    assert set(dog) == {"image_id", "file_name", "category_id", "bbox", "score", "segmentation"}
    assert dog["image_id"] == 7 and dog["file_name"] == "a.png"
    assert dog["bbox"] == [15.0, 15.0, 19.0, 20.0] and dog["score"] == pytest.approx(0.9)
    assert isinstance(dog["segmentation"]["counts"], str) and dog["segmentation"]["size"] == [H, W]
    np.testing.assert_array_equal(rle.decode(dog["segmentation"]), _dog_region())
    json.dumps(res)                                                   # plain JSON types only
    box_only = coco.coco_results(_two_squares(masks=False), 7)
    assert "segmentation" not in box_only[0] and "file_name" not in box_only[0]


def test_assign_image_ids():
    assert coco.assign_image_ids(["x/000000039769.png", "y/12.jpg"]) == [39769, 12]
    assert coco.assign_image_ids(["000000039769.png", "cat.png"]) == [1, 2]
    assert coco.assign_image_ids(["1.png", "a/001.jpg"]) == [1, 2]                  # same number twice
    assert coco.assign_image_ids([]) == []


def test_coco_results_load_and_evaluate_against_official_annotations(tmp_path):
    """Ground-truth instances of image 39769 as detections: loadRes accepts the file, and segm/bbox AP are 1."""
    ann_file = COCO_39769 / "instances_val2017_39769.json"
    data = json.loads(ann_file.read_text())
    h, w = data["images"][0]["height"], data["images"][0]["width"]
    anns = data["annotations"]
    masks = np.stack([coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(a["segmentation"], h, w)))
                      for a in anns]).astype(np.float32)
    boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)], np.float32)
    det = Detections(boxes, np.array([a["category_id"] for a in anns], np.int64),
                     np.linspace(0.95, 0.6, len(anns)).astype(np.float32), masks, COCO_CATEGORIES, (h, w))
    [image_id] = coco.assign_image_ids(["000000039769.png"])
    path = tmp_path / "results.json"
    files.write_json(coco.coco_results(det, image_id, "000000039769.png"), path)

    gt = COCO(str(ann_file))
    dt = gt.loadRes(str(path))
    assert len(dt.getAnnIds()) == len(anns)
    for iou_type in ("segm", "bbox"):
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)


# --- writes -------------------------------------------------------------------------------------------------------------

def test_write_png_round_trips_uint8_and_uint16(tmp_path):
    a = np.arange(H * W, dtype=np.uint16).reshape(H, W)
    files.write_png(a, tmp_path / "i16.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "i16.png")), a)
    files.write_png(_image(), tmp_path / "rgb.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "rgb.png")), _image())
    assert sorted(os.listdir(tmp_path)) == ["i16.png", "rgb.png"]


def test_refuses_to_overwrite_inputs(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(_image()).save(src)
    before = src.read_bytes()
    (tmp_path / "link.png").symlink_to(src)
    os.link(src, tmp_path / "hard.png")
    protected = atomic.protect([src])
    for target in ("in.png", "link.png", "hard.png"):
        with pytest.raises(ValueError, match="refusing to overwrite an input"):
            files.write_png(np.zeros((2, 2), np.uint8), tmp_path / target, protected)
    assert src.read_bytes() == before
    files.write_png(np.zeros((2, 2), np.uint8), tmp_path / "other.png", protected)
    assert sorted(os.listdir(tmp_path)) == ["hard.png", "in.png", "link.png", "other.png"]


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        files.write_json({"x": object()}, target)                   # not serializable, fails half-way
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    files.write_json([], tmp_path / "r.json")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "r.json").st_mode & 0o777 == 0o666 & ~umask
