"""Geometric operations of Mask R-CNN with torchvision's semantics: NumPy in, NumPy out.

`boxes`: box area / IoU / clipping / small-box removal and the BoxCoder encode/decode; `nms`: greedy and per-class
NMS; `anchors`: the RPN anchor grid; `roi_align`: RoIAlign, FPN level assignment, multi-scale pooling and the
channels-last layout it samples from; `paste`: mask pasting; `resize`: the transform's resize. The hot loops are
Numba kernels (`_*_kernel`), each with a slow reference in tests/naive.py; `parallel` runs the serial ones on several
threads.
"""
from .anchors import anchor_strides, cell_anchors, grid_anchors, num_anchors_per_level
from .boxes import (BBOX_XFORM_CLIP, box_area, box_iou, clip_boxes, decode_boxes, encode_boxes,
                    remove_small_boxes)
from .nms import batched_nms, nms
from .paste import paste_masks
from .resize import resize_bilinear, resize_image, resized_size
from .roi_align import channels_last_views, fpn_levels, infer_scales, multiscale_roi_align, roi_align

__all__ = [
    "BBOX_XFORM_CLIP", "anchor_strides", "batched_nms", "box_area", "box_iou", "cell_anchors", "channels_last_views",
    "clip_boxes", "decode_boxes", "encode_boxes", "fpn_levels", "grid_anchors", "infer_scales", "multiscale_roi_align",
    "nms", "num_anchors_per_level", "paste_masks", "remove_small_boxes", "resize_bilinear", "resize_image",
    "resized_size", "roi_align",
]
