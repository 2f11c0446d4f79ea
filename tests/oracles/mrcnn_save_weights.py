"""Oracle script (Python 3.7, matterport's environment): build matterport's MaskRCNN, fill every weight with seeded
random values, and save it as Keras does; dump what Keras reports for each weight, for bitwise checks. The reader
tests take their inference-mode files from the parity cases (tests/oracles/matterport_dump.py keras_reference) and
use this script for what no case builds: the training graph.

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
LAYERS = []                                # (outer layer, layer holding the weights), in model order
for layer in km.layers:
    if not layer.weights:
        continue
    if hasattr(layer, "layers"):           # the nested rpn_model
        LAYERS += [(layer, inner) for inner in layer.layers if inner.weights]
    else:
        LAYERS.append((layer, layer))

# every weight seeded-random, written in ONE session call and read back in one: Keras's set_weights / get_weights /
# save_weights do one call per layer, and each distinct fetch makes TensorFlow prune the whole graph anew (minutes)
todo = []
for outer, layer in LAYERS:
    for v in layer.weights:
        shape = tuple(keras.backend.int_shape(v))
        if "moving_variance" in v.name:
            a = rng.uniform(0.25, 2.0, shape)
        else:
            a = rng.standard_normal(shape) * 0.05
        todo.append((v, a.astype(keras.backend.dtype(v))))
keras.backend.batch_set_value(todo)
variables = km.weights
held = dict(zip([id(v) for v in variables], keras.backend.batch_get_value(variables)))   # what Keras holds now
for outer, layer in LAYERS:
    for v in layer.weights:
        key = "a%d" % len(arrays)
        arrays[key] = held[id(v)]
        entries.append({"layer": outer.name, "inner_layer": layer.name if layer is not outer else None,
                        "weight": v.name, "array": key, "shape": list(arrays[key].shape)})

import keras.engine.saving as saving    # noqa: E402
_original = saving.K.batch_get_value
saving.K.batch_get_value = lambda vs: [held[id(v)] if id(v) in held else _original([v])[0] for v in vs]
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
