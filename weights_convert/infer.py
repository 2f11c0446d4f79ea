"""The `Config` of a state dict: every architectural choice its keys and shapes determine (the inverse of `layout`).

Shape glossary: `C`: FPN width; `R`: box-head representation size; `r`: box RoI size; `K`: classes with background.
Read from the tensors: ResNet depth (block type and blocks per stage), returned stages (input channels of the FPN's
lateral convs), FPN width and norm, RPN conv depth, box head (two FC or conv+FC; R; r from the FC input C*r*r),
masks or not, mask head widths and norm, K. Not determined by weights, so taken from the base Config: anchor sizes
and ratios (their count per location is checked against the RPN by `layout.check_state_dict`), thresholds, transform.
"""
from __future__ import annotations

import math

import numpy as np

from minimaskrcnn.config import COCO_CATEGORIES, Config

from .errors import LayoutError
from .layout import EXPANSION, RESNET_BLOCKS, STEM_CHANNELS


def default_class_names(num_classes: int) -> tuple:
    """torchvision's COCO names for 91 classes, else '__background__', 'class_1', ..., 'class_{K-1}'."""
    if num_classes == len(COCO_CATEGORIES):
        return COCO_CATEGORIES
    return ("__background__",) + tuple(f"class_{i}" for i in range(1, num_classes))


def _count(shapes, pattern):
    """How many of pattern.format(0), pattern.format(1), ... are keys, counting until the first absent one."""
    n = 0
    while pattern.format(n) in shapes:
        n += 1
    return n


def _dim(shapes, key, axis):
    shape = shapes.get(key)
    return shape[axis] if shape is not None and len(shape) > axis else None


def infer_config(state_dict, base: Config | None = None) -> Config:
    """The Config whose layout `state_dict` (already renamed, see `convert.legacy_renames`) has.

    Fields the tensors determine are read from their keys and shapes; the rest (thresholds, anchor sizes, transform)
    come from `base` (default: torchvision's). Inference is best effort: `check_state_dict` then reports, by name,
    every key that does not fit.
    """
    base = base or Config()
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    require_detection(shapes)
    changes = {}

    bottleneck = "backbone.body.layer1.0.conv3.weight" in shapes
    kind = "bottleneck" if bottleneck else "basic"
    counts = []
    for layer in range(1, 5):
        n = _count(shapes, f"backbone.body.layer{layer}.{{}}.conv1.weight")
        if n == 0:
            break
        counts.append(n)
    if counts:
        depths = [d for d, (k, blocks) in RESNET_BLOCKS.items() if k == kind and blocks[:len(counts)] == tuple(counts)]
        if not depths:
            known = "; ".join(f"ResNet-{d}: {k} {b}" for d, (k, b) in RESNET_BLOCKS.items())
            raise LayoutError(f"backbone.body has {kind} blocks per stage {tuple(counts)}, which is no supported "
                              f"torchvision ResNet ({known})")
        changes["resnet_depth"] = depths[0]

    n_fpn = _count(shapes, "backbone.fpn.inner_blocks.{}.0.weight")
    if n_fpn:
        unit = STEM_CHANNELS * EXPANSION[kind]
        layers = []
        for i in range(n_fpn):
            c_in = _dim(shapes, f"backbone.fpn.inner_blocks.{i}.0.weight", 1) or 0
            ratio = c_in // unit
            if c_in % unit or ratio < 1 or ratio & (ratio - 1) or ratio > 8:
                raise LayoutError(f"backbone.fpn.inner_blocks.{i} takes {c_in} input channels, which no stage of a "
                                  f"{kind}-block ResNet produces (64 * 2**(layer-1) * {EXPANSION[kind]})")
            layers.append(ratio.bit_length())
        if layers != sorted(set(layers)):
            raise LayoutError(f"backbone.fpn.inner_blocks read ResNet stages {layers}, which are not increasing")
        changes["returned_layers"] = tuple(layers)
        if _dim(shapes, "backbone.fpn.inner_blocks.0.0.weight", 0):
            changes["fpn_channels"] = _dim(shapes, "backbone.fpn.inner_blocks.0.0.weight", 0)
    elif _dim(shapes, "rpn.head.cls_logits.weight", 1):      # FPN keys absent or misnamed: width from the RPN
        changes["fpn_channels"] = _dim(shapes, "rpn.head.cls_logits.weight", 1)
    changes["fpn_norm"] = "backbone.fpn.inner_blocks.0.1.weight" in shapes

    rpn_depth = _count(shapes, "rpn.head.conv.{}.0.weight")
    if rpn_depth:
        changes["rpn_conv_depth"] = rpn_depth

    if "roi_heads.box_head.fc6.weight" in shapes:
        changes["box_head_convs"], fc = 0, "roi_heads.box_head.fc6.weight"
    else:
        n = _count(shapes, "roi_heads.box_head.{}.0.weight")
        changes["box_head_convs"], fc = n, f"roi_heads.box_head.{n + 1}.weight"
    rep, flat = _dim(shapes, fc, 0), _dim(shapes, fc, 1)
    if rep is not None:
        changes["representation_size"] = rep
        c = changes.get("fpn_channels", base.fpn_channels)
        r = math.isqrt(flat // c) if flat and c else 0
        if r and c * r * r == flat:
            changes["box_roi_size"] = r

    changes["masks"] = any(k.startswith(("roi_heads.mask_head.", "roi_heads.mask_predictor.")) for k in shapes)
    n_mask = _count(shapes, "roi_heads.mask_head.{}.0.weight")
    if n_mask:
        changes["mask_head_layers"] = tuple(_dim(shapes, f"roi_heads.mask_head.{i}.0.weight", 0)
                                            for i in range(n_mask))
        changes["mask_head_norm"] = "roi_heads.mask_head.0.1.weight" in shapes

    num_classes = _dim(shapes, "roi_heads.box_predictor.cls_score.weight", 0)
    if num_classes is None and _dim(shapes, "roi_heads.box_predictor.bbox_pred.weight", 0):
        num_classes = _dim(shapes, "roi_heads.box_predictor.bbox_pred.weight", 0) // 4
    if num_classes and num_classes != base.num_classes:
        changes["num_classes"], changes["class_names"] = num_classes, default_class_names(num_classes)
    return base.replace(**changes)


def require_detection(keys):
    """Refuse, with a message saying what the file looks like, a state dict that is no detection model at all."""
    keys = list(keys)
    if any(k.startswith(("backbone.body.", "backbone.fpn.", "rpn.", "roi_heads.")) for k in keys):
        return
    names = set(keys)
    if "conv1.weight" in names and "fc.weight" in names:
        what = "an image-classification ResNet (conv1, layer1-4, fc)"
    elif "conv1.weight" in names and "layer1.0.conv1.weight" in names:
        what = "a bare ResNet backbone"
    elif any(k.startswith("module.backbone.") for k in keys):
        what = "a DataParallel-wrapped model (keys start with 'module.'; strip that prefix)"
    else:
        what = f"something else (first keys: {', '.join(keys[:3]) or 'none'})"
    raise LayoutError(f"not a Mask R-CNN / Faster R-CNN checkpoint: the state dict is {what}; minimaskrcnn needs a "
                      f"torchvision detection model's state dict with backbone.body, backbone.fpn, rpn and "
                      f"roi_heads keys")
