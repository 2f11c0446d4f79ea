"""Keras weight layouts -> the layouts of `minimaskrcnn.nn`, and TensorFlow's "same" padding.

Weights arrive as a flat dict `{"<keras layer>/<weight>:0": array}` (`weights.read_matterport`). Keras stores a
Conv2D kernel as (kh, kw, C, C') ("HWIO"), a Dense kernel as (In, Out), a Conv2DTranspose kernel as (kh, kw, C', C);
`minimaskrcnn.nn` wants torch's (C', C, kh, kw), (Out, In) and (C, C', kh, kw). Both frameworks cross-correlate
(no kernel flip), so a transpose is the whole conversion.

BatchNorm: Keras's `BatchNormalization` default epsilon is 1e-3 (matterport's `BatchNorm` subclass keeps it), where
torchvision's is 1e-5 (0 for its v1 COCO weights, facts §3); it is folded into the preceding layer at load time.

TF "same" padding (tf.nn.conv2d / max_pool, padding="SAME"): out = ceil(n / s), total padding
max((out - 1) * s + k - n, 0), of which total // 2 goes *before* and the rest after. For stride 1 and odd k that is
symmetric (k // 2 each side, torch's padding=1 for 3x3). For stride 2 and even n it is odd, one more at the bottom /
right: matterport's 3x3 stride-2 max pool after conv1 (512 -> 256: 0 on top, 1 at the bottom) and a stride-2 RPN
(RPN_ANCHOR_STRIDE = 2). torch/torchvision pad symmetrically (max pool padding=1), which shifts the grid by a pixel.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from minimaskrcnn.nn.layers import Conv, Linear, fold_batchnorm, make_conv

BN_EPS = 1e-3   # keras.layers.BatchNormalization(epsilon=1e-3) default, which matterport's BatchNorm inherits


def get(w: Mapping[str, np.ndarray], layer: str, name: str) -> np.ndarray:
    key = f"{layer}/{name}:0"
    if key not in w:
        raise ValueError(f"weights: missing {key!r} (not a matterport Mask R-CNN of this configuration?)")
    return np.asarray(w[key])


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """(before, after) zero padding of TF's "SAME" along an axis of length n, kernel k, stride s."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _bn(w, bn: str):
    return get(w, bn, "gamma"), get(w, bn, "beta"), get(w, bn, "moving_mean"), get(w, bn, "moving_variance")


def torch_conv_weight(w, layer: str, bn: str | None = None):
    """(weight (C', C, k, k) float32, bias (C',)) of Keras Conv2D `layer`, BatchNorm `bn` folded in."""
    kernel = get(w, layer, "kernel")                                        # (k, k, C, C')
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"weights: {layer}/kernel:0 expected (k, k, C, C'), got {kernel.shape}")
    weight = kernel.transpose(3, 2, 0, 1)                                   # (C', C, k, k)
    bias = get(w, layer, "bias") if f"{layer}/bias:0" in w or bn is None else None
    if bn is not None:
        return fold_batchnorm(weight, bias, *_bn(w, bn), BN_EPS)
    return weight.astype(np.float32), np.asarray(bias, np.float32)


def load_conv(w, layer: str, bn: str | None = None, *, stride: int = 1, padding: int = 0,
              channels_last: bool = False) -> Conv:
    weight, bias = torch_conv_weight(w, layer, bn)
    return make_conv(weight, bias, stride=stride, padding=padding, channels_last=channels_last)


def load_dense(w, layer: str, bn: str | None = None) -> Linear:
    """A Dense layer, or a Conv2D applied to a map of its own kernel size ("valid": one output pixel), as Linear.
    A conv kernel (k, k, C, C') flattens in (ky, kx, c) order, matching a channels-last (k, k, C) input."""
    kernel = get(w, layer, "kernel")
    kernel = kernel.reshape(-1, kernel.shape[-1])                           # (In, Out)
    weight, bias = kernel.T, get(w, layer, "bias")                          # (Out, In), (Out,)
    if bn is not None:
        weight, bias = fold_batchnorm(weight, bias, *_bn(w, bn), BN_EPS)
    return Linear(np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias, np.float32))
