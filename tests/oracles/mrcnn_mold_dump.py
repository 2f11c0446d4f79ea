"""Oracle script (Python 3.7, matterport's environment): matterport's own `MaskRCNN.mold_inputs` on photos, without
building a network, for tests/matterport/test_mold.py's photos that no parity case runs (tests/matterport_cases.py
MOLD_ONLY: a case costs a TensorFlow graph and a calibration, a mold costs nothing).

    python mrcnn_mold_dump.py --out DIR --params '{"molds": [{"name", "config", "path", "sha256"}, ...]}'

`mold_inputs` reads only `self.config`, so it runs unbound on an object holding the matterport Config built from
`config` (attributes set on a Config subclass, as a user's InferenceConfig does). Writes <name>.npz per entry:
image (H, W, 3) uint8, molded (h, w, 3) float32, window (4,) [y1, x1, y2, x2].
"""
import argparse
import json
import os

import numpy as np
from PIL import Image

from mrcnn import model as modellib
from mrcnn.config import Config

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--params", required=True)
args = ap.parse_args()
ARRAY_KEYS = ("MEAN_PIXEL", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV")

for item in json.loads(args.params)["molds"]:
    attrs = {"NAME": "oracle", "GPU_COUNT": 1, "IMAGES_PER_GPU": 1}
    attrs.update({k: np.array(v) if k in ARRAY_KEYS else v for k, v in item["config"].items()})
    holder = type("Holder", (), {"config": type("MoldConfig", (Config,), attrs)()})()
    image = np.array(Image.open(item["path"]).convert("RGB"))        # (H, W, 3) uint8
    molded, metas, windows = modellib.MaskRCNN.mold_inputs(holder, [image])
    np.savez(os.path.join(args.out, item["name"] + ".npz"), image=image, molded=molded[0].astype(np.float32),
             window=windows[0])
    print("molded", item["name"], molded[0].shape)
