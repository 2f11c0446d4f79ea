"""Model configuration: every architectural choice and inference constant, kept apart from weights and activations.

A converted weights file carries its `Config` as JSON metadata (see `weights_convert`), so a model is fully described
by its `.npz`. Defaults are torchvision's `maskrcnn_resnet50_fpn` (COCO v1); every constant names where it comes from
(`torchvision/models/detection/...`, shared/reference/torchvision-inference-facts.md section numbers as "facts §N").
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

# torchvision `_COCO_CATEGORIES` (models/_meta.py): index == original COCO category id, 'N/A' for unused ids.
COCO_CATEGORIES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


@dataclass(frozen=True)
class Config:
    """Architecture and inference constants of a torchvision-style Mask R-CNN / Faster R-CNN with a ResNet-FPN body."""

    # --- backbone (torchvision models/resnet.py; facts §2.1) -------------------------------------------------------
    resnet_depth: int = 50                      # 18/34 use BasicBlock, 50/101 Bottleneck
    returned_layers: tuple = (1, 2, 3, 4)       # ResNet stages fed to the FPN (layer1 = stride 4)
    bn_eps: float = 1e-5                        # 0.0 for torchvision's COCO v1 checkpoints (overwrite_eps, facts §2.1)
    # --- FPN (ops/feature_pyramid_network.py; facts §2.2) ----------------------------------------------------------
    fpn_channels: int = 256
    fpn_norm: bool = False                      # v2: conv without bias + BatchNorm
    # --- RPN (models/detection/rpn.py, faster_rcnn._default_anchorgen; facts §3, §4) ----------------------------
    anchor_sizes: tuple = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    rpn_conv_depth: int = 1                     # v2: 2
    rpn_pre_nms_top_n: int = 1000               # per level, testing
    rpn_post_nms_top_n: int = 1000              # testing
    rpn_nms_thresh: float = 0.7
    rpn_score_thresh: float = 0.0
    rpn_min_size: float = 1e-3
    # --- RoI heads (roi_heads.py, faster_rcnn.py, mask_rcnn.py; facts §5, §6, §7) ----------------------------------
    box_head_convs: int = 0                     # v2: 4 conv+BN+ReLU blocks before one FC
    representation_size: int = 1024
    box_roi_size: int = 7
    mask_roi_size: int = 14
    sampling_ratio: int = 2
    masks: bool = True                          # False for Faster R-CNN
    mask_head_layers: tuple = (256, 256, 256, 256)
    mask_head_norm: bool = False                # v2: conv without bias + BatchNorm
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    bbox_reg_weights: tuple = (10.0, 10.0, 5.0, 5.0)   # roi_heads BoxCoder weights; RPN uses (1, 1, 1, 1)
    # --- classes ----------------------------------------------------------------------------------------------------
    num_classes: int = 91                       # including background at index 0
    class_names: tuple = COCO_CATEGORIES
    # --- transform (transform.py, FasterRCNN.__init__; facts §1) ----------------------------------------------------
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)
    size_divisible: int = 32

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries, num_classes is {self.num_classes}")

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        # JSON turns tuples into lists; freeze them back so the Config stays hashable.
        return cls(**{k: _freeze(v) for k, v in d.items()})


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


# The four torchvision architectures, as configurations (torchvision models/detection/{mask,faster}_rcnn.py).
MASKRCNN_RESNET50_FPN = Config()
FASTERRCNN_RESNET50_FPN = Config(masks=False)
MASKRCNN_RESNET50_FPN_V2 = Config(fpn_norm=True, rpn_conv_depth=2, box_head_convs=4, mask_head_norm=True)
FASTERRCNN_RESNET50_FPN_V2 = Config(fpn_norm=True, rpn_conv_depth=2, box_head_convs=4, masks=False)
