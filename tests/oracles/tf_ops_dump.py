"""TensorFlow 1.15's own ops on fixed seeded inputs, for tests/matterport/test_kernels.py.

    python tf_ops_dump.py --out DIR --params JSON      (params: {"seed": int}; tests/matterport_oracle.cached_run)

Writes DIR/tf_ops.npz with:
  nms{k}_boxes/scores/out: tf.image.non_max_suppression on inputs rich in exact score ties, duplicate and zero-area
                           boxes (what the matterport ProposalLayer and DetectionLayer meet with random weights);
  car{k}_img/boxes/out:    tf.image.crop_and_resize (bilinear, extrapolation 0) incl. boxes reaching outside;
  round_in/out:            tf.round on exact halves and around them.
"""
import argparse
import json
import os

import numpy as np
import tensorflow as tf

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--params", required=True)
args = ap.parse_args()
rng = np.random.RandomState(json.loads(args.params)["seed"])
out = {}
sess = tf.Session(config=tf.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1))
for k in range(40):
    n = rng.randint(1, 300)
    yx = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    hw = rng.uniform(0, 0.3, (n, 2)).astype(np.float32)
    boxes = np.concatenate([yx, yx + hw], 1).astype(np.float32)

    flat = rng.rand(n) < 0.15
    boxes[flat, 2] = boxes[flat, 0]                                 # zero height
    if n > 4:
        dup = rng.randint(0, n, n // 4)
        boxes[dup] = boxes[rng.randint(0, n)]                       # identical boxes
    levels = rng.randint(1, 1 + (k % 6) * 4 + 1)                    # k % 6 == 0: every score equal
    scores = (rng.randint(0, levels, n) / max(levels, 1)).astype(np.float32)
    if k % 7 == 3:
        boxes = boxes[:, [2, 3, 0, 1]]                              # corners in the other order
    thr = [0.3, 0.5, 0.7, 0.0][k % 4]
    limit = [n, 10, 1000, 3][k % 4]
    sel = sess.run(tf.image.non_max_suppression(boxes, scores, limit, thr))
    out.update({"nms%d_boxes" % k: boxes, "nms%d_scores" % k: scores, "nms%d_out" % k: sel,
                "nms%d_args" % k: np.array([limit, thr])})
for k in range(12):
    h, w, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 5)
    img = rng.normal(0, 1, (1, h, w, c)).astype(np.float32)
    n = rng.randint(1, 30)
    y = np.sort(rng.uniform(-0.3, 1.3, (n, 2)), 1)
    x = np.sort(rng.uniform(-0.3, 1.3, (n, 2)), 1)
    boxes = np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], 1).astype(np.float32)
    boxes[: n // 5] = 0                                             # the zero-padded proposals
    size = [7, 14, 2, 5][k % 4]
    res = sess.run(tf.image.crop_and_resize(img, boxes, np.zeros(n, np.int32), (size, size), "bilinear"))
    out.update({"car%d_img" % k: img[0], "car%d_boxes" % k: boxes, "car%d_out" % k: res})
vals = np.concatenate([np.arange(-6, 6.5, 0.5), np.nextafter(np.float32(np.arange(-6, 6.5, 0.5)), np.float32(9)),
                       rng.normal(0, 3, 50)]).astype(np.float32)
out["round_in"], out["round_out"] = vals, sess.run(tf.round(vals))
os.makedirs(args.out, exist_ok=True)
np.savez(os.path.join(args.out, "tf_ops.npz"), **out)
