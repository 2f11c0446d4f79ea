"""The spine: Mask R-CNN / Faster R-CNN inference, one call per stage (cf. torchvision generalized_rcnn.py).

    image -> transform -> ResNet body -> FPN -> RPN -> box branch -> mask branch -> rescale + paste -> Detections

Config (`config.py`), weights (`Weights`, prepared once at load time, BatchNorm folded) and activations (`Trace`) are
kept apart: every stage is a pure function of weights and inputs, and this module is the only one that records the
named intermediates of a run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from minimaskrcnn.image import to_network_input
from minimaskrcnn.config import Config
from minimaskrcnn.detections import Detections
from minimaskrcnn import ops
from minimaskrcnn.stages import backbone, box_head, fpn, mask_head, rpn, transform
from minimaskrcnn.trace import Trace, trace_to_fill


@dataclass
class Weights:
    """Prepared arrays of every stage (float32, BatchNorm folded into the convolutions)."""

    backbone: Any
    fpn: Any
    rpn_head: Any
    box_head: Any
    mask_head: Optional[Any]        # None for Faster R-CNN

    @classmethod
    def from_state_dict(cls, sd, cfg: Config) -> "Weights":
        """sd: torchvision state-dict names -> arrays (see weights_convert.layout for the full key list)."""
        return cls(backbone.load_backbone(sd, cfg), fpn.load_fpn(sd, cfg), rpn.load_rpn_head(sd, cfg),
                   box_head.load_box_head(sd, cfg), mask_head.load_mask_head(sd, cfg) if cfg.masks else None)


class MaskRCNN:
    """A loaded model. `predict` runs one image (or a list, one by one) through every stage."""

    def __init__(self, config: Config, weights: Weights):
        self.config, self.weights = config, weights

    @property
    def class_names(self) -> tuple:
        return self.config.class_names

    def predict(self, image, score_threshold: Optional[float] = None, trace: bool | Trace = False):
        """Detect and segment the objects of `image`.

        image: an (H, W, 3) uint8 RGB array, an (H, W, 3) float array in [0, 1], a PIL image or a file path; or a
            list of these (results equal predicting them one by one). See `minimaskrcnn.image.read_image` for greyscale,
            RGBA, palette, 16-bit and EXIF-rotated inputs.
        score_threshold: keep detections whose class probability is above it; default torchvision's 0.05.
        trace: also return the `Trace` of named intermediates and stage timings; or a `Trace` to fill and return,
            e.g. `Trace(keep_arrays=False)` for the stage timings alone, without holding every intermediate.
        Returns `Detections` (or `(Detections, Trace)`; a list of these for a list of images).
        """
        if isinstance(image, (list, tuple)):
            if isinstance(trace, Trace):
                raise ValueError("trace: a Trace records one image; pass trace=True for a list of images")
            return [self.predict(im, score_threshold, trace) for im in image]
        thresh = self.config.box_score_thresh if score_threshold is None else float(score_threshold)
        t, returned = trace_to_fill(trace)
        detections = self._forward(to_network_input(image), thresh, t)   # (3, H, W) float32 in [0, 1]
        return (detections, t) if returned else detections

    def _forward(self, image, score_thresh: float, t: Trace) -> Detections:
        cfg, w = self.config, self.weights
        original_size = image.shape[1:]
        with t.timed("transform"):
            x, size = transform.preprocess(image, cfg)                            # (3, Hp, Wp), (h, w)
        t.record(image=image, normalized=x, image_size=np.array(size, np.int64))
        with t.timed("backbone"):
            c = backbone.backbone_forward(w.backbone, x)                          # C2..C5 (C, Hl, Wl)
        t.record(**{f"C{layer + 1}": m for layer, m in zip(cfg.returned_layers, c)})
        with t.timed("fpn"):
            p = fpn.fpn_forward(w.fpn, c)                                         # P2..P6 (256, Hl, Wl)
        t.record(**{f"P{layer + 1}": m for layer, m in zip(cfg.returned_layers + (cfg.returned_layers[-1] + 1,), p)})
        del c                   # not needed past the FPN (kept only in a trace): ~100 MB less at every later peak
        with t.timed("rpn"):
            r = rpn.rpn_forward(w.rpn_head, p, x.shape[1:], size, cfg)
        t.record(**r._asdict())
        with t.timed("box_branch"):
            p = [*ops.channels_last_views(p[:-1]), p[-1]]    # P2..P5 in RoIAlign's layout, once for both heads
            b = box_head.box_forward(w.box_head, p, r.proposals, size, cfg, score_thresh)
        t.record(**b._asdict())
        masks = None
        if cfg.masks:
            with t.timed("mask_branch"):
                m = mask_head.mask_forward(w.mask_head, p, b.boxes, b.labels, size, cfg)
            t.record(**m._asdict())
        del p                   # nor the pyramid past the heads: the pasted masks are the last and largest arrays
        with t.timed("postprocess"):
            boxes = transform.rescale_boxes(b.boxes, size, original_size)         # (D, 4) original pixels
            if cfg.masks:
                masks = transform.paste(m.mask_probs, boxes, original_size)       # (D, H, W)
        t.record(final_boxes=boxes, **({"masks": masks} if cfg.masks else {}))
        return Detections(boxes, b.labels, b.scores, masks, cfg.class_names, tuple(original_size))


def load(weights, config=None, class_names=None):
    """A model from a converted `.npz`, a torchvision `.pth` (converted once, cached) or an official name.

    matterport-family weights (matterport's Keras `.h5`, a pytorch-mask-rcnn `.pth`, or a `.npz` converted from
    either; converted once and cached like a `.pth`) give `minimaskrcnn.matterport`'s model: `config` overrides
    matterport Config attributes ({"IMAGE_MIN_DIM": 512, ...}), `class_names` the class names (with or without "BG").

    Official names: maskrcnn_resnet50_fpn_coco, fasterrcnn_resnet50_fpn_coco and their _v2_ variants (downloaded once
    into $MINIMASKRCNN_HOME, default ~/.cache/minimaskrcnn).
    """
    from minimaskrcnn.weights import load_matterport_weights, load_weights, resolve_weights, weights_family
    path = resolve_weights(weights)
    if weights_family(path) == "matterport":
        from minimaskrcnn.matterport.model import load_matterport
        cfg, arrays = load_matterport_weights(path, config, class_names)
        return load_matterport(cfg, arrays, class_names=cfg.class_names)
    if config is not None or class_names is not None:
        raise ValueError("config= and class_names= apply to matterport-family weights (a Keras .h5); torchvision "
                         "weights carry their configuration (weights-convert --set / --class-names)")
    cfg, sd = load_weights(path)
    return MaskRCNN(cfg, Weights.from_state_dict(sd, cfg))
