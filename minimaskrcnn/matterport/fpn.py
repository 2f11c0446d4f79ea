"""matterport's feature pyramid (mrcnn/model.py MaskRCNN.build, "Top-down Layers"): P2..P6 from C2..C5.

Shape glossary
    C      TOP_DOWN_PYRAMID_SIZE (256);  (C, H, W) maps in image layout

FPN (Lin et al. 2017, Fig. 3): P5 = 1x1(C5); P(k) = up2(P(k+1)) + 1x1(Ck); then a 3x3 "same" conv on each; P6 is
P5 subsampled by 2 (MaxPooling2D(pool_size=1, strides=2): element [::2, ::2]). The arithmetic is torchvision's
(stages/fpn.py) except: the upsampling is always an exact 2x repeat (KL.UpSampling2D; molded sizes are multiples of
64 so every level halves exactly), the Keras layer names, and here the lateral sum is formed as the 1x1 conv's
residual (the same float additions, in either order). No separate module is reused because the weights, their
names and the layout all differ; the convolutions themselves are `minimaskrcnn.nn`'s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minimaskrcnn.matterport.keras import load_conv
from minimaskrcnn.nn.layers import Conv, conv2d


@dataclass(frozen=True)
class FPN:
    lateral: tuple   # fpn_c2p2 .. fpn_c5p5 (1x1)
    output: tuple    # fpn_p2 .. fpn_p5 (3x3 "same")


def load_fpn(w) -> FPN:
    return FPN(tuple(load_conv(w, f"fpn_c{k}p{k}") for k in range(2, 6)),
               tuple(load_conv(w, f"fpn_p{k}", padding=1) for k in range(2, 6)))


def _up2(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=1).repeat(2, axis=2)                            # (C, 2H, 2W), nearest neighbour


def fpn(c: list[np.ndarray], net: FPN) -> list[np.ndarray]:
    """[P2, P3, P4, P5, P6] from [C2, C3, C4, C5]."""
    top = conv2d(c[3], net.lateral[3])                                      # (C, H5, W5): fpn_c5p5
    inner = [top]
    for k in (2, 1, 0):                                                     # P4, P3, P2: fpn_p{k}add
        top = conv2d(c[k], net.lateral[k], residual=_up2(top))              # (C, Hk, Wk)
        inner.insert(0, top)
    p = [conv2d(x, conv) for x, conv in zip(inner, net.output)]             # 3x3 "same" (symmetric 1 for stride 1)
    p.append(np.ascontiguousarray(p[3][:, ::2, ::2]))                       # (C, H5/2, W5/2): fpn_p6
    return p
