"""weights_convert.convert: torchvision detection checkpoints -> .npz, bit for bit, with the Config the weights imply.

Small ResNet-18 FPN detectors (built from torchvision's own modules) cover every layout switch in both file formats;
the five full-size ResNet-50 layouts of facts §9 are each converted once and compared with torch.load.
"""
import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import oracle
import weights_convert
from minimaskrcnn.config import (COCO_CATEGORIES, FASTERRCNN_RESNET50_FPN, FASTERRCNN_RESNET50_FPN_V2,
                                 MASKRCNN_RESNET50_FPN, MASKRCNN_RESNET50_FPN_V2, Config)
from checkpoints import FORMATS, save, small_detector
from weights_convert import (CheckpointError, LayoutError, WeightsFileError, convert, expected_layout, read_npz,
                             read_npz_metadata, write_npz)

ROOT = Path(__file__).resolve().parents[2]
STATE_DICTS = ROOT.parent / "shared" / "reference" / "state_dicts"


# --- models ----------------------------------------------------------------------------------------------------------

SMALL = {   # name: (builder kwargs, the Config fields the converter must infer)
    "mask_v1_frozenbn": (dict(), dict(masks=True, fpn_norm=False, rpn_conv_depth=1, box_head_convs=0,
                                      mask_head_layers=(64, 32), mask_head_norm=False)),
    "mask_v1_bn": (dict(frozen=False), dict(masks=True, fpn_norm=False, mask_head_layers=(64, 32))),
    "mask_v2": (dict(v2=True, frozen=False), dict(masks=True, fpn_norm=True, rpn_conv_depth=2, box_head_convs=4,
                                                  mask_head_layers=(64, 32), mask_head_norm=True)),
    "faster_v1": (dict(masks=False), dict(masks=False, fpn_norm=False, rpn_conv_depth=1, box_head_convs=0)),
    "faster_v2": (dict(masks=False, v2=True, frozen=False), dict(masks=False, fpn_norm=True, rpn_conv_depth=2,
                                                                 box_head_convs=4)),
}


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """(variant, format) -> checkpoint path, each built and saved once per module."""
    made, root = {}, tmp_path_factory.mktemp("small")

    def get(variant="mask_v1_frozenbn", fmt="zip"):
        if (variant, fmt) not in made:
            made[(variant, fmt)] = save(small_detector(**SMALL[variant][0]).state_dict(),
                                        root / f"{variant}-{fmt}.pth", fmt)
        return made[(variant, fmt)]
    return get


def assert_npz_equals_torch_load(npz_path, pth_path, nested=None):
    """Every array of the .npz has the key, dtype, shape and bits of torch.load's tensor (num_batches_tracked
    dropped), in the same order; the .npz has nothing else but the metadata."""
    torch = oracle.torch()
    theirs = torch.load(pth_path)
    theirs = theirs[nested] if nested else theirs
    theirs = {k: v for k, v in theirs.items() if not k.endswith("num_batches_tracked")}
    with np.load(npz_path, allow_pickle=False) as z:
        assert z.files == ["__metadata__"] + list(theirs)
        for key, tensor in theirs.items():
            ours, ref = z[key], tensor.contiguous().numpy()
            assert ours.dtype == ref.dtype and ours.shape == ref.shape, key
            assert ours.tobytes() == ref.tobytes(), key


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


# --- the .npz ------------------------------------------------------------------------------------------------------

def test_npz_metadata_entry(small_files, tmp_path):
    dst = convert(small_files("mask_v2", "zip"), tmp_path / "w.npz")
    with np.load(dst, allow_pickle=False) as z:
        entry = z["__metadata__"]
    assert entry.shape == () and entry.dtype.kind == "U"
    meta = json.loads(str(entry))
    assert set(meta) == {"format", "format_version", "architecture", "config", "num_classes", "class_names",
                         "bn_eps", "source_name", "source_sha256", "converter_version"}
    assert meta["format"] == "minimaskrcnn-weights"


def test_read_npz_rejects_other_files(small_files, tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(2))
    with pytest.raises(WeightsFileError, match="other.npz is not a minimaskrcnn weights file"):
        read_npz(other)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsFileError, match="garbage.npz is not a minimaskrcnn weights file"):
        read_npz(garbage)
    config, arrays = read_npz(convert(small_files("faster_v1", "zip"), tmp_path / "w.npz"))
    meta = read_npz_metadata(tmp_path / "w.npz")
    write_npz(tmp_path / "v2.npz", arrays, {**meta, "format_version": 2})
    with pytest.raises(WeightsFileError, match="v2.npz has weights format version 2; this minimaskrcnn reads "
                                               "version 1: re-convert"):
        read_npz(tmp_path / "v2.npz")
    del arrays["roi_heads.box_predictor.cls_score.bias"]
    write_npz(tmp_path / "short.npz", arrays, meta)
    with pytest.raises(LayoutError, match="short.npz does not match the fasterrcnn_resnet18_fpn_custom layout: 1 "
                                          "missing key: roi_heads.box_predictor.cls_score.bias"):
        read_npz(tmp_path / "short.npz")


def test_a_failed_write_leaves_nothing(small_files, tmp_path, monkeypatch):
    dst = tmp_path / "w.npz"
    dst.write_bytes(b"previous")

    def savez_then_fail(f, **arrays):
        f.write(b"half an archive")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("weights_convert.npz.np.savez", savez_then_fail)
    with pytest.raises(OSError, match="No space left"):
        convert(small_files("faster_v1", "zip"), dst)
    assert dst.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


# --- command line ----------------------------------------------------------------------------------------------------

def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "weights_convert", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


def assert_one_line_error(run, pattern):
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("weights-convert: error: ")
    import re
    assert re.search(pattern, run.stderr), run.stderr


def test_cli_converts(small_files, tmp_path):
    src = small_files("mask_v1_frozenbn", "legacy")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(["__background__", "a", "b", "c", "d"]) + "\n")
    run = run_cli(src, "-o", tmp_path / "out.npz", "--bn-eps", "0", "--class-names", names,
                  "--set", "box_score_thresh=0.5")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"wrote {tmp_path / 'out.npz'}: maskrcnn_resnet18_fpn_custom, 5 classes, bn_eps 0.0")
    config, _ = read_npz(tmp_path / "out.npz")
    assert config.bn_eps == 0.0 and config.class_names[1] == "a" and config.box_score_thresh == 0.5
    assert_npz_equals_torch_load(tmp_path / "out.npz", src)


def test_cli_default_output_and_quiet(small_files, tmp_path):
    src = tmp_path / "model.pth"
    src.write_bytes(small_files("faster_v2", "zip").read_bytes())
    run = run_cli(src, "-q")
    assert run.returncode == 0 and run.stdout == "" and run.stderr == ""
    assert read_npz_metadata(tmp_path / "model.npz")["architecture"] == "fasterrcnn_resnet18_fpn_v2_custom"


def test_cli_errors_are_one_line_and_leave_the_output_alone(small_files, tmp_path):
    tv = oracle.torchvision()
    detector = small_files("faster_v1", "zip")
    out = tmp_path / "out.npz"
    out.write_bytes(b"previous")
    classifier = save(tv.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth", "zip")
    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    cases = [
        ((tmp_path / "missing.pth", "-o", out), r"missing.pth: No such file or directory"),
        ((classifier, "-o", out), r"image-classification ResNet"),
        ((evil, "-o", out), r"refusing to load global posix.system"),
        ((classifier, "-o", out, "--set", "nonsense"), r"--set expects KEY=JSON"),
        ((detector, "-o", out, "--set", "no_such_field=1"), r"unknown config fields: \['no_such_field'\]"),
        ((detector, "-o", out, "--set", "bn_eps=0"), r"override bn_eps with its own argument"),
        ((detector, "-o", out, "--class-names", tmp_path / "none.txt"), r"none.txt: No such file or directory"),
        ((detector, "-o", tmp_path / "no_dir" / "x.npz"), r"no_dir: no such directory for the output file"),
        ((classifier, "--bn-eps", "abc"), r"argument --bn-eps: invalid float value"),
        ((), r"the following arguments are required: SRC"),
    ]
    for args, pattern in cases:
        assert_one_line_error(run_cli(*args), pattern)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth", "out.npz", "resnet18.pth"]


def test_cli_usage_error_exit_status_2_and_bad_input_1(tmp_path):
    assert run_cli().returncode == 2
    assert run_cli(tmp_path / "missing.pth").returncode == 1


def test_runtime_never_imports_torch(small_files, tmp_path):
    script = ("import sys, weights_convert, minimaskrcnn.hub as hub\n"
              f"weights_convert.convert({str(small_files('mask_v2', 'zip'))!r}, {str(tmp_path / 'w.npz')!r})\n"
              f"hub.load_weights({str(tmp_path / 'w.npz')!r})\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_config_round_trips_through_metadata(small_files, tmp_path):
    config, _ = read_npz(convert(small_files("mask_v1_bn", "zip"), tmp_path / "w.npz"))
    assert dataclasses.asdict(Config.from_dict(json.loads(config.to_json()))) == dataclasses.asdict(config)


def test_converting_a_converted_file_says_so(small_files, tmp_path):
    dst = convert(small_files("faster_v1", "zip"), tmp_path / "w.npz")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint.*already converted"):
        convert(dst, tmp_path / "again.npz")
