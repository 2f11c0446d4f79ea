"""What every stage picture works from: the `View` of one traced run (trace, config, the network input for display),
and what is derived from trace arrays, openly, with the public functions the network uses: the levels of the
anchor blocks, the RPN candidates before NMS (`rpn_candidates`: `rpn.select_proposals` of the traced anchors,
logits and deltas), the proposal each detection was refined from (`detection_sources`), and picture locations.

Shape glossary
    Hp, Wp: padded network input      h, w: resized image (unpadded)      H, W: original image
    K: anchors    T: RPN candidates before NMS    P: proposals    D: detections    NC: classes incl. background
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from minimaskrcnn import ops
from minimaskrcnn.nn.layers import softmax
from minimaskrcnn.render import draw as F
from minimaskrcnn.stages import rpn

LOCATION = r"\s*(?:(P\d+)\s*:)?\s*(\d+(?:\.\d*)?)\s*,\s*(\d+(?:\.\d*)?)\s*"   # "Y,X" or "P4:ROW,COL"


@dataclass
class View:
    """What every picture needs: the trace, the config, and the network input de-normalized for display."""

    trace: dict
    cfg: object
    max_side: int

    def __post_init__(self):
        t = self.trace
        x = t["normalized"]                                                    # (3, Hp, Wp)
        mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (self.cfg.image_mean, self.cfg.image_std))
        self.input = F.to_uint8((x * std + mean).transpose(1, 2, 0))           # (Hp, Wp, 3) padding = mean colour
        self.size = tuple(int(v) for v in t["image_size"])                     # (h, w) resized, unpadded
        self.padded = x.shape[1:]                                              # (Hp, Wp)
        self.levels = [k for k in t if re.fullmatch(r"P\d+", k)]               # P2..P6 in trace order
        self.original = F.to_uint8(t["image"].transpose(1, 2, 0))              # (H, W, 3)

    def scaled(self, side: int | None = None, washed: bool = False) -> tuple[Image.Image, float]:
        """The network input as a PIL image whose longer side is `side` (default max_side), and the scale used
        (display px per resized px); washed: blended towards white, for drawing boxes over it."""
        side = side or self.max_side
        s = side / max(self.padded)
        hp, wp = self.padded
        img = F.resize(self.input, round(wp * s), round(hp * s))
        return Image.fromarray(F.wash(img) if washed else img), s


# --- derived from the trace ---------------------------------------------------------------------------------------

def level_blocks(trace) -> list:
    """[(name, (fh, fw), A, first anchor index)] per pyramid level, from the P maps and the anchor count."""
    names = [k for k in trace if re.fullmatch(r"P\d+", k)]
    cells = [trace[n].shape[1] * trace[n].shape[2] for n in names]
    a = len(trace["anchors"]) // sum(cells)                                    # anchors per location
    starts = np.concatenate([[0], np.cumsum(cells)[:-1]]) * a
    return [(n, trace[n].shape[1:], a, int(s)) for n, s in zip(names, starts)]


def rpn_candidates(trace, cfg):
    """(boxes (T, 4), scores (T,), levels (T,)) before NMS, and the proposals (P, 4) after, recomputed from the
    traced anchors, objectness logits and deltas with `rpn.select_proposals` (facts §4.4)."""
    sizes = [fh * fw * a for _, (fh, fw), a, _ in level_blocks(trace)]
    size = tuple(int(v) for v in trace["image_size"])
    candidates, (proposals, _) = rpn.select_proposals(trace["objectness"], trace["rpn_deltas"], trace["anchors"],
                                                      sizes, size, cfg)
    return candidates, proposals


def detection_sources(trace, cfg) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the index of the proposal it was refined from, and the residual of that attribution.

    A detection is a proposal's box decoded with its class's deltas (weights cfg.bbox_reg_weights), clipped, scored
    by the softmax probability of that class. So for detection d of label l, the source is the proposal whose
    decoded, clipped class-l box and class-l probability reproduce d's box and score; the residual (max |box diff|
    in px + |score diff|) is 0 when the trace comes from this implementation, and tiny for another one's.
    """
    proposals, boxes, labels = trace["proposals"], trace["boxes"], trace["labels"]
    if len(boxes) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    decoded = ops.decode_boxes(trace["box_deltas"], proposals, cfg.bbox_reg_weights)     # (P, NC*4)
    decoded = decoded.reshape(len(proposals), -1, 4)[:, labels]                          # (P, D, 4)
    h, w = (float(v) for v in trace["image_size"])
    decoded = np.clip(decoded, 0, np.array([w, h, w, h], np.float32))                    # clip to the resized image
    probs = softmax(trace["class_logits"])[:, labels]                                    # (P, D)
    err = np.abs(decoded - boxes[None]).max(-1) + np.abs(probs - trace["scores"][None])  # (P, D)
    source = err.argmin(0)                                                               # (D,)
    return source, err[source, np.arange(len(boxes))]


def parse_location(text: str, view: View) -> tuple[float, float]:
    """"Y,X" (original-image pixels) or "P4:ROW,COL" (a cell of a level) -> (y, x) in resized-image pixels."""
    m = re.fullmatch(LOCATION, text or "")
    if not m:
        raise ValueError(f"anchor location: expected Y,X (original-image pixels) or LEVEL:ROW,COL such as P4:12,20, "
                         f"got {text!r}")
    level, a, b = m.group(1), float(m.group(2)), float(m.group(3))
    if level is None:
        hh, ww = view.original.shape[:2]
        y, x = a * view.size[0] / hh, b * view.size[1] / ww
    else:
        blocks = {n: (shape, i) for n, shape, _, i in level_blocks(view.trace)}
        if level not in blocks:
            raise ValueError(f"anchor location: no level {level} in this model (levels {', '.join(blocks)})")
        (fh, fw) = blocks[level][0]
        if not (0 <= a < fh and 0 <= b < fw):
            raise ValueError(f"anchor location: cell {int(a)},{int(b)} is outside {level}'s {fh}x{fw} grid")
        y, x = int(a) * (view.padded[0] // fh), int(b) * (view.padded[1] // fw)
    if not (0 <= y < view.padded[0] and 0 <= x < view.padded[1]):
        raise ValueError(f"anchor location: {text} is outside the image")
    return float(y), float(x)
