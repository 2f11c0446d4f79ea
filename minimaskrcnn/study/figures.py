"""The stage pictures of `explain`: one function per stage, (H, W, 3) uint8 from a `View` of the trace.

Coordinates: boxes in the trace are x1, y1, x2, y2 in resized-image pixels (final_boxes: original pixels); a picture
shows them at a display scale `s` (display px per resized px), so a box is drawn at `box * s`.

Shape glossary
    fh, fw: a pyramid level's grid      A: anchors per location      P: proposals      D: detections
    k: detections shown (the best k by score)      side: a tile's size in display pixels
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from minimaskrcnn.render import draw as F
from minimaskrcnn.nn.layers import sigmoid
from minimaskrcnn.render.overlay import render_overlay
from minimaskrcnn.study.view import View, detection_sources, level_blocks, rpn_candidates
from minimaskrcnn.ops import box_iou

LEVEL_COLORS = ((230, 25, 75), (245, 130, 48), (60, 180, 75), (0, 130, 200), (145, 30, 180), (240, 50, 230))


def _stride_text(v: View, fh: int, fw: int) -> str:
    sh, sw = v.padded[0] // fh, v.padded[1] // fw
    return str(sh) if sh == sw else f"{sh}x{sw}"


def picture_input(v: View) -> np.ndarray:
    """The original image and the network input (de-normalized, padding hatched) at the same pixel scale."""
    img, s = v.scaled(round(v.max_side * 0.6))
    hp, wp = v.padded
    h, w = v.size
    draw = ImageDraw.Draw(img, "RGBA")
    for k in range(-round(hp * s), round(wp * s), 8):                          # hatch everything, then
        draw.line([(k, round(hp * s)), (k + round(hp * s), 0)], fill=(0, 0, 0, 90), width=1)
    img.paste(Image.fromarray(F.resize(v.input[:h, :w], round(w * s), round(h * s))), (0, 0))   # unhatch the image
    draw.rectangle([0, 0, w * s, h * s], outline=(230, 25, 75), width=2)
    hh, ww = v.original.shape[:2]
    scale = h / hh                                                             # resize factor (per axis ~equal)
    original = F.resize(v.original, round(ww * s), round(hh * s))              # original pixels at the same scale
    return F.row([F.panel(original, f"original {hh}x{ww}", "same pixel scale as the right"),
                  F.panel(np.asarray(img), f"network input {hp}x{wp}", f"resized x{scale:.3f} to {h}x{w} (red), "
                          f"padded to a multiple of {v.cfg.size_divisible} (hatched)")])


def picture_fpn(v: View) -> np.ndarray:
    """Mean |activation| of each pyramid level: at true relative scale (same pixels per cell), then stretched."""
    cell = max(1, round(v.max_side * 0.55 / v.trace[v.levels[0]].shape[2]))   # display pixels per cell
    true, same = [], []
    for name in v.levels:
        heat = np.abs(v.trace[name]).mean(0)                                   # (C, fh, fw) -> (fh, fw)
        lo, hi = np.percentile(heat, [1, 99])
        rgb = F.colormap(heat, lo, hi)                                         # (fh, fw, 3)
        fh, fw = heat.shape
        true.append(F.panel(F.resize(rgb, fw * cell, fh * cell, nearest=True), name, f"{fh}x{fw}", size=13))
        big = F.resize(rgb, round(v.max_side * 0.3), round(v.max_side * 0.3 * fh / fw), nearest=True)
        same.append(F.panel(big, f"{name}  stride {_stride_text(v, fh, fw)}", f"mean |x| {lo:.2g} .. {hi:.2g}",
                            size=13))
    channels = v.trace[v.levels[0]].shape[0]
    return F.column([F.panel(F.row(true, 8, "bottom"), "true relative scale (each level halves the grid)"),
                     F.panel(F.grid(same, 3), "each level stretched to the same size (colour range per level)"),
                     F.colorbar(0, 1, f"mean |activation| over the {channels} channels, from the level's 1st to "
                                      f"99th percentile", fmt="{:.0f}")])


def picture_anchors(v: View, location) -> np.ndarray:
    """All anchors at one location, one colour per level, and the anchor-centre grid of every level around it."""
    y, x = location
    img, s = v.scaled(round(v.max_side * 0.7), washed=True)
    draw = ImageDraw.Draw(img)
    anchors, items, windows = v.trace["anchors"], [], []
    for (name, (fh, fw), a, start), color in zip(level_blocks(v.trace), LEVEL_COLORS):
        sh, sw = v.padded[0] // fh, v.padded[1] // fw
        cy, cx = min(round(y / sh), fh - 1), min(round(x / sw), fw - 1)        # the nearest anchor centre
        first = start + (cy * fw + cx) * a                                     # flat index (y*fw + x)*A + a
        for box in anchors[first:first + a]:
            draw.rectangle([c * s for c in box], outline=color, width=2)
        size = int(anchors[first + a // 2, 2] - anchors[first + a // 2, 0])
        items.append((color, f"{name}: {size} px, cell ({cy},{cx})"))
        windows.append(_anchor_window(v, name, (fh, fw), (sh, sw), (cy, cx), color, a))
    draw.ellipse([x * s - 4, y * s - 4, x * s + 4, y * s + 4], fill=(0, 0, 0))
    ratios = ", ".join(f"{r:g}" for r in v.cfg.aspect_ratios)
    left = F.column([F.panel(np.asarray(img), f"the {len(items) * a} anchors nearest to (y {y:.0f}, x {x:.0f})",
                             f"one size per level, aspect ratios (h/w) {ratios}; resized-image pixels"),
                     F.legend(items[:3]), F.legend(items[3:])], gap=4)
    return F.row([left, F.panel(F.grid(windows, 2), "anchor centres nearby", "256x256 px around the location")])


def _anchor_window(v: View, name, shape, stride, cell, color, a) -> np.ndarray:
    """A 256x256 resized-pixel window with a dot at every anchor centre of the level, its chosen cell circled."""
    (fh, fw), (sh, sw), (cy, cx) = shape, stride, cell
    side, win = 150, 256
    y0, x0 = cy * sh - win / 2, cx * sw - win / 2
    crop = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(crop)
    k = side / win
    for gy in range(max(0, int(y0 // sh)), min(fh, int((y0 + win) // sh) + 1)):
        for gx in range(max(0, int(x0 // sw)), min(fw, int((x0 + win) // sw) + 1)):
            px, py = (gx * sw - x0) * k, (gy * sh - y0) * k
            draw.ellipse([px - 1, py - 1, px + 1, py + 1], fill=color)
    draw.ellipse([side / 2 - 5, side / 2 - 5, side / 2 + 5, side / 2 + 5], outline=(0, 0, 0), width=2)
    draw.rectangle([0, 0, side - 1, side - 1], outline=(180, 180, 180))
    return F.panel(np.asarray(crop), f"{name} stride {_stride_text(v, fh, fw)}",
                   f"{fh}x{fw}x{a} = {fh * fw * a:,} anchors", size=12)


def picture_objectness(v: View) -> np.ndarray:
    """Per level and location, the best objectness probability of its A anchors, at true relative scale."""
    blocks = level_blocks(v.trace)
    cell = max(1, round(v.max_side * 0.55 / blocks[0][1][1]))
    maps = []
    for name, (fh, fw), a, start in blocks:
        logits = v.trace["objectness"][start:start + fh * fw * a].reshape(fh, fw, a)   # (fh*fw*A,) -> (fh, fw, A)
        prob = sigmoid(logits.max(-1))                                              # (fh, fw)
        maps.append(F.panel(F.resize(F.colormap(prob, 0, 1), fw * cell, fh * cell, nearest=True), name,
                            f"max {prob.max():.3f}", size=13))
    return F.column([F.row(maps, 8, "bottom"), F.colorbar(0, 1, "objectness probability, the best of the anchors "
                                                                "of each location", fmt="{:.0f}")])


def _boxes_picture(v: View, boxes, colors, side, dashed=()) -> np.ndarray:
    """The washed network input with boxes (resized px), drawn in order; indices in `dashed` drawn dashed."""
    img, s = v.scaled(side, washed=True)
    draw = ImageDraw.Draw(img)
    dashed = set(int(i) for i in dashed)
    for i, (box, color) in enumerate(zip(boxes, colors)):
        if i in dashed:
            F.dashed_rectangle(draw, box * s, color, 2, 5)
        else:
            draw.rectangle(list(box * s), outline=color, width=2)
    return np.asarray(img)


def picture_proposals(v: View, n: int) -> np.ndarray:
    """The n best candidates before NMS (those NMS removes dashed) and the n best proposals after, coloured by
    objectness probability."""
    (cand, cand_scores, _), proposals = rpn_candidates(v.trace, v.cfg)
    order = np.argsort(-cand_scores, kind="stable")[:n][::-1]                  # best drawn last
    kept = {b.tobytes() for b in proposals}
    removed = [i for i, b in enumerate(cand[order]) if b.tobytes() not in kept]
    props, scores = v.trace["proposals"][:n][::-1], v.trace["proposal_scores"][:n][::-1]
    shown = np.concatenate([cand_scores[order], scores])
    lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    side = round(v.max_side * 0.6)
    before = _boxes_picture(v, cand[order], [F.color_of(c, lo, hi) for c in cand_scores[order]], side, removed)
    after = _boxes_picture(v, props, [F.color_of(c, lo, hi) for c in scores], side)
    return F.column([F.row([
        F.panel(before, f"before NMS: the best {len(order)} of {len(cand)} candidates",
                f"top {v.cfg.rpn_pre_nms_top_n} per level; dashed: removed by NMS ({len(removed)})"),
        F.panel(after, f"after NMS: the best {len(props)} of {len(v.trace['proposals'])} proposals",
                f"NMS at IoU {v.cfg.rpn_nms_thresh} per level, then the best {v.cfg.rpn_post_nms_top_n}")]),
        F.colorbar(lo, hi, "objectness probability (the best drawn on top)")])


def picture_roi_levels(v: View, n: int) -> np.ndarray:
    """Proposals coloured by the FPN level they are pooled from, and FPN Eq. 1 as a chart of all proposals."""
    props, levels = v.trace["proposals"], v.trace["roi_levels"]
    first = int(v.levels[0][1:])                                               # 2 for P2
    left = _boxes_picture(v, props[:n][::-1], [LEVEL_COLORS[int(k) % 6] for k in levels[:n][::-1]],
                          round(v.max_side * 0.6))
    counts = [(LEVEL_COLORS[k], f"P{first + k}: {int(np.sum(levels == k))}") for k in range(int(levels.max()) + 1)] \
        if len(levels) else []
    return F.row([F.column([F.panel(left, f"the best {min(n, len(props))} proposals by pooling level"),
                            F.legend(counts)], 4), _eq1_chart(props, levels, first)])


def _eq1_chart(props, levels, first: int, width: int = 460, height: int = 260) -> np.ndarray:
    """sqrt(area) on a log axis against the assigned level, with FPN Eq. 1's boundaries 112, 224, 448."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 50, width - 10, 14, height - 40
    lo, hi = 3.0, 11.0                                                         # log2 of 8 .. 2048 px
    n_levels = max(int(levels.max()) + 1, 4) if len(levels) else 4
    band = (bottom - top) / n_levels

    def px(s):
        return left + (np.log2(np.maximum(s, 1e-3)) - lo) / (hi - lo) * (right - left)

    for k in range(n_levels):
        draw.text((4, bottom - (k + 0.5) * band - 7), f"P{first + k}", fill=LEVEL_COLORS[k % 6], font=F.font(13))
    for b in (112, 224, 448):
        F.dashed_rectangle(draw, (px(b), top, px(b), bottom), (120, 120, 120), 1, 4)
        draw.text((px(b) - 10, 0), str(b), fill=(90, 90, 90), font=F.font(11))
    for t in (16, 32, 64, 128, 256, 512, 1024):
        draw.line([(px(t), bottom), (px(t), bottom + 4)], fill=(0, 0, 0))
        draw.text((px(t) - 9, bottom + 6), str(t), fill=(0, 0, 0), font=F.font(11))
    draw.line([(left, bottom), (right, bottom)], fill=(0, 0, 0))
    s = np.sqrt(np.maximum((props[:, 2] - props[:, 0]) * (props[:, 3] - props[:, 1]), 0))
    jitter = np.random.default_rng(0).uniform(-0.35, 0.35, len(s)) * band    # spread the dots of a level
    for sk, k, j in zip(s, levels, jitter):
        yk = bottom - (k + 0.5) * band + j
        draw.ellipse([px(sk) - 2, yk - 2, px(sk) + 2, yk + 2], fill=LEVEL_COLORS[int(k) % 6])
    draw.text((left, bottom + 20), "sqrt(w*h) of each proposal, px (log scale)", fill=(90, 90, 90), font=F.font(12))
    return F.panel(np.asarray(img), "FPN Eq. 1: k = floor(4 + log2(sqrt(wh) / 224))",
                   f"all {len(props)} proposals; dashed: the level boundaries")


def _zoom(image: np.ndarray, box, side: int, pad: float = 0.3):
    """A square crop around `box` (x1, y1, x2, y2 in the image's pixels) with `pad` of its size around it, scaled to
    side x side: (PIL image, scale, (x0, y0) crop origin)."""
    x1, y1, x2, y2 = (float(c) for c in box)
    half = max(x2 - x1, y2 - y1, 8.0) * (0.5 + pad)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x0, y0 = cx - half, cy - half
    h, w = image.shape[:2]
    canvas = np.full((int(np.ceil(2 * half)) + 1, int(np.ceil(2 * half)) + 1, 3), 255, np.uint8)
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    sx, sy = slice(max(ix0, 0), min(ix0 + canvas.shape[1], w)), slice(max(iy0, 0), min(iy0 + canvas.shape[0], h))
    if sx.stop > sx.start and sy.stop > sy.start:
        canvas[sy.start - iy0:sy.stop - iy0, sx.start - ix0:sx.stop - ix0] = image[sy, sx]
    k = side / canvas.shape[0]
    return Image.fromarray(F.resize(canvas, side, side)), k, (ix0, iy0)


def picture_refinement(v: View, k: int) -> np.ndarray:
    """The k best detections: in the image, and zoomed, each proposal (dashed) -> its refined box (solid)."""
    source, _ = detection_sources(v.trace, v.cfg)
    boxes, labels = v.trace["boxes"][:k], v.trace["labels"][:k]
    props = v.trace["proposals"][source[:k]]
    deltas = v.trace["box_deltas"].reshape(len(v.trace["proposals"]), -1, 4)[source[:k], labels]   # (k, 4)
    colors = [tuple(int(t) for t in c) for c in F.palette(max(len(boxes), 1))]
    img, s = v.scaled(round(v.max_side * 0.6), washed=True)
    draw = ImageDraw.Draw(img)
    tiles = []
    for i in range(len(boxes) - 1, -1, -1):
        _refined(draw, props[i] * s, boxes[i] * s, colors[i])
        F.label(draw, (boxes[i, 0] * s, max(boxes[i, 1] * s - 16, 0)), str(i + 1), colors[i])
        tile, z, (x0, y0) = _zoom(v.input, np.concatenate([np.minimum(props[i, :2], boxes[i, :2]),
                                                            np.maximum(props[i, 2:], boxes[i, 2:])]), 150, 0.15)
        shift = np.array([x0, y0, x0, y0], np.float32)
        _refined(ImageDraw.Draw(tile), (props[i] - shift) * z, (boxes[i] - shift) * z, colors[i])
        iou = float(box_iou(props[i:i + 1], boxes[i:i + 1])[0, 0])
        t = ", ".join(f"{d:+.2f}" for d in deltas[i])
        tiles.append(F.panel(np.asarray(tile), f"{i + 1} {_name(v, i)}", f"t = ({t}), IoU {iou:.2f}", size=12))
    return F.row([F.panel(np.asarray(img), f"the {len(boxes)} best detections",
                          "proposal (dashed) -> refined box (solid); numbers: rank"),
                  F.panel(F.grid(tiles[::-1], 3), "zoomed", "t: the class's deltas dx, dy, dw, dh (before "
                                                            "dividing by the weights)")])


def _refined(draw, proposal, box, color) -> None:
    F.dashed_rectangle(draw, proposal, color, 2, 5)
    draw.rectangle(list(box), outline=color, width=2)
    F.arrow(draw, ((proposal[0] + proposal[2]) / 2, (proposal[1] + proposal[3]) / 2),
            ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), color, 2, 6)


def _name(v: View, i: int) -> str:
    return f"{v.cfg.class_names[int(v.trace['labels'][i])]} {float(v.trace['scores'][i]):.2f}"


def picture_mask_probs(v: View, k: int) -> np.ndarray:
    """For the k best detections: the image inside the box and the 28x28 mask probabilities of its class."""
    tiles, side = [], 112
    h, w = v.size
    for i in range(min(k, len(v.trace["mask_probs"]))):
        x1, y1, x2, y2 = np.clip(v.trace["boxes"][i], 0, [w, h, w, h])
        crop = v.input[int(y1):max(int(np.ceil(y2)), int(y1) + 1), int(x1):max(int(np.ceil(x2)), int(x1) + 1)]
        probs = F.resize(F.colormap(v.trace["mask_probs"][i], 0, 1), side, side, nearest=True)
        tiles.append(F.panel(F.row([F.resize(crop, side, side), probs], 4), f"{i + 1} {_name(v, i)}", size=12))
    m = v.trace["mask_probs"]
    return F.column([F.grid(tiles, 4), F.colorbar(0, 1, f"mask probability of the predicted class, "
                                                        f"{m.shape[1]}x{m.shape[2]} per box (the box's image "
                                                        f"content at left, stretched the same way)", fmt="{:.0f}")])


def picture_pasted(v: View, k: int) -> np.ndarray:
    """The pasted full-size probability maps of the k best detections: zoomed, as heat over the image, with the 0.5
    contour."""
    tiles = []
    masks, boxes = v.trace["masks"], v.trace["final_boxes"]
    for i in range(min(k, len(masks))):
        crop, z, (x0, y0) = _zoom(v.original, boxes[i], 150)
        probs, _, _ = _zoom(F.colormap(masks[i], 0, 1), boxes[i], 150)
        inside, _, _ = _zoom(np.repeat((masks[i] >= 0.5)[..., None].astype(np.uint8) * 255, 3, -1), boxes[i], 150)
        heat = np.asarray(probs, np.float32)                                   # (150, 150, 3)
        pasted, _, _ = _zoom(np.repeat((masks[i] > 1e-3)[..., None].astype(np.uint8) * 255, 3, -1), boxes[i], 150)
        alpha = 0.6 * (np.asarray(pasted, np.float32)[..., :1] >= 128)       # (150, 150, 1) where a value was pasted
        blend = np.rint(np.asarray(crop, np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)
        blend[F.edges(np.asarray(inside)[..., 0] >= 128)] = (255, 255, 255)
        tile = Image.fromarray(blend)
        shift = np.array([x0, y0, x0, y0], np.float32)
        ImageDraw.Draw(tile).rectangle(list((boxes[i] - shift) * z), outline=(230, 25, 75), width=1)
        bw, bh = boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1]
        tiles.append(F.panel(np.asarray(tile), f"{i + 1} {_name(v, i)}", f"{_mask_side(v)} -> "
                             f"{bw:.0f}x{bh:.0f} px", size=12))
    hh, ww = v.original.shape[:2]
    return F.column([F.grid(tiles, 5), F.colorbar(0, 1, f"pasted mask probability in the original {hh}x{ww} "
                                                        "image; white: the 0.5 contour; red: the box", fmt="{:.0f}")])


def _mask_side(v: View) -> str:
    m = v.trace["mask_probs"]
    return f"{m.shape[1]}x{m.shape[2]}"


def picture_result(v: View, det, mask_threshold: float = 0.5) -> np.ndarray:
    overlay = render_overlay(v.original, det, mask_threshold)
    hh, ww = overlay.shape[:2]
    s = v.max_side * 0.9 / max(hh, ww)
    return F.panel(F.resize(overlay, round(ww * s), round(hh * s)), f"{len(det)} detections",
                   f"masks binarized at {mask_threshold}")
