"""`minimaskrcnn.load("model.h5", config=..., class_names=...)` and `--weights model.h5 --config ...`: the weights
side of the matterport family (converted once into the cache, config and class names applied on every load).

The network itself is tested in the other tests/matterport modules; here `load` must hand the network the config and
the Keras-named arrays the file holds (`read_matterport`), and bad configs must stop it with one line.
"""
import json
import os

import numpy as np
import pytest

import matterport_cases
import minimaskrcnn
from minimaskrcnn.cli.main import main as cli_main
from minimaskrcnn.weights import WeightsError, load_matterport_weights, resolve_weights, weights_family
from weights_convert.matterport_convert import read_matterport

@pytest.fixture(scope="module")
def h5():
    """The ResNet-50 / 4-class parity case's file (the one tests/weights_convert/test_keras_h5.py reads)."""
    return matterport_cases.reference("small_r50")["weights.h5"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMASKRCNN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_load_converts_once_and_applies_config_and_names(h5, home):
    model = minimaskrcnn.load(h5, config={"IMAGE_MIN_DIM": 512, "IMAGE_RESIZE_MODE": "pad64"},
                              class_names=["a", "b", "c"])
    assert callable(model.predict)
    assert (model.cfg.IMAGE_MIN_DIM, model.cfg.IMAGE_RESIZE_MODE, model.cfg.NUM_CLASSES) == (512, "pad64", 4)
    assert tuple(model.class_names) == ("BG", "a", "b", "c")
    converted = list((home / "converted").glob("*.npz"))
    assert len(converted) == 1 and weights_family(converted[0]) == "matterport"
    mtime = converted[0].stat().st_mtime_ns
    assert resolve_weights(h5) == converted[0]                              # the cached file, not made again
    cfg_default, _ = load_matterport_weights(h5)                             # with other (no) overrides
    assert converted[0].stat().st_mtime_ns == mtime and cfg_default.IMAGE_MIN_DIM == 800
    cfg, arrays = read_matterport(converted[0])
    _, direct = read_matterport(h5)
    assert all(arrays[k].tobytes() == direct[k].tobytes() for k in direct) and set(arrays) == set(direct)


def test_load_refuses_what_contradicts_the_file(h5, home):
    with pytest.raises(WeightsError, match="NUM_CLASSES 81 contradicts the weights file, which has NUM_CLASSES 4"):
        minimaskrcnn.load(h5, config={"NUM_CLASSES": 81})
    with pytest.raises(WeightsError, match="unknown matterport config attribute 'IMAGE_MIN_DIMS'"):
        minimaskrcnn.load(h5, config={"IMAGE_MIN_DIMS": 512})


def test_torchvision_weights_take_no_matterport_config(home):
    demo = os.path.join(os.path.dirname(minimaskrcnn.__file__), "demo", "data", "shapes_maskrcnn.npz")
    with pytest.raises(ValueError, match="config= and class_names= apply to matterport-family weights"):
        minimaskrcnn.load(demo, config={"IMAGE_MIN_DIM": 512})


def test_cli_config_options_reach_the_loader(h5, home, tmp_path, capsys):
    (tmp_path / "cfg.json").write_text(json.dumps({"IMAGE_MAX_DIM": 512, "NUM_CLASSES": 81}))
    image = tmp_path / "img.png"
    from PIL import Image
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    # the JSON file's NUM_CLASSES contradicts the weights: the run stops at loading, with one line and status 1
    status = cli_main(["segment", str(image), "-o", str(tmp_path / "out"), "--weights", str(h5),
                       "--config", "IMAGE_MIN_DIM=512", "--config", str(tmp_path / "cfg.json"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and "NUM_CLASSES 81 contradicts the weights file" in err and "\n" not in err
    status = cli_main(["segment", str(image), "-o", str(tmp_path / "out"), "--weights", str(h5),
                       "--config", "IMAGE_RESIZE_MODE=crop", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and "crop picks random crops and is for training only" in err
    status = cli_main(["segment", str(image), "-o", str(tmp_path / "out"), "--weights", str(h5),
                       "--class-names", "a,b", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and "2 class names given but the model has 4 classes" in err
    status = cli_main(["segment", str(image), "-o", str(tmp_path / "out"), "--weights", str(h5),
                       "--config", str(tmp_path / "missing.json"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "neither KEY=VALUE nor a readable JSON file" in err
