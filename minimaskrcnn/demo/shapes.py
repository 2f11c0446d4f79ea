"""Seeded synthetic shapes: circles, squares and triangles on textured backgrounds, with their instance masks.

The data the shipped demo model (`minimaskrcnn/demo/data/shapes_maskrcnn.npz`) was trained on and is evaluated and shown
on: `examples/train_shapes.py` trains on it, `minimaskrcnn demo` draws a few images to segment, the tests evaluate
on it. NumPy + Pillow only.

Image `index` of the set `seed` depends on nothing else (its generator is seeded with the pair), so a training set,
a held-out set and the demo images are disjoint by seed and reproducible on any machine.

How one image is made:
1. Background: a linear gradient between two random colours, plus low-frequency colour blobs (bilinear upsampled
   coarse noise), plus sometimes a texture (stripes, checks or speckles).
2. 1..max_objects shapes, painted back to front: a circle, a square (any rotation) or an equilateral triangle (any
   rotation), filled with a shaded, slightly noisy colour that stands out from the background under it. Edges are
   anti-aliased by drawing at 4x and averaging; the shape's pixels are those at least half covered.
3. Occlusion: a later shape hides what it covers, so each mask is the *visible* part of its shape. A placement that
   would leave an earlier shape less than `min_visible` of its area visible is drawn again elsewhere (or dropped).
4. Pixel noise over the whole image.

Labels index `CLASS_NAMES` (0 = background). Boxes are the tight boxes of the visible masks, x1, y1, x2, y2 in pixel
edges (a mask covering columns 3..7 has x1 = 3, x2 = 8), the convention of torchvision's targets and COCO's boxes.

Shape glossary
    H, W    image height and width
    N       number of objects in an image
    h, w    size of the region one shape is drawn in
"""
from __future__ import annotations

import colorsys
import errno
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "Sample", "make_sample", "make_samples", "shipped_model_path"]

CLASS_NAMES = ("__background__", "circle", "square", "triangle")
CIRCLE, SQUARE, TRIANGLE = 1, 2, 3
SUPERSAMPLE = 4                 # anti-aliasing: shapes are drawn at 4x and averaged
MIN_COLOR_DISTANCE = 80.0       # RGB distance between a shape's colour and the mean background under it
PLACEMENT_TRIES = 20            # attempts to place a shape before it is dropped
MODEL_FILE = "shapes_maskrcnn.npz"  # the demo model, package data in minimaskrcnn/demo/data/ (examples/train_shapes.py)


@dataclass(frozen=True)
class Sample:
    """One synthetic image and its instances, in painting order (back to front)."""

    image: np.ndarray       # (H, W, 3) uint8 RGB
    boxes: np.ndarray       # (N, 4) float32 as x1, y1, x2, y2: tight box of each visible mask, in pixel edges
    labels: np.ndarray      # (N,) int64 in 1..3, indices into CLASS_NAMES
    masks: np.ndarray       # (N, H, W) bool: visible pixels of each shape
    full_masks: np.ndarray  # (N, H, W) bool: all pixels of each shape, hidden ones included (amodal masks)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def shipped_model_path() -> Path:
    """Path of the Mask R-CNN trained on these shapes that ships with the package (minimaskrcnn/demo/data/)."""
    from importlib import resources
    path = Path(str(resources.files("minimaskrcnn.demo") / "data" / MODEL_FILE))
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"the built-in shapes model is missing from this installation (package "
                                f"data minimaskrcnn/demo/data/{MODEL_FILE})", str(path))
    return path


def make_samples(seed: int, n: int, **kwargs) -> list:
    """Images 0..n-1 of the set `seed` (keyword arguments as `make_sample`)."""
    return [make_sample(seed, i, **kwargs) for i in range(n)]


def make_sample(seed: int, index: int = 0, height: int = 256, width: int = 256, max_objects: int = 6,
                min_size: float = 24.0, max_size: float = 96.0, min_visible: float = 0.6) -> Sample:
    """Image `index` of the set `seed`: see the module docstring.

    min_size, max_size: range of a shape's diameter in pixels (circle diameter; a square's side is 0.8 of it and a
        triangle's circumradius 0.55 of it, so all three look about as large), drawn log-uniformly.
    min_visible: smallest visible fraction of a shape's area left by the shapes painted over it.
    """
    for name, v in (("seed", seed), ("index", index)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {v!r}")
    if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer))
            and height >= 32 and width >= 32):
        raise ValueError(f"height, width: expected integers >= 32, got {height!r}, {width!r}")
    if not 1 <= max_objects <= 50:
        raise ValueError(f"max_objects: expected 1..50, got {max_objects!r}")
    if not 4.0 <= min_size <= max_size <= min(height, width):
        raise ValueError(f"min_size, max_size: expected 4 <= min_size <= max_size <= {min(height, width)}, got "
                         f"{min_size!r}, {max_size!r}")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible: expected a fraction in [0, 1], got {min_visible!r}")
    rng = np.random.default_rng((int(seed), int(index)))
    image = _background(rng, height, width)                                  # (H, W, 3) float64 in 0..255
    full, visible, labels = [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _ in range(PLACEMENT_TRIES):
            label = int(rng.integers(1, 4))
            diameter = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
            alpha, region = _shape_alpha(rng, label, diameter, height, width)   # (h, w) coverage, (y0, x0)
            mask = np.zeros((height, width), bool)                           # (H, W)
            y0, x0 = region
            mask[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]] = alpha >= 0.5
            if not mask.any():
                continue
            hidden = [v & ~mask for v in visible]                            # earlier shapes under this one
            if all(h.sum() >= min_visible * f.sum() for h, f in zip(hidden, full)):
                break
        else:
            continue                                                         # no room left: draw fewer shapes
        visible = hidden + [mask]
        full.append(mask)
        labels.append(label)
        _paint(rng, image, alpha, region)
    image += rng.normal(0.0, rng.uniform(2.0, 8.0), image.shape)            # sensor noise
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)                 # (H, W, 3)
    masks = np.array(visible, bool).reshape(len(visible), height, width)     # (N, H, W)
    full_masks = np.array(full, bool).reshape(len(full), height, width)      # (N, H, W)
    return Sample(image, _tight_boxes(masks), np.array(labels, np.int64), masks, full_masks)


# --- background -------------------------------------------------------------------------------------------------------

def _random_color(rng) -> np.ndarray:
    """(3,) float64 RGB in 0..255, any hue, varied saturation and brightness."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 1.0), rng.uniform(0.15, 1.0))
    return np.array(rgb) * 255.0


def _smooth_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W, 3) float64 in about -1..1: a (cells x cells x 3) uniform grid upsampled bilinearly."""
    out = np.empty((height, width, 3))                                       # (H, W, 3)
    for c in range(3):
        coarse = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
        out[..., c] = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))
    return out


def _background(rng, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float64 in about 0..255."""
    yy, xx = np.mgrid[0:height, 0:width]                                     # (H, W) each
    angle = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / max(height, width)       # (H, W) position along the gradient
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    a, b = _random_color(rng), _random_color(rng)
    image = a + (b - a) * t[..., None]                                       # (H, W, 3)
    image += rng.uniform(10.0, 50.0) * _smooth_noise(rng, height, width, int(rng.integers(3, 9)))
    texture = rng.integers(0, 4)
    if texture == 1:                                                         # stripes
        period, phi = rng.uniform(6.0, 30.0), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period)
        image += rng.uniform(8.0, 30.0) * wave[..., None] * rng.uniform(0.3, 1.0, 3)
    elif texture == 2:                                                       # checks
        cell = int(rng.integers(6, 24))
        checks = ((xx // cell + yy // cell) % 2) * 2.0 - 1.0                 # (H, W) +-1
        image += rng.uniform(8.0, 25.0) * checks[..., None]
    elif texture == 3:                                                       # speckles
        image += rng.uniform(8.0, 25.0) * _smooth_noise(rng, height, width, max(height, width) // 4)
    return image


# --- shapes -----------------------------------------------------------------------------------------------------------

def _outline(label: int, diameter: float, angle: float):
    """Vertices (K, 2) as x, y relative to the centre, or None for a circle."""
    if label == CIRCLE:
        return None
    if label == SQUARE:
        r = 0.8 * diameter / math.sqrt(2.0)                                  # half diagonal of a side 0.8 d square
        corners = angle + np.pi / 4 + np.arange(4) * np.pi / 2
    else:
        r = 0.55 * diameter                                                  # circumradius of the triangle
        corners = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
    return np.stack([r * np.cos(corners), r * np.sin(corners)], axis=1)      # (K, 2)


def _shape_alpha(rng, label: int, diameter: float, height: int, width: int):
    """Coverage (h, w) in 0..1 of a randomly rotated and placed shape, and its region's top-left (y0, x0).

    The shape lies entirely inside the image; the region is the shape's pixel box.
    """
    points = _outline(label, diameter, rng.uniform(0, 2 * np.pi))          # (K, 2) or None
    half = diameter / 2 if points is None else np.abs(points).max(axis=0)   # radius, or (2,) half extents x, y
    hx, hy = (half, half) if points is None else (half[0], half[1])
    cx = rng.uniform(hx + 1, max(width - hx - 1, hx + 1))
    cy = rng.uniform(hy + 1, max(height - hy - 1, hy + 1))
    x0, y0 = max(int(math.floor(cx - hx)), 0), max(int(math.floor(cy - hy)), 0)
    x1, y1 = min(int(math.ceil(cx + hx)) + 1, width), min(int(math.ceil(cy + hy)) + 1, height)
    w, h = x1 - x0, y1 - y0
    s = SUPERSAMPLE
    canvas = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(canvas)
    # pixel (i, j) of the region covers [x0 + j, x0 + j + 1) x [y0 + i, y0 + i + 1); supersampled pixel centres at
    # (k + 0.5) / s, so a point p maps to (p - origin) * s - 0.5 in canvas pixel-centre coordinates
    if points is None:
        r = diameter / 2
        box = [(cx - r - x0) * s - 0.5, (cy - r - y0) * s - 0.5, (cx + r - x0) * s - 0.5, (cy + r - y0) * s - 0.5]
        draw.ellipse(box, fill=255)
    else:
        xy = [((cx + px - x0) * s - 0.5, (cy + py - y0) * s - 0.5) for px, py in points]
        draw.polygon(xy, fill=255)
    fine = np.asarray(canvas, np.float64) / 255.0                            # (h*s, w*s)
    alpha = fine.reshape(h, s, w, s).mean(axis=(1, 3))                       # (h, w)
    return alpha, (y0, x0)


def _paint(rng, image: np.ndarray, alpha: np.ndarray, region) -> None:
    """Composite a shaded, textured colour over `image` (in place) with coverage `alpha` at `region`."""
    y0, x0 = region
    h, w = alpha.shape
    patch = image[y0:y0 + h, x0:x0 + w]                                      # (h, w, 3) view
    under = patch[alpha >= 0.5].mean(axis=0) if (alpha >= 0.5).any() else patch.reshape(-1, 3).mean(axis=0)
    color = _random_color(rng)
    for _ in range(PLACEMENT_TRIES):                                         # stand out from what lies under it
        if np.linalg.norm(color - under) >= MIN_COLOR_DISTANCE:
            break
        color = _random_color(rng)
    else:
        color = np.where(under > 127, 0.0, 255.0) * 0.8 + 0.2 * color       # fall back: a far corner of the cube
    yy, xx = np.mgrid[0:h, 0:w]                                              # (h, w)
    phi = rng.uniform(0, 2 * np.pi)
    shade = (xx * np.cos(phi) + yy * np.sin(phi)) / max(h, w, 1)             # (h, w) in about -1..1
    fill = color + rng.uniform(0.0, 25.0) * shade[..., None]                 # (h, w, 3)
    fill = fill + rng.uniform(0.0, 10.0) * rng.normal(size=(h, w, 1))        # mottled surface
    patch *= (1.0 - alpha)[..., None]
    patch += alpha[..., None] * fill


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 x1, y1, x2, y2 of (N, H, W) masks, in pixel edges (zeros for an empty mask)."""
    boxes = np.zeros((masks.shape[0], 4), np.float32)                        # (N, 4)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size:
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes
