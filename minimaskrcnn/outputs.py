"""What the command line writes for one image: overlay, cut-outs, semantic and instance maps, COCO results JSON.

Shape glossary
    N: number of detections
    H, W: image height and width
    h, w: height and width of one cut-out (its box rounded outward and clipped to the image)

Conventions shared by every output:
- A mask is binarized as `mask >= mask_threshold` (torchvision's convention, 0.5). Box-only (Faster R-CNN) detections
  stand in their box, rounded outward to whole pixels, for the mask.
- Rank: detections are ordered by descending score (ties keep their order); instance k (1-based) is the k-th in that
  order. It is the value of the instance map, the number in a cut-out's file name and selects its overlay colour.
  Where instances overlap, the higher-scoring one wins (semantic and instance maps) or is drawn on top (overlay).
- Files are written to a temporary file in the output folder and renamed over the target (`os.replace`), so a reader
  never sees half a file and an interrupted run leaves none. A target that is one of the run's input files (same
  resolved path or same inode, see `protect`) is refused with ValueError.
"""
from __future__ import annotations

import colorsys
import contextlib
import functools
import json
import os
import re
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import rle

__all__ = ["palette", "class_colors", "binary_masks", "rank_order", "render_overlay", "semantic_map", "instance_map",
           "colorize", "cutouts", "coco_results", "assign_image_ids", "protect", "atomic_path", "write_png",
           "write_json", "write_cutouts", "output_stems"]

MASK_ALPHA = 0.5                 # tint opacity over the mask


# --- colours ----------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinguishable colours, always the same: hues stepped by the golden ratio (neighbours far apart
    on the colour wheel), saturation and brightness alternating so that near hues still differ (the parameters give
    the largest smallest distance among the first 20 colours of those tried)."""
    golden = 0.6180339887498949
    colors = [colorsys.hsv_to_rgb((0.5 + i * golden) % 1.0, (0.95, 0.55)[i % 2], (1.0, 0.75, 0.55)[(i // 2) % 3])
              for i in range(n)]
    out = np.rint(np.array(colors, dtype=np.float64).reshape(n, 3) * 255).astype(np.uint8)   # (n, 3)
    out.setflags(write=False)
    return out


def class_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: black for background (0), then `palette` colours by class id."""
    return np.concatenate([np.zeros((1, 3), np.uint8), palette(max(num_classes - 1, 0))])   # (num_classes, 3)


# --- masks in rank order ------------------------------------------------------------------------------------------------

def rank_order(det) -> np.ndarray:
    """(N,) detection indices by descending score, stable."""
    return np.argsort(-np.asarray(det.scores, dtype=np.float64), kind="stable")


def _pixel_box(box, h: int, w: int) -> tuple:
    """A box x1, y1, x2, y2 rounded outward to whole pixels and clipped to the image, at least one pixel."""
    x1 = min(max(int(np.floor(box[0])), 0), w - 1)
    y1 = min(max(int(np.floor(box[1])), 0), h - 1)
    x2 = min(max(int(np.ceil(box[2])), x1 + 1), w)
    y2 = min(max(int(np.ceil(box[3])), y1 + 1), h)
    return x1, y1, x2, y2


def binary_masks(det, mask_threshold: float = 0.5) -> np.ndarray:
    """(N, H, W) bool: `masks >= mask_threshold`, or the rounded boxes for box-only detections."""
    h, w = det.image_size
    if det.masks is not None:
        return np.asarray(det.masks) >= mask_threshold              # (N, H, W)
    out = np.zeros((len(det), h, w), dtype=bool)                     # (N, H, W)
    for i, box in enumerate(np.asarray(det.boxes)):
        x1, y1, x2, y2 = _pixel_box(box, h, w)
        out[i, y1:y2, x1:x2] = True
    return out


def _ranks(det) -> np.ndarray:
    """(N,) 1-based rank of each detection by descending score."""
    ranks = np.empty(len(det), dtype=np.int64)                       # (N,)
    ranks[rank_order(det)] = np.arange(1, len(det) + 1)
    return ranks


def _paint(det, masks: np.ndarray, values: np.ndarray, dtype) -> np.ndarray:
    """(H, W) map: values[i] where masks[i] covers a pixel, the highest-ranked detection winning; 0 elsewhere."""
    out = np.zeros(tuple(det.image_size), dtype=dtype)               # (H, W)
    for i in rank_order(det)[::-1]:                                  # lowest score first, so higher ones overwrite
        out[masks[i]] = values[i]
    return out


def semantic_map(det, mask_threshold: float = 0.5) -> np.ndarray:
    """(H, W) class ids, 0 = background; uint8 when the model has at most 256 classes, else uint16."""
    dtype = np.uint8 if len(det.class_names) <= 256 else np.uint16
    return _paint(det, binary_masks(det, mask_threshold), np.asarray(det.labels), dtype)


def instance_map(det, mask_threshold: float = 0.5) -> np.ndarray:
    """(H, W) instance ids, 0 = background, k = k-th detection by descending score; uint8 when N <= 255, else uint16."""
    return _paint(det, binary_masks(det, mask_threshold), _ranks(det), np.uint8 if len(det) <= 255 else np.uint16)


def colorize(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8 preview of a semantic map with `class_colors`."""
    return class_colors(max(num_classes, int(label_map.max()) + 1))[label_map]   # (H, W) -> (H, W, 3)


# --- overlay ----------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)                    # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)  # float in [0, 1] -> uint8


def _contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of `mask` within `thickness` (4-neighbour steps) of its outside, the image border counting as outside."""
    inner = mask
    for _ in range(thickness):
        padded = np.pad(inner, 1)                                    # (h+2, w+2) False around
        inner = (inner & padded[:-2, 1:-1] & padded[2:, 1:-1]        # erode: keep pixels whose 4 neighbours are set
                 & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def render_overlay(image, det, mask_threshold: float = 0.5, alpha: float = MASK_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: each instance's mask tinted in its own colour with its contour, its box, and "label score"
    on a filled background. `image` is the (H, W, 3) array the detections were computed on."""
    out = _as_uint8(np.asarray(image)).astype(np.float32)          # (H, W, 3)
    h, w = out.shape[:2]
    order = rank_order(det)                                          # (N,)
    colors = palette(max(len(det), 1)).astype(np.float32)            # (N, 3) by rank
    thickness = max(1, round(min(h, w) / 250))
    if det.masks is not None:
        masks = binary_masks(det, mask_threshold)                    # (N, H, W)
        top = _paint(det, masks, _ranks(det), np.int64)              # (H, W) rank of the top instance, 0 = none
        covered = top > 0
        out[covered] = out[covered] * (1 - alpha) + colors[top[covered] - 1] * alpha   # one tint per pixel
        for rank in range(len(det) - 1, -1, -1):                     # contours, higher scores drawn last
            m = masks[order[rank]]                                   # (H, W)
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if rows.size == 0:
                continue
            sl = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]   # the mask's extent
            out[sl][_contour(m[sl], thickness)] = colors[rank]
    canvas = Image.fromarray(np.rint(out).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = _font(int(np.clip(round(min(h, w) / 32), 11, 40)))
    boxes, names, scores = np.asarray(det.boxes), det.label_names, np.asarray(det.scores)
    for rank in range(len(det) - 1, -1, -1):
        i = order[rank]
        color = tuple(int(c) for c in palette(len(det))[rank])
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=thickness)
        _label(draw, font, f"{names[i]} {scores[i]:.2f}", x1, y1, color, w)
    return np.asarray(canvas)


def _label(draw, font, text: str, x: float, y: float, color: tuple, image_width: int) -> None:
    """Text on a rectangle of the instance colour, above the box's top-left corner (inside it at the image top)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x0 = int(min(max(x, 0), max(image_width - tw, 0)))
    y0 = int(y - th) if y - th >= 0 else int(max(y, 0))
    draw.rectangle([x0, y0, x0 + tw - 1, y0 + th - 1], fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x0 + pad - left, y0 + pad - top), text, fill=(0, 0, 0) if luminance > 150 else (255, 255, 255),
              font=font)


# --- cut-outs ---------------------------------------------------------------------------------------------------------

def cutouts(image, det, mask_threshold: float = 0.5) -> list:
    """[(rank, label name, (h, w, 4) uint8 RGBA)] in rank order: each object cropped to its box rounded outward and
    clipped to the image, alpha = 255 on the binarized mask (on the whole box for box-only detections), 0 elsewhere."""
    rgb = _as_uint8(np.asarray(image))                               # (H, W, 3)
    h, w = rgb.shape[:2]
    masks = binary_masks(det, mask_threshold)                        # (N, H, W)
    names, out = det.label_names, []
    for rank, i in enumerate(rank_order(det), start=1):
        x1, y1, x2, y2 = _pixel_box(np.asarray(det.boxes)[i], h, w)
        alpha = masks[i, y1:y2, x1:x2].astype(np.uint8) * np.uint8(255)          # (h, w)
        out.append((rank, names[i], np.dstack([rgb[y1:y2, x1:x2], alpha])))      # (h, w, 4)
    return out


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "-", label).strip("-") or "object"


def write_cutouts(outdir, stem: str, image, det, mask_threshold: float = 0.5, protected=frozenset()) -> list:
    """Write `<stem>_<rank>_<label>.png` for each cut-out (rank zero-padded to the width of N); returns the paths."""
    items = cutouts(image, det, mask_threshold)
    width = len(str(len(items)))
    paths = []
    for rank, name, rgba in items:
        path = os.path.join(outdir, f"{stem}_{rank:0{width}d}_{_safe_name(name)}.png")
        write_png(rgba, path, protected)
        paths.append(path)
    return paths


# --- COCO results -----------------------------------------------------------------------------------------------------

def coco_results(det, image_id: int, file_name=None, mask_threshold: float = 0.5) -> list:
    """COCO results entries of one image, in rank order: image_id, file_name, category_id (the label index: for the
    COCO models the COCO category id), bbox [x, y, width, height], score, and for mask models the compressed RLE
    of the binarized mask as segmentation (counts as str)."""
    order = rank_order(det)
    boxes, labels, scores = np.asarray(det.boxes, np.float64), np.asarray(det.labels), np.asarray(det.scores)
    segs = rle.encode_many(binary_masks(det, mask_threshold)[order]) if det.masks is not None else None
    out = []
    for k, i in enumerate(order):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        entry = {"image_id": int(image_id), "file_name": file_name, "category_id": int(labels[i]),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[i])}
        if file_name is None:
            del entry["file_name"]
        if segs is not None:
            entry["segmentation"] = segs[k]
        out.append(entry)
    return out


def assign_image_ids(paths) -> list:
    """COCO image ids for a run's images: the number in the file name when every stem is a distinct decimal number
    (000000039769.png -> 39769, the COCO naming), otherwise 1, 2, 3, ... in run order."""
    stems = [os.path.splitext(os.path.basename(os.fspath(p)))[0] for p in paths]
    if stems and all(s.isdigit() and s.isascii() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(1, len(stems) + 1))


# --- names --------------------------------------------------------------------------------------------------------------

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


# --- atomic, input-protecting writes ----------------------------------------------------------------------------------

def protect(paths) -> frozenset:
    """The set `write_*` refuse to write over: resolved paths and (device, inode) of the given input files."""
    keys = set()
    for p in paths:
        keys.add(os.path.realpath(p))
        with contextlib.suppress(OSError):
            st = os.stat(p)
            keys.add((st.st_dev, st.st_ino))
    return frozenset(keys)


def _check_not_input(path: str, protected: frozenset) -> None:
    hit = os.path.realpath(path) in protected
    if not hit and protected:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            hit = (st.st_dev, st.st_ino) in protected
    if hit:
        raise ValueError(f"{path}: refusing to overwrite an input file")


@functools.lru_cache(maxsize=None)
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, protected=frozenset()):
    """Yield a temporary path next to `path` (same extension, so format detection by name works) and rename it over
    `path` when the block succeeds; remove it when the block fails."""
    path = os.fspath(path)
    _check_not_input(path, protected)
    folder, base = os.path.split(os.path.abspath(path))
    root, ext = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{root}.", suffix=f".part{ext}")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())                              # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
