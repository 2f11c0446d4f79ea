"""Stage 2a: the ResNet body (He et al. 2016, "Deep Residual Learning"; torchvision models/resnet.py, facts §2.1).

torchvision's ResNet is "v1.5": a Bottleneck block carries its stride on the 3x3 convolution, not on the first 1x1.
The body is the stem (7x7 stride-2 convolution + BN + ReLU, 3x3 stride-2 max pool) followed by four stages
("layer1".."layer4") of residual blocks; block 0 of a stage projects the identity with a 1x1 convolution (+ BN)
whenever the stage changes the shape (stride 2, or a channel count change, as in layer1 of ResNet-50).
avgpool and fc are not part of a detection backbone (torchvision IntermediateLayerGetter drops them); stages after
the last returned one are dropped too, as in torchvision `_resnet_fpn_extractor`.

Every BatchNorm (FrozenBatchNorm2d or eval BatchNorm2d; eps = cfg.bn_eps, 0.0 for the COCO v1 checkpoints) is folded
into its convolution at load time (`layers.fold_batchnorm`).

Shape glossary
    H, W     padded network input size (a multiple of 32, facts §1)
    C_l      output channels of stage l: 64*2^(l-1) * expansion (ResNet-50: 256, 512, 1024, 2048)
    H_l, W_l output size of stage l: H / 2^(l+1) (stride 4, 8, 16, 32)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from minimaskrcnn.config import Config
from minimaskrcnn.nn.layers import Conv, conv2d, load_conv, max_pool2d

# torchvision models/resnet.py (resnet18 ... resnet152): residual blocks per stage. Depths 18/34 use BasicBlock
# (two 3x3 convolutions, expansion 1), depths 50+ use Bottleneck (1x1, 3x3, 1x1; expansion 4).
BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STEM_CHANNELS = 64          # torchvision ResNet.inplanes
PREFIX = "backbone.body"    # state-dict prefix of the body (facts §9)


@dataclass(frozen=True)
class Block:
    """One residual block: relu(main(x) + identity(x)) (He et al. 2016, Eq. 1 / Eq. 2 with a projection)."""

    convs: tuple            # tuple[Conv, ...]: the main path; each conv but the last is followed by a ReLU
    downsample: Conv | None  # 1x1 projection (+ BN) of the identity, or None when shapes already agree


@dataclass(frozen=True)
class ResNetWeights:
    stem: Conv                  # 7x7, stride 2, padding 3, 3 -> 64, BN folded
    stages: tuple               # tuple[tuple[Block, ...], ...]: layer1 .. layer{max(returned_layers)}
    returned_layers: tuple      # 1-based stage numbers whose outputs are returned, ascending


def load_backbone(sd: Mapping[str, np.ndarray], cfg: Config) -> ResNetWeights:
    """Prepare the ResNet body of `cfg.resnet_depth` from a torchvision state dict (keys `backbone.body.*`)."""
    if cfg.resnet_depth not in BLOCKS_PER_STAGE:
        raise ValueError(f"cfg.resnet_depth: expected one of {sorted(BLOCKS_PER_STAGE)}, got {cfg.resnet_depth}")
    returned = tuple(cfg.returned_layers)
    if not returned or list(returned) != sorted(set(returned)) or not set(returned) <= {1, 2, 3, 4}:
        raise ValueError(f"cfg.returned_layers: expected ascending stage numbers in 1..4, got {returned}")
    bottleneck = cfg.resnet_depth >= 50
    expansion = 4 if bottleneck else 1
    eps = cfg.bn_eps
    stem = load_conv(sd, f"{PREFIX}.conv1", 7, stride=2, padding=3, bn=f"{PREFIX}.bn1", eps=eps)
    stages, in_channels = [], STEM_CHANNELS
    for stage, n_blocks in enumerate(BLOCKS_PER_STAGE[cfg.resnet_depth][:max(returned)], start=1):
        width = STEM_CHANNELS * 2 ** (stage - 1)                            # "planes" in torchvision
        blocks = []
        for b in range(n_blocks):
            p = f"{PREFIX}.layer{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            if bottleneck:      # torchvision Bottleneck: stride on conv2 (v1.5)
                convs = (load_conv(sd, f"{p}.conv1", 1, bn=f"{p}.bn1", eps=eps),
                         load_conv(sd, f"{p}.conv2", 3, stride=stride, padding=1, bn=f"{p}.bn2", eps=eps),
                         load_conv(sd, f"{p}.conv3", 1, bn=f"{p}.bn3", eps=eps))
            else:               # torchvision BasicBlock: stride on conv1
                convs = (load_conv(sd, f"{p}.conv1", 3, stride=stride, padding=1, bn=f"{p}.bn1", eps=eps),
                         load_conv(sd, f"{p}.conv2", 3, padding=1, bn=f"{p}.bn2", eps=eps))
            if convs[0].in_channels != in_channels:
                raise ValueError(f"{p}.conv1.weight: expected {in_channels} input channels, got {convs[0].in_channels}")
            downsample = None
            if stride != 1 or in_channels != width * expansion:             # torchvision ResNet._make_layer
                downsample = load_conv(sd, f"{p}.downsample.0", 1, stride=stride, bn=f"{p}.downsample.1", eps=eps)
            blocks.append(Block(convs, downsample))
            in_channels = width * expansion
        stages.append(tuple(blocks))
    return ResNetWeights(stem, tuple(stages), returned)


def block_forward(block: Block, x: np.ndarray) -> np.ndarray:
    """relu(main(x) + identity(x)) for x (C, H, W) -> (C', H', W'); the add and ReLU are fused into the last conv."""
    identity = x if block.downsample is None else conv2d(x, block.downsample)   # (C', H', W')
    h = x
    for conv in block.convs[:-1]:
        h = conv2d(h, conv, relu=True)                                      # (width, ., .)
    return conv2d(h, block.convs[-1], relu=True, residual=identity)         # (C', H', W')


def backbone_forward(w: ResNetWeights, x: np.ndarray) -> list:
    """The ResNet body on one normalized, padded image x (3, H, W) -> [(C_l, H_l, W_l) for l in returned_layers]."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"x: expected a (3, H, W) image, got shape {x.shape}")
    x = conv2d(np.ascontiguousarray(x, np.float32), w.stem, relu=True)     # (64, H/2, W/2)
    x = max_pool2d(x, kernel=3, stride=2, padding=1)                        # (64, H/4, W/4)
    features = []
    for stage, blocks in enumerate(w.stages, start=1):
        for block in blocks:
            x = block_forward(block, x)                                     # (C_l, H_l, W_l)
        if stage in w.returned_layers:
            features.append(x)
    return features
