"""Capture torchvision's intermediates under minimaskrcnn's trace names, for stage-by-stage comparison.

torchvision exposes no intermediates, so this wraps a torchvision Mask R-CNN / Faster R-CNN with forward hooks and
method wrappers for one eval-mode forward of one image, and returns a `Trace` whose names, layouts and coordinate
conventions equal `MaskRCNN.predict(..., trace=True)`'s (feature maps (C, H, W), boxes x1, y1, x2, y2 in
resized-image pixels unless named `final_boxes`). torch is imported only when this module is used; it is never a
dependency of inference.
"""
from __future__ import annotations

import numpy as np

from .rpn import flatten_head_outputs
from .trace import Trace


def _np(t):
    return t.detach().cpu().numpy()


def torchvision_trace(model, image: np.ndarray) -> Trace:
    """Run `model` (a torchvision detection model in eval mode) on `image` (3, H, W) float32 in [0, 1]."""
    import torch

    got = {}
    hooks = []

    def hook(name):
        def fn(module, inputs, output):
            got[name] = (inputs, output)
        return fn

    def wrap(obj, method):
        original = getattr(obj, method)

        def wrapper(*args, **kwargs):
            out = original(*args, **kwargs)
            got[method] = (args, out)
            return out
        setattr(obj, method, wrapper)
        return lambda: delattr(obj, method)          # drop the instance attribute, back to the class method

    rh = model.roi_heads
    for name, module in [("transform", model.transform), ("body", model.backbone.body), ("fpn", model.backbone.fpn),
                         ("rpn_head", model.rpn.head), ("anchors", model.rpn.anchor_generator),
                         ("box_roi_pool", rh.box_roi_pool), ("box_predictor", rh.box_predictor)]:
        hooks.append(module.register_forward_hook(hook(name)))
    if rh.has_mask():
        for name, module in [("mask_roi_pool", rh.mask_roi_pool), ("mask_predictor", rh.mask_predictor)]:
            hooks.append(module.register_forward_hook(hook(name)))
    undo = [wrap(model.rpn, "filter_proposals"), wrap(rh, "postprocess_detections")]
    try:
        with torch.no_grad():
            out = model([torch.from_numpy(np.ascontiguousarray(image, np.float32))])[0]
    finally:
        for h in hooks:
            h.remove()
        for u in undo:
            u()

    t = Trace()
    images = got["transform"][1][0]
    t.record(image=np.asarray(image, np.float32), normalized=_np(images.tensors[0]))
    body = got["body"][1]
    t.record(**{f"C{i + 2}": _np(v[0]) for i, v in enumerate(body.values())})
    fpn = got["fpn"][1]
    t.record(**{f"P{i + 2}": _np(v[0]) for i, v in enumerate(fpn.values())})
    objectness, deltas = got["rpn_head"][1]
    logits, rpn_deltas = flatten_head_outputs([_np(o[0]) for o in objectness], [_np(d[0]) for d in deltas])
    proposals, proposal_scores = (x[0] for x in got["filter_proposals"][1])
    t.record(anchors=_np(got["anchors"][1][0]), objectness=logits, rpn_deltas=rpn_deltas,
             proposals=_np(proposals), proposal_scores=_np(proposal_scores))
    pool = rh.box_roi_pool
    t.record(roi_levels=_np(pool.map_levels([proposals])).astype(np.int64),
             box_features=_np(got["box_roi_pool"][1]))
    class_logits, box_deltas = got["box_predictor"][1]
    t.record(class_logits=_np(class_logits), box_deltas=_np(box_deltas))
    boxes, scores, labels = (x[0] for x in got["postprocess_detections"][1])
    t.record(boxes=_np(boxes), scores=_np(scores), labels=_np(labels).astype(np.int64))
    if rh.has_mask():
        lab = labels.long()
        all_logits = got["mask_predictor"][1]                                    # (D, NC, 28, 28)
        mask_logits = all_logits[torch.arange(lab.numel()), lab]                 # (D, 28, 28)
        t.record(mask_features=_np(got["mask_roi_pool"][1]), mask_logits=_np(mask_logits),
                 mask_probs=_np(all_logits.sigmoid()[torch.arange(lab.numel()), lab]))
    t.record(final_boxes=_np(out["boxes"]))
    if "masks" in out:
        t.record(masks=_np(out["masks"][:, 0]))
    t.record(image_size=np.array(images.image_sizes[0], np.int64))
    return t
