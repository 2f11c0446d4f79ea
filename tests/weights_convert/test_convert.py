"""weights_convert.convert: torchvision detection checkpoints -> .npz, bit for bit, with the Config the weights imply.

Small ResNet-18 FPN detectors (built from torchvision's own modules, tests/checkpoints.py) cover every layout switch in
both file formats; the five full-size ResNet-50 layouts of facts §9 are each converted once and compared with
torch.load. Legacy key names (torchvision's renames on load) convert like the modern ones.
"""
import copy
from pathlib import Path

import pytest

import oracle
from minimaskrcnn.config import (COCO_CATEGORIES, FASTERRCNN_RESNET50_FPN, FASTERRCNN_RESNET50_FPN_V2,
                                 MASKRCNN_RESNET50_FPN, MASKRCNN_RESNET50_FPN_V2, Config)
from checkpoints import FORMATS, SMALL, assert_npz_equals_torch_load, save, small_detector
from weights_convert import (LayoutError, convert, read_npz,
                             read_npz_metadata)


ROOT = Path(__file__).resolve().parents[2]
STATE_DICTS = ROOT.parent / "shared" / "reference" / "state_dicts"


# --- exactness -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("variant", list(SMALL))
def test_small_detectors_convert_bitwise(small_files, tmp_path, variant, fmt):
    src = small_files(variant, fmt)
    dst = convert(src, tmp_path / "w.npz")
    assert_npz_equals_torch_load(dst, src)
    config, arrays = read_npz(dst)
    expected = Config().replace(resnet_depth=18, fpn_channels=64, representation_size=128, num_classes=5,
                                class_names=("__background__", "class_1", "class_2", "class_3", "class_4"),
                                **SMALL[variant][1])
    assert config == expected
    meta = read_npz_metadata(dst)
    assert meta["architecture"] == f"{'maskrcnn' if expected.masks else 'fasterrcnn'}_resnet18_fpn" + \
        ("_v2" if expected.fpn_norm else "") + "_custom"
    assert meta["bn_eps"] == 1e-5 and meta["num_classes"] == 5 and meta["class_names"][1] == "class_1"
    assert meta["source_name"] == src.name and meta["format_version"] == 1
    import hashlib
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert Config.from_dict(meta["config"]) == config


def full_size_builders():
    tv = oracle.torchvision()
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    d = tv.models.detection
    return {
        # weights=None, weights_backbone=None: plain BatchNorm2d (facts §2.1), 360 keys
        "maskrcnn_resnet50_fpn": (lambda: d.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None),
                                  MASKRCNN_RESNET50_FPN, "zip"),
        # the pretrained layout, FrozenBatchNorm2d (resnet_fpn_backbone's default norm), 307 keys; no download
        "maskrcnn_resnet50_fpn_frozenbn": (lambda: MaskRCNN(resnet_fpn_backbone(backbone_name="resnet50",
                                                                                weights=None), 91),
                                           MASKRCNN_RESNET50_FPN, "legacy"),
        "maskrcnn_resnet50_fpn_v2": (lambda: d.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None),
                                     MASKRCNN_RESNET50_FPN_V2, "legacy"),
        "fasterrcnn_resnet50_fpn": (lambda: d.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None),
                                    FASTERRCNN_RESNET50_FPN, "zip"),
        "fasterrcnn_resnet50_fpn_v2": (lambda: d.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None),
                                       FASTERRCNN_RESNET50_FPN_V2, "zip"),
    }


@pytest.mark.parametrize("name", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_frozenbn", "maskrcnn_resnet50_fpn_v2",
                                  "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"])
def test_full_size_torchvision_models_convert_bitwise(tmp_path, name):
    build, reference, fmt = full_size_builders()[name]
    oracle.torch().manual_seed(0)
    src = save(build().state_dict(), tmp_path / f"{name}.pth", fmt)
    dst = convert(src, tmp_path / "w.npz")
    assert_npz_equals_torch_load(dst, src)
    config, _ = read_npz(dst)
    assert config == reference.replace(bn_eps=1e-5)          # generated file: not an official v1 checkpoint
    assert read_npz_metadata(dst)["architecture"] == name.replace("_frozenbn", "")
    assert read_npz_metadata(dst)["class_names"] == list(COCO_CATEGORIES)
    src.unlink()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("nest", ["model", "state_dict"])
def test_nested_state_dict(small_files, tmp_path, fmt, nest):
    torch = oracle.torch()
    sd = torch.load(small_files("mask_v2", "zip"))
    src = save({nest: sd, "epoch": 3, "lr": 0.02}, tmp_path / "ckpt.pth", fmt)
    assert_npz_equals_torch_load(convert(src, tmp_path / "w.npz"), src, nested=nest)


@pytest.mark.parametrize("dtype", ["float16", "float64", "bfloat16"])
def test_float16_float64_bfloat16_storage(small_files, tmp_path, dtype):
    """float16/float64 are kept as stored (the loader casts); bfloat16, which NumPy lacks, widens exactly."""
    torch = oracle.torch()
    sd = torch.load(small_files("faster_v1", "zip"))
    cast = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in sd.items()}
    src = save(cast, tmp_path / f"{dtype}.pth", "zip")
    _, arrays = read_npz(convert(src, tmp_path / "w.npz"))
    for key, tensor in cast.items():
        ref = tensor.float().numpy() if dtype == "bfloat16" else tensor.numpy()
        assert arrays[key].dtype == ref.dtype and arrays[key].tobytes() == ref.tobytes()


def test_views_into_one_storage(small_files, tmp_path):
    """A state dict whose tensors are strided views of one big storage converts to the same arrays."""
    torch = oracle.torch()
    sd = torch.load(small_files("faster_v1", "zip"))
    flat = torch.cat([v.reshape(-1) for v in sd.values() if v.is_floating_point()] + [torch.zeros(10)])
    views, pos = {}, 3
    for key, value in sd.items():
        if not value.is_floating_point():
            continue
        n = value.numel()
        if value.dim() == 2:                      # store the transpose, hand out its transposed view
            flat[pos:pos + n] = value.t().reshape(-1)
            views[key] = flat[pos:pos + n].view(value.shape[1], value.shape[0]).t()
        else:
            flat[pos:pos + n] = value.reshape(-1)
            views[key] = flat[pos:pos + n].view(value.shape)
        pos += n
    assert all(torch.equal(views[k], sd[k]) for k in views)
    src = save(views, tmp_path / "views.pth", "zip")
    assert_npz_equals_torch_load(convert(src, tmp_path / "w.npz"), src)


# --- legacy key names ------------------------------------------------------------------------------------------------

def to_legacy_names(sd):
    """Rename modern keys back to the names of old torchvision checkpoints (facts §9)."""
    out = type(sd)()
    for key, value in sd.items():
        parts = key.split(".")
        if key.startswith("rpn.head.conv.0.0."):
            key = "rpn.head.conv." + parts[-1]
        elif key.startswith(("backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks.")) and parts[4] == "0":
            key = ".".join(parts[:4] + parts[5:])
        elif key.startswith("roi_heads.mask_head.") and parts[3] == "0":
            key = f"roi_heads.mask_head.mask_fcn{int(parts[2]) + 1}.{parts[-1]}"
        out[key] = value
    out._metadata = copy.deepcopy(sd._metadata)
    return out


@pytest.mark.parametrize("metadata", ["none", "versions_removed"])
def test_legacy_names_convert_like_the_modern_ones(small_files, tmp_path, metadata):
    torch = oracle.torch()
    src = small_files("mask_v1_frozenbn", "zip")
    modern = torch.load(src)
    legacy = to_legacy_names(modern)
    assert "rpn.head.conv.weight" in legacy and "roi_heads.mask_head.mask_fcn2.bias" in legacy
    assert "backbone.fpn.layer_blocks.3.weight" in legacy
    if metadata == "none":
        del legacy._metadata
    else:      # an old torchvision: the renamed modules had no version
        for prefix in ("rpn.head", "backbone.fpn", "roi_heads.mask_head"):
            del legacy._metadata[prefix]["version"]
    # torchvision itself accepts these names (so they are the legacy names it knows)
    small_detector().load_state_dict(legacy)
    legacy_src = save(legacy, tmp_path / "legacy.pth", "legacy")
    _, ours = read_npz(convert(legacy_src, tmp_path / "legacy.npz"))
    _, reference = read_npz(convert(src, tmp_path / "modern.npz"))
    assert list(ours) == list(reference)
    assert all(ours[k].tobytes() == reference[k].tobytes() for k in reference)


def test_legacy_names_with_version_2_metadata_are_not_renamed(small_files, tmp_path):
    """As in torchvision, a module whose metadata says version >= 2 keeps its keys: the old names are unexpected."""
    torch = oracle.torch()
    legacy = to_legacy_names(torch.load(small_files("mask_v1_frozenbn", "zip")))
    with pytest.raises(RuntimeError, match="Unexpected key.*rpn.head.conv.weight"):
        small_detector().load_state_dict(legacy)
    src = save(legacy, tmp_path / "legacy.pth", "zip")
    with pytest.raises(LayoutError, match="unexpected keys: backbone.fpn.inner_blocks.0.weight") as e:
        convert(src, tmp_path / "w.npz")
    assert {"rpn.head.conv.weight", "roi_heads.mask_head.mask_fcn1.bias"} <= set(e.value.unexpected)
    assert {"rpn.head.conv.0.0.weight", "roi_heads.mask_head.0.0.bias"} <= set(e.value.missing)
    # the FPN width is still read (from the RPN head), so the RPN and box head shapes are not reported as wrong
    assert not [k for k, _, _ in e.value.mismatched if k.startswith(("rpn.", "roi_heads.box"))]
    assert not (tmp_path / "w.npz").exists()
