"""The matterport parity cases: oracle runs (tests/oracles/matterport_dump.py, cached) and our network on them.

Not a test module. A *case* is one matterport configuration with random weights, run on a few photos; the oracle
calibrates a fresh model per photo (facts §10.3: a random model is well-conditioned only on the image it was
calibrated on), saves its `.h5`, and dumps the stage outputs `run_graph` fetches and `detect`'s result per photo.
One oracle process per case runs all its photos; outputs are cached by tests/matterport_oracle.cached_run, keyed by
the dump script's source and all its parameters (configuration, seed, photos' sha256, what else it writes).

Cost (CI, cold cache: every case is one oracle process, one TensorFlow graph build): the ResNet-101 / 81-class case
runs at matterport's default 1024 x 1024 on one photo; the ResNet-50 cases use small molded images. Together the
cases cover what the issue requires of end-to-end parity (4 photos; ResNet-101 / 81 classes; ResNet-50 / a small
class count; a non-default config) and, with `keras_reference`, provide the `.h5` files the reader tests read
(tests/weights_convert/test_keras_h5.py, tests/matterport/test_load.py, test_predict_inputs.py): `reference(case)`.
Measured cold (2 cores, loaded by other jobs; tests/matterport_oracle.py prints it and keeps it in oracle_cost.json):
coco_r101 104 CPU-s, small_r50 64 CPU-s, pad64_r101 64 CPU-s (all three before this layout: 545, 838 and 1064 s
wall with two photos each, and the reader tests built their own models for another ~20 minutes).
"""
from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

import matterport_oracle
from conftest import IMAGES

CASES = {
    # matterport's COCO model shape: ResNet-101, 81 classes, default config (square 1024, IMAGE_MIN_DIM 800)
    "coco_r101": dict(config={"BACKBONE": "resnet101", "NUM_CLASSES": 81},
                      photos=("dog.jpg",), reference="weights"),
    # ResNet-50 with a small class count (a matterport sample-style model), small square images, and the head sizes
    # a file can change (TOP_DOWN_PYRAMID_SIZE, FPN_CLASSIF_FC_LAYERS_SIZE, POOL_SIZE) away from their defaults
    "small_r50": dict(config={"BACKBONE": "resnet50", "NUM_CLASSES": 4, "IMAGE_MIN_DIM": 320, "IMAGE_MAX_DIM": 384,
                              "TOP_DOWN_PYRAMID_SIZE": 128, "FPN_CLASSIF_FC_LAYERS_SIZE": 256, "POOL_SIZE": 5,
                              "DETECTION_MIN_CONFIDENCE": 0.6},
                      photos=("person.jpg", "giraffe.jpg"), reference="full", check_default_graph=True),
    # the non-default configuration: pad64 at IMAGE_MIN_DIM 512 (grace_hopper.jpg is 512 px on its short side, so
    # nothing is resized: the photo-level test requires bit-equal molds and full parity there)
    "pad64_r101": dict(config={"BACKBONE": "resnet101", "NUM_CLASSES": 81, "IMAGE_RESIZE_MODE": "pad64",
                               "IMAGE_MIN_DIM": 512, "RPN_NMS_THRESHOLD": 0.6, "PRE_NMS_LIMIT": 4000,
                               "POST_NMS_ROIS_INFERENCE": 600, "DETECTION_MIN_CONFIDENCE": 0.5,
                               "DETECTION_MAX_INSTANCES": 60},
                       photos=("grace_hopper.jpg",)),
}
SEED = 0
# photos that matterport only molds (tests/oracles/mrcnn_mold_dump.py, no network: a case costs a graph build and a
# calibration, a mold nothing), with a case's config: tests/matterport/test_mold.py's other resizes, by 1.33 in
# square 1024 and an up-scaling pad64 (grace_hopper.jpg is not resized)
MOLD_ONLY = {"coco_r101": ("horses.jpg",), "pad64_r101": ("messi5.jpg",)}


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def oracle_dir(case: str):
    """Directory with <photo stem>.h5 (weights) and <photo stem>.npz (stage dumps) for every photo of `case`, and
    with the case's `reference` (`reference(case)`)."""
    spec = CASES[case]
    params = {"config": spec["config"], "seed": SEED, "keras_reference": "reference" in spec,
              "full_save": spec.get("reference") == "full",
              "check_default_graph": spec.get("check_default_graph", False),
              "images": [{"name": p.split(".")[0], "path": str(IMAGES / p), "sha256": _sha256(IMAGES / p)}
                         for p in spec["photos"]]}
    return matterport_oracle.cached_run("matterport_dump.py", params, timeout=3600)


def reference(case: str) -> dict:
    """The case's first photo's `.h5` with what Keras held for every weight (keras.npz + report.json, the format of
    tests/oracles/mrcnn_save_weights.py) and, for reference="full", `keras_model.save`'s full-model file:
    {"dir", "weights.h5", "full.h5" (if saved), "params" (the matterport config the model was built with)}."""
    spec = CASES[case]
    out = oracle_dir(case)
    files = {"dir": out, "weights.h5": out / (photos(case)[0] + ".h5"), "params": dict(spec["config"])}
    if spec.get("reference") == "full":
        files["full.h5"] = out / "full.h5"
    return files


def mold_photos():
    """(case, stem) of every photo matterport molds: the cases' own and MOLD_ONLY's."""
    return all_photos() + [(case, p.split(".")[0]) for case, ps in MOLD_ONLY.items() for p in ps]


@functools.lru_cache(maxsize=None)
def _mold_dir():
    params = {"molds": [{"name": f"{case}-{p.split('.')[0]}", "config": CASES[case]["config"],
                         "path": str(IMAGES / p), "sha256": _sha256(IMAGES / p)}
                        for case, ps in MOLD_ONLY.items() for p in ps]}
    return matterport_oracle.cached_run("mrcnn_mold_dump.py", params, timeout=600)


def mold(case: str, stem: str) -> dict:
    """matterport's mold_inputs of a mold_photos() photo: {"image", "molded", "window"}."""
    if stem in photos(case):
        d = dump(case, stem)
    else:
        with np.load(_mold_dir() / f"{case}-{stem}.npz") as z:
            d = {k: z[k] for k in z.files}
    return {k: d[k] for k in ("image", "molded", "window")}


def default_graph_checks():
    """{case: check.json} for the cases whose oracle run checked its graph against matterport's default one."""
    return {case: json.loads((oracle_dir(case) / "check.json").read_text())
            for case, spec in CASES.items() if spec.get("check_default_graph")}


def photos(case: str):
    return [p.split(".")[0] for p in CASES[case]["photos"]]


def all_photos():
    return [(case, stem) for case in CASES for stem in photos(case)]


@functools.lru_cache(maxsize=4)
def dump(case: str, stem: str):
    with np.load(oracle_dir(case) / f"{stem}.npz") as d:
        return {k: d[k] for k in d.files}


@functools.lru_cache(maxsize=2)
def model(case: str, stem: str):
    """Our network loaded from the oracle's saved .h5 through the project's reader (A1's weights.read_matterport)."""
    from minimaskrcnn.matterport.model import load_matterport
    from weights_convert.matterport_convert import read_matterport
    cfg, arrays = read_matterport(oracle_dir(case) / f"{stem}.h5", config=_overrides(case))
    return load_matterport(cfg, arrays)


def _overrides(case: str) -> dict:
    return {k: v for k, v in CASES[case]["config"].items() if k not in ("BACKBONE", "NUM_CLASSES")}


def chw(x: np.ndarray) -> np.ndarray:
    """A Keras (H, W, C) map in our (C, H, W) layout."""
    return np.ascontiguousarray(np.asarray(x, np.float32).transpose(2, 0, 1))
