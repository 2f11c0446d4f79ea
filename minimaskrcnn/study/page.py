"""The words of `explain`: one section per stage (title, the trace entries it shows, what it does and where the
formula comes from), and the `index.html` that walks through the pictures in order. Also used by
examples/walkthrough.py for its Markdown.

References: ResNet (He et al. 2016), Fast R-CNN (Girshick 2015), Faster R-CNN (Ren et al. 2015), FPN (Lin et al. 2017),
Mask R-CNN (He et al. 2017); torchvision's numerics: ../shared/reference/torchvision-inference-facts.md ("facts §N").
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

import numpy as np

REFERENCES = (
    ("He et al. 2016", "Deep Residual Learning for Image Recognition", "https://arxiv.org/abs/1512.03385"),
    ("Girshick 2015", "Fast R-CNN", "https://arxiv.org/abs/1504.08083"),
    ("Ren et al. 2015", "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks",
     "https://arxiv.org/abs/1506.01497"),
    ("Lin et al. 2017", "Feature Pyramid Networks for Object Detection", "https://arxiv.org/abs/1612.03144"),
    ("He et al. 2017", "Mask R-CNN", "https://arxiv.org/abs/1703.06870"),
)


@dataclass
class Section:
    key: str                 # picture name, e.g. "fpn"
    title: str
    entries: list            # trace names whose shapes and ranges the section lists
    timings: list            # Trace.timings stages the section covers
    text: str                # one paragraph, plain text
    path: str = ""           # the picture, once written


def sections(trace, cfg) -> list:
    """The stages of this trace in forward order (the mask sections only for Mask R-CNN)."""
    hp, wp = trace["normalized"].shape[1:]
    h, w = (int(v) for v in trace["image_size"])
    maps = [k for k in trace if re.fullmatch(r"[CP]\d+", k)]
    levels = [k for k in maps if k[0] == "P"]
    a = len(cfg.aspect_ratios) * len(cfg.anchor_sizes[0])
    sizes = ", ".join(str(s[0]) for s in cfg.anchor_sizes)
    n_boxes, n_props = len(trace["boxes"]), len(trace["proposals"])
    head = (f"{cfg.box_head_convs} 3x3 convolutions and one fully connected layer" if cfg.box_head_convs else
            "two fully connected layers, Lin et al. 2017 §4.2")
    out = [
        Section("input", "Network input", ["image", "normalized", "image_size"], ["transform"],
                f"Each channel is normalized with the ImageNet statistics, (x - mean) / std; the image is then resized "
                f"bilinearly so that its shorter side is {cfg.min_size} px unless the longer would exceed "
                f"{cfg.max_size} px (here to {h}x{w}), and padded at the bottom and right with zeros to {hp}x{wp}, a "
                f"multiple of {cfg.size_divisible}, so that every stride of the pyramid divides it. A zero after "
                f"normalization is the mean colour, which is what the padding looks like here. Boxes stay in these "
                f"resized pixels until the very end (facts §1)."),
        Section("fpn", "Backbone and feature pyramid", maps, ["backbone", "fpn"],
                f"A ResNet-{cfg.resnet_depth} (He et al. 2016) computes C maps of decreasing resolution (strides 4 to "
                f"32). The Feature Pyramid Network (Lin et al. 2017, §3) turns them into {len(levels)} maps of "
                f"{cfg.fpn_channels} channels: a 1x1 lateral convolution of each C map is added to the 2x "
                f"nearest-neighbour upsampled map of the level above, and a 3x3 convolution smooths the sum; the last "
                f"level is a stride-2 subsampling of the one below it, used by the RPN only. Every level carries "
                f"semantics from the top of the network at its own resolution. The heat maps show the mean absolute "
                f"activation over the channels: where a level responds strongly, not what it responds to."),
        Section("anchors", "Anchors", ["anchors"], ["rpn"],
                f"Anchors (Ren et al. 2015, §3.1.1) are the reference boxes the RPN scores and refines: at every "
                f"position of every level, {a} boxes of one size ({sizes} px from the finest level to the coarsest, "
                f"Lin et al. 2017 §4.1) and aspect ratios {', '.join(f'{r:g}' for r in cfg.aspect_ratios)} (height / "
                f"width). torchvision puts each anchor's centre on the top-left corner of its cell, without a "
                f"half-stride offset, and neither clips nor shifts them; the stride of a level is the padded size "
                f"divided by its grid size, rounded down (facts §3). {len(trace['anchors']):,} anchors in all, most "
                f"of them on the finest level."),
        Section("objectness", "RPN objectness", ["objectness", "rpn_deltas"], ["rpn"],
                f"The RPN head (Ren et al. 2015, §3.1), shared by all levels (Lin et al. 2017, §4.1), is a 3x3 "
                f"convolution with ReLU followed by two 1x1 convolutions: {a} objectness logits and {4 * a} box deltas "
                f"(dx, dy, dw, dh) per position, one set per anchor. Flattened in (row, column, anchor) order they "
                f"line up with the anchors. The maps show, per position, the highest objectness probability "
                f"(sigmoid of the logit) of its anchors."),
        Section("proposals", "Region proposals", ["proposals", "proposal_scores"], ["rpn"],
                f"Each anchor's deltas are decoded by inverting the box parameterization of Ren et al. 2015, Eq. 2: "
                f"x = x_a + dx w_a, y = y_a + dy h_a, w = w_a exp(dw), h = h_a exp(dh). Per level the "
                f"{cfg.rpn_pre_nms_top_n} anchors with the highest logits are decoded, clipped to the resized image "
                f"and stripped of empty boxes; non-maximum suppression at IoU {cfg.rpn_nms_thresh} runs per level, and "
                f"the {cfg.rpn_post_nms_top_n} best survivors over all levels are the proposals ({n_props} here). "
                f"Colours are objectness probabilities: left, the best candidates before NMS, many near-duplicates; "
                f"right, the best proposals after it (facts §4.4)."),
        Section("roi_levels", "RoI level assignment and RoIAlign", ["roi_levels", "box_features"], ["box_branch"],
                f"Each proposal is pooled from one pyramid level chosen by its size, FPN Eq. 1 (Lin et al. 2017): "
                f"k = floor(k0 + log2(sqrt(wh) / 224)) with k0 = 4, clamped to the available levels, so a 224 px box "
                f"reads P4, a box half as large P3. RoIAlign (He et al. 2017, §3) then samples a "
                f"{cfg.box_roi_size}x{cfg.box_roi_size} grid of bins inside the box on that level, averaging "
                f"{cfg.sampling_ratio}x{cfg.sampling_ratio} bilinear samples per bin, without rounding coordinates. "
                f"The chart shows every proposal's sqrt(wh) and its level, with the level boundaries."),
        Section("refinement", "Classification and box refinement", ["class_logits", "box_deltas", "boxes", "scores",
                                                                    "labels"], ["box_branch"],
                f"The box head ({head}; Fast R-CNN, Girshick 2015) gives every proposal a softmax over the "
                f"{cfg.num_classes} classes and a delta per class, decoded as in the RPN with weights {', '.join(f'{x:g}' for x in cfg.bbox_reg_weights)}. Every (proposal, "
                f"class) pair scoring above the threshold becomes a candidate; NMS at IoU {cfg.box_nms_thresh} per "
                f"class and a cap of {cfg.box_detections_per_img} give the detections ({n_boxes} here). The picture "
                f"links each detection to the proposal it was refined from, found from the trace: the proposal whose "
                f"decoded class box and class probability reproduce the detection (facts §6)."),
    ]
    if cfg.masks:
        out += [
            Section("mask_probs", "Mask probabilities", ["mask_features", "mask_logits", "mask_probs"],
                    ["mask_branch"],
                    f"The mask branch of Mask R-CNN (He et al. 2017, §3) pools {cfg.mask_roi_size}x"
                    f"{cfg.mask_roi_size} RoIAlign features for each final box, applies four 3x3 convolutions, a 2x "
                    f"transposed convolution and a 1x1 convolution with one output per class, and keeps the "
                    f"{2 * cfg.mask_roi_size}x{2 * cfg.mask_roi_size} map of the predicted class only: masks and "
                    f"classes are decoupled, and each pixel is an independent sigmoid probability (the per-pixel "
                    f"binary loss of He et al. 2017, §3). Left of each map: the image inside the box, stretched the "
                    f"same way."),
            Section("pasted", "Masks pasted into the image", ["final_boxes", "masks"], ["postprocess"],
                    "Boxes are scaled back to the original image (one ratio per axis, facts §1). Each small "
                    "probability map gets a one-pixel zero border, its box is enlarged by the same proportion, and "
                    "the map is resized bilinearly onto the box's pixels of a full-size image (facts §7). The "
                    "result is a probability per pixel; torchvision's convention binarizes it at 0.5."),
        ]
    out.append(Section("result", "Result", [], [],
                       "The detections in the original image: each mask binarized at 0.5 and tinted, with its box "
                       "and its class and score."))
    return out


def entry_rows(trace, names) -> list:
    """[(name, shape, dtype, min, max)] of the trace entries present."""
    rows = []
    for name in names:
        if name not in trace:
            continue
        a = np.asarray(trace[name])
        lo, hi = (f"{a.min():.5g}", f"{a.max():.5g}") if a.size and np.issubdtype(a.dtype, np.number) else ("-", "-")
        rows.append((name, str(tuple(a.shape)), str(a.dtype), lo, hi))
    return rows


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.5}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0 2em}
td,th{border:1px solid #ccc;padding:2px 8px;font-family:monospace;font-size:90%}th{background:#f2f2f2}
.note{background:#fff6d6;padding:.5em 1em;border-left:4px solid #e0b000}"""


def write_index(path, secs, trace, cfg, det, note: str = "") -> None:
    """index.html: an introduction, then per section its picture, paragraph, entries table and time."""
    import os
    from minimaskrcnn.atomic import atomic_path
    e = html.escape
    timings = getattr(trace, "timings", {})
    h, w = trace["image"].shape[1:]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Mask R-CNN, stage by stage</title>"
             f"<style>{_STYLE}</style></head><body><h1>Mask R-CNN, stage by stage</h1>",
             f"<p>One {h}x{w} image through {'Mask' if cfg.masks else 'Faster'} R-CNN with a ResNet-"
             f"{cfg.resnet_depth}-FPN, {len(det)} detections above the score threshold, "
             f"{sum(timings.values()):.1f} s in all. Shapes are those of the trace "
             f"(<code>model.predict(image, trace=True)</code>); feature maps are (channels, height, width), boxes "
             f"x1, y1, x2, y2 in resized-image pixels unless named final_boxes. \"facts §N\" are the sections of "
             f"the torchvision inference facts this implementation follows "
             f"(../shared/reference/torchvision-inference-facts.md).</p>"]
    if note:
        parts.append(f"<p class='note'>{e(note)}</p>")
    parts.append("<ol>" + "".join(f"<li><a href='#{s.key}'>{e(s.title)}</a></li>" for s in secs) + "</ol>")
    timed = set()
    for i, s in enumerate(secs, 1):
        new = [t for t in s.timings if t in timings and t not in timed]       # each stage's time shown once
        timed.update(new)
        seconds = sum(timings[t] for t in new)
        stage_time = f" <small>({', '.join(new)}: {seconds:.2f} s)</small>" if new else ""
        parts.append(f"<h2 id='{s.key}'>{i}. {e(s.title)}{stage_time}</h2>"
                     f"<p><img src='{e(os.path.basename(s.path))}' alt='{e(s.title)}'></p><p>{e(s.text)}</p>")
        rows = entry_rows(trace, s.entries)
        if rows:
            parts.append("<table><tr><th>trace entry</th><th>shape</th><th>dtype</th><th>min</th><th>max</th></tr>"
                         + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")
    parts.append("<h2>References</h2><ul>" + "".join(f"<li>{e(a)}: <a href='{u}'>{e(t)}</a></li>"
                                                     for a, t, u in REFERENCES) + "</ul></body></html>")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
