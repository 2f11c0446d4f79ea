"""The matterport parity cases: oracle runs (tests/oracles/matterport_dump.py, cached) and our network on them.

Not a test module. A *case* is one matterport configuration with random weights, run on a few photos; the oracle
calibrates a fresh model per photo (facts §10.3: a random model is well-conditioned only on the image it was
calibrated on), saves its `.h5`, and dumps `run_graph`'s stage outputs and `detect`'s result per photo. One oracle
process per case runs all its photos; outputs are cached by tests/matterport_oracle.cached_run, keyed by the dump
script's source, the configuration, the seed and the photos' sha256.

Cost (CI): the ResNet-101 / 81-class case at matterport's default 1024 x 1024 runs on two photos; the others use
smaller molded images.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np

import matterport_oracle
from conftest import IMAGES

CASES = {
    # matterport's COCO model shape: ResNet-101, 81 classes, default config (square 1024, IMAGE_MIN_DIM 800)
    "coco_r101": dict(config={"BACKBONE": "resnet101", "NUM_CLASSES": 81},
                      photos=("dog.jpg", "horses.jpg")),
    # ResNet-50 with a small class count (a matterport sample-style model), smaller square images
    "small_r50": dict(config={"BACKBONE": "resnet50", "NUM_CLASSES": 4, "IMAGE_MIN_DIM": 576, "IMAGE_MAX_DIM": 704,
                              "DETECTION_MIN_CONFIDENCE": 0.6},
                      photos=("person.jpg", "giraffe.jpg")),
    # the non-default configuration: pad64 at IMAGE_MIN_DIM 512 (images up-scaled, then padded to multiples of 64)
    "pad64_r101": dict(config={"BACKBONE": "resnet101", "NUM_CLASSES": 81, "IMAGE_RESIZE_MODE": "pad64",
                               "IMAGE_MIN_DIM": 512, "RPN_NMS_THRESHOLD": 0.6, "PRE_NMS_LIMIT": 4000,
                               "POST_NMS_ROIS_INFERENCE": 600, "DETECTION_MIN_CONFIDENCE": 0.5,
                               "DETECTION_MAX_INSTANCES": 60},
                       photos=("messi5.jpg", "grace_hopper.jpg")),
}
SEED = 0


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def oracle_dir(case: str):
    """Directory with <photo stem>.h5 (weights) and <photo stem>.npz (stage dumps) for every photo of `case`."""
    spec = CASES[case]
    params = {"config": spec["config"], "seed": SEED,
              "images": [{"name": p.split(".")[0], "path": str(IMAGES / p), "sha256": _sha256(IMAGES / p)}
                         for p in spec["photos"]]}
    return matterport_oracle.cached_run("matterport_dump.py", params, timeout=3600)


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
