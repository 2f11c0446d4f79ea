"""`crosscheck`: an ONNX export of a torchvision R-CNN checked stage by stage against minimaskrcnn.

1. The export's own weights become a minimaskrcnn model (`onnx_weights`: initializers mapped to state-dict names
   through the nodes that consume them; the Config inferred from them and from the transform's constants).
2. ONNX Runtime runs the export with every stage-boundary tensor as an extra output (`onnx_graph`, `onnx_run`).
3. Each minimaskrcnn stage runs on the export's OWN input to that stage (its normalized image, its C maps, its P
   maps, its proposals, ...) and is compared with the export's output of the stage (`compare.compare_traces`, the
   protocol of docs/trace_format.md). A discrete flip upstream (one proposal more or less) therefore cannot make a
   later stage look wrong: each row measures one stage's computation. The first row beyond tolerance names the stage
   that deviates.

Tolerances are `compare.DEFAULT_TOLERANCES`, the stage-wise agreement of an independent float32 implementation fed
the reference's inputs (facts §10.4 "stage-wise" table: C/P maps 1e-3 of max, RPN logits 5e-3, RPN deltas 5e-4, box
logits 2e-3, mask logits 3e-3, roi_align bitwise (here rel 1e-3 as in compare), anchors bitwise; sets: >= 98%
matched, boxes 0.1 px, scores 3e-3; facts §10.4 end-to-end criteria). minimaskrcnn itself agrees with torchvision
within these (README, "Agreement with torchvision"), so a row beyond them is the export's deviation.

Before the stages: with `weights`, a `weights` row (the export stored those weights: `onnx_weights.check_weights`),
and an `input_size` row when the export baked the image size it was traced with into its transform (torchvision's
resize computes its scale from the input's (h, w); the TorchScript exporter may store them as a constant), and the
image has another size: every later stage then works on a wrongly resized image.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from minimaskrcnn import ops
from minimaskrcnn.image import to_network_input
from minimaskrcnn.model import MaskRCNN, Weights
from minimaskrcnn.nn.layers import sigmoid
from minimaskrcnn.stages import backbone, box_head, fpn, mask_head, rpn, transform
from minimaskrcnn.trace import Trace, save_trace

from .compare import DEFAULT_TOLERANCES, compare_traces
from .onnx_graph import read_graph, transform_sizes
from .onnx_run import image_fits, run_onnx, stage_arrays
from .onnx_weights import check_weights, infer_onnx_config, read_original, recover_state_dict


@dataclass
class StageRow:
    image: str
    stage: str
    compared: str                   # what was compared with what
    max_abs: float | None = None
    rel: float | None = None
    matched: str | None = None      # "Q of N / M" where sets are matched
    tolerance: str = ""
    ok: bool | None = None          # None: nothing to check (e.g. a stage the export does not expose)
    detail: str = ""


@dataclass
class Report:
    model: str
    versions: dict
    stages: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    traces: dict = field(default_factory=dict)      # image -> Trace of the ONNX run (docs/trace_format.md)

    @property
    def first_failing_stage(self) -> str | None:
        return next((r.stage for r in self.stages if r.ok is False), None)

    @property
    def ok(self) -> bool:
        return self.first_failing_stage is None

    def to_json(self) -> dict:
        return {"model": self.model, "versions": self.versions, "stages": [asdict(r) for r in self.stages],
                "first_failing_stage": self.first_failing_stage, "notes": self.notes}

    def format_table(self) -> str:
        head = f"{'image':<14} {'stage':<22} {'max abs':>9} {'rel':>9} {'matched':<18} {'tolerance':<34} status  notes"
        lines = [head]
        for r in self.stages:
            status = "-" if r.ok is None else ("ok" if r.ok else "FAIL")
            lines.append(f"{r.image[-14:]:<14} {r.stage:<22} {_fmt(r.max_abs):>9} {_fmt(r.rel):>9} "
                         f"{(r.matched or '-')[:18]:<18} {r.tolerance[:34]:<34} {status:<7} {r.compared}"
                         + (f"; {r.detail}" if r.detail else ""))
        lines += [f"note: {n}" for n in self.notes]
        first = self.first_failing_stage
        lines.append(f"FAIL: first stage beyond tolerance: {first}" if first else
                     f"all {sum(r.ok is True for r in self.stages)} checked stages within tolerance")
        return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def versions() -> dict:
    import onnx
    import onnxruntime
    from minimaskrcnn import __version__
    return {"minimaskrcnn": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def load_export(model_path):
    """(Graph, Recovered weights, Config, MaskRCNN) of an export; one-line ValueError for a file that is none."""
    g = read_graph(model_path)
    rec = recover_state_dict(g)
    cfg = infer_onnx_config(g, rec)
    return g, rec, cfg, MaskRCNN(cfg, Weights.from_state_dict(rec.state_dict, cfg))


def crosscheck(model_path, images, weights=None, tolerances=None, threads: int | None = None,
               first_failure: bool = False, end_to_end: bool = False) -> Report:
    """Check the ONNX export `model_path` stage by stage on `images` (paths, arrays or PIL images, as `predict`).

    weights: the original `.pth` / `.npz` the export was made from, to check that it stored those weights.
    tolerances: overrides of `compare.DEFAULT_TOLERANCES`. first_failure: stop comparing an image's stages after
    the first one beyond tolerance (the export still runs whole; minimaskrcnn's later stages are skipped).
    end_to_end: also run minimaskrcnn alone on each image and compare its detections with the export's (rows
    `end_to_end.*`, the parity criteria of facts §10.4): how much the stage deviations add up to.
    Raises a one-line ValueError for an unusable model or an image a fixed-size export cannot take; deviations are
    rows of the Report, not exceptions.
    """
    g, rec, cfg, model = load_export(model_path)
    report = Report(str(model_path), versions())
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if weights is not None:
        report.stages.append(_weights_row(rec, weights))
    images = images if isinstance(images, (list, tuple)) else [images]
    inputs = [(str(im) if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__") else f"image {i}",
               to_network_input(im)) for i, im in enumerate(images)]
    for name, x in inputs:                       # refuse before running anything
        why = image_fits(g, x)
        if why:
            raise ValueError(f"{name}: {why}")
    baked = transform_sizes(g).get("image_size")
    for name, x in inputs:
        wrong_size = baked is not None and tuple(baked) != tuple(x.shape[1:])
        if wrong_size:
            report.stages.append(StageRow(
                name, "input_size", "image size against the size baked into the export's transform", ok=False,
                detail=(f"the export was made for a {baked[0]}x{baked[1]} image (a constant of its resize); this "
                        f"image is {x.shape[1]}x{x.shape[2]}, so the export resizes it wrongly; export at this "
                        f"size or with dynamic_axes from a torchvision that traces the size")))
        values, groups = run_onnx(g, x, threads)
        t = stage_arrays(values, groups, cfg, x.shape[1:])
        report.traces[name] = Trace(t)
        if not (first_failure and wrong_size):
            report.stages += stage_rows(name, model, x, t, tol, first_failure)
        if end_to_end:
            report.stages += end_to_end_rows(name, model, x, t, tol)
    return report


def end_to_end_rows(image: str, model: MaskRCNN, x: np.ndarray, t: dict, tol: dict) -> list:
    """minimaskrcnn's own run of the image against the export's final outputs (original-image pixels): detections
    matched by label and IoU, scores along the matched pairs, pasted masks (binarized IoU)."""
    det = model.predict(np.ascontiguousarray(x.transpose(1, 2, 0)))          # (3, H, W) -> (H, W, 3), same floats
    ours = {"final_boxes": det.boxes, "scores": det.scores, "labels": det.labels}
    theirs = {k: t[k] for k in ("final_boxes", "scores", "labels") if k in t}
    if det.masks is not None and "masks" in t:
        ours["masks"], theirs["masks"] = det.masks, t["masks"]
    if "final_boxes" not in theirs:
        return []
    results = {r.stage: r for r in compare_traces(ours, theirs, tol)}
    what = "minimaskrcnn's own run of the image against the export's outputs"
    rows = []
    for stage in ("final_boxes", "scores", "masks"):
        r = results.get(stage)
        if r is not None and r.shape_a is not None and r.shape_b is not None:
            checks = "; ".join(f"{c[0]} {c[2]} {c[3]:.3g}" for c in r.checks if c[2])
            rows.append(StageRow(image, f"end_to_end.{stage}", what, r.max_abs, r.rel, None, checks,
                                 {"ok": True, "FAIL": False}.get(r.status), r.detail))
    return rows


def save_onnx_trace(report: Report, image: str, path, compress: bool = False) -> None:
    """Write the ONNX run of `image` in the documented trace format, for `minimaskrcnn compare`."""
    trace = report.traces[image]
    save_trace(trace, path, compress, producer=f"onnxruntime {report.versions['onnxruntime']}",
               model=report.model, image=image)


def _weights_row(rec, weights) -> StageRow:
    sd0, eps = read_original(weights)
    checks = check_weights(rec, sd0, eps)
    bad = [c for c in checks if not c.ok]
    folded = sum(c.how.startswith(("BN", "Frozen")) for c in checks)
    worst = max((c.max_abs for c in checks), default=0.0)
    detail = (f"{len(checks) - folded} tensors bitwise, {folded} BN-folded within derived float32 bounds"
              if not bad else f"{len(bad)} of {len(checks)} differ: " +
              ", ".join(f"{c.key} ({c.how}, max abs {c.max_abs:.3g})" for c in bad[:6]) + (" ..." if len(bad) > 6
                                                                                           else ""))
    return StageRow("-", "weights", f"the export's initializers against {weights}", worst, None, None,
                    "bitwise / derived fold bound", not bad, detail)


def stage_rows(image: str, model: MaskRCNN, x: np.ndarray, t: dict, tol: dict, first_failure: bool = False) -> list:
    """One row per stage: minimaskrcnn's stage on the export's input of that stage against the export's output."""
    cfg, w = model.config, model.weights
    rows = []

    def compare(stage, what, ours: dict, theirs: dict, main=None):
        main = main or stage
        try:
            results = {r.stage: r for r in compare_traces(ours, theirs, tol)}
        except ValueError as e:
            rows.append(StageRow(image, main, what, ok=False, detail=f"cannot compare: {e}"))
            return
        r = results[main]
        ok = {"ok": True, "FAIL": False}.get(r.status)
        checks = "; ".join(f"{c[0]} {c[2]} {c[3]:.3g}" for c in r.checks if c[2])
        m = re.match(r"(\d+) pairs of (\d+) in A, (\d+) in B", r.detail) if main in ("proposals", "boxes") else None
        matched = f"{m[1]} of {m[2]} / {m[3]}" if m else None         # pairs of minimaskrcnn's / the export's
        rows.append(StageRow(image, main, what, r.max_abs, r.rel, matched, checks, ok, r.detail))

    def run(stage, what, needs, fn):
        """fn() -> (ours, theirs) dicts; skipped (no row) when the export lacks one of `needs`, or after a failure
        with `first_failure`."""
        if not all(k in t for k in needs) or (first_failure and any(r.ok is False for r in rows)):
            return
        try:
            ours, theirs = fn()
        except (ValueError, IndexError) as e:       # the export's tensors do not fit the architecture
            rows.append(StageRow(image, stage, what, ok=False, detail=f"minimaskrcnn's stage cannot run on the "
                                                                      f"export's input: {' '.join(str(e).split())}"))
            return
        compare(stage, what, ours, theirs)

    ours_x, ours_size = transform.preprocess(x, cfg)                        # (3, Hp, Wp), resized (h, w)
    size = tuple(int(v) for v in t.get("image_size", ours_size))            # the export's resized size
    levels = cfg.returned_layers + (cfg.returned_layers[-1] + 1,)
    c_names, p_names = [f"C{l + 1}" for l in cfg.returned_layers], [f"P{l + 1}" for l in levels]
    c_onnx, p_onnx = [t[n] for n in c_names if n in t], [t[n] for n in p_names if n in t]

    run("image_size", "resized (h, w): minimaskrcnn's resize rule (facts §1) against the export's resize",
        ["image_size"],
        lambda: ({"image_size": np.array(ours_size, np.int64)}, {"image_size": t["image_size"]}))
    run("normalized", "minimaskrcnn's transform on the image", ["normalized"],
        lambda: ({"normalized": ours_x}, {"normalized": t["normalized"]}))
    if "normalized" in t and c_onnx:
        try:
            ours_c = backbone.backbone_forward(w.backbone, t["normalized"])
        except ValueError as e:
            ours_c = e
        for n in c_names:
            run(n, "minimaskrcnn's ResNet body on the export's normalized input", [n],
                lambda n=n: _raise(ours_c) or ({n: ours_c[c_names.index(n)]}, {n: t[n]}))
    if len(c_onnx) == len(c_names) and p_onnx:
        try:
            ours_p = fpn.fpn_forward(w.fpn, c_onnx)
        except ValueError as e:
            ours_p = e
        for n in p_names:
            run(n, "minimaskrcnn's FPN on the export's C maps", [n],
                lambda n=n: _raise(ours_p) or ({n: ours_p[p_names.index(n)]}, {n: t[n]}))
    full_p = len(p_onnx) == len(p_names)
    if full_p and "normalized" in t:
        run("anchors", "minimaskrcnn's anchor grid for the export's P map sizes", ["anchors"],
            lambda: ({"anchors": ops.grid_anchors([p.shape[1:] for p in p_onnx], t["normalized"].shape[1:],
                                                  cfg.anchor_sizes, cfg.aspect_ratios)}, {"anchors": t["anchors"]}))
    if full_p:
        def head():
            obj, dlt = rpn.rpn_head_forward(w.rpn_head, p_onnx)
            logits, deltas = rpn.flatten_head_outputs(obj, dlt)
            return {"objectness": logits, "rpn_deltas": deltas}, {k: t[k] for k in ("objectness", "rpn_deltas")}
        run("objectness", "minimaskrcnn's RPN head on the export's P maps", ["objectness", "rpn_deltas"],
            lambda: _only(head(), "objectness"))
        run("rpn_deltas", "minimaskrcnn's RPN head on the export's P maps", ["objectness", "rpn_deltas"],
            lambda: _only(head(), "rpn_deltas"))

    def proposals():
        sizes = [int(np.prod(p.shape[1:])) * w.rpn_head.num_anchors for p in p_onnx]
        _, (boxes, scores) = rpn.select_proposals(t["objectness"], t["rpn_deltas"], t["anchors"], sizes, size, cfg)
        return {"proposals": boxes}, {"proposals": t["proposals"]}
    run("proposals", "minimaskrcnn's proposal selection on the export's RPN outputs and anchors",
        ["objectness", "rpn_deltas", "anchors", "proposals"], proposals)
    if full_p:
        run("box_features", "minimaskrcnn's RoIAlign on the export's P maps and proposals",
            ["proposals", "box_features"],
            lambda: ({"box_features": ops.multiscale_roi_align(p_onnx[:-1], t["proposals"], size, cfg.box_roi_size,
                                                               cfg.sampling_ratio)},
                     {"box_features": t["box_features"]}))

    def box_head_outputs():
        logits, deltas = box_head.box_head_forward(w.box_head, t["box_features"])
        return {"class_logits": logits, "box_deltas": deltas}, {k: t[k] for k in ("class_logits", "box_deltas")}
    for n in ("class_logits", "box_deltas"):
        run(n, "minimaskrcnn's box head on the export's RoI features", ["box_features", "class_logits", "box_deltas"],
            lambda n=n: _only(box_head_outputs(), n))

    def detections():
        _, (boxes, scores, labels) = box_head.postprocess_detections(t["class_logits"], t["box_deltas"],
                                                                     t["proposals"], size, cfg, cfg.box_score_thresh)
        ours = {"boxes": boxes, "scores": scores, "labels": labels}
        return ours, {k: t[k] for k in ours}
    for n in ("boxes", "scores"):
        run(n, "minimaskrcnn's box post-processing on the export's logits, deltas and proposals",
            ["class_logits", "box_deltas", "proposals", "boxes", "scores", "labels"], detections)
    if full_p:
        run("mask_features", "minimaskrcnn's RoIAlign on the export's P maps and detections",
            ["boxes", "mask_features"],
            lambda: ({"mask_features": ops.multiscale_roi_align(p_onnx[:-1], t["boxes"], size, cfg.mask_roi_size,
                                                                cfg.sampling_ratio)},
                     {"mask_features": t["mask_features"]}))
    if cfg.masks:
        run("mask_logits", "minimaskrcnn's mask head on the export's mask features and labels",
            ["mask_features", "labels", "mask_logits"],
            lambda: ({"mask_logits": mask_head.mask_head_forward(w.mask_head, t["mask_features"], t["labels"])},
                     {"mask_logits": t["mask_logits"]}))
        run("mask_probs", "sigmoid of the export's mask logits", ["mask_logits", "mask_probs"],
            lambda: ({"mask_probs": sigmoid(t["mask_logits"])}, {"mask_probs": t["mask_probs"]}))
    run("final_boxes", "minimaskrcnn's box rescaling of the export's detections", ["boxes", "final_boxes"],
        lambda: ({"final_boxes": transform.rescale_boxes(t["boxes"], size, x.shape[1:])},
                 {"final_boxes": t["final_boxes"]}))
    if cfg.masks:
        run("masks", "minimaskrcnn's mask pasting of the export's mask probabilities and boxes",
            ["mask_probs", "final_boxes", "masks"],
            lambda: ({"masks": transform.paste(t["mask_probs"], t["final_boxes"], x.shape[1:])},
                     {"masks": t["masks"]}))
    return rows


def _raise(value):
    if isinstance(value, Exception):
        raise value
    return None


def _only(pair, key):
    ours, theirs = pair
    return {key: ours[key]}, {key: theirs[key]}


def report_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=1, default=float)
