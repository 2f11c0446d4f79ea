"""Unit tests of the ONNX crosscheck's graph reading that need no export: module scopes, BatchNorm names, bad files.

The exporter's node naming (torch.onnx TorchScript exporter, `_jit_pass_onnx_assign_scoped_names_for_node_and_value`)
is: for each module on the path, its attribute name, where a container's child is spelled `parent.child`; the op
name last; a module called again gets `_N`. `render` below builds such names from a state-dict module path, and
`scope` must invert it for every path torchvision's R-CNN modules can have.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimaskrcnn.crosscheck.onnx_graph import read_graph, scope, within
from minimaskrcnn.crosscheck.onnx_weights import bn_name

NAME = st.from_regex(r"[a-z][a-z_]{0,8}[a-z]", fullmatch=True)
PART = st.one_of(NAME, st.integers(0, 30).map(str))


def render(path: list, call: int, op: str) -> str:
    """The exporter's node name of module `path` (components; digits are Sequential/ModuleList children)."""
    comps, prev = [], None
    for p in path:
        name = f"{prev}.{p}" if prev is not None and p.isdigit() else p
        comps.append(name)
        prev = name
    if call:
        comps[-1] += f"_{call}"
    return "/" + "/".join(comps) + f"/{op}"


@given(first=NAME, rest=st.lists(PART, max_size=6), call=st.integers(0, 4), op=st.sampled_from(["Conv", "Relu", "Add"]))
def test_scope_inverts_the_exporters_names(first, rest, call, op):
    path = [first] + rest
    assert scope(render(path, call, op)) == ".".join(path)


def test_scope_of_known_torchvision_names():
    assert scope("/backbone/body/layer1/layer1.0/conv1/Conv") == "backbone.body.layer1.0.conv1"
    assert scope("/backbone/fpn/inner_blocks.0/inner_blocks.0.0/Conv") == "backbone.fpn.inner_blocks.0.0"
    assert scope("/rpn/head/conv/conv.0/conv.0.0_3/Conv") == "rpn.head.conv.0.0"
    assert scope("/rpn/head/cls_logits_4/Conv") == "rpn.head.cls_logits"
    assert scope("/roi_heads/box_head/box_head.5/Gemm") == "roi_heads.box_head.5"
    assert scope("Identity_514") == "" and scope("If_1866") == ""
    assert within("rpn.head.cls_logits", "rpn") and not within("rpn_x.head", "rpn") and not within("", "rpn")


@pytest.mark.parametrize("conv, bn", [("backbone.body.conv1", "backbone.body.bn1"),
                                      ("backbone.body.layer3.4.conv2", "backbone.body.layer3.4.bn2"),
                                      ("backbone.body.layer2.0.downsample.0", "backbone.body.layer2.0.downsample.1"),
                                      ("backbone.fpn.layer_blocks.2.0", "backbone.fpn.layer_blocks.2.1"),
                                      ("roi_heads.box_head.3.0", "roi_heads.box_head.3.1")])
def test_bn_name_follows_torchvision(conv, bn):
    assert bn_name(conv) == bn


def test_bn_name_refuses_a_name_without_a_convention():
    with pytest.raises(ValueError, match="no torchvision BatchNorm name"):
        bn_name("rpn.head.cls_logits")


def _tiny_model(path, op_names=("/features/conv/Conv",)):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name=op_names[0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_not_an_onnx_file_is_one_line(tmp_path):
    for content in (b"", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, b"hello, I am text\n" * 20):
        p = tmp_path / "model.onnx"
        p.write_bytes(content)
        with pytest.raises(ValueError) as e:
            read_graph(p)
        assert "not an ONNX model" in str(e.value) and "\n" not in str(e.value)


def test_another_onnx_model_says_what_was_found(tmp_path):
    with pytest.raises(ValueError) as e:
        read_graph(_tiny_model(tmp_path / "classifier.onnx"))
    text = str(e.value)
    assert "not a torchvision R-CNN export" in text and "modules features" in text and "\n" not in text
