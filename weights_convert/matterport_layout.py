"""The weights of matterport's Mask R-CNN (`mrcnn/model.py`), by Keras name: what a file must hold, and what it shows.

Shape glossary (Keras layouts, as `layer.get_weights()` returns them):
    conv kernel   (kh, kw, C_in, C_out)  HWIO
    deconv kernel (kh, kw, C_out, C_in)  Keras Conv2DTranspose
    dense kernel  (C_in, C_out)
    BatchNorm     gamma, beta, moving_mean, moving_variance, each (C,)
    T: TOP_DOWN_PYRAMID_SIZE   F: FPN_CLASSIF_FC_LAYERS_SIZE   P: POOL_SIZE   A: anchors per location   K: NUM_CLASSES

Keys are "<layer name>/<weight name>", e.g. "res2a_branch2a/kernel:0", "bn_conv1/moving_variance:0"; the RPN's
layers, which matterport nests in the `rpn_model` sub-model, are keyed by their own names ("rpn_conv_shared/...").
Where a number comes from in mrcnn/model.py:
    resnet_graph           conv1 7x7x3x64 + bn_conv1; stages 2-5 of Bottleneck blocks [64, 64, 256] x 2^(s-2),
                           3 / 4 / {6 | 23} / 3 blocks (resnet50 | resnet101), letters a, b, c, ...; every conv has a
                           bias (use_bias=True), block "a" has the projection shortcut branch1
    MaskRCNN.build         fpn_c{2..5}p{2..5}: 1x1 C_s -> T; fpn_p{2..5}: 3x3 T -> T
    build_rpn_model        rpn_conv_shared 3x3 T -> 512; rpn_class_raw 1x1 512 -> 2A; rpn_bbox_pred 1x1 512 -> 4A
    fpn_classifier_graph   mrcnn_class_conv1 PxP T -> F; mrcnn_class_bn1; mrcnn_class_conv2 1x1 F -> F;
                           mrcnn_class_bn2; mrcnn_class_logits dense F -> K; mrcnn_bbox_fc dense F -> 4K
    build_fpn_mask_graph   mrcnn_mask_conv{1..4} 3x3 (T | 256) -> 256 + mrcnn_mask_bn{1..4};
                           mrcnn_mask_deconv 2x2 (256 <- 256); mrcnn_mask 1x1 256 -> K
"""
from __future__ import annotations

import re

from .errors import LayoutError

BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}     # resnet_graph: block_count = {50: 5, 101: 22} + "a"
STAGE_WIDTHS = {2: (64, 64, 256), 3: (128, 128, 512), 4: (256, 256, 1024), 5: (512, 512, 2048)}
RPN_WIDTH = 512             # build_rpn_model: Conv2D(512, (3, 3), ...)
MASK_WIDTH = 256            # build_fpn_mask_graph: Conv2D(256, (3, 3), ...)
CONV = ("kernel:0", "bias:0")
BN = ("gamma:0", "beta:0", "moving_mean:0", "moving_variance:0")
SIGNATURE = ("conv1", "fpn_c5p5", "rpn_conv_shared", "mrcnn_class_logits", "mrcnn_mask")   # layers only matterport has
_RES4 = re.compile(r"res4([a-z])_branch2a\Z")


def _conv(out, layer, kh, kw, cin, cout):
    out[f"{layer}/kernel:0"] = (kh, kw, cin, cout)
    out[f"{layer}/bias:0"] = (cout,)


def _bn(out, layer, c):
    for w in BN:
        out[f"{layer}/{w}"] = (c,)


def expected_layout(facts: dict) -> dict:
    """{key: shape} of a matterport model with `facts` (BACKBONE, NUM_CLASSES, TOP_DOWN_PYRAMID_SIZE,
    FPN_CLASSIF_FC_LAYERS_SIZE, POOL_SIZE, ANCHORS_PER_LOCATION), in the order Keras builds the layers."""
    t, f, p = facts["TOP_DOWN_PYRAMID_SIZE"], facts["FPN_CLASSIF_FC_LAYERS_SIZE"], facts["POOL_SIZE"]
    a, k = facts["ANCHORS_PER_LOCATION"], facts["NUM_CLASSES"]
    out = {}
    _conv(out, "conv1", 7, 7, 3, 64)
    _bn(out, "bn_conv1", 64)
    cin = 64
    for stage, blocks in zip((2, 3, 4, 5), BLOCKS[facts["BACKBONE"]]):
        w1, w2, w3 = STAGE_WIDTHS[stage]
        for i in range(blocks):
            b = f"{stage}{chr(ord('a') + i)}"
            _conv(out, f"res{b}_branch2a", 1, 1, cin, w1)
            _bn(out, f"bn{b}_branch2a", w1)
            _conv(out, f"res{b}_branch2b", 3, 3, w1, w2)
            _bn(out, f"bn{b}_branch2b", w2)
            _conv(out, f"res{b}_branch2c", 1, 1, w2, w3)
            _bn(out, f"bn{b}_branch2c", w3)
            if i == 0:                                   # conv_block: projection shortcut
                _conv(out, f"res{b}_branch1", 1, 1, cin, w3)
                _bn(out, f"bn{b}_branch1", w3)
            cin = w3
    for s in (5, 4, 3, 2):
        _conv(out, f"fpn_c{s}p{s}", 1, 1, STAGE_WIDTHS[s][2], t)
    for s in (2, 3, 4, 5):
        _conv(out, f"fpn_p{s}", 3, 3, t, t)
    _conv(out, "rpn_conv_shared", 3, 3, t, RPN_WIDTH)
    _conv(out, "rpn_class_raw", 1, 1, RPN_WIDTH, 2 * a)
    _conv(out, "rpn_bbox_pred", 1, 1, RPN_WIDTH, 4 * a)
    _conv(out, "mrcnn_class_conv1", p, p, t, f)
    _bn(out, "mrcnn_class_bn1", f)
    _conv(out, "mrcnn_class_conv2", 1, 1, f, f)
    _bn(out, "mrcnn_class_bn2", f)
    out["mrcnn_class_logits/kernel:0"], out["mrcnn_class_logits/bias:0"] = (f, k), (k,)
    out["mrcnn_bbox_fc/kernel:0"], out["mrcnn_bbox_fc/bias:0"] = (f, 4 * k), (4 * k,)
    for i in range(1, 5):
        _conv(out, f"mrcnn_mask_conv{i}", 3, 3, t if i == 1 else MASK_WIDTH, MASK_WIDTH)
        _bn(out, f"mrcnn_mask_bn{i}", MASK_WIDTH)
    out["mrcnn_mask_deconv/kernel:0"], out["mrcnn_mask_deconv/bias:0"] = (2, 2, MASK_WIDTH, MASK_WIDTH), (MASK_WIDTH,)
    _conv(out, "mrcnn_mask", 1, 1, MASK_WIDTH, k)
    return out


def layer_names(keys) -> list:
    """The layer names of `keys`, in first-seen order."""
    return list(dict.fromkeys(k.rsplit("/", 1)[0] for k in keys))


def infer_facts(shapes: dict, what: str):
    """(facts, evidence) from {key: shape}: what the weights fix, and the array that shows each (one-line errors)."""
    layers = layer_names(shapes)
    present = set(layers)
    if not present & set(SIGNATURE):
        shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "") if layers else "no weights at all"
        raise LayoutError(f"{what} is a Keras model with layers {shown} — not matterport Mask R-CNN (expected "
                          f"layers {', '.join(SIGNATURE)}, ...)")
    heads = [s for s in SIGNATURE[1:] if s not in present]
    if heads:
        kind = ("a ResNet backbone (e.g. ImageNet weights), not a trained matterport Mask R-CNN"
                if "conv1" in present else "not a complete matterport Mask R-CNN")
        raise LayoutError(f"{what} has no layers {', '.join(heads)}: {kind}", missing=heads)

    def shape(key, ndim):
        s = shapes.get(key)
        if s is None or len(s) != ndim:
            raise LayoutError(f"{what}: {key} is {'missing' if s is None else f'of shape {tuple(s)}'}; matterport's "
                              f"has {ndim} dimensions", missing=[key] if s is None else ())
        return tuple(s)

    letters = sorted(m.group(1) for m in map(_RES4.match, layers) if m)
    backbones = {blocks[2]: name for name, blocks in BLOCKS.items()}
    if len(letters) not in backbones or letters != [chr(ord("a") + i) for i in range(len(letters))]:
        raise LayoutError(f"{what} has {len(letters)} res4 blocks ({''.join(letters)[:30]}); matterport's resnet50 has "
                          f"6 (res4a..res4f), resnet101 23 (res4a..res4w)")
    logits = shape("mrcnn_class_logits/kernel:0", 2)
    conv1 = shape("mrcnn_class_conv1/kernel:0", 4)
    c5p5 = shape("fpn_c5p5/kernel:0", 4)
    rpn_class = shape("rpn_class_raw/kernel:0", 4)
    if rpn_class[3] % 2 or conv1[0] != conv1[1]:
        raise LayoutError(f"{what}: rpn_class_raw/kernel:0 {rpn_class} or mrcnn_class_conv1/kernel:0 {conv1} is not "
                          f"a matterport shape (2 x anchors filters; square pooling)")
    facts = {"BACKBONE": backbones[len(letters)], "NUM_CLASSES": logits[1], "TOP_DOWN_PYRAMID_SIZE": c5p5[3],
             "FPN_CLASSIF_FC_LAYERS_SIZE": conv1[3], "POOL_SIZE": conv1[0], "ANCHORS_PER_LOCATION": rpn_class[3] // 2}
    evidence = {"BACKBONE": f"{len(letters)} res4 blocks",
                "NUM_CLASSES": f"mrcnn_class_logits/kernel:0 is {logits}",
                "TOP_DOWN_PYRAMID_SIZE": f"fpn_c5p5/kernel:0 is {c5p5}",
                "FPN_CLASSIF_FC_LAYERS_SIZE": f"mrcnn_class_conv1/kernel:0 is {conv1}",
                "POOL_SIZE": f"mrcnn_class_conv1/kernel:0 is {conv1}",
                "RPN_ANCHOR_RATIOS": f"rpn_class_raw/kernel:0 is {rpn_class}: {rpn_class[3] // 2} anchors per location"}
    return facts, evidence


def check_layout(shapes: dict, facts: dict, what: str):
    """Raise a LayoutError listing every missing, unexpected and mis-shaped key against `expected_layout(facts)`."""
    expected = expected_layout(facts)
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [(k, expected[k], tuple(shapes[k])) for k in expected if k in shapes and
                  tuple(shapes[k]) != expected[k]]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected)):
        if items:
            parts.append(f"{len(items)} {label} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})")
    if mismatched:
        k, e, a = mismatched[0]
        parts.append(f"{len(mismatched)} of another shape ({k} is {a}, expected {e}"
                     f"{', ...' if len(mismatched) > 1 else ''})")
    raise LayoutError(f"{what} is not a matterport Mask R-CNN {facts['BACKBONE']} with {facts['NUM_CLASSES']} classes: "
                      f"{'; '.join(parts)}", missing=missing, unexpected=unexpected, mismatched=mismatched)
