"""Pictures of every stage of one forward pass, made from its `Trace` (the `minimaskrcnn explain` command).

    sections = explain(model, "photo.jpg", "out/")      # out/01_input.png ... out/10_result.png, out/index.html

Each picture is drawn from trace arrays only (plus the Config for constants), so it shows what the network computed,
not a re-derivation. Two things are derived, openly, from trace arrays with the same public functions the network
uses (`view.py`): the RPN candidates before NMS and the proposal each detection was refined from. The pictures are
drawn in `figures.py` (with the primitives of `render/draw.py`); stage texts and the HTML page are in `page.py`.

Shape glossary
    Hp, Wp: padded network input      h, w: resized image (unpadded)      H, W: original image
    K: anchors    T: RPN candidates before NMS    P: proposals    D: detections    NC: classes incl. background
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image

from minimaskrcnn.atomic import atomic_path
from minimaskrcnn.render import draw as F
from minimaskrcnn.study import figures, page
from minimaskrcnn.study.view import View, parse_location

# --- the whole walk-through ----------------------------------------------------------------------------------------

@dataclass
class Explanation:
    """What `explain` wrote: the sections in order (each with its picture's `path`), the page, and the run."""

    sections: list
    index: str
    trace: dict
    detections: object


def explain(model, image, outdir, *, anchor_location=None, proposals: int = 50, score_threshold: float = 0.5,
            max_detections: int = 12, max_side: int = 1024, note: str = "", compact: bool = False) -> Explanation:
    """Run `image` through `model` with a trace, write one PNG per stage and `index.html` into `outdir`.

    anchor_location: "Y,X" in original-image pixels or "P4:ROW,COL" (default: the centre of the image);
    proposals: how many proposals to draw; score_threshold: of the detections (as `predict`); max_detections: how
    many detections the refinement and mask pictures show; max_side: the width of a full-width picture, px;
    note: a sentence shown at the top of the page (e.g. where the weights come from); compact: write small palette
    PNGs (for committed documentation).
    """
    det, trace = model.predict(image, score_threshold=score_threshold, trace=True)
    v = View(trace, model.config, max_side)
    location = parse_location(anchor_location, v) if anchor_location else (v.size[0] / 2, v.size[1] / 2)
    makers = {"input": lambda: figures.picture_input(v), "fpn": lambda: figures.picture_fpn(v),
              "anchors": lambda: figures.picture_anchors(v, location),
              "objectness": lambda: figures.picture_objectness(v),
              "proposals": lambda: figures.picture_proposals(v, proposals),
              "roi_levels": lambda: figures.picture_roi_levels(v, proposals),
              "refinement": lambda: figures.picture_refinement(v, max_detections),
              "mask_probs": lambda: figures.picture_mask_probs(v, max_detections),
              "pasted": lambda: figures.picture_pasted(v, max_detections),
              "result": lambda: figures.picture_result(v, det)}
    os.makedirs(outdir, exist_ok=True)
    sections = page.sections(trace, model.config)
    for i, sec in enumerate(sections, 1):
        sec.path = os.path.join(outdir, f"{i:02d}_{sec.key}.png")
        picture = Image.fromarray(F.margin(makers[sec.key]()))
        if compact:
            picture = picture.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        with atomic_path(sec.path) as tmp:
            picture.save(tmp, format="PNG", optimize=True)
    index = os.path.join(outdir, "index.html")
    page.write_index(index, sections, trace, model.config, det, note)
    return Explanation(sections, index, trace, det)
