"""Run matterport's Mask R-CNN (inference mode) with calibrated random weights and dump every stage to .npz.

Runs under the oracle interpreter (Python 3.7, TensorFlow 1.15, Keras 2.2.5; ../shared/oracles/README.md) with
`PYTHONPATH=../shared/oracles/matterport_mrcnn`. Usage:

    python matterport_dump.py --out DIR --params JSON     (tests/matterport_oracle.py cached_run)

params: {"config": {matterport Config attributes}, "seed": int,
         "images": [{"name": str, "path": str, "sha256": str}, ...]}   (sha256 only keys the cache)
threads: $MINIMASKRCNN_ORACLE_THREADS (default 2)

For every image: fresh random weights (seeded), made non-degenerate as in the torchvision recipe
(../shared/reference/torchvision-inference-facts.md §10.3), but calibrated with Keras's own machinery:
  1. every BatchNorm's moving_mean / moving_variance := the batch statistics of its input on this image. A second
     copy of the network built with TRAIN_BN=True normalises with exactly those batch statistics, so one pass of it
     gives them for all BatchNorms at once (there is no other dependency between them);
  2. the head output layers rescaled to a target spread (rpn_class_raw 1.5, rpn_bbox_pred 0.15, mrcnn_class_logits
     2.5, mrcnn_bbox_fc 0.5, mrcnn_mask logits 3.0: facts §10.3), one pass per group in forward order, because each
     rescaling changes what the next group sees (proposals, then detections).
The weights are written with `keras_model.save_weights` (<out>/<name>.h5), then `run_graph` dumps the named stage
outputs and `detect` the final result (<out>/<name>.npz).
"""
import json
import os
import sys

import numpy as np

import argparse  # noqa: E402

_ap = argparse.ArgumentParser()
_ap.add_argument("--out", required=True)
_ap.add_argument("--params", required=True)
_args = _ap.parse_args()
SPEC = json.loads(_args.params)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
import keras.backend as K  # noqa: E402
from PIL import Image  # noqa: E402

threads = int(os.environ.get("MINIMASKRCNN_ORACLE_THREADS", "2"))
K.set_session(tf.Session(config=tf.ConfigProto(intra_op_parallelism_threads=threads,
                                               inter_op_parallelism_threads=1)))

from mrcnn import model as modellib  # noqa: E402
from mrcnn.config import Config  # noqa: E402


class TestConfig(Config):
    NAME = "oracle"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1


import time  # noqa: E402
T0 = time.time()


def make_config(train_bn):
    cfg = TestConfig()
    for key, value in SPEC["config"].items():
        setattr(cfg, key, np.array(value) if key in ("MEAN_PIXEL", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV") else value)
    cfg.TRAIN_BN = train_bn
    cfg.__init__()   # recompute the derived attributes (IMAGE_SHAPE, BATCH_SIZE, IMAGE_META_SIZE)
    for key, value in SPEC["config"].items():
        setattr(cfg, key, np.array(value) if key in ("MEAN_PIXEL", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV") else value)
    cfg.TRAIN_BN = train_bn
    return cfg


out_dir = _args.out
os.makedirs(out_dir, exist_ok=True)
infer = modellib.MaskRCNN("inference", make_config(False), out_dir)   # built first: its layer names are unsuffixed
calib = modellib.MaskRCNN("inference", make_config(True), out_dir)
cfg = infer.config


import keras.layers as KL  # noqa: E402


def is_bn(core):
    return isinstance(core, KL.BatchNormalization)     # matterport's BatchNorm subclasses it


def inner(layer):
    return layer.layer if layer.__class__.__name__ == "TimeDistributed" else layer


def weighted_layers(model):
    """(layer, inner layer) of every layer with weights, the nested rpn_model's layers included, in build order."""
    out = []
    for layer in model.keras_model.layers:
        if layer.__class__.__name__ == "Model":
            out += [(sub, sub) for sub in layer.layers if sub.weights]
        elif layer.weights:
            out.append((layer, inner(layer)))
    return out


PAIRS = list(zip(weighted_layers(infer), weighted_layers(calib)))
for (a, _), (b, _) in PAIRS:
    assert [w.shape.as_list() for w in a.weights] == [w.shape.as_list() for w in b.weights], (a.name, b.name)


def assign(pairs):
    """Set many layers' weights in one session call (one graph extension, not one per layer: minutes otherwise)."""
    K.batch_set_value([(var, val) for layer, values in pairs for var, val in zip(layer.weights, values)])


def randomize(rng):
    """Glorot-uniform kernels, small random biases, BatchNorm affine U(0.7, 1.3) / N(0, 0.1), identity stats."""
    todo = []
    for (layer, core), (twin, _) in PAIRS:
        values = []
        if is_bn(core):
            c = K.int_shape(layer.weights[0])[0]
            values = [rng.uniform(0.7, 1.3, c), rng.normal(0, 0.1, c), np.zeros(c), np.ones(c)]
        else:
            for w in [np.empty(K.int_shape(v), np.float32) for v in layer.weights]:   # shapes only: no session
                if w.ndim == 1:
                    values.append(rng.normal(0, 0.05, w.shape))
                else:
                    receptive = int(np.prod(w.shape[:-2])) if w.ndim > 2 else 1
                    fan_in, fan_out = w.shape[-2] * receptive, w.shape[-1] * receptive
                    if core.__class__.__name__ == "Conv2DTranspose":
                        fan_in, fan_out = fan_out, fan_in
                    limit = np.sqrt(6.0 / (fan_in + fan_out))
                    values.append(rng.uniform(-limit, limit, w.shape))
        values = [v.astype(np.float32) for v in values]
        todo += [(layer, values), (twin, values)]
    assign(todo)


def bn_layers(prefixes=None):
    out = []
    for (layer, core), (twin, _) in PAIRS:
        if is_bn(core):
            if prefixes is None or layer.name.startswith(prefixes):
                out.append((layer, twin))
    return out


def set_bn_stats(molded, meta, anchors, prefixes=None):
    """moving statistics := batch statistics of each BN's input in the TRAIN_BN twin (one pass)."""
    layers = bn_layers(prefixes)
    tensors = []
    for _, twin in layers:
        x = twin.input
        axes = list(range(len(x.shape) - 1))
        tensors += list(tf.nn.moments(x, axes))
    fn = K.function(calib.keras_model.inputs, tensors)
    values = fn([molded, meta, anchors])
    current = K.batch_get_value([layer.weights[0] for layer, _ in layers] + [layer.weights[1] for layer, _ in layers])
    todo = []
    for k, (layer, twin) in enumerate(layers):
        new = [current[k], current[len(layers) + k], values[2 * k], values[2 * k + 1]]
        todo += [(layer, new), (twin, new)]
    assign(todo)


def layer_named(name):
    for (layer, _), (twin, _) in PAIRS:
        if layer.name == name:
            return layer, twin
    raise KeyError(name)


def rescale(molded, meta, anchors, targets):
    """Multiply kernel and bias of each named output layer by target / (std of its output on this image)."""
    km = infer.keras_model
    tensors = []
    for name in targets:
        if name == "mrcnn_mask":   # its layer applies the sigmoid: take the logits back out of the probabilities
            p = tf.clip_by_value(km.get_layer("mrcnn_mask").output, 1e-6, 1 - 1e-6)
            tensors.append(tf.math.reduce_std(tf.log(p / (1 - p))))
        elif name == "rpn_class_raw":   # only the probabilities are in the graph: fg - bg logit = log(p1 / p0)
            p = tf.clip_by_value(km.get_layer("rpn_class").output, 1e-6, 1 - 1e-6)
            tensors.append(tf.math.reduce_std(tf.log(p[..., 1] / p[..., 0])) / np.sqrt(2.0))
        elif name == "rpn_bbox_pred":
            tensors.append(tf.math.reduce_std(km.get_layer("rpn_bbox").output))
        else:
            tensors.append(tf.math.reduce_std(km.get_layer(name).output))
    stds = K.function(km.inputs, tensors)([molded, meta, anchors])
    todo = []
    layers = [layer_named(name) for name in targets]
    current = K.batch_get_value([w for layer, _ in layers for w in layer.weights])
    for (name, target), std, (layer, twin) in zip(targets.items(), stds, layers):
        f = np.float32(target / max(float(std), 1e-12))
        values = [w * f for w in current[:len(layer.weights)]]
        current = current[len(layer.weights):]
        todo += [(layer, values), (twin, values)]
    assign(todo)


def save_weights(path):
    """keras_model.save_weights(path), unchanged, but with every variable fetched in one session call first: Keras
    fetches layer by layer, and each distinct fetch makes TF prune this (two-model) graph anew (minutes)."""
    import keras.engine.saving as saving
    variables = infer.keras_model.weights
    cache = dict(zip([id(v) for v in variables], K.batch_get_value(variables)))
    original = saving.K.batch_get_value
    saving.K.batch_get_value = lambda vs: [cache[id(v)] if id(v) in cache else original([v])[0] for v in vs]
    try:
        infer.keras_model.save_weights(path)
    finally:
        saving.K.batch_get_value = original


STAGES = ["res2c_out", "res3d_out", "res4f_out" if cfg.BACKBONE == "resnet50" else "res4w_out", "res5c_out",
          "fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6", "rpn_class", "rpn_bbox", "ROI",
          "roi_align_classifier", "mrcnn_class_logits", "mrcnn_class", "mrcnn_bbox", "mrcnn_detection",
          "roi_align_mask", "mrcnn_mask"]

def tick(what):
    print("%7.1f s  %s" % (time.time() - T0, what), flush=True)


tick("built")
for item in SPEC["images"]:
    image = np.array(Image.open(item["path"]).convert("RGB"))        # (H, W, 3) uint8
    rng = np.random.RandomState(SPEC["seed"])
    randomize(rng)
    tick("randomized")
    molded, metas, windows = infer.mold_inputs([image])
    anchors = np.broadcast_to(infer.get_anchors(molded[0].shape), (1,) + infer.get_anchors(molded[0].shape).shape)
    set_bn_stats(molded, metas, anchors)
    tick('backbone BatchNorms calibrated')
    rescale(molded, metas, anchors, {"rpn_class_raw": 1.5, "rpn_bbox_pred": 0.15})
    set_bn_stats(molded, metas, anchors, ("mrcnn_class_bn",))
    rescale(molded, metas, anchors, {"mrcnn_class_logits": 2.5, "mrcnn_bbox_fc": 0.5})
    set_bn_stats(molded, metas, anchors, ("mrcnn_mask_bn",))
    rescale(molded, metas, anchors, {"mrcnn_mask": 3.0})
    tick("heads calibrated")
    save_weights(os.path.join(out_dir, item["name"] + ".h5"))
    tick('heads calibrated, saved')

    km = infer.keras_model
    outputs = infer.run_graph([image], [(n, km.get_layer(n).output) for n in STAGES])
    result = infer.detect([image])[0]
    tick('run_graph + detect')
    dump = {"stage_" + k: v[0] for k, v in outputs.items()}
    dump.update(image=image, molded=molded[0].astype(np.float32), image_meta=metas[0], window=windows[0],
                anchors=np.asarray(anchors[0], np.float32), rois=result["rois"], class_ids=result["class_ids"],
                scores=result["scores"], masks=np.ascontiguousarray(np.moveaxis(result["masks"], -1, 0)))
    np.savez(os.path.join(out_dir, item["name"] + ".npz"), **dump)
    print("done", item["name"], len(result["class_ids"]), flush=True)
