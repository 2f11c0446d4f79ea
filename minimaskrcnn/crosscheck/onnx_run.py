"""Running an ONNX export in ONNX Runtime with its stage-boundary tensors as extra outputs, as a trace.

The tensors `onnx_graph.boundary_tensors` finds are appended to the graph's outputs (an output without type
information is allowed), the model runs once, and `stage_arrays` names them in the trace format of
docs/trace_format.md (no batch axis; boxes x1, y1, x2, y2 in resized-image pixels, `final_boxes` in original-image
pixels). Which candidate of a group is which is decided by shape and dtype, e.g. the detections that leave
`roi_heads`: (D, 4) float boxes, (D,) float scores, (D,) integer labels, (D, 1, M, M) mask probabilities.

Shape glossary
    Hp, Wp: padded network input      A: anchors per location     K: anchors      P: proposals
    D: detections                     NC: classes                 M: mask resolution (28)
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from minimaskrcnn.config import Config
from minimaskrcnn.stages.rpn import flatten_head_outputs

from .onnx_graph import Graph, boundary_tensors


def image_fits(g: Graph, image: np.ndarray) -> str | None:
    """None if the export's input takes `image` (3, H, W), else why not (a fixed-size export)."""
    want = g.input_shape
    if len(want) != image.ndim or any(w is not None and w != s for w, s in zip(want, image.shape)):
        fixed = "x".join("?" if w is None else str(w) for w in want)
        return (f"the export takes a fixed {fixed} input and the image is {'x'.join(map(str, image.shape))} "
                f"(export with dynamic_axes to run other sizes)")
    return None


def run_onnx(g: Graph, image: np.ndarray, threads: int | None = None) -> tuple[dict, dict]:
    """Run the export on one (3, H, W) float32 image in [0, 1]: ({tensor name: array} of every boundary tensor and
    graph output, the boundary groups of `boundary_tensors`)."""
    import onnx
    import onnxruntime as ort
    groups = boundary_tensors(g)
    names = list(OrderedDict.fromkeys(n for group in groups.values() for n in group))
    model = onnx.ModelProto()
    model.CopyFrom(g.model)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(names, {g.input_name: np.ascontiguousarray(image, np.float32)})
    return dict(zip(names, values)), groups


def _levels(names: list, values: dict) -> list:
    """Per-level maps, finest first (by spatial size, stable), batch axis dropped. [(C, Hl, Wl)]"""
    maps = [values[n][0] for n in names if values[n].ndim == 4]
    return sorted(maps, key=lambda m: -m.shape[1] * m.shape[2])


def stage_arrays(values: dict, groups: dict, cfg: Config, original_size) -> OrderedDict:
    """The ONNX run as a trace: stage name -> array, in forward order (docs/trace_format.md)."""
    t = OrderedDict()

    def first(group, test):
        return next((values[n] for n in groups.get(group, ()) if test(values[n])), None)

    x = first("normalized", lambda v: v.ndim == 4 and v.shape[:2] == (1, 3))
    if x is not None:
        t["normalized"] = x[0]                                                # (3, Hp, Wp)
    r = first("resized", lambda v: v.ndim == 3)
    if r is not None:
        t["image_size"] = np.array(r.shape[1:], np.int64)                     # resized (h, w)
    level_names = [f"{k}{layer + 1}" for k, layers in (("C", cfg.returned_layers),
                                                      ("P", cfg.returned_layers + (cfg.returned_layers[-1] + 1,)))
                   for layer in layers]
    c_maps, p_maps = _levels(groups.get("C", []), values), _levels(groups.get("P", []), values)
    t.update(zip(level_names[:len(cfg.returned_layers)], c_maps))
    t.update(zip(level_names[len(cfg.returned_layers):], p_maps))
    anchors = first("anchors", lambda v: v.ndim == 2 and v.shape[1] == 4 and v.dtype.kind == "f")
    if anchors is not None:
        t["anchors"] = anchors                                                # (K, 4) padded-image pixels
    obj, dlt = _levels(groups.get("objectness", []), values), _levels(groups.get("rpn_deltas", []), values)
    if obj and len(obj) == len(dlt):
        t["objectness"], t["rpn_deltas"] = flatten_head_outputs(obj, dlt)     # (K,), (K, 4)
    prop = first("proposals", lambda v: v.ndim == 2 and v.shape[1] == 4 and v.dtype.kind == "f")
    if prop is not None:
        t["proposals"] = prop                                                 # (P, 4)
    for stage, ndim in (("box_features", 4), ("class_logits", 2), ("box_deltas", 2)):
        v = first(stage, lambda v, n=ndim: v.ndim == n and v.dtype.kind == "f")
        if v is not None:
            t[stage] = v
    det = groups.get("detections", [])          # labels first: their count D tells boxes from the candidates
    labels = next((values[n] for n in det if values[n].ndim == 1 and values[n].dtype.kind in "iu"), None)
    d = None if labels is None else len(labels)
    boxes = next((values[n] for n in det if values[n].shape == (d, 4) and values[n].dtype.kind == "f"), None)
    if boxes is not None:
        scores = next((values[n] for n in det if values[n].shape == (d,) and values[n].dtype.kind == "f"), None)
        t["boxes"], t["labels"] = boxes, labels.astype(np.int64)              # (D, 4) resized-image pixels, (D,)
        if scores is not None:
            t["scores"] = scores                                              # (D,)
        mf = first("mask_features", lambda v: v.ndim == 4 and len(v) == d)
        if mf is not None:
            t["mask_features"] = mf                                           # (D, C, 14, 14)
        ml = first("mask_logits", lambda v: v.ndim == 4 and len(v) == d)
        if ml is not None:
            t["mask_logits"] = ml[np.arange(d), t["labels"]]                 # (D, NC, M, M) -> (D, M, M)
        probs = next((values[n] for n in det if values[n].ndim == 4 and len(values[n]) == d
                      and values[n].shape[1] == 1), None)
        if probs is not None:
            t["mask_probs"] = probs[:, 0]                                     # (D, 1, M, M) -> (D, M, M)
    outs = [values[n] for n in groups.get("outputs", [])]
    final = next((v for v in outs if v.ndim == 2 and v.shape[1] == 4), None)
    if final is not None:
        t["final_boxes"] = final                                              # (D, 4) original-image pixels
    masks = next((v for v in outs if v.ndim == 4 and v.shape[1] == 1 and v.shape[2:] == tuple(original_size)), None)
    if masks is not None:
        t["masks"] = masks[:, 0]                                              # (D, 1, H, W) -> (D, H, W)
    return t
