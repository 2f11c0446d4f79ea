"""minimaskrcnn: Mask R-CNN instance segmentation in readable NumPy with Numba-jitted hot loops.

Reproduces torchvision's `maskrcnn_resnet50_fpn` / `fasterrcnn_resnet50_fpn` (v1 and v2) from converted weights:

    import minimaskrcnn
    model = minimaskrcnn.load("maskrcnn_resnet50_fpn_coco")   # or a converted .npz, or a torchvision .pth
    det = model.predict("photo.jpg")                          # boxes, labels, scores, masks, class_names
    minimaskrcnn.set_num_threads(1)                           # this process's share of the cores (Numba + BLAS)
    minimaskrcnn.reuse_freed_memory()                         # faster: malloc keeps freed feature maps (glibc)
"""
from minimaskrcnn._version import __version__

__all__ = ["load", "MaskRCNN", "Detections", "Config", "set_num_threads", "reuse_freed_memory", "__version__"]


def __getattr__(name):
    # Lazy, so that `minimaskrcnn --help` and `import minimaskrcnn.config` stay fast (no Numba import).
    if name in ("load", "MaskRCNN"):
        from minimaskrcnn import model
        return getattr(model, name)
    if name == "Detections":
        from minimaskrcnn.detections import Detections
        return Detections
    if name == "set_num_threads":                 # Numba's pool and every loaded BLAS (nn/threads.py)
        from minimaskrcnn.nn.threads import set_num_threads
        return set_num_threads
    if name == "reuse_freed_memory":              # glibc malloc keeps freed feature maps (nn/workspace.py)
        from minimaskrcnn.nn.workspace import reuse_freed_memory
        return reuse_freed_memory
    if name == "Config":
        from minimaskrcnn.config import Config
        return Config
    raise AttributeError(f"module 'minimaskrcnn' has no attribute {name!r}")
