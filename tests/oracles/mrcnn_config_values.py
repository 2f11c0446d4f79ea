"""Oracle script (Python 3.7): matterport's Config attribute values, for each set of overrides, as JSON.

    python mrcnn_config_values.py --out DIR --params '{"cases": [{}, {"IMAGE_MAX_DIM": 512, "NUM_CLASSES": 3}]}'

Writes DIR/values.json: one {attribute: value} per case (NumPy arrays as lists), after Config.__init__ ran.
"""
import argparse
import json
import os

import numpy as np
from mrcnn.config import Config

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--params", required=True)
args = p.parse_args()
out = []
for case in json.loads(args.params)["cases"]:
    cls = type("Case", (Config,), dict(case))
    c = cls()
    values = {}
    for a in dir(c):
        if a.isupper():
            v = getattr(c, a)
            values[a] = v.tolist() if isinstance(v, np.ndarray) else list(v) if isinstance(v, tuple) else v
    out.append(values)
with open(os.path.join(args.out, "values.json"), "w") as f:
    json.dump(out, f)
