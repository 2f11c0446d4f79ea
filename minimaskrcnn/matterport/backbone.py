"""matterport's ResNet-50/101 body (mrcnn/model.py resnet_graph): C2..C5 of a molded image.

Shape glossary
    C, H, W     channels and size of a map, image layout (C, H, W) as `minimaskrcnn.nn.conv2d` takes it
    Hp, Wp      molded image size (a multiple of 64)

The ResNet of He et al. 2016 (Fig. 5 bottleneck), as matterport builds it, and where it differs from torchvision's
(facts §3):
  * the stride of a downsampling block is on its first 1x1 convolution ("2a") and on the shortcut, not on the 3x3
    (torchvision's v1.5 puts it on the 3x3: different arithmetic, not just a different name);
  * every convolution has a bias (torchvision's have none), and BatchNorm eps is 1e-3 (keras.py), folded at load;
  * conv1 is 7x7 stride 2 on an explicit 3-pixel zero padding (symmetric, like torchvision's padding=3);
  * the 3x3 stride-2 max pool uses TF "same" padding: for an even input, none on top/left and one row/column of
    -inf at the bottom/right (keras.py), where torchvision pads one on every side;
  * stage 4 has 6 blocks (resnet50) or 23 (resnet101), named res4a, res4b, ... res4w.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minimaskrcnn.matterport.keras import load_conv, same_pads
from minimaskrcnn.nn.layers import Conv, conv2d, max_pool2d

# Blocks per stage 2..5 (mrcnn/model.py resnet_graph: block_count {"resnet50": 5, "resnet101": 22} + the conv block)
DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


@dataclass(frozen=True)
class Block:
    a: Conv                 # 1x1 (stride of the block), BN folded
    b: Conv                 # 3x3 "same", BN folded
    c: Conv                 # 1x1, BN folded
    shortcut: Conv | None   # 1x1 (stride of the block), only in the first block of a stage ("conv_block")


@dataclass(frozen=True)
class Backbone:
    conv1: Conv
    stages: tuple           # 4 tuples of Block: res2 .. res5


def load_backbone(w, architecture: str) -> Backbone:
    if architecture not in DEPTHS:
        raise ValueError(f"BACKBONE: expected resnet50 or resnet101, got {architecture!r}")
    conv1 = load_conv(w, "conv1", "bn_conv1", stride=2, padding=3)
    stages = []
    for stage, depth in zip(range(2, 6), DEPTHS[architecture]):
        blocks = []
        for i in range(depth):
            name = f"{stage}{chr(ord('a') + i)}"
            stride = 2 if i == 0 and stage > 2 else 1
            blocks.append(Block(
                load_conv(w, f"res{name}_branch2a", f"bn{name}_branch2a", stride=stride),
                load_conv(w, f"res{name}_branch2b", f"bn{name}_branch2b", padding=1),
                load_conv(w, f"res{name}_branch2c", f"bn{name}_branch2c"),
                load_conv(w, f"res{name}_branch1", f"bn{name}_branch1", stride=stride) if i == 0 else None))
        stages.append(tuple(blocks))
    return Backbone(conv1, tuple(stages))


def max_pool_same(x: np.ndarray, k: int = 3, s: int = 2) -> np.ndarray:
    """KL.MaxPooling2D((k, k), strides=(s, s), padding="same") of (C, H, W): -inf padding placed as TF places it."""
    (t, b), (l, r) = same_pads(x.shape[1], k, s), same_pads(x.shape[2], k, s)
    x = np.pad(x, ((0, 0), (t, b), (l, r)), constant_values=-np.inf)        # (C, H + t + b, W + l + r)
    return max_pool2d(x, kernel=k, stride=s, padding=0)                      # (C, ceil(H/s), ceil(W/s))


def _block(x: np.ndarray, blk: Block) -> np.ndarray:
    shortcut = x if blk.shortcut is None else conv2d(x, blk.shortcut)      # (C', H', W')
    y = conv2d(x, blk.a, relu=True)                                         # (C'/4, H', W')
    y = conv2d(y, blk.b, relu=True)                                         # (C'/4, H', W')
    return conv2d(y, blk.c, relu=True, residual=shortcut)                   # relu(BN(conv(y)) + shortcut): "resNx_out"


def backbone(image: np.ndarray, bb: Backbone) -> list[np.ndarray]:
    """[C2, C3, C4, C5] (C, Hp/s, Wp/s) for s = 4, 8, 16, 32 of a molded image (3, Hp, Wp) float32."""
    x = conv2d(image, bb.conv1, relu=True)                                  # (64, Hp/2, Wp/2)
    x = max_pool_same(x)                                                    # (64, Hp/4, Wp/4): C1
    outs = []
    for blocks in bb.stages:
        for blk in blocks:
            x = _block(x, blk)
        outs.append(x)                                                      # res2c_out, res3d_out, res4f/w_out, res5c_out
    return outs
