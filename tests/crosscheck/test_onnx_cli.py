"""`minimaskrcnn crosscheck MODEL.onnx IMAGE ... [--weights] [--json] [--trace]`: exit status, JSON report, one-line
errors. Runs the CLI in-process (`cli.main.main`), on the cached small export of tests/onnx_exports.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.cli.main import main
from onnx_exports import SMALL, edit, exported, node, set_ints


def _png(path, image) -> str:
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
    return str(path)


def test_clean_export_exits_0_and_writes_the_report(tmp_path, capsys):
    export = exported(SMALL)
    image = _png(tmp_path / "a.png", export.image)
    report = tmp_path / "report.json"
    status = main(["crosscheck", str(export.path), image, "--weights", str(export.weights), "--json", str(report),
                   "--trace", str(tmp_path / "onnx.npz")])
    out = capsys.readouterr().out
    assert status == 0, out
    doc = json.loads(report.read_text())
    assert doc["first_failing_stage"] is None
    rows = {r["stage"]: r for r in doc["stages"]}
    assert rows["weights"]["ok"] and rows["C3"]["ok"] and isinstance(rows["C3"]["max_abs"], float)
    assert "all" in out.splitlines()[-1] and (tmp_path / "onnx.npz").exists()
    assert main(["compare", str(tmp_path / "onnx.npz"), str(tmp_path / "onnx.npz")]) == 0


def test_broken_export_exits_1_naming_the_stage(tmp_path, capsys):
    export = exported(SMALL)
    broken = edit(export, tmp_path, lambda m: set_ints(node(m, "backbone.body.layer3.0.conv2", "Conv"), "pads",
                                                       [0, 0, 2, 2]))
    report = tmp_path / "report.json"
    status = main(["crosscheck", str(broken), _png(tmp_path / "a.png", export.image), "--json", str(report), "-q",
                   "--first-failure"])
    assert status == 1
    assert json.loads(report.read_text())["first_failing_stage"] == "C4"
    assert "first stage beyond tolerance: C4" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["not onnx", "another model", "wrong size", "missing file"])
def test_bad_input_is_one_line_and_exit_2(what, tmp_path, capsys):
    export = exported(SMALL)
    image = _png(tmp_path / "a.png", export.image)
    model = str(export.path)
    if what == "not onnx":
        model = str(tmp_path / "x.onnx")
        (tmp_path / "x.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    elif what == "another model":
        model = str(tmp_path / "tiny.onnx")
        import onnx
        from onnx import TensorProto, helper
        g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="/classifier/relu/Relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        onnx.save(helper.make_model(g), model)
    elif what == "wrong size":
        image = _png(tmp_path / "b.png", export.image[:200, :260])
    else:
        image = str(tmp_path / "nothing.png")
    status = main(["crosscheck", model, image])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    expected = {"not onnx": "not an ONNX model", "another model": "not a torchvision R-CNN export: found",
                "wrong size": "fixed 3x320x320 input", "missing file": "no such file"}[what]
    assert expected in err, err
