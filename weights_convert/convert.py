"""Convert a torchvision Mask / Faster R-CNN checkpoint (`.pth`) into minimaskrcnn's `.npz` (see `npz.py`).

Steps: read the state dict safely (`reader`), apply torchvision's legacy key renames, drop `num_batches_tracked`,
infer the `Config` from keys and shapes (`layout.infer_config`), validate every key and shape against
`layout.expected_layout`, write the arrays bit for bit with the metadata.

Batch-norm eps rule (`Config.bn_eps`; facts §2.1). torchvision sets eps = 0.0 on every FrozenBatchNorm2d when it loads
its COCO v1 detection weights (`overwrite_eps`), and that value is not stored in the file. So: if the source file's
sha256 starts with the hash prefix in the name of one of the two official v1 checkpoints
(`maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth`, `fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`), bn_eps is 0.0; for every
other file it is 1e-5, torch's default (v2 weights, ImageNet-initialised or randomly initialised models, and models
fine-tuned from anything but those two files). `bn_eps=` / `--bn-eps` overrides the rule, e.g. `--bn-eps 0` for a
model fine-tuned from the v1 COCO weights in torchvision (which keeps eps 0.0 while training).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

from minimaskrcnn._version import __version__
from minimaskrcnn.config import Config

from .infer import default_class_names, infer_config
from .layout import architecture_name, check_state_dict
from .matterport_convert import prepare_from_state_dict, prepare_matterport, sniff
from .npz import FORMAT, FORMAT_VERSION, write_npz
from .pytorch_mask_rcnn import is_pytorch_mask_rcnn
from .reader import read_bytes, read_state_dict
from .unpickler import StateDict

# sha256 prefixes (the hex digits in the file names) of torchvision's COCO v1 checkpoints, loaded with eps 0.0
OFFICIAL_V1_SHA256_PREFIXES = {
    "bf2d0c1e": "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    "258fb6c6": "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
}
DEFAULT_BN_EPS = 1e-5           # torch.nn.BatchNorm2d and torchvision FrozenBatchNorm2d default eps
NOT_OVERRIDABLE = ("num_classes", "class_names", "bn_eps")   # have their own arguments


def default_bn_eps(sha256: str) -> float:
    """0.0 for the official COCO v1 checkpoints (recognised by sha256 prefix), else 1e-5 (module docstring)."""
    return 0.0 if any(sha256.startswith(p) for p in OFFICIAL_V1_SHA256_PREFIXES) else DEFAULT_BN_EPS


# torchvision `_load_from_state_dict` hooks (facts §9): (module prefix, old-key regex, new-key template).
_LEGACY_RENAMES = (
    ("rpn.head", re.compile(r"rpn\.head\.conv\.(weight|bias)\Z"), "rpn.head.conv.0.0.{1}"),
    ("backbone.fpn", re.compile(r"backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)\Z"),
     "backbone.fpn.{1}.{2}.0.{3}"),
    ("roi_heads.mask_head", re.compile(r"roi_heads\.mask_head\.mask_fcn([1-9]\d*)\.(weight|bias)\Z"), None),
)


def legacy_renames(state_dict, metadata=None) -> StateDict:
    """Rename pre-v2 module keys as torchvision does on load, and drop `num_batches_tracked`; keeps key order.

    As in torchvision, a module's keys are renamed only when its `_metadata` version is absent or < 2, and only where
    the old name is present: `rpn.head.conv.{weight,bias}` -> `rpn.head.conv.0.0.*`, `backbone.fpn.inner_blocks.i.*`
    -> `inner_blocks.i.0.*` (and layer_blocks), `roi_heads.mask_head.mask_fcn{k}.*` -> `roi_heads.mask_head.{k-1}.0.*`.
    """
    metadata = metadata or {}
    out = StateDict()
    for key, value in state_dict.items():
        if key.endswith(".num_batches_tracked"):      # plain BatchNorm2d's counter; FrozenBatchNorm2d drops it too
            continue
        out[_renamed(key, metadata)] = value
    return out


def _renamed(key, metadata):
    for module, pattern, template in _LEGACY_RENAMES:
        match = pattern.match(key)
        if match is None:
            continue
        version = (metadata.get(module) or {}).get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version >= 2:
            return key
        if template is None:                         # mask_fcn{k} -> {k-1}.0
            return f"roi_heads.mask_head.{int(match.group(1)) - 1}.0.{match.group(2)}"
        return template.format(*([None] + list(match.groups())))
    return key


@dataclasses.dataclass
class Converted:
    config: Config
    arrays: dict            # state-dict key -> np.ndarray, in checkpoint order
    metadata: dict          # the JSON metadata written to the .npz


def prepare(src, *, bn_eps=None, class_names=None, overrides=None, source_name=None) -> Converted:
    """Read, rename, infer and validate `src` (a path or the file's bytes); write nothing.

    matterport-family sources (a Keras `.h5`, a pytorch-mask-rcnn `.pth`) go to `matterport_convert`: `overrides`
    are then matterport Config attributes (IMAGE_MIN_DIM, ...), and the result's config a MatterportConfig."""
    if not isinstance(src, (bytes, bytearray)) and sniff(src) == "hdf5":     # matterport's Keras .h5
        _no_bn_eps(bn_eps)
        return prepare_matterport(src, overrides=overrides, class_names=class_names, source_name=source_name)
    data = read_bytes(src) if not isinstance(src, (bytes, bytearray)) else bytes(src)
    sha256 = hashlib.sha256(data).hexdigest()
    if source_name is None:
        source_name = os.path.basename(os.fspath(src)) if not isinstance(src, (bytes, bytearray)) else "<bytes>"
    raw = read_state_dict(data)
    del data
    if is_pytorch_mask_rcnn(raw):                                             # the matterport family, as a .pth
        _no_bn_eps(bn_eps)
        return prepare_from_state_dict(raw, sha256=sha256, source_name=source_name, overrides=overrides,
                                       class_names=class_names)
    state_dict = legacy_renames(raw, raw._metadata)
    config = infer_config(state_dict)
    if overrides:
        bad = [k for k in overrides if k in NOT_OVERRIDABLE]
        if bad:
            raise ValueError(f"override {', '.join(bad)} with its own argument (class_names=, bn_eps=), "
                             f"not through overrides")
        config = Config.from_dict({**dataclasses.asdict(config), **overrides})
    if class_names is not None:
        class_names = tuple(str(n) for n in class_names)
        if len(class_names) != config.num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries but the checkpoint has "
                             f"{config.num_classes} classes (including the background at index 0)")
        config = config.replace(class_names=class_names)
    elif config.class_names != default_class_names(config.num_classes):
        config = config.replace(class_names=default_class_names(config.num_classes))
    eps = default_bn_eps(sha256) if bn_eps is None else float(bn_eps)
    if not eps >= 0.0:
        raise ValueError(f"bn_eps must be >= 0, got {bn_eps}")
    config = config.replace(bn_eps=eps)
    check_state_dict(config, state_dict, what=f"the state dict in {source_name}")
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture_name(config),
        "config": json.loads(config.to_json()),
        "num_classes": config.num_classes,
        "class_names": list(config.class_names),
        "bn_eps": config.bn_eps,
        "source_name": source_name,
        "source_sha256": sha256,
        "converter_version": __version__,
    }
    return Converted(config, dict(state_dict), metadata)


def _no_bn_eps(bn_eps):
    if bn_eps is not None:
        raise ValueError("bn_eps does not apply to matterport-family weights (their BatchNorm eps is Keras' 1e-3)")


def convert(src, dst=None, *, bn_eps=None, class_names=None, overrides=None, source_name=None) -> Path:
    """Convert the checkpoint `src` to `dst` (default: `src` with suffix `.npz`); returns the written path.

    `bn_eps` overrides the eps rule (module docstring); `class_names` (index 0 = background) replaces the default
    names (COCO for 91 classes, else 'class_1'...); `overrides` sets Config fields the weights do not determine
    (anchor_sizes, aspect_ratios, thresholds, transform sizes). Raises `CheckpointError` (a ValueError) with a
    one-line message; never leaves a partial `dst`.
    """
    dst = Path(src).with_suffix(".npz") if dst is None else Path(dst)
    converted = prepare(src, bn_eps=bn_eps, class_names=class_names, overrides=overrides, source_name=source_name)
    return write_npz(dst, converted.arrays, converted.metadata)
