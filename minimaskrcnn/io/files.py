"""Writing a run's files: PNG and JSON, atomically and never over an input (`minimaskrcnn.atomic`), under unique
name stems.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from minimaskrcnn.atomic import atomic_path

__all__ = ["output_stems", "write_png", "write_json"]


def output_stems(paths) -> list:
    """Output name stems: the file names without extension, "-2", "-3", ... added to repeats (case-insensitively)."""
    used, stems = set(), []
    for p in paths:
        base = os.path.splitext(os.path.basename(p))[0]
        stem, k = base, 1
        while stem.lower() in used:
            k += 1
            stem = f"{base}-{k}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


def write_png(array: np.ndarray, path, protected=frozenset()) -> None:
    """(H, W) uint8 / uint16 greyscale, (H, W, 3) RGB or (H, W, 4) RGBA uint8 as a PNG, atomically."""
    img = Image.fromarray(np.ascontiguousarray(array))
    with atomic_path(path, protected) as tmp:
        img.save(tmp, format="PNG")


def write_json(obj, path, protected=frozenset()) -> None:
    """`obj` as JSON, atomically."""
    with atomic_path(path, protected) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f)
