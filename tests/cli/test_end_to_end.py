"""`python -m minimaskrcnn` end to end with a real network: a calibrated random torchvision Mask R-CNN (tests/tv_models,
facts §10.3), saved with torch.save and converted by weights_convert, run on the shared COCO photo and the first
frames of the shared street video. What the command line writes must equal what the Python API returns.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import oracle
from conftest import COCO_39769, ROOT, SHARED
from minimaskrcnn.io import coco as rle, video

PHOTO = COCO_39769 / "000000039769.png"
ANNOTATIONS = COCO_39769 / "instances_val2017_39769.json"
VTEST = SHARED / "video" / "vtest.avi"
THRESHOLD = "0.3"


def run(*args, home=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if home is not None:
        env["MINIMASKRCNN_HOME"] = str(home)
    p = subprocess.run([sys.executable, "-m", "minimaskrcnn", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=1800)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A converted .npz of a Mask R-CNN calibrated on the COCO photo (so it finds objects there)."""
    import tv_models
    from weights_convert import convert
    torch = oracle.torch()
    model = tv_models.calibrated_model("maskrcnn_resnet50_fpn", tv_models.load_photo(PHOTO))
    folder = tmp_path_factory.mktemp("weights")
    torch.save(model.state_dict(), folder / "calibrated.pth")
    return convert(folder / "calibrated.pth", folder / "calibrated.npz")


@pytest.fixture(scope="module")
def api_model(weights):
    import minimaskrcnn
    return minimaskrcnn.load(weights)


@pytest.fixture(scope="module")
def segment_run(weights, tmp_path_factory):
    """One run over the COCO photo plus a truncated JPEG and a text file named .jpg, with every output."""
    folder = tmp_path_factory.mktemp("segment")
    good = folder / "in" / PHOTO.name
    good.parent.mkdir()
    good.write_bytes(PHOTO.read_bytes())
    jpeg = folder / "in" / "1.jpg"
    Image.open(PHOTO).convert("RGB").save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:5000])                        # truncated
    (folder / "in" / "2.jpg").write_text("not an image\n")
    out = folder / "out"
    status, stdout, stderr = run("segment", folder / "in", "-o", out, "--weights", weights, "--json", "--cutouts",
                                 "--semantic", "--instances", "--score-threshold", THRESHOLD)
    return status, stdout, stderr, out


def _api_detections(api_model, image):
    return api_model.predict(image, score_threshold=float(THRESHOLD))


@pytest.fixture(scope="module")
def photo_detections(api_model):
    return _api_detections(api_model, str(PHOTO))


def test_bad_images_reported_others_done(segment_run):
    status, stdout, stderr, out = segment_run
    assert status == 1
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith("minimaskrcnn: error: ") and "1.jpg: " in lines[0] and "truncated" in lines[0]
    assert lines[1].startswith("minimaskrcnn: error: ") and "2.jpg: not an image" in lines[1]
    assert "1 of 3 inputs done, 2 failed" in stdout and "s per image" in stdout
    assert not [n for n in os.listdir(out) if n.startswith(".") or ".part" in n]    # no temporary files left
    assert not [n for n in os.listdir(out) if n.startswith(("1_", "2_"))]            # nothing for failed images


def test_outputs_equal_the_api(segment_run, photo_detections):
    status, stdout, stderr, out = segment_run
    det = photo_detections
    n = len(det)
    assert n > 0
    order = np.argsort(-det.scores, kind="stable")

    overlay = Image.open(out / "000000039769_overlay.png")
    assert overlay.mode == "RGB" and overlay.size == (640, 480)

    results = json.loads((out / "coco_results.json").read_text())
    assert len(results) == n
    assert all(r["image_id"] == 39769 and r["file_name"] == PHOTO.name for r in results)
    assert [r["category_id"] for r in results] == det.labels[order].tolist()
    np.testing.assert_array_equal([r["score"] for r in results], det.scores[order])
    boxes = det.boxes[order].astype(np.float64)
    np.testing.assert_array_equal([r["bbox"] for r in results],
                                  np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1))
    for r, i in zip(results, order):
        np.testing.assert_array_equal(rle.decode(r["segmentation"]), det.masks[i] >= 0.5)

    cutouts = sorted(p for p in os.listdir(out) if p.startswith("000000039769_") and p.split("_")[1].isdigit())
    assert len(cutouts) == n

    sem = np.asarray(Image.open(out / "000000039769_semantic.png"))
    inst = np.asarray(Image.open(out / "000000039769_instances.png"))
    assert sem.shape == inst.shape == (480, 640)
    assert set(np.unique(sem)) <= {0} | set(det.labels.tolist())
    covered = (det.masks >= 0.5).any(axis=0)
    np.testing.assert_array_equal(sem > 0, covered)
    np.testing.assert_array_equal(inst > 0, covered)
    top = np.flatnonzero(det.masks[order[0]] >= 0.5)
    assert (inst.reshape(-1)[top] == 1).all() and (sem.reshape(-1)[top] == det.labels[order[0]]).all()
    assert Image.open(out / "000000039769_semantic_color.png").mode == "RGB"


def test_results_load_in_pycocotools(segment_run):
    status, stdout, stderr, out = segment_run
    gt = COCO(str(ANNOTATIONS))
    dt = gt.loadRes(str(out / "coco_results.json"))
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()                                                    # a random model: any AP, but it must evaluate
    assert len(dt.getAnnIds(imgIds=[39769])) == len(json.loads((out / "coco_results.json").read_text()))


def test_classes_filter(weights, photo_detections, tmp_path):
    det = photo_detections
    names = det.label_names
    label = next(names[i] for i in np.argsort(-det.scores, kind="stable") if names[i] != "N/A")   # a random model
    status, stdout, stderr = run("segment", PHOTO, "-o", tmp_path, "--weights", weights, "--json", "--quiet",
                                 "--classes", label.upper(), "--score-threshold", THRESHOLD)
    assert status == 0 and stdout == "" and stderr == ""
    results = json.loads((tmp_path / "coco_results.json").read_text())
    assert len(results) == det.label_names.count(label) > 0
    assert {r["category_id"] for r in results} == {det.class_names.index(label)}


def test_video_first_frames(weights, api_model, tmp_path):
    status, stdout, stderr = run("video", VTEST, "-o", tmp_path / "out.mp4", "--weights", weights, "--every", "2",
                                 "--max-frames", "3", "--jsonl", tmp_path / "d.jsonl", "--score-threshold", THRESHOLD)
    assert status == 0, stderr
    assert "Traceback" not in stderr and "2 frames processed of 3 read" in stdout
    info, frames = video.open_video(tmp_path / "out.mp4")
    assert info.fps == 5 and (info.width, info.height) == (768, 576) and len(list(frames)) == 2
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 2]
    assert [r["time"] for r in records] == pytest.approx([0.0, 0.2])
    _, source = video.open_video(VTEST)
    first = [next(source).image for _ in range(3)]
    source.close()
    inputs = [first[0], first[2]]
    for record, image in zip(records, inputs):
        det = _api_detections(api_model, image)
        order = np.argsort(-det.scores, kind="stable")
        assert [d["category_id"] for d in record["detections"]] == det.labels[order].tolist()
        np.testing.assert_array_equal([d["score"] for d in record["detections"]], det.scores[order])
        for d, i in zip(record["detections"], order):
            np.testing.assert_array_equal(rle.decode(d["segmentation"]), det.masks[i] >= 0.5)


def test_missing_weights_one_line(tmp_path):
    status, stdout, stderr = run("segment", PHOTO, "-o", tmp_path / "out", "--weights", tmp_path / "nope.npz")
    assert status == 1 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minimaskrcnn: error: ") and "nope.npz" in lines[0]


def test_official_weights_offline_one_line(tmp_path):
    """No network here and an empty cache: the default weights cannot be fetched; one line says so."""
    status, stdout, stderr = run("segment", PHOTO, "-o", tmp_path / "out", home=tmp_path / "empty_cache")
    assert status == 1 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minimaskrcnn: error: ")
    assert "maskrcnn_resnet50_fpn" in lines[0] and "unexpected" not in lines[0]
