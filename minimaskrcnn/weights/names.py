"""Official weights by name: torchvision's COCO checkpoints, their download location and their sha256 prefixes.

Official names (torchvision's COCO weights, facts §9) map to file names under the base URL
`https://download.pytorch.org/models/`; the 8 hex digits in a file name are the start of its sha256, checked after
every download. The base URL can be changed (argument `base_url`, or env `MINIMASKRCNN_WEIGHTS_URL`, e.g. a mirror
or a `file://` directory); so can the registry of names (argument `registry`, for tests and private mirrors).
"""
from __future__ import annotations

import re

from minimaskrcnn.weights.download import WeightsError

OFFICIAL_WEIGHTS = {            # torchvision models/detection/{mask,faster}_rcnn.py, *_Weights.COCO_V1 urls
    "maskrcnn_resnet50_fpn_coco": "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    "fasterrcnn_resnet50_fpn_coco": "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    "maskrcnn_resnet50_fpn_v2_coco": "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
    "fasterrcnn_resnet50_fpn_v2_coco": "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
}
DEFAULT_BASE_URL = "https://download.pytorch.org/models/"
URL_ENV = "MINIMASKRCNN_WEIGHTS_URL"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+\Z")


def expected_sha256_prefix(filename: str) -> str:
    """The hex digits torchvision puts in a checkpoint's file name: the start of the file's sha256."""
    match = _HASH_IN_NAME.search(filename)
    if match is None:
        raise WeightsError(f"registry file name {filename!r} carries no sha256 prefix (name-<hex>.pth)")
    return match.group(1)
