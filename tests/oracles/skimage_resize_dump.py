"""Reference resizes by scikit-image 0.16 (the oracle venv), for tests/matterport/test_mold.py.

    python skimage_resize_dump.py --out DIR --params '{"seed": 0}'     (tests/matterport_oracle.cached_run)

Fixed seeded cases: uint8 RGB images resized as utils.resize_image does (preserve_range=True), and float32 masks
resized as utils.unmold_mask does (preserve_range=False), plus the transform matrices skimage estimated.
"""
import argparse
import json
import os

import numpy as np
import skimage
from skimage.transform import resize, AffineTransform

assert skimage.__version__ == "0.16.2", skimage.__version__
ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--params", required=True)
args = ap.parse_args()
rng = np.random.RandomState(json.loads(args.params)["seed"])
out = {}
shapes = [(480, 640, 800, 1066), (427, 640, 683, 1024), (512, 512, 1024, 1024), (375, 500, 768, 1024),
          (3, 5, 7, 11), (10, 10, 10, 10), (64, 33, 128, 66), (300, 200, 150, 100), (1, 7, 3, 21)]
for i in range(12):
    h, w = rng.randint(1, 60, 2)
    shapes.append((h, w) + tuple(rng.randint(1, 120, 2)))
for k, (h, w, oh, ow) in enumerate(shapes):
    low = rng.randint(0, 256, (max(h // 8, 1), max(w // 8, 1), 3)).astype(np.uint8)
    img = np.kron(low, np.ones((8, 8, 1), np.uint8))[:h, :w]            # flat blocks: many exact integers
    img = np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)), mode="edge")
    img[rng.rand(h, w) < 0.2] = rng.randint(0, 256, 3)
    res = resize(img, (oh, ow), order=1, mode="constant", cval=0, clip=True, preserve_range=True,
                 anti_aliasing=False)
    out["img%d" % k], out["img%d_out" % k], out["img%d_u8" % k] = img, res, res.astype(np.uint8)
for k in range(30):
    mh, mw = (28, 28) if k < 20 else tuple(rng.randint(1, 30, 2))
    oh, ow = rng.randint(1, 300, 2)
    m = (1 / (1 + np.exp(-rng.normal(0, 3, (mh, mw))))).astype(np.float32)
    if k % 5 == 4:
        m = (0.5 + 0.5 * m).astype(np.float32)                            # all above 0.5: exercises the clip
    out["mask%d" % k] = m
    out["mask%d_out" % k] = resize(m, (oh, ow), order=1, mode="constant", cval=0, clip=True,
                                   preserve_range=False, anti_aliasing=False)
for k, (h, w, oh, ow) in enumerate(shapes):
    f = np.array([h / oh, w / ow])
    src = np.array([[1, 1], [1, oh], [ow, oh]]) - 1
    dst = np.zeros(src.shape)
    dst[:, 0] = f[1] * (src[:, 0] + 0.5) - 0.5
    dst[:, 1] = f[0] * (src[:, 1] + 0.5) - 0.5
    t = AffineTransform()
    t.estimate(src, dst)
    out["matrix%d" % k] = t.params
    out["matrix%d_shape" % k] = np.array([h, w, oh, ow])
os.makedirs(args.out, exist_ok=True)
np.savez(os.path.join(args.out, "resize.npz"), **out)
