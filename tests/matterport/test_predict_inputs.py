"""`MatterportMaskRCNN.predict` takes what `MaskRCNN.predict` takes: a path, a PIL image, a uint8 array, a float array
in [0, 1] (as round(255 x)), or a list of these; the results equal predicting the uint8 array."""
import numpy as np
import pytest
from PIL import Image

import matterport_cases
import minimaskrcnn
from conftest import IMAGES


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    h5 = matterport_cases.reference("small_r50")["weights.h5"]      # the file of tests/matterport/test_load.py
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIMASKRCNN_HOME", str(tmp_path_factory.mktemp("home")))
        return minimaskrcnn.load(h5, config={"IMAGE_MIN_DIM": 128, "IMAGE_MAX_DIM": 192,
                                             "DETECTION_MIN_CONFIDENCE": 0.0})


def same(a, b):
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("boxes", "labels", "scores", "masks"))


def test_paths_pil_images_float_arrays_and_lists(model):
    path = IMAGES / "chelsea.png"
    rgb = np.asarray(Image.open(path).convert("RGB"))                       # (H, W, 3) uint8
    ref = model.predict(rgb)
    assert ref.masks.shape == (len(ref),) + rgb.shape[:2]
    assert same(model.predict(str(path)), ref) and same(model.predict(Image.open(path)), ref)
    assert same(model.predict(rgb.astype(np.float32) / 255), ref)
    both = model.predict([path, rgb])
    assert isinstance(both, list) and len(both) == 2 and all(same(d, ref) for d in both)


def test_a_timings_only_trace_is_filled_without_arrays_as_in_the_torchvision_family(model):
    from minimaskrcnn.trace import Trace
    rgb = np.asarray(Image.open(IMAGES / "chelsea.png").convert("RGB"))
    ref, full = model.predict(rgb, trace=True)
    timings_only = Trace(keep_arrays=False)
    det, returned = model.predict(rgb, trace=timings_only)
    assert returned is timings_only and len(timings_only) == 0 and list(timings_only.timings) == list(full.timings)
    assert {"P2", "mrcnn_mask"} <= set(full) and same(det, ref) and same(model.predict(rgb), ref)
    with pytest.raises(ValueError, match="a Trace records one image"):
        model.predict([rgb, rgb], trace=timings_only)
