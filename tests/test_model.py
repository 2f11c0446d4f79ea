"""minimaskrcnn/model.py's `predict`: what its `trace` argument returns (the stages themselves: tests/stages)."""
import numpy as np
import pytest

import minimaskrcnn
from minimaskrcnn.demo.shapes import make_sample, shipped_model_path
from minimaskrcnn.trace import Trace

STAGES = ["transform", "backbone", "fpn", "rpn", "box_branch", "mask_branch", "postprocess"]


@pytest.fixture(scope="module")
def model_and_image():
    image = make_sample(7).image
    return minimaskrcnn.load(shipped_model_path()), image


def test_a_timings_only_trace_is_filled_without_arrays_and_changes_nothing(model_and_image):
    model, image = model_and_image
    plain = model.predict(image)
    full_detections, full = model.predict(image, trace=True)
    timings_only = Trace(keep_arrays=False)
    detections, returned = model.predict(image, trace=timings_only)
    assert returned is timings_only and len(timings_only) == 0 and list(timings_only.timings) == STAGES
    assert list(full.timings) == STAGES and {"P2", "proposals", "masks"} <= set(full)
    assert len(plain) > 0
    for d in (detections, full_detections):
        np.testing.assert_array_equal(d.boxes, plain.boxes)
        np.testing.assert_array_equal(d.masks, plain.masks)


def test_one_trace_for_a_list_of_images_is_refused(model_and_image):
    model, image = model_and_image
    with pytest.raises(ValueError, match="a Trace records one image"):
        model.predict([image, image], trace=Trace(keep_arrays=False))
