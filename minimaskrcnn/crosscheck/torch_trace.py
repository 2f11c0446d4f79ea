"""Capture torchvision's intermediates under minimaskrcnn's trace names, for stage-by-stage comparison.

torchvision exposes no intermediates, so this wraps a torchvision Mask R-CNN / Faster R-CNN with forward hooks and
method wrappers for one eval-mode forward of one image, and returns a `Trace` whose names, layouts and coordinate
conventions equal `MaskRCNN.predict(..., trace=True)`'s (feature maps (C, H, W), boxes x1, y1, x2, y2 in
resized-image pixels unless named `final_boxes`). torch is imported only when this module is used; it is never a
dependency of inference.

    model = torchvision_model(config, state_dict)     # the torchvision twin of a converted minimaskrcnn model
    trace = torchvision_trace(model, image)           # its intermediates, by minimaskrcnn's stage names
"""
from __future__ import annotations

import numpy as np

from minimaskrcnn.stages.rpn import flatten_head_outputs
from minimaskrcnn.trace import Trace


def _np(t):
    return t.detach().cpu().numpy()


def import_torchvision():
    """(torch, torchvision), or an ImportError saying in one line what is missing and how to get it."""
    try:
        import torch
        import torchvision
        import torchvision.ops  # noqa: F401  (loads the compiled ops: fails when torch and torchvision mismatch)
    except Exception as e:   # ImportError, or a torch/torchvision build mismatch
        raise ImportError(f"the torchvision capture needs torch and torchvision (pip install torch torchvision): "
                          f"{' '.join(str(e).split())}") from None
    return torch, torchvision


def torchvision_model(config, state_dict):
    """The torchvision Mask R-CNN / Faster R-CNN described by a minimaskrcnn `Config`, loaded with `state_dict`
    (torchvision key -> array, as `weights_convert.read_npz` returns), in eval mode.

    Built from torchvision's parts as its builders do when loading trained weights (models/detection/
    {mask,faster}_rcnn.py, facts §2.1): the ResNet body with FrozenBatchNorm2d for v1 layouts (eps = config.bn_eps,
    0.0 for the COCO v1 checkpoints) and BatchNorm2d for v2 (BatchNorm FPN and heads); the anchor generator, heads,
    poolers and inference constants of the config. (A model built with weights=None has BatchNorm2d in a v1 body too:
    the same function, evaluated with other roundings, ~1 ulp.)
    """
    torch, tv = import_torchvision()
    from torch import nn
    from torchvision.models.detection import faster_rcnn, mask_rcnn, rpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import MultiScaleRoIAlign

    cfg = config
    norm = nn.BatchNorm2d if cfg.fpn_norm else tv.ops.misc.FrozenBatchNorm2d
    resnet = getattr(tv.models, f"resnet{cfg.resnet_depth}")(weights=None, norm_layer=norm)
    body = _resnet_fpn_extractor(resnet, 5, list(cfg.returned_layers), norm_layer=nn.BatchNorm2d if cfg.fpn_norm
                                 else None)
    for m in body.body.modules():
        if isinstance(m, (nn.BatchNorm2d, tv.ops.misc.FrozenBatchNorm2d)):
            m.eps = cfg.bn_eps
    c = body.out_channels
    anchors = AnchorGenerator(tuple(tuple(s) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),)
                              * len(cfg.anchor_sizes))
    names = [str(i) for i in range(len(cfg.returned_layers))]      # the poolers skip the extra level ('pool')
    if cfg.box_head_convs:
        box_head = faster_rcnn.FastRCNNConvFCHead((c, cfg.box_roi_size, cfg.box_roi_size),
                                                  [c] * cfg.box_head_convs, [cfg.representation_size],
                                                  norm_layer=nn.BatchNorm2d)
    else:
        box_head = faster_rcnn.TwoMLPHead(c * cfg.box_roi_size ** 2, cfg.representation_size)
    kwargs = dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(cfg.image_mean),
                  image_std=list(cfg.image_std), rpn_anchor_generator=anchors,
                  rpn_head=rpn.RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=cfg.rpn_conv_depth),
                  rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
                  rpn_nms_thresh=cfg.rpn_nms_thresh, rpn_score_thresh=cfg.rpn_score_thresh,
                  box_roi_pool=MultiScaleRoIAlign(names, cfg.box_roi_size, cfg.sampling_ratio), box_head=box_head,
                  box_predictor=faster_rcnn.FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
                  box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
                  box_detections_per_img=cfg.box_detections_per_img, bbox_reg_weights=tuple(cfg.bbox_reg_weights))
    if cfg.masks:
        reduced = state_dict["roi_heads.mask_predictor.conv5_mask.weight"].shape[1]   # (in, out, 2, 2)
        kwargs.update(mask_roi_pool=MultiScaleRoIAlign(names, cfg.mask_roi_size, cfg.sampling_ratio),
                      mask_head=mask_rcnn.MaskRCNNHeads(c, list(cfg.mask_head_layers), 1,
                                                        norm_layer=nn.BatchNorm2d if cfg.mask_head_norm else None),
                      mask_predictor=mask_rcnn.MaskRCNNPredictor(cfg.mask_head_layers[-1], reduced, cfg.num_classes))
        model = mask_rcnn.MaskRCNN(body, **kwargs)
    else:
        model = faster_rcnn.FasterRCNN(body, **kwargs)
    model.rpn.min_size = cfg.rpn_min_size
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"state_dict does not fit the torchvision model of this config: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return model.eval()


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
