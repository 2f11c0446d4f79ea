"""MatterportConfig against matterport's own `mrcnn.config.Config` (run in the oracle environment), and its errors."""
import dataclasses
import json
import math

import pytest
from hypothesis import given, strategies as st

import matterport_oracle
from minimaskrcnn.matterport.config import (MATTERPORT_COCO_CLASS_NAMES, TRAINING_ONLY, MatterportConfig,
                                            MatterportConfigError, default_class_names)

FIELDS = [f.name for f in dataclasses.fields(MatterportConfig) if f.name != "class_names"]
# overrides for which matterport's derived values (IMAGE_SHAPE, IMAGE_META_SIZE) are compared with ours
CASES = [{}, {"IMAGE_MAX_DIM": 512, "NUM_CLASSES": 3}, {"IMAGE_RESIZE_MODE": "pad64", "IMAGE_MIN_DIM": 512,
                                                        "NUM_CLASSES": 81}]


@pytest.fixture(scope="module")
def oracle_values():
    out = matterport_oracle.cached_run("mrcnn_config_values.py", {"cases": CASES}, timeout=600)
    return json.loads((out / "values.json").read_text())


def _same(ours, theirs):
    if isinstance(ours, tuple):
        return len(ours) == len(theirs) and all(_same(a, b) for a, b in zip(ours, theirs))
    return ours == theirs


def test_defaults_are_matterports(oracle_values):
    theirs = oracle_values[0]
    ours = MatterportConfig()
    for name in FIELDS:
        assert name in theirs, f"{name} is not an attribute of matterport's Config"
        assert _same(getattr(ours, name), theirs[name]), (name, getattr(ours, name), theirs[name])
    assert not (TRAINING_ONLY - set(theirs)), "a 'training-only' name that matterport's Config does not have"
    assert set(theirs) <= set(FIELDS) | TRAINING_ONLY, "a matterport attribute neither honoured nor refused"


@pytest.mark.parametrize("case", range(len(CASES)))
def test_derived_values_are_matterports(oracle_values, case):
    theirs = oracle_values[case]
    ours = MatterportConfig.from_overrides(CASES[case])
    assert list(ours.IMAGE_SHAPE) == theirs["IMAGE_SHAPE"]
    assert ours.IMAGE_META_SIZE == theirs["IMAGE_META_SIZE"]
    for name, value in CASES[case].items():
        assert _same(getattr(ours, name), theirs[name])


def test_class_names():
    assert len(MATTERPORT_COCO_CLASS_NAMES) == 81 and MATTERPORT_COCO_CLASS_NAMES[0] == "BG"
    assert MatterportConfig.from_overrides({"NUM_CLASSES": 81}).class_names == MATTERPORT_COCO_CLASS_NAMES
    assert default_class_names(3) == ("BG", "class_1", "class_2")
    with_bg = MatterportConfig.from_overrides({"NUM_CLASSES": 3}, class_names=["BG", "a", "b"])
    without = MatterportConfig.from_overrides({"NUM_CLASSES": 3}, class_names=["a", "b"])
    assert with_bg.class_names == without.class_names == ("BG", "a", "b")
    with pytest.raises(MatterportConfigError, match="3 class names given but the model has 5"):
        MatterportConfig.from_overrides({"NUM_CLASSES": 5}, class_names=["a", "b", "c"])


FACTS = {"BACKBONE": "resnet101", "NUM_CLASSES": 81, "TOP_DOWN_PYRAMID_SIZE": 256, "FPN_CLASSIF_FC_LAYERS_SIZE": 1024,
         "POOL_SIZE": 7, "ANCHORS_PER_LOCATION": 3}


@pytest.mark.parametrize("override, message", [
    ({"NUM_CLASSES": 5}, "NUM_CLASSES 5 contradicts the weights file, which has NUM_CLASSES 81 \\(ev\\)"),
    ({"BACKBONE": "resnet50"}, 'BACKBONE "resnet50" contradicts the weights file, which has BACKBONE "resnet101"'),
    ({"TOP_DOWN_PYRAMID_SIZE": 128}, "TOP_DOWN_PYRAMID_SIZE 128 contradicts"),
    ({"FPN_CLASSIF_FC_LAYERS_SIZE": 512}, "FPN_CLASSIF_FC_LAYERS_SIZE 512 contradicts"),
    ({"POOL_SIZE": 5}, "POOL_SIZE 5 contradicts"),
    ({"RPN_ANCHOR_RATIOS": [0.5, 1, 2, 4]}, "RPN_ANCHOR_RATIOS .* contradicts .* 3 anchors per location"),
])
def test_an_override_contradicting_the_weights_names_both_values(override, message):
    with pytest.raises(MatterportConfigError, match=message):
        MatterportConfig.from_overrides(override, facts=FACTS, evidence={"NUM_CLASSES": "ev"})
    agreeing = {k: FACTS[k] for k in override if k in FACTS}
    assert MatterportConfig.from_overrides(agreeing, facts=FACTS).NUM_CLASSES == 81


@pytest.mark.parametrize("override, message", [
    ({"IMAGE_MIN_DIMS": 512}, "unknown matterport config attribute 'IMAGE_MIN_DIMS'; did you mean IMAGE_MIN_DIM"),
    ({"detection_min_confidence": 0.5}, "did you mean DETECTION_MIN_CONFIDENCE"),
    ({"LEARNING_RATE": 0.1}, "LEARNING_RATE is a matterport Config attribute that inference does not use"),
    ({"IMAGE_RESIZE_MODE": "crop"}, "crop .* training only"),
    ({"IMAGE_RESIZE_MODE": "fit"}, "IMAGE_RESIZE_MODE must be square | pad64 | none"),
    ({"IMAGE_MAX_DIM": 1000}, "IMAGE_MAX_DIM must be a multiple of 64"),
    ({"IMAGE_RESIZE_MODE": "pad64", "IMAGE_MIN_DIM": 500}, "pad64 needs IMAGE_MIN_DIM a multiple of 64"),
    ({"IMAGE_MIN_DIM": "800"}, "IMAGE_MIN_DIM must be an integer"),
    ({"IMAGE_MIN_DIM": True}, "IMAGE_MIN_DIM must be an integer"),
    ({"DETECTION_MIN_CONFIDENCE": 1.5}, r"DETECTION_MIN_CONFIDENCE must be a finite number in \[0.0, 1.0\]"),
    ({"DETECTION_NMS_THRESHOLD": float("nan")}, "DETECTION_NMS_THRESHOLD must be a finite number"),
    ({"MEAN_PIXEL": [1, 2]}, "MEAN_PIXEL must be a list of 3 numbers"),
    ({"BBOX_STD_DEV": [0.1, 0.1, 0.2, 0]}, r"BBOX_STD_DEV\[3\] must be a finite number in \(0.0"),
    ({"RPN_ANCHOR_SCALES": [32, 64]}, "RPN_ANCHOR_SCALES has 2 entries but BACKBONE_STRIDES has 5"),
    ({"BACKBONE_STRIDES": [4, 8, 8, 32, 64]}, "BACKBONE_STRIDES must be strictly increasing"),
    ({"BACKBONE": "resnet152"}, "BACKBONE must be resnet50 | resnet101"),
    ({"PRE_NMS_LIMIT": 0}, r"PRE_NMS_LIMIT must be an integer in \[1, "),
    ({"class_names": ["a"]}, "class names are given separately"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(MatterportConfigError, match=message) as e:
        MatterportConfig.from_overrides(override)
    assert "\n" not in str(e.value)


def test_round_trip_through_json():
    c = MatterportConfig.from_overrides({"IMAGE_MIN_DIM": 512, "IMAGE_RESIZE_MODE": "pad64", "NUM_CLASSES": 4,
                                         "MEAN_PIXEL": [1, 2, 3.5]}, class_names=["a", "b", "c"])
    assert MatterportConfig.from_dict(json.loads(c.to_json())) == c
    assert c.backbone_shapes((512, 768, 3)) == ((128, 192), (64, 96), (32, 48), (16, 24), (8, 12))


_values = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.floats(-1e3, 1e3), max_size=6),
                    st.lists(st.integers(-5, 2000), max_size=6), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                 max_size=2))


@given(st.dictionaries(st.sampled_from(FIELDS + ["NAME", "IMAGE_MIN_DIMS", "x"]), _values, max_size=4))
def test_any_override_is_a_valid_config_or_a_one_line_config_error(overrides):
    try:
        c = MatterportConfig.from_overrides(overrides)
    except MatterportConfigError as e:
        assert "\n" not in str(e) and len(str(e)) < 600      # the longest: "unknown ...; known: <24 names>"
        return
    assert MatterportConfig.from_dict(json.loads(c.to_json())) == c          # valid configs survive JSON
    assert c.IMAGE_MAX_DIM % 64 == 0 and len(c.RPN_ANCHOR_SCALES) == len(c.BACKBONE_STRIDES)
    assert all(math.isfinite(v) for v in c.MEAN_PIXEL + c.BBOX_STD_DEV + c.RPN_BBOX_STD_DEV)
