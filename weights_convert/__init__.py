"""weights_convert: read torchvision checkpoints without torch (safely) and convert them to minimaskrcnn's `.npz`.

    from weights_convert import convert, read_npz
    convert("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", "maskrcnn.npz")   # or: weights-convert SRC -o DST.npz
    config, arrays = read_npz("maskrcnn.npz")

Modules: `pickle_scan` + `unpickler` (the restricted pickle), `reader` (zip and legacy `torch.save` formats),
`layout` (the state-dict layout of a Config, and its validation), `infer` (the Config of a state dict), `convert`,
`npz` (the output format), `__main__` (the CLI). The matterport family: `keras_h5` (Keras HDF5 weights, through the
optional extra h5py), `pytorch_mask_rcnn` (its `.pth` key names), `matterport_layout` (what a matterport file holds and
shows), `matterport_convert` (`read_matterport`, conversion, the family's `.npz`). Nothing here imports torch.
"""
from .convert import DEFAULT_BN_EPS, OFFICIAL_V1_SHA256_PREFIXES, convert, default_bn_eps, legacy_renames, prepare
from .errors import CheckpointError, LayoutError, UnsafeCheckpointError, WeightsFileError
from .infer import infer_config
from .layout import architecture_name, check_state_dict, expected_layout
from .npz import FORMAT, FORMAT_VERSION, read_npz, read_npz_metadata, write_npz
from .reader import load, read_state_dict

__all__ = [
    "convert", "prepare", "read_npz", "read_npz_metadata", "write_npz", "load", "read_state_dict",
    "expected_layout", "infer_config", "check_state_dict", "architecture_name", "legacy_renames", "default_bn_eps",
    "CheckpointError", "UnsafeCheckpointError", "LayoutError", "WeightsFileError",
    "FORMAT", "FORMAT_VERSION", "DEFAULT_BN_EPS", "OFFICIAL_V1_SHA256_PREFIXES",
]
