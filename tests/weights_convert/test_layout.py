"""weights_convert.layout and .infer: the expected key lists, validation errors, inferred configs, class names, eps.
"""
from pathlib import Path

import numpy as np
import pytest

import oracle
import weights_convert
from minimaskrcnn.config import (FASTERRCNN_RESNET50_FPN, FASTERRCNN_RESNET50_FPN_V2,
                                 MASKRCNN_RESNET50_FPN, MASKRCNN_RESNET50_FPN_V2)
from checkpoints import save, small_detector
from weights_convert import (LayoutError, convert, expected_layout, read_npz,
                             read_npz_metadata)


ROOT = Path(__file__).resolve().parents[2]
STATE_DICTS = ROOT.parent / "shared" / "reference" / "state_dicts"


# --- layout validation -----------------------------------------------------------------------------------------------

def read_reference_layout(name):
    layout = {}
    for line in (STATE_DICTS / f"{name}.txt").read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        if not key.endswith("num_batches_tracked"):
            layout[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return layout


@pytest.mark.parametrize("config, reference", [
    (MASKRCNN_RESNET50_FPN, "maskrcnn_resnet50_fpn_frozenbn"), (MASKRCNN_RESNET50_FPN, "maskrcnn_resnet50_fpn"),
    (MASKRCNN_RESNET50_FPN_V2, "maskrcnn_resnet50_fpn_v2"), (FASTERRCNN_RESNET50_FPN, "fasterrcnn_resnet50_fpn"),
    (FASTERRCNN_RESNET50_FPN_V2, "fasterrcnn_resnet50_fpn_v2")])
def test_expected_layout_is_the_reference_key_list(config, reference):
    """expected_layout reproduces the shared reference lists key for key, in order (facts §9)."""
    assert list(expected_layout(config).items()) == list(read_reference_layout(reference).items())


def test_missing_unexpected_and_misshaped_keys_in_one_error(small_files, tmp_path):
    torch = oracle.torch()
    sd = torch.load(small_files("mask_v1_frozenbn", "zip"))
    del sd["backbone.body.layer2.1.bn2.running_var"]
    sd["roi_heads.box_head.fc8.weight"] = torch.zeros(3)
    sd["roi_heads.mask_predictor.conv5_mask.bias"] = torch.zeros(255)
    src = save(sd, tmp_path / "bad.pth", "zip")
    with pytest.raises(LayoutError) as e:
        convert(src, tmp_path / "w.npz")
    message = str(e.value)
    assert "1 missing key: backbone.body.layer2.1.bn2.running_var" in message
    assert "1 unexpected key: roi_heads.box_head.fc8.weight" in message
    assert "1 mis-shaped key: roi_heads.mask_predictor.conv5_mask.bias (expected (256,), got (255,))" in message
    assert "\n" not in message and message.startswith("the state dict in bad.pth does not match")
    assert not (tmp_path / "w.npz").exists()


def test_integer_weights_are_refused(small_files, tmp_path):
    torch = oracle.torch()
    sd = torch.load(small_files("faster_v1", "zip"))
    sd["rpn.head.cls_logits.bias"] = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(LayoutError, match=r"rpn.head.cls_logits.bias \(expected a floating dtype, got int64\)"):
        convert(save(sd, tmp_path / "int.pth", "zip"), tmp_path / "w.npz")


def test_image_classifier_is_refused_clearly(tmp_path):
    tv = oracle.torchvision()
    src = save(tv.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth", "zip")
    with pytest.raises(LayoutError, match="not a Mask R-CNN / Faster R-CNN checkpoint: the state dict is an "
                                          r"image-classification ResNet \(conv1, layer1-4, fc\)"):
        convert(src, tmp_path / "w.npz")


def test_unknown_resnet_block_counts_are_named(small_files, tmp_path):
    torch = oracle.torch()
    sd = torch.load(small_files("faster_v1", "zip"))
    for key in [k for k in sd if k.startswith("backbone.body.layer3.1.")]:
        sd[key.replace("layer3.1.", "layer3.2.")] = sd[key]
    with pytest.raises(LayoutError, match=r"basic blocks per stage \(2, 2, 3, 2\), which is no supported"):
        convert(save(sd, tmp_path / "odd.pth", "zip"), tmp_path / "w.npz")


def test_anchor_count_must_match_the_config(tmp_path):
    src = save(small_detector(masks=False, anchors=5).state_dict(), tmp_path / "a5.pth", "zip")
    with pytest.raises(LayoutError, match="config has 3 anchors per location"):
        convert(src, tmp_path / "w.npz")
    ratios = [float(r) for r in np.geomspace(0.25, 4.0, 5)]
    config, _ = read_npz(convert(src, tmp_path / "w.npz", overrides={"aspect_ratios": ratios}))
    assert config.aspect_ratios == tuple(ratios)


def test_returned_layers_are_inferred_and_need_matching_anchor_sizes(tmp_path):
    src = save(small_detector(masks=False, returned_layers=(2, 3, 4)).state_dict(), tmp_path / "r234.pth", "zip")
    with pytest.raises(LayoutError, match="the FPN has 4 levels .* but the config has 5 anchor sizes"):
        convert(src, tmp_path / "w.npz")
    sizes = [[64], [128], [256], [512]]
    config, arrays = read_npz(convert(src, tmp_path / "w.npz", overrides={"anchor_sizes": sizes}))
    assert config.returned_layers == (2, 3, 4) and config.anchor_sizes == ((64,), (128,), (256,), (512,))
    assert "backbone.fpn.inner_blocks.0.0.weight" in arrays and arrays["backbone.fpn.inner_blocks.0.0.weight"].shape \
        == (64, 128, 1, 1)


def test_layers_beyond_the_last_returned_stage_are_absent(tmp_path):
    """IntermediateLayerGetter drops layer4 when only layers 1-3 feed the FPN; the layout follows."""
    src = save(small_detector(masks=False, returned_layers=(1, 2, 3)).state_dict(), tmp_path / "r123.pth", "zip")
    config, arrays = read_npz(convert(src, tmp_path / "w.npz",
                                      overrides={"anchor_sizes": [[32], [64], [128], [256]]}))
    assert config.returned_layers == (1, 2, 3) and not any(k.startswith("backbone.body.layer4") for k in arrays)


# --- class names and eps ---------------------------------------------------------------------------------------------

def test_class_names(small_files, tmp_path):
    src = small_files("faster_v1", "zip")
    names = ["__background__", "cat", "dog", "bird", "fish"]
    config, _ = read_npz(convert(src, tmp_path / "w.npz", class_names=names))
    assert config.class_names == tuple(names)
    with pytest.raises(ValueError, match="class_names has 3 entries but the checkpoint has 5 classes"):
        convert(src, tmp_path / "w.npz", class_names=names[:3])


def test_bn_eps_rule_by_sha256_prefix_and_override(small_files, tmp_path, monkeypatch):
    """eps 0.0 exactly when the file's sha256 starts with an official v1 prefix (here: this file's, injected)."""
    import hashlib
    src = small_files("mask_v1_frozenbn", "zip")
    assert read_npz(convert(src, tmp_path / "a.npz"))[0].bn_eps == 1e-5
    prefix = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    monkeypatch.setitem(weights_convert.OFFICIAL_V1_SHA256_PREFIXES, prefix, "test-file")
    assert read_npz(convert(src, tmp_path / "b.npz"))[0].bn_eps == 0.0
    assert read_npz(convert(src, tmp_path / "c.npz", bn_eps=1e-3))[0].bn_eps == 1e-3
    assert read_npz_metadata(tmp_path / "b.npz")["bn_eps"] == 0.0
    assert weights_convert.default_bn_eps("bf2d0c1e" + "0" * 56) == 0.0
    assert weights_convert.default_bn_eps("258fb6c6" + "0" * 56) == 0.0
    assert weights_convert.default_bn_eps("73cbd019" + "0" * 56) == 1e-5      # v2: no eps overwrite
