"""The stages of torchvision's Mask R-CNN / Faster R-CNN (v1 and v2), one per module, in the order `model.py` calls
them. Each module holds its weights (loaded from a torchvision state dict, BatchNorm folded), its head arithmetic
and its post-processing.

Modules, in reading order:
    transform.py   normalize, resize (torchvision's size rule and bilinear kernel), pad; rescale boxes, paste masks
    backbone.py    the ResNet body (C2..C5)
    fpn.py         the feature pyramid (P2..P6; Lin et al. 2017)
    rpn.py         the RPN head, anchors scored and decoded, top-k per level, NMS per level (Ren et al. 2015)
    box_head.py    multi-scale RoIAlign (FPN Eq. 1), the box head, softmax, decoding, per-class NMS (Fast R-CNN)
    mask_head.py   RoIAlign of the detections, the mask head, the predicted class's 28x28 mask (He et al. 2017)

The second model family, matterport's (softmax RPN in normalised coordinates, crop-and-resize pooling, BatchNorm
heads, its own detection layer), has its stages in `minimaskrcnn.matterport`; both share `ops/` and `nn/`.
"""
