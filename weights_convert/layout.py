"""The state-dict layout of a torchvision ResNet-FPN Mask / Faster R-CNN: keys and shapes from a `Config`.

Shape glossary: `C`: FPN width (`fpn_channels`); `A`: anchors per location (sizes per level x aspect ratios);
`K`: classes including background; `R`: box-head representation size; `r`: box RoI size (7).

`expected_layout(config)` is the one description of the layout: the converter validates against it
(`check_state_dict`), `read_npz` re-validates against it, and anyone building the network can walk it
(facts §2, §9; torchvision `models/resnet.py`, `ops/feature_pyramid_network.py`,
`models/detection/{rpn,faster_rcnn,mask_rcnn}.py`). `infer.py` goes the other way, state dict -> Config.
Batch-norm layers are listed without `num_batches_tracked` (FrozenBatchNorm2d has none; the converter drops plain
BatchNorm's).
"""
from __future__ import annotations


import numpy as np

from minimaskrcnn.config import (FASTERRCNN_RESNET50_FPN, FASTERRCNN_RESNET50_FPN_V2, MASKRCNN_RESNET50_FPN,
                                 MASKRCNN_RESNET50_FPN_V2, Config)

from .errors import LayoutError

BN_KEYS = ("weight", "bias", "running_mean", "running_var")
STEM_CHANNELS = 64              # torchvision resnet.py: conv1 3 -> 64, and stage widths 64 * 2**(layer-1)
MASK_DIM_REDUCED = 256          # torchvision mask_rcnn.py MaskRCNN.__init__: mask_dim_reduced = 256
# torchvision resnet.py builders: (block type, blocks per stage layer1..layer4)
RESNET_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
OFFICIAL_ARCHITECTURES = {
    "maskrcnn_resnet50_fpn": MASKRCNN_RESNET50_FPN,
    "fasterrcnn_resnet50_fpn": FASTERRCNN_RESNET50_FPN,
    "maskrcnn_resnet50_fpn_v2": MASKRCNN_RESNET50_FPN_V2,
    "fasterrcnn_resnet50_fpn_v2": FASTERRCNN_RESNET50_FPN_V2,
}


# --- Config -> layout ------------------------------------------------------------------------------------------------

def anchors_per_location(config: Config) -> int:
    """A: torchvision AnchorGenerator.num_anchors_per_location() = sizes per level x aspect ratios."""
    return len(config.anchor_sizes[0]) * len(config.aspect_ratios)


def fpn_in_channels(config: Config) -> list:
    """Channels of the ResNet stages fed to the FPN: 64 * 2**(layer-1) * expansion (backbone_utils.py)."""
    expansion = EXPANSION[_resnet_blocks(config)[0]]
    return [STEM_CHANNELS * 2 ** (layer - 1) * expansion for layer in config.returned_layers]


def expected_layout(config: Config) -> dict:
    """Every key of the state dict of `config`'s network, in torchvision's order, with its shape."""
    layout = {}
    _resnet_body(layout, config)
    _fpn(layout, config)
    _rpn_head(layout, config)
    _box_head(layout, config)
    if config.masks:
        _mask_head(layout, config)
    return layout


def _resnet_blocks(config):
    if config.resnet_depth not in RESNET_BLOCKS:
        raise ValueError(f"resnet_depth must be one of {sorted(RESNET_BLOCKS)}, got {config.resnet_depth}")
    return RESNET_BLOCKS[config.resnet_depth]


def _bn(layout, prefix, channels):
    for name in BN_KEYS:
        layout[f"{prefix}.{name}"] = (channels,)


def _conv_norm(layout, prefix, c_out, c_in, k, norm):
    """torchvision Conv2dNormActivation: conv `.0` (bias only without norm) then norm `.1`."""
    layout[f"{prefix}.0.weight"] = (c_out, c_in, k, k)
    if norm:
        _bn(layout, f"{prefix}.1", c_out)
    else:
        layout[f"{prefix}.0.bias"] = (c_out,)


def _resnet_body(layout, config):
    """backbone.body: stem + layer1..max(returned_layers) (IntermediateLayerGetter drops the later stages)."""
    kind, blocks = _resnet_blocks(config)
    expansion = EXPANSION[kind]
    p = "backbone.body"
    layout[f"{p}.conv1.weight"] = (STEM_CHANNELS, 3, 7, 7)
    _bn(layout, f"{p}.bn1", STEM_CHANNELS)
    inplanes = STEM_CHANNELS
    for layer in range(1, max(config.returned_layers) + 1):
        planes = STEM_CHANNELS * 2 ** (layer - 1)
        stride = 1 if layer == 1 else 2
        for b in range(blocks[layer - 1]):
            q = f"{p}.layer{layer}.{b}"
            if kind == "bottleneck":      # 1x1 reduce, 3x3 (carries the stride), 1x1 expand
                layout[f"{q}.conv1.weight"] = (planes, inplanes, 1, 1)
                _bn(layout, f"{q}.bn1", planes)
                layout[f"{q}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(layout, f"{q}.bn2", planes)
                layout[f"{q}.conv3.weight"] = (planes * expansion, planes, 1, 1)
                _bn(layout, f"{q}.bn3", planes * expansion)
            else:                         # two 3x3 convs
                layout[f"{q}.conv1.weight"] = (planes, inplanes, 3, 3)
                _bn(layout, f"{q}.bn1", planes)
                layout[f"{q}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(layout, f"{q}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                layout[f"{q}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                _bn(layout, f"{q}.downsample.1", planes * expansion)
            inplanes = planes * expansion


def _fpn(layout, config):
    c = config.fpn_channels
    in_channels = fpn_in_channels(config)
    for i, c_in in enumerate(in_channels):                 # lateral 1x1 convs
        _conv_norm(layout, f"backbone.fpn.inner_blocks.{i}", c, c_in, 1, config.fpn_norm)
    for i in range(len(in_channels)):                      # 3x3 output convs
        _conv_norm(layout, f"backbone.fpn.layer_blocks.{i}", c, c, 3, config.fpn_norm)


def _rpn_head(layout, config):
    c, a = config.fpn_channels, anchors_per_location(config)
    for k in range(config.rpn_conv_depth):                 # RPNHead: conv_depth x (3x3 conv + ReLU), with bias
        _conv_norm(layout, f"rpn.head.conv.{k}", c, c, 3, norm=False)
    layout["rpn.head.cls_logits.weight"] = (a, c, 1, 1)
    layout["rpn.head.cls_logits.bias"] = (a,)
    layout["rpn.head.bbox_pred.weight"] = (4 * a, c, 1, 1)
    layout["rpn.head.bbox_pred.bias"] = (4 * a,)


def _box_head(layout, config):
    c, rep, k = config.fpn_channels, config.representation_size, config.num_classes
    flat = c * config.box_roi_size ** 2
    if config.box_head_convs == 0:                         # TwoMLPHead: fc6, fc7
        layout["roi_heads.box_head.fc6.weight"] = (rep, flat)
        layout["roi_heads.box_head.fc6.bias"] = (rep,)
        layout["roi_heads.box_head.fc7.weight"] = (rep, rep)
        layout["roi_heads.box_head.fc7.bias"] = (rep,)
    else:                                                  # FastRCNNConvFCHead: n x conv+BN+ReLU, Flatten, Linear
        n = config.box_head_convs
        for i in range(n):
            _conv_norm(layout, f"roi_heads.box_head.{i}", c, c, 3, norm=True)
        layout[f"roi_heads.box_head.{n + 1}.weight"] = (rep, flat)
        layout[f"roi_heads.box_head.{n + 1}.bias"] = (rep,)
    layout["roi_heads.box_predictor.cls_score.weight"] = (k, rep)
    layout["roi_heads.box_predictor.cls_score.bias"] = (k,)
    layout["roi_heads.box_predictor.bbox_pred.weight"] = (4 * k, rep)
    layout["roi_heads.box_predictor.bbox_pred.bias"] = (4 * k,)


def _mask_head(layout, config):
    c_in = config.fpn_channels
    for i, width in enumerate(config.mask_head_layers):    # MaskRCNNHeads: 3x3 conv (+BN in v2) + ReLU
        _conv_norm(layout, f"roi_heads.mask_head.{i}", width, c_in, 3, config.mask_head_norm)
        c_in = width
    # ConvTranspose2d weight is (in, out, kH, kW)
    layout["roi_heads.mask_predictor.conv5_mask.weight"] = (c_in, MASK_DIM_REDUCED, 2, 2)
    layout["roi_heads.mask_predictor.conv5_mask.bias"] = (MASK_DIM_REDUCED,)
    layout["roi_heads.mask_predictor.mask_fcn_logits.weight"] = (config.num_classes, MASK_DIM_REDUCED, 1, 1)
    layout["roi_heads.mask_predictor.mask_fcn_logits.bias"] = (config.num_classes,)


# --- validation -------------------------------------------------------------------------------------------------------

def check_state_dict(config: Config, state_dict, *, what: str = "the state dict"):
    """Raise one `LayoutError` naming every missing, unexpected, mis-shaped or non-float key."""
    levels = len(config.returned_layers) + 1             # + LastLevelMaxPool
    if len(config.anchor_sizes) != levels:
        raise LayoutError(f"the FPN has {levels} levels (returned layers {list(config.returned_layers)} + pool) "
                          f"but the config has {len(config.anchor_sizes)} anchor sizes: give anchor_sizes with "
                          f"{levels} entries (overrides / --set)")
    if len({len(s) for s in config.anchor_sizes}) != 1:
        raise LayoutError("anchor_sizes must give the same number of sizes for every level (torchvision RPNHead)")
    expected = expected_layout(config)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = []
    for key, shape in expected.items():
        if key in state_dict:
            value = state_dict[key]
            if tuple(np.shape(value)) != shape:
                mismatched.append((key, shape, tuple(np.shape(value))))
            elif np.asarray(value).dtype.kind != "f":
                mismatched.append((key, "a floating dtype", str(np.asarray(value).dtype)))
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{_plural(len(missing), 'missing key')}: {_names(missing)}")
    if unexpected:
        parts.append(f"{_plural(len(unexpected), 'unexpected key')}: {_names(unexpected)}")
    if mismatched:
        items = [f"{k} (expected {e}, got {g})" for k, e, g in mismatched]
        parts.append(f"{_plural(len(mismatched), 'mis-shaped key')}: {_names(items)}")
    hint = ""
    if any(k == "rpn.head.cls_logits.weight" for k, _, _ in mismatched):
        hint = (f"; the config has {anchors_per_location(config)} anchors per location "
                f"(sizes per level x aspect_ratios): give aspect_ratios/anchor_sizes that match (overrides / --set)")
    raise LayoutError(f"{what} does not match the {architecture_name(config)} layout: {'; '.join(parts)}{hint}",
                      missing=missing, unexpected=unexpected, mismatched=mismatched)


def _plural(n, noun):
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _names(items, limit=8):
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


# --- naming ----------------------------------------------------------------------------------------------------------

WEIGHT_FIELDS = ("resnet_depth", "returned_layers", "fpn_channels", "fpn_norm", "rpn_conv_depth", "box_head_convs",
                 "representation_size", "box_roi_size", "masks")
MASK_FIELDS = ("mask_head_layers", "mask_head_norm")


def _architecture_key(config):
    fields = WEIGHT_FIELDS + (MASK_FIELDS if config.masks else ())
    return tuple(getattr(config, f) for f in fields) + (anchors_per_location(config),)


def architecture_name(config: Config) -> str:
    """torchvision's builder name when the weights fit one of the four, else a descriptive one.

    e.g. 'maskrcnn_resnet50_fpn_v2'; 'maskrcnn_resnet18_fpn' (the v1 design on ResNet-18);
    'maskrcnn_resnet18_fpn_custom' (other widths, stages or head sizes).
    """
    key = _architecture_key(config)
    for name, reference in OFFICIAL_ARCHITECTURES.items():
        if _architecture_key(reference) == key:
            return name
    task = "maskrcnn" if config.masks else "fasterrcnn"
    v2 = config.fpn_norm and config.rpn_conv_depth == 2 and config.box_head_convs == 4 and \
        (config.mask_head_norm or not config.masks)
    name = f"{task}_resnet{config.resnet_depth}_fpn" + ("_v2" if v2 else "")
    reference = OFFICIAL_ARCHITECTURES[f"{task}_resnet50_fpn" + ("_v2" if v2 else "")]
    if _architecture_key(reference.replace(resnet_depth=config.resnet_depth)) != key:
        name += "_custom"
    return name
