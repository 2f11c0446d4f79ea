"""minimaskrcnn: Mask R-CNN instance segmentation in readable NumPy with Numba-jitted hot loops.

Reproduces torchvision's `maskrcnn_resnet50_fpn` / `fasterrcnn_resnet50_fpn` (v1 and v2) from converted weights.
"""
__version__ = "0.1.0"
