"""`MatterportConfig`: the inference-relevant attributes of matterport's `mrcnn.config.Config`, by their own names.

The field names are matterport's attribute names exactly (upper case), so a user's `class InferenceConfig(Config)`
translates key for key: `MatterportConfig.from_overrides({"IMAGE_MIN_DIM": 512, "NUM_CLASSES": 2})`. Every default
is matterport's (`mrcnn/config.py` of matterport/Mask_RCNN at commit 3deaec5, "mc" below), except where the weights
file decides (backbone depth, class count, layer widths: `from_overrides(..., facts=...)`). Sequences are tuples
(matterport uses lists and NumPy arrays) so that the config is hashable and immutable; the network casts to float32.

Only inference is described: training-only attributes (LEARNING_RATE, TRAIN_ROIS_PER_IMAGE, MASK_SHAPE, ...) and the
training-only resize mode "crop" are refused with a one-line error rather than silently ignored. The derived values
matterport computes in `Config.__init__` (IMAGE_SHAPE, IMAGE_META_SIZE) are properties.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from typing import ClassVar

# matterport's COCO class order: `class_names` of samples/demo_notebook_code.py (the demo.ipynb cells), 81 entries,
# index = the class id `mask_rcnn_coco.h5` predicts (not the COCO category id: matterport renumbers them densely).
MATTERPORT_COCO_CLASS_NAMES = (
    "BG", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

BACKBONES = {"resnet50": 50, "resnet101": 101}      # mc: "Supported values are: resnet50, resnet101"
RESIZE_MODES = ("square", "pad64", "none")          # mc IMAGE_RESIZE_MODE; "crop" is "Can be used in training only"
MAX_IMAGE_DIM = 16384       # our bound: a 16384^2 RGB float32 image is 3 GB; larger values are typos, not configs
MAX_COUNT = 2 ** 31 - 1     # our bound on counts (TF's int32 tensor sizes in matterport)

# Attributes of mc's Config that inference does not read (training, bookkeeping, multi-GPU batching).
TRAINING_ONLY = frozenset((
    "NAME", "GPU_COUNT", "IMAGES_PER_GPU", "BATCH_SIZE", "STEPS_PER_EPOCH", "VALIDATION_STEPS",
    "COMPUTE_BACKBONE_SHAPE", "RPN_TRAIN_ANCHORS_PER_IMAGE", "POST_NMS_ROIS_TRAINING", "USE_MINI_MASK",
    "MINI_MASK_SHAPE", "IMAGE_CHANNEL_COUNT", "TRAIN_ROIS_PER_IMAGE", "ROI_POSITIVE_RATIO", "MASK_SHAPE",
    "MAX_GT_INSTANCES", "LEARNING_RATE", "LEARNING_MOMENTUM", "WEIGHT_DECAY", "LOSS_WEIGHTS", "USE_RPN_ROIS",
    "TRAIN_BN", "GRADIENT_CLIP_NORM", "IMAGE_SHAPE", "IMAGE_META_SIZE",
))

# Fields a weights file fixes, and the layer that shows it (checked in `from_overrides(facts=...)`).
# RPN_ANCHOR_RATIOS is fixed only in its length: rpn_class_raw has 2 * len(RPN_ANCHOR_RATIOS) filters.
FILE_FIXED = ("BACKBONE", "NUM_CLASSES", "TOP_DOWN_PYRAMID_SIZE", "FPN_CLASSIF_FC_LAYERS_SIZE", "POOL_SIZE",
              "ANCHORS_PER_LOCATION")


class MatterportConfigError(ValueError):
    """An invalid matterport configuration; the message is one line, fit for a command-line error."""


@dataclass(frozen=True)
class MatterportConfig:
    """Inference configuration of a matterport Mask R-CNN; defaults are mc's (module docstring)."""

    BACKBONE: str = "resnet101"                          # mc; weights decide (res4 block count)
    BACKBONE_STRIDES: tuple = (4, 8, 16, 32, 64)         # mc; strides of P2..P6
    NUM_CLASSES: int = 1                                 # mc ("Override in sub-classes"); weights decide
    IMAGE_RESIZE_MODE: str = "square"                    # mc
    IMAGE_MIN_DIM: int | None = 800                      # mc; None or 0: no up-scaling (utils.resize_image `if min_dim`)
    IMAGE_MAX_DIM: int = 1024                            # mc
    IMAGE_MIN_SCALE: float = 0.0                         # mc (0: off)
    MEAN_PIXEL: tuple = (123.7, 116.8, 103.9)            # mc, RGB
    RPN_ANCHOR_SCALES: tuple = (32, 64, 128, 256, 512)   # mc, one per level, pixels
    RPN_ANCHOR_RATIOS: tuple = (0.5, 1.0, 2.0)           # mc, width / height
    RPN_ANCHOR_STRIDE: int = 1                           # mc
    RPN_NMS_THRESHOLD: float = 0.7                       # mc
    PRE_NMS_LIMIT: int = 6000                            # mc
    POST_NMS_ROIS_INFERENCE: int = 1000                  # mc
    RPN_BBOX_STD_DEV: tuple = (0.1, 0.1, 0.2, 0.2)       # mc, as (dy, dx, log dh, log dw)
    TOP_DOWN_PYRAMID_SIZE: int = 256                     # mc; weights decide (fpn_c5p5 filters)
    POOL_SIZE: int = 7                                   # mc; weights decide (mrcnn_class_conv1 kernel size)
    MASK_POOL_SIZE: int = 14                             # mc; mask head convs are 3x3 "same": weights do not fix it
    FPN_CLASSIF_FC_LAYERS_SIZE: int = 1024               # mc; weights decide (mrcnn_class_conv1 filters)
    BBOX_STD_DEV: tuple = (0.1, 0.1, 0.2, 0.2)           # mc
    DETECTION_MIN_CONFIDENCE: float = 0.7                # mc (0: no filtering, model.py `if config.DETECTION_MIN_CONFIDENCE`)
    DETECTION_NMS_THRESHOLD: float = 0.3                 # mc
    DETECTION_MAX_INSTANCES: int = 100                   # mc
    class_names: tuple = ("BG",)                         # ours: index 0 = background; not a matterport attribute

    IMAGE_CHANNEL_COUNT: ClassVar[int] = 3               # mc; RGB only ("Changing this requires other changes")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name)))
        if len(self.RPN_ANCHOR_SCALES) != len(self.BACKBONE_STRIDES):
            raise MatterportConfigError(
                f"RPN_ANCHOR_SCALES has {len(self.RPN_ANCHOR_SCALES)} entries but BACKBONE_STRIDES has "
                f"{len(self.BACKBONE_STRIDES)}: matterport pairs one anchor scale with each pyramid level")
        if self.IMAGE_RESIZE_MODE == "pad64" and (not self.IMAGE_MIN_DIM or self.IMAGE_MIN_DIM % 64):
            # utils.resize_image: `assert min_dim % 64 == 0` in pad64 mode (None fails there too)
            raise MatterportConfigError(f"IMAGE_RESIZE_MODE pad64 needs IMAGE_MIN_DIM a multiple of 64 (matterport "
                                        f"asserts it), got {self.IMAGE_MIN_DIM}")
        if len(self.class_names) != self.NUM_CLASSES:
            raise MatterportConfigError(f"class_names has {len(self.class_names)} entries but NUM_CLASSES is "
                                        f"{self.NUM_CLASSES} (index 0 = background)")

    # --- derived, as mc's Config.__init__ computes them (crop mode is refused, so IMAGE_SHAPE uses IMAGE_MAX_DIM) ---
    @property
    def IMAGE_SHAPE(self) -> tuple:
        return (self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM, self.IMAGE_CHANNEL_COUNT)

    @property
    def IMAGE_META_SIZE(self) -> int:
        return 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES     # mc: id, original shape, image shape, window, scale, classes

    @property
    def RESNET_DEPTH(self) -> int:
        return BACKBONES[self.BACKBONE]

    @property
    def ANCHORS_PER_LOCATION(self) -> int:
        return len(self.RPN_ANCHOR_RATIOS)               # model.py build_rpn_model(..., len(RPN_ANCHOR_RATIOS), ...)

    def backbone_shapes(self, image_shape) -> tuple:
        """((H, W) of P2..P6) for a molded image of shape (H, W[, C]): model.compute_backbone_shapes, ceil(H/s)."""
        h, w = int(image_shape[0]), int(image_shape[1])
        return tuple((math.ceil(h / s), math.ceil(w / s)) for s in self.BACKBONE_STRIDES)

    # --- construction ----------------------------------------------------------------------------------------------
    def replace(self, **changes) -> "MatterportConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d) -> "MatterportConfig":
        """Every field as `to_dict` wrote it (e.g. from `.npz` metadata); unknown keys are an error."""
        if not isinstance(d, dict):
            raise MatterportConfigError(f"a matterport config must be a JSON object, got {type(d).__name__}")
        _check_keys(d, allow_class_names=True)
        return cls(**d)

    @classmethod
    def from_overrides(cls, overrides=None, *, facts=None, evidence=None, class_names=None) -> "MatterportConfig":
        """matterport's defaults, with what the weights show (`facts`) and the user's `overrides` on top.

        overrides    {matterport attribute name: value}, e.g. {"IMAGE_MIN_DIM": 512}; unknown names, wrong types and
                     out-of-range values are a `MatterportConfigError` naming the attribute
        facts        {name in FILE_FIXED: value} read from the weights file; an override that contradicts one is an
                     error naming both values (`evidence[name]` says where the file shows it)
        class_names  names with or without the background at index 0 (NUM_CLASSES or NUM_CLASSES - 1 of them);
                     default: matterport's COCO names for 81 classes, else "BG", "class_1", ...
        """
        overrides = dict(overrides or {})
        facts = dict(facts or {})
        evidence = dict(evidence or {})
        _check_keys(overrides, allow_class_names=False)
        bad = set(facts) - set(FILE_FIXED)
        if bad:
            raise MatterportConfigError(f"not a weights fact: {', '.join(sorted(bad))}")
        values = {k: v for k, v in facts.items() if k != "ANCHORS_PER_LOCATION"}
        for name, fact in values.items():
            if name in overrides:
                given = _check(name, overrides[name])
                if given != _check(name, fact):
                    raise MatterportConfigError(_contradiction(name, given, fact, evidence))
        merged = {**values, **overrides}
        num_classes = _check("NUM_CLASSES", merged.get("NUM_CLASSES", cls.NUM_CLASSES))
        merged["class_names"] = _class_names(class_names, num_classes)
        config = cls(**merged)
        if "ANCHORS_PER_LOCATION" in facts and config.ANCHORS_PER_LOCATION != facts["ANCHORS_PER_LOCATION"]:
            raise MatterportConfigError(_contradiction("RPN_ANCHOR_RATIOS", config.RPN_ANCHOR_RATIOS,
                                                       facts["ANCHORS_PER_LOCATION"], evidence,
                                                       what="anchors per location"))
        return config


def default_class_names(num_classes: int) -> tuple:
    """matterport's COCO names for 81 classes, else ("BG", "class_1", ..., f"class_{num_classes - 1}")."""
    if num_classes == len(MATTERPORT_COCO_CLASS_NAMES):
        return MATTERPORT_COCO_CLASS_NAMES
    return ("BG",) + tuple(f"class_{i}" for i in range(1, num_classes))


def _class_names(names, num_classes):
    if names is None:
        return default_class_names(num_classes)
    if isinstance(names, str) or not hasattr(names, "__len__"):
        raise MatterportConfigError(f"class_names must be a list of names, got {type(names).__name__}")
    names = tuple(str(n) for n in names)
    if len(names) == num_classes - 1:
        return ("BG",) + names
    if len(names) != num_classes:
        raise MatterportConfigError(f"{len(names)} class names given but the model has {num_classes} classes: give "
                                    f"{num_classes - 1} (without the background) or {num_classes} (with it, first)")
    return names


def _contradiction(name, given, fact, evidence, what=None):
    where = f" ({evidence[name]})" if name in evidence else ""
    shown = f"{fact} {what}" if what else f"{name} {_show(fact)}"
    return f"{name} {_show(given)} contradicts the weights file, which has {shown}{where}"


def _show(v):
    return json.dumps(list(v) if isinstance(v, tuple) else v)


def _check_keys(d, *, allow_class_names):
    names = [f.name for f in dataclasses.fields(MatterportConfig) if allow_class_names or f.name != "class_names"]
    for key in d:
        if key in names:
            continue
        if not isinstance(key, str):
            raise MatterportConfigError(f"config keys are matterport attribute names (strings), got {key!r:.40}")
        if key in TRAINING_ONLY:
            raise MatterportConfigError(f"{key} is a matterport Config attribute that inference does not use "
                                        f"(training or bookkeeping); leave it out")
        if key == "class_names":
            raise MatterportConfigError("class names are given separately (class_names= / --class-names), not in "
                                        "the config")
        close = difflib.get_close_matches(key.upper(), names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(names)}"
        raise MatterportConfigError(f"unknown matterport config attribute {key[:60]!r}{hint}")


# --- per-field validation: name -> checker(value) -> normalised value, or raise ------------------------------------
def _fail(name, expected, value):
    raise MatterportConfigError(f"{name} must be {expected}, got {_short(value)}")


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(name, v, lo=1, hi=MAX_COUNT, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) and not (hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0
                                                               and v.dtype.kind in "iu"):
        _fail(name, f"an integer in [{lo}, {hi}]" + (" or null" if allow_none else ""), v)
    v = int(v)
    if not lo <= v <= hi:
        _fail(name, f"an integer in [{lo}, {hi}]", v)
    return v


def _float(name, v, lo=0.0, hi=math.inf, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not (hasattr(v, "dtype") and
                                                                        getattr(v, "ndim", 1) == 0):
        _fail(name, "a number", v)
    try:
        v = float(v)
    except (TypeError, ValueError):
        _fail(name, "a number", v)
    if not (math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi):
        _fail(name, f"a finite number in {'(' if lo_open else '['}{lo}, {hi}]", v)
    return v


def _seq(name, v, item, length=None, min_len=1, max_len=64):
    if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__len__") or not hasattr(v, "__iter__"):
        _fail(name, f"a list of {length or 'some'} numbers", v)
    if getattr(v, "ndim", 1) != 1:
        _fail(name, "a flat list of numbers", v)
    n = len(v)
    if (length is not None and n != length) or not min_len <= n <= max_len:
        _fail(name, f"a list of {length if length is not None else f'{min_len} to {max_len}'} numbers", v)
    return tuple(item(f"{name}[{i}]", x) for i, x in enumerate(v))


def _choice(name, v, options, refused=None):
    if not isinstance(v, str) or v not in options:
        if refused and isinstance(v, str) and v in refused:     # a list or dict value is not hashable
            raise MatterportConfigError(refused[v])
        _fail(name, " | ".join(options), v)
    return v


def _positive(name, x):
    return _float(name, x, lo=0.0, lo_open=True)


_FIELD_CHECKS = {
    "BACKBONE": lambda n, v: _choice(n, v, tuple(BACKBONES), {}),
    "BACKBONE_STRIDES": lambda n, v: _strictly_increasing(n, _seq(n, v, _int)),
    "NUM_CLASSES": lambda n, v: _int(n, v, 1, 100000),
    "IMAGE_RESIZE_MODE": lambda n, v: _choice(n, v, RESIZE_MODES, {
        "crop": "IMAGE_RESIZE_MODE crop picks random crops and is for training only; use square, pad64 or none"}),
    "IMAGE_MIN_DIM": lambda n, v: _int(n, v, 0, MAX_IMAGE_DIM, allow_none=True),
    "IMAGE_MAX_DIM": lambda n, v: _multiple_of_64(n, _int(n, v, 64, MAX_IMAGE_DIM)),
    "IMAGE_MIN_SCALE": lambda n, v: _float(n, v, 0.0, 1000.0),
    "MEAN_PIXEL": lambda n, v: _seq(n, v, lambda m, x: _float(m, x, -1e6, 1e6), length=3),
    "RPN_ANCHOR_SCALES": lambda n, v: _seq(n, v, lambda m, x: _float(m, x, 0.0, 1e6, lo_open=True)),
    "RPN_ANCHOR_RATIOS": lambda n, v: _seq(n, v, lambda m, x: _float(m, x, 0.0, 1e6, lo_open=True)),
    "RPN_ANCHOR_STRIDE": lambda n, v: _int(n, v, 1, 64),
    "RPN_NMS_THRESHOLD": lambda n, v: _float(n, v, 0.0, 1.0),
    "PRE_NMS_LIMIT": lambda n, v: _int(n, v),
    "POST_NMS_ROIS_INFERENCE": lambda n, v: _int(n, v),
    "RPN_BBOX_STD_DEV": lambda n, v: _seq(n, v, _positive, length=4),
    "TOP_DOWN_PYRAMID_SIZE": lambda n, v: _int(n, v, 1, 65536),
    "POOL_SIZE": lambda n, v: _int(n, v, 1, 1024),
    "MASK_POOL_SIZE": lambda n, v: _int(n, v, 1, 1024),
    "FPN_CLASSIF_FC_LAYERS_SIZE": lambda n, v: _int(n, v, 1, 65536),
    "BBOX_STD_DEV": lambda n, v: _seq(n, v, _positive, length=4),
    "DETECTION_MIN_CONFIDENCE": lambda n, v: _float(n, v, 0.0, 1.0),
    "DETECTION_NMS_THRESHOLD": lambda n, v: _float(n, v, 0.0, 1.0),
    "DETECTION_MAX_INSTANCES": lambda n, v: _int(n, v, 1, 100000),
    "class_names": lambda n, v: _names(n, v),
}


def _check(name, value):
    return _FIELD_CHECKS[name](name, value)


def _strictly_increasing(name, v):
    if any(b <= a for a, b in zip(v, v[1:])):
        _fail(name, "strictly increasing", list(v))
    return v


def _multiple_of_64(name, v):
    if v % 64:
        # model.MaskRCNN.build: "Image size must be dividable by 2 at least 6 times" (IMAGE_SHAPE = IMAGE_MAX_DIM)
        _fail(name, "a multiple of 64 (matterport refuses to build otherwise)", v)
    return v


def _names(name, v):
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        _fail(name, "a list of strings", v)
    v = tuple(v)
    if not all(isinstance(x, str) for x in v):
        _fail(name, "a list of strings", v)
    return v
