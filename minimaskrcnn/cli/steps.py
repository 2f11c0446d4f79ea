"""Steps the subcommands share after parsing: loading the model with a --classes check, the detector, the output
folder, the end-of-run summary. Heavy modules (NumPy, the network) are imported inside the functions, after `main`
has applied --threads.
"""
from __future__ import annotations

import os
from collections import Counter

from minimaskrcnn.cli.options import UsageError


def class_list(text):
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def class_ids(names: list, class_names) -> object:
    """Label indices of `names` in the model's `class_names`, or None for "all". Unknown name -> UsageError."""
    if not names:
        return None
    valid = [c for c in class_names[1:] if c != "N/A"]
    lookup = {c.lower(): i for i, c in enumerate(class_names) if i > 0 and c != "N/A"}
    unknown = [n for n in names if n.lower() not in lookup]
    if unknown:
        raise UsageError(f"unknown class {', '.join(repr(u) for u in unknown)} for these weights; valid names: "
                         f"{', '.join(valid)}")
    return sorted({lookup[n.lower()] for n in names})


def load_model(weights: str, class_names_wanted: list, **load_kwargs):
    """`minimaskrcnn.load(weights)`; checks --classes against the COCO names first when the weights are official
    COCO weights, so a typo fails before any download."""
    from minimaskrcnn.config import COCO_CATEGORIES
    if class_names_wanted and weights.endswith("_coco") and not os.path.exists(weights):
        class_ids(class_names_wanted, COCO_CATEGORIES)
    import minimaskrcnn
    model = minimaskrcnn.load(weights, **load_kwargs)       # --config / --class-names (options.load_options)
    return model, class_ids(class_names_wanted, tuple(model.class_names))


def detector(model, score_threshold: float, keep):
    """image -> Detections, filtered to the kept label indices."""
    import numpy as np

    def detect(image):
        det = model.predict(image, score_threshold=score_threshold)
        return det if keep is None else det.select(np.isin(det.labels, keep))
    return detect


def prepare_outdir(path: str) -> str:
    """Create the output folder and prove it writable now, not after the first image."""
    import tempfile
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise OSError(e.errno, f"cannot write to the output folder ({e.strerror})", path) from None
    return path


def summary(lines: list, quiet: bool) -> None:
    if not quiet:
        print("\n".join(lines))


def objects_line(objects: Counter) -> str:
    if not objects:
        return "objects: none"
    return "objects: " + ", ".join(f"{n} {name}" for name, n in sorted(objects.items(), key=lambda kv: (-kv[1], kv[0])))
