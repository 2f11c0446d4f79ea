"""`crosscheck` on real torchvision exports: weights mapped exactly, clean exports pass, broken ones are caught at
the stage that was broken.

Exports (torch.onnx.export, the TorchScript exporter: `dynamo=False`) of calibrated random-weight models
(tests/tv_models.py, facts §10.3) at 320x320 with min_size = max_size = 320, cached on disk keyed by the weights'
bytes, architecture, opset, input mode and the torch/torchvision versions. Cases, to cover the matrix at small cost:
  * maskrcnn_resnet50_fpn (v1), opset 11, fixed input size: the issue's case;
  * fasterrcnn_resnet50_fpn_v2, opset 20 (the newest the TorchScript exporter supports in torch 2.14:
    `torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET`), dynamic height and width;
  * the small ResNet-18 Mask R-CNN with FrozenBatchNorm2d (exported as Mul/Add, not folded), opset 11, fixed size:
    the graph breaks run on it, because it is 3x cheaper and the mechanism must not depend on one architecture.

The breaks are graph edits (`edit`) of one computation each; the assertion is only which stage is named first: the
mechanism (every stage fed the export's own input of that stage) is general, not one rule per break.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings

import numpy as np
import pytest

import oracle
import tv_models
from minimaskrcnn.crosscheck import onnx_weights
from minimaskrcnn.crosscheck.onnx import crosscheck, load_export, report_json, save_onnx_trace
from minimaskrcnn.crosscheck.onnx_graph import read_graph, scope
from minimaskrcnn.trace import load_trace

SIZE = 320
EXPORT_DIR = tv_models.CACHE_DIR / "onnx-exports"
V1 = ("maskrcnn_resnet50_fpn", 11, False, 0)
V2_FASTER = ("fasterrcnn_resnet50_fpn_v2", 20, True, 1)
SMALL = (tv_models.SMALL_ARCH, 11, False, 1)


def _onnx():
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as e:    # the oracle runtime: missing means FAIL, never skip
        pytest.fail(f"onnx / onnxruntime cannot be imported: {e}. Install with: pip install '.[test]'", pytrace=False)
    return onnx


class Export:
    def __init__(self, path, weights, image, state_dict):
        self.path, self.weights, self.image, self.state_dict = path, weights, image, state_dict


_EXPORTS = {}


def exported(case) -> Export:
    """The cached export of case (arch, opset, dynamic, seed) and its original weights as a torch .pth."""
    if case in _EXPORTS:
        return _EXPORTS[case]
    _onnx()
    arch, opset, dynamic, seed = case
    torch, tv = oracle.torch(), oracle.torchvision()
    image = tv_models.structured_image(SIZE, SIZE, seed)
    model = tv_models.calibrated_model(arch, image, seed, min_size=SIZE, max_size=SIZE)
    sd = tv_models.state_dict_numpy(model)
    h = hashlib.sha256(json.dumps([arch, opset, dynamic, SIZE, torch.__version__, tv.__version__]).encode())
    for k, v in sd.items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    stem = EXPORT_DIR / f"{arch}-opset{opset}-{'dynamic' if dynamic else 'fixed'}-{h.hexdigest()[:20]}"
    path, weights = stem.with_suffix(".onnx"), stem.with_suffix(".pth")
    if not (path.exists() and weights.exists()):
        EXPORT_DIR.mkdir(parents=True, exist_ok=True)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        tmp = stem.with_suffix(f".{os.getpid()}.tmp")
        axes = {"images": {1: "height", 2: "width"}} if dynamic else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # the exporter's TracerWarnings
            torch.onnx.export(model, ([x],), str(tmp), opset_version=opset, dynamo=False, input_names=["images"],
                              dynamic_axes=axes)
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, str(tmp) + ".pth")
        os.replace(str(tmp) + ".pth", weights)
        os.replace(tmp, path)                        # atomic: parallel sessions never read half a file
    _EXPORTS[case] = Export(path, weights, image, sd)
    return _EXPORTS[case]


# --- a general graph-editing helper --------------------------------------------------------------------------------

def all_nodes(graph):
    """Every node of `graph` and of its subgraphs (If branches, Loop bodies), with the graph that holds it."""
    for node in graph.node:
        yield graph, node
        for a in node.attribute:
            if a.g.node:
                yield from all_nodes(a.g)


def edit(export: Export, tmp_path, change, name="edited.onnx"):
    """A copy of the export with `change(model)` applied (in place on the ModelProto)."""
    onnx = _onnx()
    model = onnx.load(str(export.path))
    change(model)
    out = tmp_path / name
    onnx.save(model, str(out))
    return out


def node(model, module, op):
    """The first top-level node of type `op` inside module `module` (state-dict path)."""
    return next(n for n in model.graph.node if scope(n.name) == module and n.op_type == op)


def set_ints(n, attr, values):
    a = next(a for a in n.attribute if a.name == attr)
    del a.ints[:]
    a.ints.extend(values)


def bypass(model, n):
    """Remove node `n`: whoever read its output reads its first input instead (e.g. an activation removed)."""
    for _, m in all_nodes(model.graph):
        for i, name in enumerate(m.input):
            if name == n.output[0]:
                m.input[i] = n.input[0]
    model.graph.node.remove(n)


def nms_constant(model, consumer_module, index, value):
    """Set input `index` (3 = IoU threshold) of the NonMaxSuppression inside the If whose output `consumer_module`
    reads (torchvision's batched_nms under tracing) to `value`."""
    from onnx import numpy_helper
    outer = {o: m for m in model.graph.node for o in m.output}
    for m in model.graph.node:
        if m.op_type != "If" or not any(scope(c.name).startswith(consumer_module) for c in model.graph.node
                                        if m.output[0] in c.input):
            continue
        for a in m.attribute:
            for graph, n in all_nodes(a.g):
                if n.op_type == "NonMaxSuppression":
                    producers = {o: c for c in graph.node for o in c.output} | outer
                    const = producers[n.input[index]]
                    old = numpy_helper.to_array(const.attribute[0].t)
                    const.attribute[0].t.CopyFrom(numpy_helper.from_array(np.full_like(old, value)))
                    return
    raise AssertionError(f"no NMS read by {consumer_module}")


# --- weights -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [V1, SMALL, V2_FASTER], ids=["v1-opset11", "small-frozenbn", "v2-faster-opset20"])
def test_weights_are_mapped_exactly(case):
    """Every original tensor is found: unfolded ones bitwise, BN-folded ones within the derived float32 bound."""
    export = exported(case)
    g, rec, cfg, _ = load_export(export.path)
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
    onnx = _onnx()
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


# --- clean exports -------------------------------------------------------------------------------------------------

def test_torchvision_export_v1_opset11(tmp_path, capsys):
    """The issue's case: every stage within tolerance on the export's own inputs; the run saved as a trace that
    `compare` reads. Prints the rows (the README's measurement: pytest -s)."""
    export = exported(V1)
    report = crosscheck(export.path, [export.image], weights=export.weights)
    with capsys.disabled():
        print("\n" + report.format_table())
    stages = [r.stage for r in report.stages]
    for s in ("weights", "normalized", "C2", "C5", "P2", "P6", "anchors", "objectness", "rpn_deltas", "proposals",
              "box_features", "class_logits", "box_deltas", "boxes", "scores", "mask_features", "mask_logits",
              "mask_probs", "final_boxes", "masks"):
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
    report = crosscheck(export.path, [export.image, big])
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
    # a backbone conv's padding shifted: same shapes, other values, from layer2 on (C3 of this returned_layers)
    "conv pads": (lambda m: set_ints(node(m, "backbone.body.layer2.1.conv1", "Conv"), "pads", [0, 0, 2, 2]), "C3"),
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
    report = crosscheck(broken, [export.image])
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
    report = crosscheck(edit(export, tmp_path, dynamic), [other])
    assert report.first_failing_stage == "input_size", report.format_table()
    assert "made for a 320x320 image" in report.stages[0].detail
