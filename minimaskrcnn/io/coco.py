"""COCO results: the entries of one image's detections (`coco_results`, `assign_image_ids`), and the run-length
encoding (RLE) of binary masks they carry, bit-for-bit the format pycocotools reads and writes.

Shape glossary
    N: number of masks
    H, W: mask height and width
    L = H * W: pixels of one mask
    M: number of runs of one mask

The format (pycocotools `maskApi.c`: `rleEncode`, `rleToString`, `rleFrString`, `rleArea`, `rleToBbox`):
1. Runs are counted over the pixels in column-major (Fortran) order, i.e. down the first column, then the second ...
   They alternate background / foreground and start with a background run, which is 0 when pixel (0, 0) is set.
2. The compressed string stores each count i > 2 as the difference to count i - 2 (so counts 0, 1 and 2 are stored
   as they are), then writes every number as little-endian groups of 5 bits, least significant first. A group is one
   character: chr(48 + bits), plus 32 when another group of the same number follows. The last group's bit 4 is the
   sign: numbers are sign-extended from it when read, so a writer stops only when the remaining bits agree with it.
An RLE is a dict {"size": [H, W], "counts": str}; `decode`, `area` and `to_bbox` also take bytes or the uncompressed
form (counts as a list of ints).
"""
from __future__ import annotations

import os

import numpy as np

from minimaskrcnn.detections import binary_masks, rank_order

__all__ = ["coco_results", "assign_image_ids", "encode", "encode_many", "decode", "area", "to_bbox"]

_MAX_GROUPS = 7          # 7 groups of 5 bits hold any signed difference of two counts < 2**32 (35 bits)
_ASCII_OFFSET = 48       # '0': pycocotools rleToString / rleFrString


# --- results entries ---------------------------------------------------------------------------------------------------

def coco_results(det, image_id: int, file_name=None, mask_threshold: float = 0.5) -> list:
    """COCO results entries of one image, in rank order: image_id, file_name, category_id (the label index: for the
    COCO models the COCO category id), bbox [x, y, width, height], score, and for mask models the compressed RLE
    of the binarized mask as segmentation (counts as str)."""
    order = rank_order(det)
    boxes, labels, scores = np.asarray(det.boxes, np.float64), np.asarray(det.labels), np.asarray(det.scores)
    segs = encode_many(binary_masks(det, mask_threshold)[order]) if det.masks is not None else None
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


# --- RLE -------------------------------------------------------------------------------------------------------------

def encode(mask) -> dict:
    """Compressed RLE of one (H, W) bool (or integer, nonzero = foreground) mask: {"size": [H, W], "counts": str}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected an (H, W) array, got shape {mask.shape} (use encode_many for a stack)")
    return encode_many(mask[None])[0]


def encode_many(masks) -> list:
    """Compressed RLEs of an (N, H, W) stack of bool (or integer, nonzero = foreground) masks, one dict per mask."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks: expected an (N, H, W) array, got shape {masks.shape}")
    if not (masks.dtype == np.bool_ or np.issubdtype(masks.dtype, np.integer)):
        raise ValueError(f"masks: expected bool or integer masks, got {masks.dtype} (binarize first: masks >= 0.5)")
    n, h, w = masks.shape
    size = [int(h), int(w)]
    return [{"size": size, "counts": _pack(c)} for c in _run_lengths(masks != 0)]


def decode(rle) -> np.ndarray:
    """(H, W) uint8 mask of 0 and 1 from an RLE dict."""
    h, w, counts = _parse(rle)
    values = np.arange(counts.shape[0], dtype=np.int64) % 2         # (M,) 0, 1, 0, ... : background first
    flat = np.repeat(values.astype(np.uint8), counts)                # (L,) column-major
    return np.ascontiguousarray(flat.reshape(w, h).T)                # (W, H) -> (H, W)


def area(rle) -> int:
    """Number of foreground pixels (the sum of the odd-numbered runs)."""
    return int(_parse(rle)[2][1::2].sum())


def to_bbox(rle) -> list:
    """[x, y, width, height] of the foreground in pixels, as pycocotools `toBbox` (all zeros for an empty mask).

    Follows `rleToBbox`: a foreground run that continues from one column into the next covers the full height.
    """
    h, w, counts = _parse(rle)
    m = counts.shape[0] // 2 * 2                                     # a trailing background run adds nothing
    if m == 0 or h == 0 or w == 0:
        return [0.0, 0.0, 0.0, 0.0]
    ends = np.cumsum(counts[:m])                                     # (m,) one past each run
    t = ends - np.arange(m) % 2                                      # (m,) first pixel of each foreground run, last
    y, x = t % h, t // h                                             #      pixel of it; as row, column
    xs, xe, ys, ye = x.min(), x.max(), y.min(), y.max()
    if np.any(x[0::2] < x[1::2]):                                    # a run crosses a column boundary
        ys, ye = 0, h - 1
    return [float(xs), float(ys), float(xe - xs + 1), float(ye - ys + 1)]


def _run_lengths(masks: np.ndarray) -> list:
    """Run lengths of each (H, W) bool mask of an (N, H, W) stack in column-major order, starting with background."""
    n, h, w = masks.shape
    length = h * w
    flat = masks.transpose(0, 2, 1).reshape(n, length)               # (N, H, W) -> (N, W, H) -> (N, L) column-major
    previous = np.zeros((n, 1), dtype=bool)                          # (N, 1) a background pixel before the first
    changes = np.concatenate([previous, flat], axis=1)               # (N, L + 1)
    changes = changes[:, 1:] != changes[:, :-1]                      # (N, L) True where a new run starts
    rows, cols = np.nonzero(changes)                                 # (R,), (R,) sorted by mask, then position
    per_mask = np.split(cols, np.cumsum(np.bincount(rows, minlength=n))[:-1])
    bounds = [np.concatenate(([0], c, [length])) for c in per_mask]  # (M + 1,) each
    return [np.diff(b).astype(np.int64) for b in bounds]             # (M,) each


def _pack(counts: np.ndarray) -> str:
    """pycocotools `rleToString`, vectorized: delta coding, then 5-bit groups as characters."""
    x = counts.astype(np.int64)                                      # (M,)
    x[3:] -= counts[1:-2]                                            # count i > 2 minus count i - 2
    shifts = 5 * np.arange(_MAX_GROUPS, dtype=np.int64)              # (G,)
    shifted = x[:, None] >> shifts[None, :]                          # (M, G) arithmetic shift keeps the sign
    bits = shifted & 0x1F                                            # (M, G) the 5-bit groups, low first
    rest = shifted >> 5                                              # (M, G) what remains after each group
    more = np.where(bits & 0x10, rest != -1, rest != 0)              # (M, G) another group needed after this one?
    n_groups = np.argmin(more, axis=1) + 1                           # (M,) first group with nothing left, counted
    group = np.arange(_MAX_GROUPS)[None, :]                          # (1, G)
    chars = bits + _ASCII_OFFSET + 0x20 * (group < n_groups[:, None] - 1)   # (M, G) continuation flag 32
    return chars[group < n_groups[:, None]].astype(np.uint8).tobytes().decode("ascii")


def _unpack(s: bytes) -> np.ndarray:
    """pycocotools `rleFrString`, vectorized: characters to 5-bit groups to numbers, then undo the delta coding."""
    b = np.frombuffer(s, dtype=np.uint8).astype(np.int64) - _ASCII_OFFSET   # (C,) one group per character
    if b.size == 0:
        return np.zeros(0, np.int64)
    if b.min() < 0 or b.max() > 63:
        raise ValueError("rle: counts string holds characters outside '0'..'o'")
    more = (b & 0x20) != 0                                           # (C,) another group of this number follows
    if more[-1]:
        raise ValueError("rle: counts string ends in the middle of a number")
    ends = np.flatnonzero(~more)                                     # (M,) last group of each number
    starts = np.concatenate(([0], ends[:-1] + 1))                    # (M,) first group of each number
    n_groups = ends - starts + 1                                     # (M,)
    if n_groups.max() > _MAX_GROUPS:
        raise ValueError("rle: counts string holds a number too large for a mask size")
    number = np.repeat(np.arange(ends.shape[0]), n_groups)           # (C,) which number each group belongs to
    position = np.arange(b.shape[0]) - starts[number]                # (C,) group index within its number
    x = np.add.reduceat((b & 0x1F) << (5 * position), starts)        # (M,)
    negative = (b[ends] & 0x10) != 0                                 # (M,) sign bit of the last group
    x[negative] -= np.left_shift(1, 5 * n_groups[negative])          # sign-extend
    counts = x.copy()                                                # (M,) counts 0, 1, 2 are stored as they are
    counts[1::2] = np.cumsum(x[1::2])                                # count i = x[i] + count i - 2, for odd i
    counts[2::2] = np.cumsum(x[2::2])                                # ... and even i >= 2
    return counts


def _parse(rle) -> tuple:
    """(H, W, counts (M,) int64) of an RLE dict, validated: non-negative counts summing to H * W."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("rle: expected a dict with 'size' [H, W] and 'counts'")
    h, w = (int(v) for v in rle["size"])
    c = rle["counts"]
    if isinstance(c, str):
        counts = _unpack(c.encode("ascii"))
    elif isinstance(c, (bytes, bytearray)):
        counts = _unpack(bytes(c))
    else:
        counts = np.asarray(c, dtype=np.int64).reshape(-1)           # uncompressed RLE
    if counts.size and counts.min() < 0:
        raise ValueError("rle: negative run length")
    if int(counts.sum()) != h * w:
        raise ValueError(f"rle: run lengths sum to {int(counts.sum())}, size {h}x{w} has {h * w} pixels")
    return h, w, counts
