"""Stage 2b: the Feature Pyramid Network (Lin et al. 2017, "Feature Pyramid Networks for Object Detection", Fig. 3;
torchvision ops/feature_pyramid_network.py, facts §2.2).

Top-down pathway with lateral connections: starting from the coarsest map, each level is the 1x1 lateral
projection of its C map plus the nearest-neighbour 2x upsampling of the level above; a 3x3 convolution then smooths
every merged map into an output P map. torchvision's `LastLevelMaxPool` adds one more level, a stride-2 subsampling
of the coarsest *output* (P6 = P5[:, ::2, ::2], max pool with kernel 1).

v1: the 1x1 and 3x3 convolutions have a bias and no normalization. v2 (`cfg.fpn_norm`): each is a convolution
without bias followed by BatchNorm, folded here at load time. Neither has an activation.

Shape glossary
    L        number of returned ResNet stages (4 for the torchvision models: C2..C5)
    C_l      channels of the l-th input map;  F  FPN channels (cfg.fpn_channels, 256)
    H_l, W_l size of level l (stride 4, 8, 16, 32 for C2..C5 with the default returned_layers)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from minimaskrcnn.config import Config
from minimaskrcnn.nn.layers import Conv, add_upsampled_nearest, conv2d, load_conv

PREFIX = "backbone.fpn"     # state-dict prefix (facts §9)


@dataclass(frozen=True)
class FPNWeights:
    inner: tuple    # tuple[Conv, ...]: L lateral 1x1 convolutions C_l -> F ("inner_blocks")
    layer: tuple    # tuple[Conv, ...]: L output 3x3 convolutions F -> F, padding 1 ("layer_blocks")


def load_fpn(sd: Mapping[str, np.ndarray], cfg: Config) -> FPNWeights:
    """Prepare the FPN for `len(cfg.returned_layers)` input maps (keys `backbone.fpn.{inner,layer}_blocks.i.*`)."""
    n = len(cfg.returned_layers)

    def block(kind: str, i: int, kernel: int) -> Conv:
        name = f"{PREFIX}.{kind}.{i}"       # torchvision Conv2dNormActivation: .0 conv, .1 norm
        conv = load_conv(sd, f"{name}.0", kernel, padding=kernel // 2, bn=f"{name}.1" if cfg.fpn_norm else None,
                         eps=cfg.bn_eps)
        if conv.out_channels != cfg.fpn_channels:
            raise ValueError(f"{name}.0.weight: expected {cfg.fpn_channels} output channels, got {conv.out_channels}")
        return conv

    return FPNWeights(tuple(block("inner_blocks", i, 1) for i in range(n)),
                      tuple(block("layer_blocks", i, 3) for i in range(n)))


def fpn_forward(w: FPNWeights, c_maps: list) -> list:
    """C maps [(C_l, H_l, W_l)] finest first -> [P_l (F, H_l, W_l) ..., P_extra (F, ceil(H_L/2), ceil(W_L/2))].

    The result is in torchvision's order of names '0', '1', ..., 'pool'.
    """
    if len(c_maps) != len(w.inner):
        raise ValueError(f"c_maps: expected {len(w.inner)} feature maps, got {len(c_maps)}")
    last = conv2d(c_maps[-1], w.inner[-1])                                  # (F, H_L, W_L)
    p_maps = [conv2d(last, w.layer[-1])]                                    # [(F, H_L, W_L)]
    for i in range(len(c_maps) - 2, -1, -1):
        lateral = conv2d(c_maps[i], w.inner[i])                             # (F, H_i, W_i)
        # lateral + upsample_nearest(last) (src = dst // 2), in place: the upsampled map is never made (55 MB at P2)
        last = add_upsampled_nearest(lateral, last)                         # (F, H_i, W_i)
        p_maps.insert(0, conv2d(last, w.layer[i]))                          # (F, H_i, W_i)
    p_maps.append(np.ascontiguousarray(p_maps[-1][:, ::2, ::2]))            # LastLevelMaxPool: (F, ceil(H_L/2), .)
    return p_maps
