"""pytorch-mask-rcnn `.pth` files (multimodallearning/pytorch-mask-rcnn) -> the Keras-named arrays of matterport.

pytorch-mask-rcnn's `mask_rcnn_coco.pth` is matterport's `mask_rcnn_coco.h5` renamed and transposed by its
`convert_from_keras.py`; its `model.py` names the modules. Key correspondence (torch module path -> Keras layer):

    fpn.C1.0 / fpn.C1.1                        conv1 / bn_conv1
    fpn.C{s}.{i}.conv{j} / .bn{j}              res{s}{letter i}_branch2{a,b,c}[j-1] / bn{s}{letter i}_branch2{...}
    fpn.C{s}.0.downsample.0 / .downsample.1    res{s}a_branch1 / bn{s}a_branch1
    fpn.P{s}_conv1 / fpn.P{s}_conv2.1          fpn_c{s}p{s} / fpn_p{s}
    rpn.conv_shared / conv_class / conv_bbox   rpn_conv_shared / rpn_class_raw / rpn_bbox_pred
    classifier.conv1, bn1, conv2, bn2          mrcnn_class_conv1, mrcnn_class_bn1, ...
    classifier.linear_class / linear_bbox      mrcnn_class_logits / mrcnn_bbox_fc
    mask.conv{1..4} / mask.bn{1..4}            mrcnn_mask_conv{1..4} / mrcnn_mask_bn{1..4}
    mask.deconv / mask.conv5                   mrcnn_mask_deconv / mrcnn_mask

Parameters: weight -> kernel:0 (or gamma:0 of a BatchNorm), bias -> bias:0 (beta:0), running_mean -> moving_mean:0,
running_var -> moving_variance:0; num_batches_tracked (torch >= 0.4.1 BatchNorm counter) is dropped. The converter
transposes 4-D kernels by (3, 2, 0, 1) (HWIO -> OIHW; a Keras deconv kernel (kh, kw, out, in) -> torch's
(in, out, kh, kw)) and 2-D ones by (1, 0); the inverse here is (2, 3, 1, 0) and (1, 0), so a file made from an `.h5`
reads back to the same bytes.
"""
from __future__ import annotations

import re

import numpy as np

from .errors import LayoutError

_BLOCK = re.compile(r"fpn\.C([2-5])\.(\d{1,2})\.(conv[1-3]|bn[1-3]|downsample\.[01])\Z")
_FIXED = {
    "fpn.C1.0": "conv1", "fpn.C1.1": "bn_conv1",
    "rpn.conv_shared": "rpn_conv_shared", "rpn.conv_class": "rpn_class_raw", "rpn.conv_bbox": "rpn_bbox_pred",
    "classifier.conv1": "mrcnn_class_conv1", "classifier.bn1": "mrcnn_class_bn1",
    "classifier.conv2": "mrcnn_class_conv2", "classifier.bn2": "mrcnn_class_bn2",
    "classifier.linear_class": "mrcnn_class_logits", "classifier.linear_bbox": "mrcnn_bbox_fc",
    "mask.deconv": "mrcnn_mask_deconv", "mask.conv5": "mrcnn_mask",
    **{f"fpn.P{s}_conv1": f"fpn_c{s}p{s}" for s in (2, 3, 4, 5)},
    **{f"fpn.P{s}_conv2.1": f"fpn_p{s}" for s in (2, 3, 4, 5)},
    **{f"mask.conv{i}": f"mrcnn_mask_conv{i}" for i in (1, 2, 3, 4)},
    **{f"mask.bn{i}": f"mrcnn_mask_bn{i}" for i in (1, 2, 3, 4)},
}
_CONV_PARAMS = {"weight": "kernel:0", "bias": "bias:0"}
_BN_PARAMS = {"weight": "gamma:0", "bias": "beta:0", "running_mean": "moving_mean:0",
              "running_var": "moving_variance:0"}
SIGNATURE_KEYS = ("fpn.C1.0.weight", "rpn.conv_shared.weight")     # keys no torchvision state dict has


def is_pytorch_mask_rcnn(keys) -> bool:
    keys = set(keys)
    return all(k in keys for k in SIGNATURE_KEYS)


def keras_layer(module: str):
    """The Keras layer name of a pytorch-mask-rcnn module path, or None."""
    if module in _FIXED:
        return _FIXED[module]
    m = _BLOCK.match(module)
    if m is None:
        return None
    stage, block, part = m.group(1), int(m.group(2)), m.group(3)
    if block > 25 or (part.startswith("downsample") and block != 0):
        return None
    letter = chr(ord("a") + block)
    if part.startswith("downsample"):
        return f"{'res' if part.endswith('0') else 'bn'}{stage}{letter}_branch1"
    kind, j = part[:-1], int(part[-1])
    return f"{'res' if kind == 'conv' else 'bn'}{stage}{letter}_branch2{'abc'[j - 1]}"


def _is_bn(layer: str) -> bool:
    return layer.startswith("bn") or "_bn" in layer


def to_keras(state_dict, what: str) -> dict:
    """{Keras key: array} from a pytorch-mask-rcnn state dict (kernels transposed back to Keras layouts)."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if param == "num_batches_tracked":
            continue
        layer = keras_layer(module)
        params = (_BN_PARAMS if _is_bn(layer) else _CONV_PARAMS) if layer else {}
        if param not in params:
            unknown.append(key)
            continue
        value = np.asarray(value)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)                    # OIHW -> HWIO (deconv: (in, out, h, w) -> HW,out,in)
        elif value.ndim == 2:
            value = value.T                                        # (out, in) -> (in, out)
        out[f"{layer}/{params[param]}"] = np.ascontiguousarray(value)
    if unknown:
        raise LayoutError(f"{what} has keys pytorch-mask-rcnn's model does not: {', '.join(unknown[:4])}"
                          f"{', ...' if len(unknown) > 4 else ''}", unexpected=unknown)
    return out
