"""Stage 5: the mask branch (Mask R-CNN, He et al. 2017, §3 and Fig. 4 right; torchvision mask_rcnn.py MaskRCNNHeads /
MaskRCNNPredictor, roi_heads.py maskrcnn_inference; facts §7).

Pool 14x14 features for the final boxes, run 4 convs (v2: BatchNorm folded at load), a 2x deconvolution and a
per-class 1x1, and keep the 28x28 logits of each detection's predicted class; the sigmoid gives its probabilities.
The RoIs run channels-last, (N, H, W, C), one GEMM per convolution over all of them.

Shape glossary
    N: detections (<= 100)     F: FPN / head channels (256)      NC: classes incl. background (91)
    F': channels of the deconvolution output (256)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimaskrcnn import ops
from minimaskrcnn.config import Config
from minimaskrcnn.nn.layers import ConvTranspose2x2, Linear, conv2d_rois, conv_transpose2x2_patches, load_conv, \
    load_conv_transpose2x2, sigmoid
from minimaskrcnn.nn.workspace import scratch

# Upper bound on one block of deconvolution patches: 10 RoIs of 784 x 256 floats, in a reused buffer (workspace.py).
# The mask head of 100 RoIs took 0.215 s with 8 or 16 MB blocks, 0.234 s with 2 MB, 0.219 s with all RoIs in one
# reused 80 MB buffer (2026-12-02, native OpenBLAS kernel): the gain over fresh arrays is the page faults, and 8 MB
# keeps 72 MB less resident than one block.
DECONV_BLOCK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class MaskHeadWeights:
    convs: tuple                # tuple[Conv, ...]: 3x3 + ReLU per cfg.mask_head_layers (v2: BN folded), channels-last
    deconv: ConvTranspose2x2    # conv5_mask, 14x14 -> 28x28, followed by ReLU
    logits: Linear              # mask_fcn_logits as (NC, F') rows: the 1x1 conv of one class is one row


def load_mask_head(sd: Mapping[str, np.ndarray], cfg: Config) -> MaskHeadWeights:
    """Keys `roi_heads.mask_head.{i}.0.*` (+ `.{i}.1` BN when cfg.mask_head_norm), `roi_heads.mask_predictor.*`."""
    p = "roi_heads.mask_head"
    convs = tuple(load_conv(sd, f"{p}.{i}.0", 3, padding=1, bn=f"{p}.{i}.1" if cfg.mask_head_norm else None,
                            eps=cfg.bn_eps, channels_last=True) for i in range(len(cfg.mask_head_layers)))
    deconv = load_conv_transpose2x2(sd, "roi_heads.mask_predictor.conv5_mask")
    weight = np.asarray(sd["roi_heads.mask_predictor.mask_fcn_logits.weight"], np.float32)   # (NC, F', 1, 1)
    if weight.shape[0] != cfg.num_classes or weight.shape[2:] != (1, 1):
        raise ValueError(f"mask_fcn_logits.weight: expected ({cfg.num_classes}, C, 1, 1), got {weight.shape}")
    logits = Linear(np.ascontiguousarray(weight[:, :, 0, 0]),
                    np.asarray(sd["roi_heads.mask_predictor.mask_fcn_logits.bias"], np.float32))
    return MaskHeadWeights(convs, deconv, logits)


def mask_head_forward(w: MaskHeadWeights, roi_features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pooled mask RoI features (N, F, 14, 14) and predicted labels (N,) -> mask logits (N, 28, 28) of each RoI's label.

    torchvision computes all NC channels and then selects the label's (maskrcnn_inference); the 1x1 of the other
    classes is never used, so only the selected row of mask_fcn_logits is applied (facts §7, §11).
    """
    labels = np.asarray(labels)
    if roi_features.ndim != 4 or labels.shape != roi_features.shape[:1]:
        raise ValueError(f"roi_features, labels: expected (N, C, P, P) and (N,), got {roi_features.shape} and "
                         f"{labels.shape}")
    n_classes = w.logits.weight.shape[0]
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels: expected integers in [0, {n_classes}), got {labels.dtype} "
                         f"{labels.min()}..{labels.max()}")
    x = np.asarray(roi_features, np.float32).transpose(0, 2, 3, 1)         # (N, F, 14, 14) -> (N, 14, 14, F)
    for conv in w.convs:
        x = conv2d_rois(x, conv, relu=True)                                 # (N, 14, 14, F)
    # The 1x1 logit of a 28x28 pixel only needs that pixel's deconv output: apply it to the 2x2 patches as they come
    # out of the GEMM and interleave the (small) logits instead of the 256-channel features. A few RoIs at a time,
    # into one reused buffer: the patches of all 100 RoIs are 80 MB of fresh pages otherwise.
    n, h, wd, _ = x.shape
    f = w.deconv.out_channels
    rows = w.logits.weight[labels][:, :, None]                              # (N, F', 1): the label's 1x1 weights
    logits = np.empty((n, h * wd * 4, 1), np.float32)                       # (N, 784, 1)
    per_block = max(1, DECONV_BLOCK_BYTES // (4 * h * wd * 4 * f))          # RoIs per block
    for n0 in range(0, n, per_block):
        n1 = min(n0 + per_block, n)
        patches = conv_transpose2x2_patches(x[n0:n1], w.deconv, relu=True,
                                            out=scratch("deconv", (n1 - n0, h * wd * 4, f)))   # (B, 14, 14, 2, 2, F')
        # (B, 784, F') @ (B, F', 1) -> (B, 784, 1)
        np.matmul(patches.reshape(n1 - n0, h * wd * 4, f), rows[n0:n1], out=logits[n0:n1])
    logits = logits[:, :, 0]                                                # (N, 784)
    logits += w.logits.bias[labels][:, None]
    # (N, 784) -> (N, 14, 14, 2, 2) -> (N, 14, 2, 14, 2) -> (N, 28, 28): (p, q) of (i, j) at (2i+p, 2j+q)
    return logits.reshape(n, h, wd, 2, 2).transpose(0, 1, 3, 2, 4).reshape(n, 2 * h, 2 * wd)


class MaskOutput(NamedTuple):
    mask_features: np.ndarray     # (D, C, 14, 14)
    mask_logits: np.ndarray       # (D, 28, 28) logits of each detection's predicted class
    mask_probs: np.ndarray        # (D, 28, 28) sigmoid of the above


def mask_forward(head_weights, pyramid, boxes, labels, image_size, cfg: Config) -> MaskOutput:
    """Mask R-CNN mask branch on the final detections (resized-image boxes); probabilities of the predicted class."""
    features = ops.multiscale_roi_align(pyramid[:-1], boxes, image_size, cfg.mask_roi_size, cfg.sampling_ratio)
    logits = mask_head_forward(head_weights, features, labels)         # (D, 28, 28)
    return MaskOutput(features, logits, sigmoid(logits))
