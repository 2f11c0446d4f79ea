"""`crosscheck` on real torchvision exports: weights mapped exactly, clean exports pass, broken ones are caught at
the stage that was broken.

Exports of calibrated random-weight models come from tests/onnx_exports.py (cached on disk). Cases, to cover the
matrix at small cost:
  * maskrcnn_resnet50_fpn (v1), opset 11, fixed input size: the issue's case;
  * fasterrcnn_resnet50_fpn_v2, opset 20 (the newest the TorchScript exporter supports in torch 2.14:
    `torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET`), dynamic height and width;
  * the small ResNet-18 Mask R-CNN with FrozenBatchNorm2d (exported as Mul/Add, not folded), opset 11, fixed size:
    the graph breaks run on it, because it is 3x cheaper and the mechanism must not depend on one architecture.

The breaks are graph edits (`edit`) of one computation each; the assertion is only which stage is named first: the
mechanism (every stage fed the export's own input of that stage) is general, not one rule per break.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oracle
import tv_models
from onnx_exports import SMALL, SIZE, V1, V2_FASTER, bypass, edit, exported, nms_constant, node, onnx_or_fail, set_ints
from minimaskrcnn.crosscheck import onnx_weights
from minimaskrcnn.crosscheck.onnx import crosscheck, report_json, save_onnx_trace
from minimaskrcnn.crosscheck.onnx_graph import read_graph, scope
from minimaskrcnn.trace import load_trace


# --- weights -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [V1, SMALL, V2_FASTER], ids=["v1-opset11", "small-frozenbn", "v2-faster-opset20"])
def test_weights_are_mapped_exactly(case):
    """Every original tensor is found: unfolded ones bitwise, BN-folded ones within the derived float32 bound."""
    export = exported(case)
    rec = onnx_weights.recover_state_dict(read_graph(export.path))
    eps = 1e-5      # torchvision's BatchNorm2d / FrozenBatchNorm2d default: what these models were built with
    checks = onnx_weights.check_weights(rec, export.state_dict, eps)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok][:5]
    covered = {c.key for c in checks}
    convs = {k[:-len(".weight")] for k in export.state_dict if k.endswith(".weight")
             and export.state_dict[k].ndim in (2, 4)}
    assert {f"{m}.weight" for m in convs} <= covered            # no conv / linear left out
    n_bn = sum(k.endswith(".running_var") for k in export.state_dict)
    assert len(rec.fold) == n_bn                                  # each BatchNorm belongs to one conv


def test_perturbed_weights_are_named(tmp_path):
    """One ulp in an unfolded initializer, eight in a folded one (beyond the 6U bound): exactly those keys fail."""
    onnx = onnx_or_fail()
    from onnx import numpy_helper
    export = exported(SMALL)
    g = read_graph(export.path)
    rec = onnx_weights.recover_state_dict(g)
    unfolded = "rpn.head.cls_logits.weight"
    folded_conv = next(m for m, (how, _) in rec.fold.items() if how == "frozen")
    model = onnx.load(str(export.path))
    inits = {t.name: t for t in model.graph.initializer}
    t = inits[rec.sources[unfolded]]
    a = numpy_helper.to_array(t).copy()
    a.flat[7] = np.nextafter(a.flat[7], np.float32(np.inf))
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    out = tmp_path / "perturbed.onnx"
    onnx.save(model, str(out))
    rec2 = onnx_weights.recover_state_dict(read_graph(out))
    bad = [c.key for c in onnx_weights.check_weights(rec2, export.state_dict, 1e-5) if not c.ok]
    assert bad == [unfolded]
    # a folded scale (FrozenBatchNorm2d Mul constant) 8 ulp off
    bn = rec.fold[folded_conv][1]
    rec2.raw[f"{bn}.scale"] = rec2.raw[f"{bn}.scale"].copy()
    s = rec2.raw[f"{bn}.scale"]
    s[0] = s[0] + 8 * np.spacing(s[0])
    bad = [c.key for c in onnx_weights.check_weights(rec2, export.state_dict, 1e-5) if not c.ok]
    assert bad == [f"{bn}.weight", unfolded]


@settings(max_examples=10)
@given(data=st.data())
def test_any_perturbed_tensor_is_named(data):
    """Whichever stored tensor (or FrozenBatchNorm2d scale/shift) is moved, by whatever amount beyond its bound
    (1-4 ulp where bitwise equality is required, 8-64 ulp where the 4U/5U fold bounds apply), exactly it is named."""
    export = exported(SMALL)
    rec = _small_recovered()
    key = data.draw(st.sampled_from(sorted(k for k in rec.raw if not k.endswith(".eps"))))
    a = rec.raw[key]
    i = data.draw(st.integers(0, a.size - 1))
    folded = key.endswith((".scale", ".shift"))
    ulps = data.draw(st.integers(8, 64) if folded else st.integers(1, 4))
    moved = a.copy()
    moved.flat[i] = moved.flat[i] + ulps * np.spacing(np.abs(moved.flat[i])) * data.draw(st.sampled_from([-1, 1]))
    raw = dict(rec.raw)
    raw[key] = moved
    bad = [c.key for c in onnx_weights.check_weights(onnx_weights.Recovered(rec.state_dict, rec.fold, raw),
                                                     export.state_dict, 1e-5) if not c.ok]
    want = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".scale") else ".bias") if folded else key
    assert bad == [want]


_RECOVERED = {}


def _small_recovered():
    if "small" not in _RECOVERED:
        _RECOVERED["small"] = onnx_weights.recover_state_dict(read_graph(exported(SMALL).path))
    return _RECOVERED["small"]


# --- clean exports -------------------------------------------------------------------------------------------------

def test_torchvision_export_v1_opset11(tmp_path, capsys):
    """The issue's case: every stage within tolerance on the export's own inputs; the run saved as a trace that
    `compare` reads. Prints the rows (the README's measurement: pytest -s)."""
    export = exported(V1)
    report = crosscheck(export.path, [export.image], weights=export.weights, end_to_end=True)
    with capsys.disabled():
        print("\n" + report.format_table())
    stages = [r.stage for r in report.stages]
    for s in ("weights", "normalized", "C2", "C5", "P2", "P6", "anchors", "objectness", "rpn_deltas", "proposals",
              "box_features", "class_logits", "box_deltas", "boxes", "scores", "mask_features", "mask_logits",
              "mask_probs", "final_boxes", "masks", "end_to_end.final_boxes", "end_to_end.scores", "end_to_end.masks"):
        assert s in stages, s
    assert report.first_failing_stage is None, report.format_table()
    doc = json.loads(report_json(report))
    assert doc["first_failing_stage"] is None and {"stage", "max_abs", "ok"} <= set(doc["stages"][0])
    save_onnx_trace(report, "image 0", tmp_path / "onnx.npz")
    trace, meta = load_trace(tmp_path / "onnx.npz")
    assert meta["producer"].startswith("onnxruntime") and "masks" in trace and trace["C2"].ndim == 3


def test_faster_v2_dynamic_opset20_at_two_sizes():
    """A dynamic-size export at its own size passes; at 400x400 the export's resize is checked against
    torchvision's own transform of that image, and a difference is named as `image_size`, the first failing stage."""
    torch = oracle.torch()
    export = exported(V2_FASTER)
    big = np.pad(export.image, ((0, 80), (0, 80), (0, 0)), mode="reflect")      # (400, 400, 3)
    report = crosscheck(export.path, [export.image, big], first_failure=True)
    rows = {(r.image, r.stage): r for r in report.stages}
    assert all(r.ok is not False for (image, _), r in rows.items() if image == "image 0"), report.format_table()
    assert ("image 0", "mask_logits") not in rows and ("image 0", "boxes") in rows
    model = tv_models.calibrated_model(V2_FASTER[0], export.image, V2_FASTER[3], min_size=SIZE, max_size=SIZE)
    with torch.no_grad():
        tv_size = tuple(model.transform([torch.from_numpy(big.transpose(2, 0, 1).copy())])[0].image_sizes[0])
    onnx_size = tuple(report.traces["image 1"]["image_size"])
    first_big = next((r.stage for r in report.stages if r.image == "image 1" and r.ok is False), None)
    assert first_big == ("image_size" if onnx_size != tv_size else None), (onnx_size, tv_size, report.format_table())


# --- broken exports ------------------------------------------------------------------------------------------------

BREAKS = {
    # (a backbone conv's padding shifted, same shapes and other values: tests/crosscheck/test_onnx_cli.py)
    # layer4 without its stride (main path and projection): C5 twice as large
    "conv strides": (lambda m: [set_ints(node(m, f"backbone.body.layer4.0.{c}", "Conv"), "strides", [1, 1])
                                for c in ("conv1", "downsample.0")], "C5"),
    "rpn nms threshold": (lambda m: nms_constant(m, "rpn", 3, 0.5), "proposals"),
    "mask sigmoid removed": (lambda m: bypass(m, next(n for n in m.graph.node if n.op_type == "Sigmoid"
                                                      and scope(n.name) == "roi_heads")), "mask_probs"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_a_broken_export_is_caught_at_its_stage(name, tmp_path):
    change, stage = BREAKS[name]
    export = exported(SMALL)
    broken = edit(export, tmp_path, change)
    report = crosscheck(broken, [export.image], first_failure=True)
    assert report.first_failing_stage == stage, report.format_table()


def test_perturbed_initializer_with_weights_is_named_first(tmp_path):
    from onnx import numpy_helper
    export = exported(SMALL)
    key = "roi_heads.box_predictor.cls_score.weight"

    def perturb(model):
        t = next(t for t in model.graph.initializer if t.name == key)
        a = numpy_helper.to_array(t) * np.float32(1.01)
        t.CopyFrom(numpy_helper.from_array(a, key))
    report = crosscheck(edit(export, tmp_path, perturb), [export.image], weights=export.weights)
    assert report.first_failing_stage == "weights" and key in report.stages[0].detail, report.format_table()
    assert all(r.ok is not False for r in report.stages[1:]), report.format_table()   # self-consistent export


def test_fixed_export_made_dynamic_reports_its_baked_size(tmp_path):
    """An export traced at 320x320 whose input was made dynamic afterwards keeps the size in its resize: the report
    says so (`input_size`, before every stage); a fixed export refuses the image with a one-line error."""
    export = exported(SMALL)
    other = export.image[:240, :300]
    with pytest.raises(ValueError, match=r"fixed 3x320x320 input and the image is 3x240x300") as e:
        crosscheck(export.path, [other])
    assert "\n" not in str(e.value)

    def dynamic(model):
        for d, p in zip(model.graph.input[0].type.tensor_type.shape.dim[1:], ("height", "width")):
            d.dim_param = p
    report = crosscheck(edit(export, tmp_path, dynamic), [other], first_failure=True)
    assert report.first_failing_stage == "input_size", report.format_table()
    assert "made for a 320x320 image" in report.stages[0].detail
