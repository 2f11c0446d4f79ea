"""Oracle script (Python 3.7, matterport's environment): build matterport's inference MaskRCNN, fill every weight
with seeded random values, and save it as Keras does; dump what Keras reports for each weight, for bitwise checks.

    python mrcnn_save_weights.py --out DIR --params '{"BACKBONE": "resnet50", "NUM_CLASSES": 4, "seed": 1, ...}'

params: matterport Config attributes (upper case) for the model, plus "seed", "full_save" (also write
`keras_model.save`'s full-model file) and "mode" ("inference", default, or "training": the graph whose weights
matterport's training loop checkpoints). Writes into DIR:
    weights.h5        keras_model.save_weights(...)
    full.h5           (full_save) keras_model.save(...), or if Keras cannot serialise the model, the same weights
                      copied under /model_weights with h5py, as a full save lays them out (reason in report.json)
    keras.npz         arrays a0, a1, ... = layer.get_weights() of every layer with weights, in model order
    report.json       {"weights": [{"layer", "inner_layer", "weight", "array", "shape"}], "full_save": ...,
                       "keras_version", "tf_version", "h5py_version"}
"""
import argparse
import json
import os
import sys

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--params", required=True)
args = p.parse_args()
params = json.loads(args.params)
seed = int(params.pop("seed", 0))
full_save = bool(params.pop("full_save", False))
mode = params.pop("mode", "inference")      # "training": the model matterport's ModelCheckpoint saves while training

import h5py                        # noqa: E402
import keras                       # noqa: E402
import tensorflow as tf            # noqa: E402
from mrcnn import model as modellib    # noqa: E402
from mrcnn.config import Config    # noqa: E402

threads = int(os.environ.get("MINIMASKRCNN_ORACLE_THREADS", "1"))
keras.backend.set_session(tf.Session(config=tf.ConfigProto(intra_op_parallelism_threads=threads,
                                                           inter_op_parallelism_threads=threads)))


class OracleConfig(Config):
    NAME = "oracle"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1


for key, value in params.items():
    setattr(OracleConfig, key, value)
config = OracleConfig()
model = modellib.MaskRCNN(mode=mode, config=config, model_dir=args.out)
km = model.keras_model

rng = np.random.RandomState(seed)
entries, arrays = [], {}


def fill(layer, outer):
    names = [w.name for w in layer.weights]
    values = []
    for name, w in zip(names, layer.get_weights()):
        if "moving_variance" in name:
            v = rng.uniform(0.25, 2.0, w.shape)
        else:
            v = rng.standard_normal(w.shape) * 0.05
        values.append(v.astype(w.dtype))
    layer.set_weights(values)
    for name, v in zip(names, layer.get_weights()):    # what Keras holds after the assignment
        key = "a%d" % len(arrays)
        arrays[key] = v
        entries.append({"layer": outer.name, "inner_layer": layer.name if layer is not outer else None,
                        "weight": name, "array": key, "shape": list(v.shape)})


for layer in km.layers:
    if not layer.weights:
        continue
    if hasattr(layer, "layers"):      # the nested rpn_model
        for inner in layer.layers:
            if inner.weights:
                fill(inner, layer)
    else:
        fill(layer, layer)

km.save_weights(os.path.join(args.out, "weights.h5"))
report = {"weights": entries, "keras_version": keras.__version__, "tf_version": tf.__version__,
          "h5py_version": h5py.__version__, "full_save": None}
if full_save:
    path = os.path.join(args.out, "full.h5")
    try:
        km.save(path)
        report["full_save"] = "keras_model.save"
    except Exception as e:            # Lambda / custom layers that Keras 2.2.5 cannot serialise
        if os.path.exists(path):
            os.unlink(path)
        with h5py.File(os.path.join(args.out, "weights.h5"), "r") as src, h5py.File(path, "w") as dst:
            g = dst.create_group("model_weights")
            for k, v in src.attrs.items():
                g.attrs[k] = v
            for name in src:
                src.copy(name, g)
            dst.attrs["keras_version"] = keras.__version__.encode("utf8")
            dst.attrs["backend"] = b"tensorflow"
        report["full_save"] = "h5py copy under model_weights (keras_model.save failed: %s: %s)" % (
            type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
np.savez(os.path.join(args.out, "keras.npz"), **arrays)
with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump(report, f)
print("ok", len(entries), "weights", file=sys.stderr)
