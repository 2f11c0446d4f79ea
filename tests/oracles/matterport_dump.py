"""Run matterport's Mask R-CNN (inference mode) with calibrated random weights and dump every stage to .npz.

Runs under the oracle interpreter (Python 3.7, TensorFlow 1.15, Keras 2.2.5; ../shared/oracles/README.md) with
`PYTHONPATH=../shared/oracles/matterport_mrcnn`. Usage:

    python matterport_dump.py --out DIR --params JSON     (tests/matterport_oracle.py cached_run)

params: {"config": {matterport Config attributes}, "seed": int,
         "images": [{"name": str, "path": str, "sha256": str}, ...],   (sha256 only keys the cache)
         "keras_reference": bool,   also write, for the FIRST image, what Keras holds for every weight, for the
                                    .h5 reader tests (tests/weights_convert/test_keras_h5.py): keras.npz +
                                    report.json (tests/oracles/mrcnn_save_weights.py's format)
         "full_save": bool,         with keras_reference: also keras_model.save's full-model file, full.h5
         "check_default_graph": bool}   check the TRAIN_BN = None graph against matterport's default one (below)
threads: $MINIMASKRCNN_ORACLE_THREADS (default 2)

ONE network is built (graph building is a large part of the cost), with TRAIN_BN = None: matterport's BatchNorm then
follows Keras's learning phase, so the same graph normalises with the batch statistics of each BatchNorm's input
(phase 1, what a TRAIN_BN=True twin computes) or with the moving statistics (phase 0, what TRAIN_BN=False, the
default, computes: the same fused_batch_norm op on the same variables; detect feeds phase 0 itself). With
check_default_graph, the default graph is built at the end, loaded with the saved .h5 and run by `run_graph` and
`detect`: <out>/check.json holds its largest difference from every dumped output (tests/matterport/test_stages.py
requires 0).
For every image: fresh random weights (seeded), made non-degenerate as in the torchvision recipe
(../shared/reference/torchvision-inference-facts.md §10.3), calibrated with Keras's own machinery:
  1. every backbone BatchNorm's moving_mean / moving_variance := the batch statistics of its input on this image,
     all read in one phase-1 pass (each BatchNorm normalises with exactly the statistics it is given);
  2. the head output layers rescaled to a target spread (rpn_class_raw 1.5, rpn_bbox_pred 0.15, mrcnn_class_logits
     2.5, mrcnn_bbox_fc 0.5, mrcnn_mask logits 3.0: facts §10.3), and the head BatchNorms calibrated, one pass per
     group in forward order, because each changes what the next group sees (proposals, then detections). The
     backbone is fixed by then, so these passes are fed its P2..P6 (TensorFlow runs only the heads).
The weights are written with `keras_model.save_weights` (<out>/<name>.h5); the stage outputs the tests read are
fetched at phase 0 as `run_graph` fetches them (one K.function of the named layers' outputs; the backbone's from the
pass after its calibration, the heads' from a pass fed P2..P6), and `detect` gives the final result from the photo
(<out>/<name>.npz). Variables are read and written in one session call
each: Keras does it layer by layer, and every distinct fetch makes TensorFlow prune the whole graph anew (minutes).
"""
import argparse
import json
import os
import time

import numpy as np

_ap = argparse.ArgumentParser()
_ap.add_argument("--out", required=True)
_ap.add_argument("--params", required=True)
_args = _ap.parse_args()
SPEC = json.loads(_args.params)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import keras  # noqa: E402
import keras.backend as K  # noqa: E402
import keras.engine.saving as saving  # noqa: E402
import keras.layers as KL  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

threads = int(os.environ.get("MINIMASKRCNN_ORACLE_THREADS", "2"))
K.set_session(tf.Session(config=tf.ConfigProto(intra_op_parallelism_threads=threads,
                                               inter_op_parallelism_threads=1)))

from mrcnn import model as modellib  # noqa: E402
from mrcnn.config import Config  # noqa: E402

T0 = time.time()
ARRAY_KEYS = ("MEAN_PIXEL", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV")


class TestConfig(Config):
    NAME = "oracle"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    TRAIN_BN = None          # BatchNorm follows the learning phase (module docstring)


for _key, _value in SPEC["config"].items():      # as a user's InferenceConfig subclass sets them
    setattr(TestConfig, _key, np.array(_value) if _key in ARRAY_KEYS else _value)

out_dir = _args.out
os.makedirs(out_dir, exist_ok=True)
infer = modellib.MaskRCNN("inference", TestConfig(), out_dir)
km = infer.keras_model
cfg = infer.config
assert km.uses_learning_phase


def tick(what):
    print("%7.1f s wall %7.1f s CPU  %s" % (time.time() - T0, time.process_time(), what), flush=True)


def inner(layer):
    return layer.layer if layer.__class__.__name__ == "TimeDistributed" else layer


def is_bn(layer):
    return isinstance(inner(layer), KL.BatchNormalization)     # matterport's BatchNorm subclasses it


# (outer layer, layer holding the weights) of every layer with weights in model order, the nested rpn_model's own
LAYERS = []
for _layer in km.layers:
    if _layer.__class__.__name__ == "Model":
        LAYERS += [(_layer, sub) for sub in _layer.layers if sub.weights]
    elif _layer.weights:
        LAYERS.append((_layer, _layer))
BY_NAME = {layer.name: layer for _, layer in LAYERS}
BACKBONE_BN = [layer for _, layer in LAYERS if is_bn(layer) and not layer.name.startswith("mrcnn_")]
P_MAPS = [km.get_layer("fpn_p%d" % k).output for k in range(2, 7)]
PHASE = K.learning_phase()

# every BatchNorm input's per-channel moments, built once (a graph extension per call would grow the graph)
MOMENTS = {}
for _, _layer in LAYERS:
    if is_bn(_layer):
        _x = _layer.input
        MOMENTS[_layer.name] = tf.nn.moments(_x, list(range(len(_x.shape) - 1)))


def logit_std(name):
    """Spread of a head output layer's pre-activation output (what `rescale` scales)."""
    if name == "mrcnn_mask":   # the layer applies the sigmoid: take the logits back out of the probabilities
        p = tf.clip_by_value(km.get_layer("mrcnn_mask").output, 1e-6, 1 - 1e-6)
        return tf.math.reduce_std(tf.log(p / (1 - p)))
    if name == "rpn_class_raw":   # only the probabilities are in the graph: fg - bg logit = log(p1 / p0)
        p = tf.clip_by_value(km.get_layer("rpn_class").output, 1e-6, 1 - 1e-6)
        return tf.math.reduce_std(tf.log(p[..., 1] / p[..., 0])) / np.sqrt(2.0)
    if name == "rpn_bbox_pred":
        return tf.math.reduce_std(km.get_layer("rpn_bbox").output)
    return tf.math.reduce_std(km.get_layer(name).output)


TARGETS = [{"rpn_class_raw": 1.5, "rpn_bbox_pred": 0.15}, {"mrcnn_class_logits": 2.5, "mrcnn_bbox_fc": 0.5},
           {"mrcnn_mask": 3.0}]
STDS = {name: logit_std(name) for group in TARGETS for name in group}
HEAD_BN = [("mrcnn_class_bn",), ("mrcnn_mask_bn",)]     # calibrated after TARGETS[0] and TARGETS[1] respectively


def run(fetches, feed):
    return K.get_session().run(fetches, feed_dict=feed)


def assign(values):
    """{layer: [arrays]}: all in one session call (one set of assign ops, created on first use)."""
    K.batch_set_value([(v, a) for layer, arrays in values.items() for v, a in zip(layer.weights, arrays)])


def randomize(rng):
    """Glorot-uniform kernels, small random biases, BatchNorm affine U(0.7, 1.3) / N(0, 0.1), identity stats."""
    values = {}
    for _, layer in LAYERS:
        shapes = [tuple(K.int_shape(v)) for v in layer.weights]         # shapes only: no session call
        if is_bn(layer):
            c = shapes[0][0]
            arrays = [rng.uniform(0.7, 1.3, c), rng.normal(0, 0.1, c), np.zeros(c), np.ones(c)]
        else:
            arrays = []
            for shape in shapes:
                if len(shape) == 1:
                    arrays.append(rng.normal(0, 0.05, shape))
                else:
                    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
                    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
                    if inner(layer).__class__.__name__ == "Conv2DTranspose":
                        fan_in, fan_out = fan_out, fan_in
                    limit = np.sqrt(6.0 / (fan_in + fan_out))
                    arrays.append(rng.uniform(-limit, limit, shape))
        values[layer] = [a.astype(np.float32) for a in arrays]
    assign(values)
    return values


def set_bn_stats(layers, feed, values):
    """moving statistics := batch statistics of each BatchNorm's input (phase 1: all normalise with those)."""
    moments = run([MOMENTS[layer.name] for layer in layers], {**feed, PHASE: 1})
    new = {}
    for layer, (mean, var) in zip(layers, moments):
        gamma, beta = values[layer][:2]
        new[layer] = values[layer] = [gamma, beta, mean.astype(np.float32), var.astype(np.float32)]
    assign(new)


def rescale(targets, stds, values):
    """Multiply kernel and bias of each named output layer by target / (std of its output on this image)."""
    new = {}
    for name, target in targets.items():
        layer = BY_NAME[name]
        f = np.float32(target / max(float(stds[name]), 1e-12))
        new[layer] = values[layer] = [w * f for w in values[layer]]
    assign(new)


class cached_reads:
    """Keras's savers read the weights layer by layer (K.batch_get_value per layer): serve them from one read."""
    def __init__(self, variables):
        self.cache = dict(zip([id(v) for v in variables], K.batch_get_value(variables)))

    def __enter__(self):
        self.original = saving.K.batch_get_value
        saving.K.batch_get_value = lambda vs: [self.cache[id(v)] if id(v) in self.cache else self.original([v])[0]
                                               for v in vs]
        return self

    def __exit__(self, *exc):
        saving.K.batch_get_value = self.original


def keras_reference(cache):
    """keras.npz, report.json (what layer.get_weights() holds, as mrcnn_save_weights.py writes them), full.h5."""
    report = {"full_save": None}
    entries, arrays = [], {}
    for outer, layer in LAYERS:
        for v in layer.weights:
            key = "a%d" % len(arrays)
            arrays[key] = cache.cache[id(v)]
            entries.append({"layer": outer.name, "inner_layer": layer.name if layer is not outer else None,
                            "weight": v.name, "array": key, "shape": list(arrays[key].shape)})
    report.update(weights=entries, keras_version=keras.__version__, tf_version=tf.__version__,
                  h5py_version=h5py.__version__)
    if SPEC.get("full_save"):
        km.save(os.path.join(out_dir, "full.h5"))     # a failure fails the oracle run: no substitute layout
        report["full_save"] = "keras_model.save"
    np.savez(os.path.join(out_dir, "keras.npz"), **arrays)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f)


BACKBONE_STAGES = ["res2c_out", "res3d_out", "res4f_out" if cfg.BACKBONE == "resnet50" else "res4w_out",
                   "res5c_out", "fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6"]
HEAD_STAGES = ["rpn_class", "rpn_bbox", "ROI", "roi_align_classifier", "mrcnn_class_logits", "mrcnn_class",
               "mrcnn_bbox", "mrcnn_detection", "roi_align_mask", "mrcnn_mask"]


def stage_tensors(model, names):
    return {n: model.keras_model.get_layer(n).output for n in names}


def check_default_graph(image, h5, dump):
    """The claim of the module docstring, checked: matterport's default graph (TRAIN_BN = False), built beside ours
    with the weights just saved, gives every dumped stage and detect's result bit for bit (<out>/check.json)."""
    class DefaultConfig(TestConfig):
        TRAIN_BN = False
    other = modellib.MaskRCNN("inference", DefaultConfig(), out_dir)
    other.keras_model.load_weights(h5)                   # Keras's own loader, in layer order
    names = BACKBONE_STAGES + HEAD_STAGES
    theirs = other.run_graph([image], list(stage_tensors(other, names).items()))
    result = other.detect([image])[0]
    diffs = {n: float(np.abs(theirs[n][0].astype(np.float64) - dump["stage_" + n]).max()) for n in names}
    diffs.update({k: int(not np.array_equal(result[k] if k != "masks" else np.moveaxis(result[k], -1, 0), dump[k]))
                  for k in ("rois", "class_ids", "scores", "masks")})
    with open(os.path.join(out_dir, "check.json"), "w") as f:
        json.dump({"max_abs_diff": diffs, "uses_learning_phase": bool(other.keras_model.uses_learning_phase)}, f)


tick("built")
for index, item in enumerate(SPEC["images"]):
    image = np.array(Image.open(item["path"]).convert("RGB"))        # (H, W, 3) uint8
    values = randomize(np.random.RandomState(SPEC["seed"]))
    molded, metas, windows = infer.mold_inputs([image])
    anchors = np.broadcast_to(infer.get_anchors(molded[0].shape), (1,) + infer.get_anchors(molded[0].shape).shape)
    feed = dict(zip(km.inputs, [molded, metas, anchors]))
    set_bn_stats(BACKBONE_BN, feed, values)
    tick("%s: randomized, backbone BatchNorms calibrated" % item["name"])
    # the backbone is final now: its stages are dumped from this pass, and the heads' passes are fed its P2..P6
    backbone, stds = run([stage_tensors(infer, BACKBONE_STAGES), {n: STDS[n] for n in TARGETS[0]}],
                         {**feed, PHASE: 0})
    heads_feed = {**feed, **{km.get_layer("fpn_p%d" % k).output: backbone["fpn_p%d" % k] for k in range(2, 7)}}
    rescale(TARGETS[0], stds, values)
    for prefixes, targets in zip(HEAD_BN, TARGETS[1:]):
        set_bn_stats([layer for _, layer in LAYERS if is_bn(layer) and layer.name.startswith(prefixes)],
                     heads_feed, values)
        rescale(targets, run({n: STDS[n] for n in targets}, {**heads_feed, PHASE: 0}), values)
    tick("%s: heads calibrated" % item["name"])

    h5 = os.path.join(out_dir, item["name"] + ".h5")
    with cached_reads(km.weights) as cache:
        km.save_weights(h5)
        if index == 0 and SPEC.get("keras_reference"):
            keras_reference(cache)
    tick("%s: saved" % item["name"])

    heads = run(stage_tensors(infer, HEAD_STAGES), {**heads_feed, PHASE: 0})   # what run_graph fetches, phase 0
    result = infer.detect([image])[0]                                          # the whole network, from the photo
    tick("%s: head stages + detect" % item["name"])
    dump = {"stage_" + k: v[0] for k, v in list(backbone.items()) + list(heads.items())}
    dump.update(image=image, molded=molded[0].astype(np.float32), window=windows[0],
                anchors=np.asarray(anchors[0], np.float32), rois=result["rois"], class_ids=result["class_ids"],
                scores=result["scores"], masks=np.ascontiguousarray(np.moveaxis(result["masks"], -1, 0)))
    np.savez(os.path.join(out_dir, item["name"] + ".npz"), **dump)
    print("done", item["name"], len(result["class_ids"]), flush=True)

if SPEC.get("check_default_graph"):    # last, so that the second network does not slow the runs above
    check_default_graph(image, h5, dump)
    tick("default graph checked")
