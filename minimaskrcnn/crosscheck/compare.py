"""The stage-by-stage comparison of two traces (trace files: `minimaskrcnn.trace`, docs/trace_format.md).

`compare_traces(a, b)` compares a reference A with a candidate B, stage by stage:
  * dense stages (feature maps, anchor scores) elementwise: max absolute error and max relative to max |A|;
  * detection-like stages (`proposals`, `boxes`) as sets, with the parity protocol of `matching.py` (order-insensitive
    one-to-one matching by label and box IoU), because near-equal scores may swap order between implementations;
  * per-proposal stages (`roi_levels`, `box_features`, `class_logits`, `box_deltas`) and per-detection stages
    (`mask_*`, `final_boxes`, `masks`) row by row along those matched pairs.
Default tolerances are facts §10.4's (`DEFAULT_TOLERANCES`); a stage missing on either side is listed, not an error.

Shape glossary
    P: proposals    D: detections    Q: matched pairs (reference row, candidate row)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from minimaskrcnn.crosscheck.matching import match_detections


# Tolerance keys: "stage" (the stage's main check) or "stage.check". Provenance: facts §10.4 ("stage-wise" table and
# the end-to-end parity criteria, which `tests/crosscheck/test_parity.py` applies: >= 98% matched, boxes 0.1 px, scores 3e-3,
# >= 95% of masks with IoU >= 0.97).
DEFAULT_TOLERANCES = {
    "image": 0.0,                  # the same input is the precondition of every later comparison
    "image_size": 0.0,
    "normalized": 4.4e-3,          # normalize bitwise; resize: tests/naive.py resize_error_bound's global form for
                                   # inputs up to 2048 px a side: builds place the float32 source coordinate up to
                                   # 2*2**-24*(2*2048+1) = 4.9e-4 px apart, times a neighbour step of at most
                                   # 1/0.224 (normalized [0, 1]) along each of the 2 axes; torch 2.14.1 measured
                                   # 3.2e-5 on dog.jpg where 1e-6 had held for torchvision 0.29.2
    "C": 1e-3, "P": 1e-3,          # every C2..C5 / P2..P6 map: max error relative to the map's max |x|
    "anchors": 0.0,                # bitwise (facts §3)
    "objectness": 5e-3, "rpn_deltas": 5e-4,
    "proposals": 0.1, "proposals.matched": 0.98, "proposal_scores": 3e-3,
    "roi_levels": 0.02,            # fraction of matched proposals pooled from another level (a level flip of a box
                                   # within 0.1 px of an FPN Eq. 1 boundary; same budget as the 98% set overlap)
    "box_features": 1e-3,          # relative: roi_align is bitwise, so these inherit the P maps' error
    "class_logits": 2e-3, "box_deltas": 2e-3,
    "boxes": 0.1, "boxes.matched": 0.98, "scores": 3e-3,
    "mask_features": 1e-3,         # relative, as box_features
    "mask_logits": 3e-3,
    "mask_probs": 7.5e-4,          # sigmoid is 1/4-Lipschitz: 3e-3 / 4
    "final_boxes": 0.1,
    "masks": 0.95, "masks.iou": 0.97,
}
RELATIVE = re.compile(r"^(C\d+|P\d+|box_features|mask_features)$")     # checked relative to max |reference|
PROPOSAL_ROWS = ("roi_levels", "box_features", "class_logits", "box_deltas")
DETECTION_ROWS = ("mask_features", "mask_logits", "mask_probs", "final_boxes", "masks")
NOT_COMPARED = {"candidate_boxes", "candidate_scores", "candidate_labels", "rpn_candidate_boxes", "rpn_candidate_scores",
                "rpn_candidate_levels"}   # threshold-dependent
COMPANIONS = {"proposal_scores": "proposals", "scores": "boxes", "labels": "boxes"}          # shown with their set


# --- comparison ---------------------------------------------------------------------------------------------------

@dataclass
class StageResult:
    """One row of the comparison: shapes, errors, and the checks made (description, value, "<=" or ">=", bound,
    passed)."""

    stage: str
    shape_a: tuple | None
    shape_b: tuple | None
    max_abs: float | None = None
    rel: float | None = None
    detail: str = ""
    checks: list = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.shape_a is None or self.shape_b is None:
            return "missing in " + ("A" if self.shape_a is None else "B")
        if not self.checks:
            return "-"
        return "ok" if all(c[4] for c in self.checks) else "FAIL"

    def check(self, what: str, value: float, bound: float, at_most: bool = True) -> None:
        ok = bool(value <= bound) if at_most else bool(value >= bound)
        self.checks.append((what, value, "<=" if at_most else ">=", bound, ok and bool(np.isfinite(value))))

    def fail(self, what: str) -> None:
        self.checks.append((what, None, "", None, False))


def parse_tolerances(items) -> dict:
    """["stage=value", "stage.check=value", ...] -> dict; ValueError naming a malformed item."""
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not sep or not name.strip() or not np.isfinite(v) or v < 0:
            raise ValueError(f"--tolerance: expected STAGE=VALUE with a number >= 0, got {item!r}")
        out[name.strip()] = v
    return out


def _tolerance(tolerances: dict, stage: str, check: str = ""):
    key = f"{stage}.{check}" if check else stage
    if key in tolerances:
        return tolerances[key]
    if not check and re.fullmatch(r"[CP]\d+", stage):
        return tolerances.get(stage[0])
    return None


def _errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a - b|, that over max |a|) in float64; NaN on one side only counts as an infinite error."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.size == 0:
        return 0.0, 0.0
    d = np.abs(a - b)
    d[np.isnan(a) & np.isnan(b)] = 0.0
    d[np.isnan(d)] = np.inf
    m = float(d.max())
    scale = float(np.nanmax(np.abs(a))) if not np.all(np.isnan(a)) else 0.0
    return m, m / scale if scale > 0 else (0.0 if m == 0 else np.inf)


def _match(a, b, boxes: str, scores: str, labels, min_iou: float):
    """Parity-protocol matching of the detection-like stage `boxes` of traces a and b (None if absent or not
    finite (N, 4) boxes on both sides)."""
    if boxes not in a or boxes not in b or not all(_are_boxes(t[boxes]) for t in (a, b)):
        return None

    def side(t):
        n = len(t[boxes])
        s = t[scores] if scores in t and len(t[scores]) == n else np.zeros(n)
        lab = t[labels] if labels and labels in t and len(t[labels]) == n else np.zeros(n, np.int64)
        return t[boxes], lab, s
    return match_detections(*side(a), *side(b), min_iou=min_iou)


def _are_boxes(x) -> bool:
    x = np.asarray(x)
    return x.ndim == 2 and x.shape[1] == 4 and bool(np.all(np.isfinite(x)))


def _dense(row: StageResult, a: np.ndarray, b: np.ndarray, tol) -> None:
    if a.shape != b.shape:
        row.detail = "shapes differ"
        if tol is not None:
            row.fail("same shape")
        return
    row.max_abs, row.rel = _errors(a, b)
    if tol is not None:
        relative = RELATIVE.match(row.stage) is not None
        row.check("rel" if relative else "abs", row.rel if relative else row.max_abs, tol)


def _rows(row: StageResult, a, b, stats, what: str, tolerances: dict):
    """Compare per-RoI rows of a and b along the matched pairs (or by index when no matching is available)."""
    if stats is not None:
        ia, ib = stats.pairs[:, 0], stats.pairs[:, 1]
        if len(a) != stats.n_reference or len(b) != stats.n_candidate:
            row.detail = f"row counts differ from the {what}"
            row.fail("aligned rows")
            return None
        a, b = a[ia], b[ib]
        row.detail = f"along {len(ia)} matched {what}"
    elif len(a) == len(b):
        row.detail = f"rows by index (no {what} on both sides to match on)"
    else:
        row.detail = f"{len(a)} vs {len(b)} rows and no {what} to align them"
        row.fail("aligned rows")
        return None
    if row.stage == "roi_levels":
        row.max_abs, row.rel = _errors(a, b)
        moved = float(np.mean(a != b)) if len(a) else 0.0
        tol = _tolerance(tolerances, row.stage)
        if tol is not None:
            row.check("fraction on another level", moved, tol)
    elif row.stage == "masks":
        _masks(row, a, b, tolerances)
    else:
        _dense(row, a, b, _tolerance(tolerances, row.stage))
    return a, b


def _masks(row: StageResult, a, b, tolerances: dict) -> None:
    """Pasted masks (Q, H, W) along matched detections: binarized (>= 0.5) IoU per instance, and max |prob diff|."""
    if a.shape != b.shape:
        row.detail += "; image sizes differ"
        row.fail("same shape")
        return
    row.max_abs, row.rel = _errors(a, b)
    ma = (a >= 0.5).reshape(len(a), int(np.prod(a.shape[1:])))                   # (Q, H, W) -> (Q, H*W)
    mb = (b >= 0.5).reshape(len(b), int(np.prod(b.shape[1:])))
    inter, union = (ma & mb).sum(1), (ma | mb).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)                 # (Q,)
    need = _tolerance(tolerances, "masks", "iou")
    need = 0.97 if need is None else need
    above = float(np.mean(iou >= need)) if len(iou) else 1.0
    row.detail += f"; binarized mask IoU min {iou.min() if len(iou) else 1.0:.4f}"
    tol = _tolerance(tolerances, "masks")
    if tol is not None:
        row.check(f"fraction with IoU >= {need}", above, tol, at_most=False)


def _set_row(row: StageResult, stats, tolerances: dict) -> None:
    row.detail = f"{len(stats.pairs)} pairs of {stats.n_reference} in A, {stats.n_candidate} in B"
    row.max_abs = stats.max_box_diff
    matched = _tolerance(tolerances, row.stage, "matched")
    if matched is not None:
        row.check("matched", stats.matched_fraction, matched, at_most=False)
    tol = _tolerance(tolerances, row.stage)
    if tol is not None:
        row.check("box px", stats.max_box_diff, tol)


def compare_traces(a, b, tolerances=None, match_iou: float = 0.99) -> list:
    """[StageResult] for every stage of A (in A's order), then the stages only B has.

    a, b: name -> array mappings (A the reference); tolerances: overrides of DEFAULT_TOLERANCES (see
    `parse_tolerances`); match_iou: box IoU a matched pair must exceed (parity protocol).
    """
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    proposals = _match(a, b, "proposals", "proposal_scores", None, match_iou)
    dets = _match(a, b, "boxes", "scores", "labels", match_iou)
    if dets is None:
        dets = _match(a, b, "final_boxes", "scores", "labels", match_iou)
    results = []
    for name in list(a) + [n for n in b if n not in a]:
        row = StageResult(name, tuple(np.shape(a[name])) if name in a else None,
                          tuple(np.shape(b[name])) if name in b else None)
        results.append(row)
        if row.shape_a is None or row.shape_b is None:
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if name in NOT_COMPARED:
            row.detail = "not compared: a set before NMS, its size depends on thresholds"
        elif name in ("proposals", "boxes"):
            stats = proposals if name == "proposals" else dets
            if stats is None:
                row.detail = "not finite (N, 4) boxes on both sides"
                row.fail("boxes")
            else:
                _set_row(row, stats, tol)
        elif name == "labels" and dets is not None:
            row.detail = "matched pairs have equal labels by construction"
        elif name in COMPANIONS:
            is_proposal = COMPANIONS[name] == "proposals"
            _rows(row, x, y, proposals if is_proposal else dets, "proposals" if is_proposal else "detections", tol)
        elif name in PROPOSAL_ROWS:
            _rows(row, x, y, proposals, "proposals", tol)
        elif name in DETECTION_ROWS:
            _rows(row, x, y, dets, "detections", tol)
        else:
            _dense(row, x, y, _tolerance(tol, name))
    return results


def passed(results) -> bool:
    """True when at least one stage was checked and none is beyond tolerance (comparing nothing proves nothing)."""
    return any(r.checks for r in results) and all(r.status != "FAIL" for r in results)


def _fmt(v, percent: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.4g}%" if percent else f"{v:.3g}"


def _check_text(what, value, op, bound, ok) -> str:
    if not op:
        return f"{what} !"
    pct = what.startswith(("matched", "fraction"))
    return f"{what} {_fmt(value, pct)} {op} {_fmt(bound, pct)}" + ("" if ok else " !")


def format_table(results, name_a: str = "A", name_b: str = "B") -> str:
    """The per-stage table, then the stages missing on either side and the verdict."""
    lines = [f"{'stage':<16} {'shape ' + name_a[:12]:<20} {'shape ' + name_b[:12]:<20} {'max abs':>9} "
             f"{'rel':>9}  {'status':<7} checks (! = beyond tolerance); notes"]
    for r in results:
        if r.shape_a is None or r.shape_b is None:
            continue
        checks = "; ".join(_check_text(*c) for c in r.checks)
        notes = "; ".join(filter(None, (checks, r.detail)))
        lines.append(f"{r.stage:<16} {str(r.shape_a):<20} {str(r.shape_b):<20} {_fmt(r.max_abs):>9} "
                     f"{_fmt(r.rel):>9}  {r.status:<7} {notes}")
    for side, label in (("A", name_a), ("B", name_b)):
        missing = [r.stage for r in results if r.status == f"missing in {side}"]
        if missing:
            lines.append(f"missing in {label}: {', '.join(missing)}")
    failed = [r.stage for r in results if r.status == "FAIL"]
    lines.append(f"FAIL: {', '.join(failed)} beyond tolerance" if failed else
                 f"all {sum(r.status == 'ok' for r in results)} checked stages within tolerance")
    return "\n".join(lines)
