"""The matterport family in `weights_convert`: `.h5` / pytorch-mask-rcnn `.pth` -> (MatterportConfig, arrays) -> `.npz`.

    read_matterport("mask_rcnn_coco.h5", config={"DETECTION_MIN_CONFIDENCE": 0.5})   (MatterportConfig, arrays)
    prepare_matterport("mask_rcnn_coco.h5")          Converted(config, {"conv1/kernel:0": ..., ...}, metadata)
    read_matterport_npz("mask_rcnn_coco.npz")        (MatterportConfig, arrays, metadata) of a converted file

The `.npz` is the format of `npz.py` with keys = Keras names and metadata "family": "matterport", the
MatterportConfig as a dict, class names, bn_eps 1e-3 (mrcnn/model.py's BatchNorm is Keras' BatchNormalization, default
epsilon=1e-3; torchvision's is 1e-5), and which layout the source had. `sniff` says what a file is, so that a
TensorFlow checkpoint or graph given by mistake gets a one-line error that says what was expected.

`read_matterport` is the interface the network loads from (`minimaskrcnn.matterport.model.load_matterport(config,
arrays)`); it lives here, not under minimaskrcnn/matterport/, because it needs this package, which needs
MatterportConfig: under matterport/ the two sub-packages would import each other (tests/test_layering.py).
"""
from __future__ import annotations

import hashlib
import os
import re

import numpy as np

from minimaskrcnn._version import __version__
from minimaskrcnn.matterport.config import MatterportConfig, MatterportConfigError

from .errors import CheckpointError, WeightsFileError
from .keras_h5 import hdf5_offset, read_keras_h5
from .matterport_layout import check_layout, infer_facts
from .npz import FORMAT, FORMAT_VERSION, METADATA_KEY, read_npz_metadata
from .pytorch_mask_rcnn import is_pytorch_mask_rcnn, to_keras

FAMILY = "matterport"
BN_EPS = 1e-3               # Keras BatchNormalization default epsilon, used by mrcnn/model.py's BatchNorm
_TF_CHECKPOINT = re.compile(r"(\.index|\.meta|\.ckpt|\.data-\d{5}-of-\d{5})\Z", re.IGNORECASE)
EXPECTED = ("expected matterport's Keras .h5 (keras_model.save_weights / the mask_rcnn_coco.h5 layout) or a "
            "pytorch-mask-rcnn .pth")


class Converted:
    def __init__(self, config, arrays, metadata):
        self.config, self.arrays, self.metadata = config, arrays, metadata


def sniff(path) -> str:
    """"hdf5" | "zip" | "npz" | "other" for a file, or a one-line error for TensorFlow's own formats."""
    name = os.path.basename(os.fspath(path))
    if _TF_CHECKPOINT.search(name) or name == "checkpoint":
        raise WeightsFileError(f"{name} is a TensorFlow checkpoint (.index/.data-*/.ckpt/.meta), not Keras weights; "
                               f"{EXPECTED} — in matterport, model.keras_model.save_weights('model.h5') writes one")
    if name.lower().endswith(".pb") or os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise WeightsFileError(f"{name} is a TensorFlow graph or SavedModel, not Keras weights; {EXPECTED}")
    with open(path, "rb") as f:
        head = f.read(4096)
    if hdf5_offset(head) is not None:
        return "hdf5"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz" if name.lower().endswith(".npz") else "zip"
    return "other"


def read_source(path):
    """(arrays, facts, evidence, info) of a matterport `.h5` or a pytorch-mask-rcnn `.pth`."""
    name = os.path.basename(os.fspath(path))
    if sniff(path) == "hdf5":
        return read_keras_h5(path)
    from .reader import read_state_dict
    try:
        state_dict = read_state_dict(os.fspath(path))
    except CheckpointError as e:
        raise WeightsFileError(f"{name} is neither HDF5 nor a readable PyTorch checkpoint ({e}); {EXPECTED}") from None
    return from_state_dict(state_dict, name)


def from_state_dict(state_dict, name):
    if not is_pytorch_mask_rcnn(state_dict):
        raise WeightsFileError(f"{name} is a PyTorch checkpoint but not pytorch-mask-rcnn's (no fpn.C1.0.weight, "
                               f"rpn.conv_shared.weight); {EXPECTED}")
    arrays = to_keras(state_dict, name)
    facts, evidence = _validated(arrays, name)
    return arrays, facts, evidence, {"layout": "pytorch-mask-rcnn", "keras_version": None, "backend": None}


def _validated(arrays, name):
    shapes = {k: v.shape for k, v in arrays.items()}
    facts, evidence = infer_facts(shapes, name)
    check_layout(shapes, facts, name)
    return facts, evidence


def make_config(facts, evidence, overrides=None, class_names=None, base=None) -> MatterportConfig:
    """matterport's defaults (or `base`, a converted file's config), the file's facts, then the user's overrides."""
    start = dict(base or {})
    start.pop("class_names", None)
    names = class_names if class_names is not None else (base or {}).get("class_names")
    try:
        return MatterportConfig.from_overrides({**start, **(overrides or {})}, facts=facts, evidence=evidence,
                                               class_names=names)
    except MatterportConfigError as e:
        raise WeightsFileError(str(e)) from None


def prepare_matterport(src, *, overrides=None, class_names=None, source_name=None, sha256=None) -> Converted:
    """Read, validate and configure a matterport `.h5` / `.pth`; write nothing."""
    source_name = source_name or os.path.basename(os.fspath(src))
    arrays, facts, evidence, info = read_source(src)
    return _converted(arrays, facts, evidence, info, overrides, class_names, source_name,
                      sha256 or _sha256(src))


def _converted(arrays, facts, evidence, info, overrides, class_names, source_name, sha256):
    config = make_config(facts, evidence, overrides, class_names)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "family": FAMILY,
        "architecture": f"matterport_maskrcnn_{config.BACKBONE}",
        "config": config.to_dict(), "num_classes": config.NUM_CLASSES, "class_names": list(config.class_names),
        "bn_eps": BN_EPS, "source_name": source_name, "source_sha256": sha256,
        "source_layout": info.get("layout"), "keras_version": info.get("keras_version"),
        "converter_version": __version__,
    }
    return Converted(config, arrays, metadata)


def prepare_from_state_dict(state_dict, *, sha256, source_name, overrides=None, class_names=None) -> Converted:
    """The same for a pytorch-mask-rcnn state dict already read (convert.prepare's hook)."""
    arrays, facts, evidence, info = from_state_dict(state_dict, source_name)
    return _converted(arrays, facts, evidence, info, overrides, class_names, source_name, sha256)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_matterport_npz(meta: dict) -> bool:
    return meta.get("family") == FAMILY


def read_matterport_npz(path, *, overrides=None, class_names=None):
    """(MatterportConfig, arrays, metadata) of a converted matterport `.npz`, validated like the source was."""
    name = os.path.basename(os.fspath(path))
    meta = read_npz_metadata(path)
    if not is_matterport_npz(meta):
        raise WeightsFileError(f"{name} holds torchvision-family weights, not matterport's")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != METADATA_KEY}
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise WeightsFileError(f"{name}: unreadable array: {e}") from None
    if any(a.dtype != np.float32 for a in arrays.values()):
        raise WeightsFileError(f"{name}: matterport weights are stored as float32")
    facts, evidence = _validated(arrays, name)
    if not isinstance(meta.get("config"), dict):
        raise WeightsFileError(f"{name}: metadata has no config")
    config = make_config(facts, evidence, overrides, class_names, base=meta["config"])
    return config, arrays, meta


def read_matterport(path, config=None, class_names=None):
    """(MatterportConfig, {"<layer>/<weight>": float32 array}) of a matterport `.h5`, pytorch-mask-rcnn `.pth` or a
    `.npz` converted from either. What the weights fix (backbone depth, class count, FPN / head widths, pooling size,
    anchors per location) is inferred; `config` ({matterport attribute: value}) overrides matterport's defaults for
    the rest, and an override that contradicts the file is an error naming both values; `class_names` (with or
    without "BG") replace the default names (matterport's COCO order for 81 classes, else "class_1", ...)."""
    if sniff(path) == "npz":
        cfg, arrays, _ = read_matterport_npz(path, overrides=config, class_names=class_names)
        return cfg, arrays
    arrays, facts, evidence, _ = read_source(path)
    return make_config(facts, evidence, config, class_names), arrays
