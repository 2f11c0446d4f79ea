"""matterport weights files -> (MatterportConfig, {Keras weight name: float32 array}); nothing of the network.

    config, arrays = read_matterport("mask_rcnn_coco.h5", config={"DETECTION_MIN_CONFIDENCE": 0.5})
    arrays["res2a_branch2a/kernel:0"]      # (1, 1, 64, 64) HWIO float32, exactly as Keras' layer.get_weights()

Accepted: matterport's Keras `.h5` (save_weights or a full-model save), pytorch-mask-rcnn's `.pth`, and a `.npz`
converted from either by `weights-convert`. What the weights fix (backbone depth, class count, FPN / head widths,
pooling size, anchors per location) is inferred; `config` overrides matterport's defaults for the rest, and an
override that contradicts the file is an error naming both values. `class_names` (with or without "BG") replace the
default names (matterport's COCO order for 81 classes, else "class_1", ...). Errors are one-line `CheckpointError`s.
The network's loader (BatchNorm folding etc.) is `minimaskrcnn.matterport.model.load_matterport(config, arrays)`.
"""
from __future__ import annotations

from weights_convert.matterport_convert import make_config, read_matterport_npz, read_source, sniff


def read_matterport(path, config=None, class_names=None):
    """(MatterportConfig, {"<layer>/<weight>": np.ndarray float32}) of a matterport weights file (module docstring)."""
    if sniff(path) == "npz":
        cfg, arrays, _ = read_matterport_npz(path, overrides=config, class_names=class_names)
        return cfg, arrays
    arrays, facts, evidence, _ = read_source(path)
    return make_config(facts, evidence, config, class_names), arrays
