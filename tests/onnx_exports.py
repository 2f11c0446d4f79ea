"""ONNX exports of calibrated random-weight torchvision models for the crosscheck tests, and a small general
graph-editing toolkit to break one computation of an export.

`exported(case)`: torch.onnx.export (the TorchScript exporter, `dynamo=False`) of a calibrated model
(tests/tv_models.py, facts §10.3) at 320x320 with min_size = max_size = 320, cached on disk under a key of the
weights' bytes, architecture, opset, input mode and the torch/torchvision versions; the original weights are saved
next to it as a torch `.pth` (for `--weights`). onnx/onnxruntime are the test's oracle runtime: missing, the test
FAILS (never skips).
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
from minimaskrcnn.crosscheck.onnx_graph import scope


def onnx_or_fail():
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as e:
        pytest.fail(f"onnx / onnxruntime cannot be imported: {e}. Install with: pip install '.[test]'", pytrace=False)
    return onnx


SIZE = 320
EXPORT_DIR = tv_models.CACHE_DIR / "onnx-exports"
V1 = ("maskrcnn_resnet50_fpn", 11, False, 0)
V2_FASTER = ("fasterrcnn_resnet50_fpn_v2", 20, True, 1)
SMALL = (tv_models.SMALL_ARCH, 11, False, 1)


class Export:
    def __init__(self, path, weights, image, state_dict):
        self.path, self.weights, self.image, self.state_dict = path, weights, image, state_dict


_EXPORTS = {}


def exported(case) -> Export:
    """The cached export of case (arch, opset, dynamic, seed) and its original weights as a torch .pth."""
    if case in _EXPORTS:
        return _EXPORTS[case]
    onnx_or_fail()
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
    onnx = onnx_or_fail()
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
