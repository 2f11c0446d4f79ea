"""The matterport family's spine: matterport/Mask_RCNN's `MaskRCNN.detect` (inference mode), one call per stage.

    load_matterport(cfg, weights) -> MatterportMaskRCNN;   .predict(image) -> minimaskrcnn.detections.Detections

The stages, in the order they run (each module says how it differs from torchvision's family):
mold -> backbone -> fpn -> anchors -> rpn -> proposals -> roi_align + heads (box) -> detection ->
roi_align + heads (mask) -> unmold. `predict(..., trace=True)` records every intermediate under matterport's names
in a `minimaskrcnn.trace.Trace`: maps channels-last (H, W, C) as Keras has them, boxes [.., (y1, x1, y2, x2)]
normalized, as matterport's `run_graph` returns them. Only the final `Detections` use this project's conventions:
boxes converted at this boundary from matterport's integer (y1, x1, y2, x2) to float32 (x1, y1, x2, y2) original
pixels; labels = matterport class ids; masks (N, H, W) float32 with `masks >= 0.5` equal to matterport's masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minimaskrcnn.detections import Detections
from minimaskrcnn.image import read_image
from minimaskrcnn.matterport import backbone as bb, fpn as fp, heads as hd, rpn as rp
from minimaskrcnn.matterport.anchors import pyramid_anchors
from minimaskrcnn.matterport.detection import detect, normalized_window
from minimaskrcnn.matterport.mold import mold_image
from minimaskrcnn.matterport.proposals import proposals
from minimaskrcnn.matterport.roi_align import pyramid_roi_align
from minimaskrcnn.matterport.unmold import unmold_boxes, unmold_masks
from minimaskrcnn.trace import Trace, trace_to_fill


@dataclass(frozen=True)
class MatterportMaskRCNN:
    cfg: object                  # minimaskrcnn.matterport.config.MatterportConfig
    backbone: bb.Backbone
    fpn: fp.FPN
    rpn: rp.RPNHead
    box_head: hd.BoxHead
    mask_head: hd.MaskHead
    class_names: tuple

    def predict(self, image, score_threshold=None, trace=False):
        """Detections of `image`; with trace=True, (Detections, Trace); with a Trace, that one filled (`Trace(
        keep_arrays=False)`: the stage timings alone). A list of images gives a list of results.

        image: what `MaskRCNN.predict` accepts (a path, a PIL image, an (H, W, 3) uint8 RGB array, or a float array in
            [0, 1], which is taken as round(255 x): matterport molds 0-255 pixel values; `minimaskrcnn.image`).
        score_threshold: keep detections scoring at least this, on top of cfg.DETECTION_MIN_CONFIDENCE.
        """
        if isinstance(image, (list, tuple)):
            if isinstance(trace, Trace):
                raise ValueError("trace: a Trace records one image; pass trace=True for a list of images")
            return [self.predict(im, score_threshold, trace) for im in image]
        t, returned = trace_to_fill(trace)
        image = read_image(image)                                               # (H, W, 3) uint8 or float32
        if image.dtype != np.uint8:
            image = np.rint(image * np.float32(255)).astype(np.uint8)          # float in [0, 1] -> 0..255
        with t.timed("mold"):
            molded, window, _ = mold_image(image, self.cfg)                     # (Hp, Wp, 3), (4,)
        det, t = self.detect_molded(molded, window, image.shape, score_threshold, t)
        return (det, t) if returned else det

    def detect_molded(self, molded, window, original_shape, score_threshold=None, trace=False):
        """The network from a molded image (Hp, Wp, 3) float32 and its pixel window (y1, x1, y2, x2) on, for an
        original image of `original_shape` (matterport's `detect_molded`, used to feed its own molded input);
        `trace` as `predict`'s."""
        cfg, (t, returned) = self.cfg, trace_to_fill(trace)
        molded = np.asarray(molded, np.float32)
        if molded.ndim != 3 or molded.shape[2] != 3 or molded.shape[0] % 64 or molded.shape[1] % 64:
            raise ValueError(f"molded: expected (Hp, Wp, 3) with Hp, Wp multiples of 64, got {molded.shape}")
        window = np.asarray(window)
        shape = tuple(original_shape[:2])                                        # (H, W) of the original image
        t.record(molded=molded, window=window)
        with t.timed("backbone"):
            c = bb.backbone(np.ascontiguousarray(molded.transpose(2, 0, 1)), self.backbone)   # [(C, h, w)] x 4
        with t.timed("fpn"):
            p = fp.fpn(c, self.fpn)                                              # [(256, h, w)] x 5
        t.record(**{f"C{k + 2}": x.transpose(1, 2, 0) for k, x in enumerate(c)},
                 **{f"P{k + 2}": x.transpose(1, 2, 0) for k, x in enumerate(p)})
        with t.timed("rpn"):
            anchors = pyramid_anchors(molded.shape, cfg)                        # (A, 4)
            logits, probs, deltas = rp.rpn_head(p, self.rpn)                    # (A, 2), (A, 2), (A, 4)
            rois = proposals(probs, deltas, anchors, cfg)                       # (R, 4)
        t.record(anchors=anchors, rpn_class_logits=logits, rpn_class=probs, rpn_bbox=deltas, ROI=rois)
        with t.timed("box branch"):
            maps = [np.ascontiguousarray(x.transpose(1, 2, 0)) for x in p[:4]]  # P2..P5 (h, w, 256)
            pooled = pyramid_roi_align(rois, maps, molded.shape, cfg.POOL_SIZE)  # (R, 7, 7, 256)
            cls_logits, cls_probs, bbox = hd.box_head(pooled, self.box_head)    # (R, K), (R, K), (R, K, 4)
            dets = detect(rois, cls_probs, bbox, normalized_window(window, molded.shape), cfg)   # (D, 6)
        t.record(roi_align_classifier=pooled, mrcnn_class_logits=cls_logits, mrcnn_class=cls_probs,
                 mrcnn_bbox=bbox, mrcnn_detection=dets)
        with t.timed("mask branch"):
            boxes, class_ids, scores, rows = unmold_boxes(dets, window, molded.shape, shape)
            pooled = pyramid_roi_align(dets[rows, :4], maps, molded.shape, cfg.MASK_POOL_SIZE)   # (N, 14, 14, 256)
            masks = hd.mask_head(pooled, self.mask_head)                        # (N, 28, 28, K)
            own = masks[np.arange(len(rows)), :, :, class_ids]                  # (N, 28, 28)
            full = unmold_masks(own, boxes, shape)                              # (N, H, W)
        t.record(roi_align_mask=pooled, mrcnn_mask=masks, boxes_yxyx=boxes)
        keep = np.ones(len(scores), bool) if score_threshold is None else scores >= score_threshold
        det = Detections(boxes[keep][:, [1, 0, 3, 2]].astype(np.float32),     # (y1, x1, y2, x2) -> (x1, y1, x2, y2)
                         class_ids[keep].astype(np.int64), scores[keep].astype(np.float32), full[keep],
                         self.class_names, shape)
        return (det, t) if returned else det


def load_matterport(cfg, weights, class_names=None) -> MatterportMaskRCNN:
    """The network for `cfg` (MatterportConfig) from Keras weights {"<layer>/<weight>:0": array}."""
    names = tuple(class_names or cfg.class_names)
    if len(names) != cfg.NUM_CLASSES:
        raise ValueError(f"class_names: expected {cfg.NUM_CLASSES} names (background first), got {len(names)}")
    return MatterportMaskRCNN(cfg, bb.load_backbone(weights, cfg.BACKBONE), fp.load_fpn(weights),
                              rp.load_rpn(weights, cfg.RPN_ANCHOR_STRIDE), hd.load_box_head(weights),
                              hd.load_mask_head(weights), tuple(names))
