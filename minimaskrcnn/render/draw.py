"""Drawing primitives for every picture (overlays and the stage pictures of `study/`): instance colours, colour maps,
fonts, labels, mask edges, titled panels, grids, boxes, colour bars.

Pillow and NumPy only (matplotlib is not a dependency). Pictures are (H, W, 3) uint8 arrays; drawing happens on
`PIL.Image` canvases. Coordinates are (x, y) display pixels unless a docstring says otherwise.
"""
from __future__ import annotations

import colorsys
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)

# A perceptually ordered dark-blue -> green -> yellow ramp (close to matplotlib's "viridis"): nine stops, linearly
# interpolated in RGB. Low values are dark, so a heat map reads like a photographic exposure.
_RAMP = np.array([[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
                  [31, 158, 137], [53, 183, 121], [110, 206, 88], [253, 231, 37]], np.float64)   # (9, 3)


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


def colormap(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """values (...) -> (..., 3) uint8 on the ramp, lo -> dark blue, hi -> yellow (default: the values' range)."""
    v = np.asarray(values, np.float64)
    lo = float(np.nanmin(v)) if lo is None else lo
    hi = float(np.nanmax(v)) if hi is None else hi
    t = np.clip((v - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(v)
    t = np.nan_to_num(t) * (len(_RAMP) - 1)                      # position on the ramp, 0 .. 8
    i = np.minimum(t.astype(np.int64), len(_RAMP) - 2)
    f = (t - i)[..., None]
    return np.rint(_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).astype(np.uint8)   # (..., 3)


def color_of(value: float, lo: float, hi: float) -> tuple:
    return tuple(int(c) for c in colormap(np.array([value]), lo, hi)[0])


@functools.lru_cache(maxsize=16)
def font(size: int):
    try:
        return ImageFont.load_default(size=size)                 # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def text_size(text: str, size: int) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font(size))
    return right - left, bottom - top


def resize(array: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3); nearest keeps feature-map cells visible as blocks."""
    img = Image.fromarray(np.ascontiguousarray(array))
    return np.asarray(img.resize((max(1, width), max(1, height)),
                                 Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))


def wash(array: np.ndarray, amount: float = 0.45) -> np.ndarray:
    """Blend a picture towards white, so that boxes drawn over it stand out."""
    return np.rint(array * (1 - amount) + 255 * amount).astype(np.uint8)


def edges(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """(h, w) bool: the pixels of `mask` within `thickness` 4-neighbour steps of its outside (the image border counts
    as outside): the mask minus its erosion."""
    inner = mask
    for _ in range(thickness):
        p = np.pad(inner, 1)                                         # (h+2, w+2) False around
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]   # keep pixels whose 4 neighbours are set
    return mask & ~inner


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 as it is, or float in [0, 1] -> uint8 (rounded)."""
    if image.dtype == np.uint8:
        return image
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def panel(array: np.ndarray, title: str = "", subtitle: str = "", size: int = 15) -> np.ndarray:
    """A picture with a title line (and a smaller grey subtitle line) above it."""
    h, w = array.shape[:2]
    lines = [(t, s, c) for t, s, c in ((title, size, INK), (subtitle, size - 3, MUTED)) if t]
    heights = [text_size(t, s)[1] + 6 for t, s, _ in lines]
    width = max([w] + [text_size(t, s)[0] + 8 for t, s, _ in lines])
    canvas = Image.new("RGB", (width, h + sum(heights) + (4 if lines else 0)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = 2
    for (t, s, c), lh in zip(lines, heights):
        draw.text((4, y), t, fill=c, font=font(s))
        y += lh
    canvas.paste(Image.fromarray(np.ascontiguousarray(array)), (0, y + (2 if lines else 0)))
    return np.asarray(canvas)


def row(pictures: list, gap: int = 12, align: str = "top") -> np.ndarray:
    """Pictures side by side on white, top (or bottom) aligned."""
    h = max(p.shape[0] for p in pictures)
    w = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    out = np.full((h, w, 3), 255, np.uint8)                      # (h, w, 3)
    x = 0
    for p in pictures:
        y = 0 if align == "top" else h - p.shape[0]
        out[y:y + p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def column(pictures: list, gap: int = 12) -> np.ndarray:
    """Pictures stacked vertically on white, left aligned."""
    w = max(p.shape[1] for p in pictures)
    h = sum(p.shape[0] for p in pictures) + gap * (len(pictures) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    y = 0
    for p in pictures:
        out[y:y + p.shape[0], :p.shape[1]] = p
        y += p.shape[0] + gap
    return out


def grid(pictures: list, columns: int, gap: int = 10) -> np.ndarray:
    rows = [row(pictures[i:i + columns], gap) for i in range(0, len(pictures), columns)]
    return column(rows, gap) if rows else np.full((1, 1, 3), 255, np.uint8)


def margin(array: np.ndarray, pad: int = 10) -> np.ndarray:
    return np.pad(array, ((pad, pad), (pad, pad), (0, 0)), constant_values=255)


def colorbar(lo: float, hi: float, label: str, width: int = 240, height: int = 12, fmt: str = "{:.3g}") -> np.ndarray:
    """A horizontal ramp from lo to hi with its end values and a label under it."""
    bar = colormap(np.linspace(lo, hi, width)[None, :].repeat(height, 0), lo, hi)   # (height, width, 3)
    left, right = fmt.format(lo), fmt.format(hi)
    tw = text_size(left, 12)[0] + text_size(right, 12)[0] + 16
    canvas = Image.new("RGB", (max(width + tw, text_size(label, 12)[0] + text_size(left, 12)[0] + 12),
                               height + 20), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((0, 0), left, fill=INK, font=font(12))
    x0 = text_size(left, 12)[0] + 6
    canvas.paste(Image.fromarray(bar), (x0, 0))
    draw.text((x0 + width + 6, 0), right, fill=INK, font=font(12))
    draw.text((x0, height + 3), label, fill=MUTED, font=font(12))
    return np.asarray(canvas)


def legend(items: list, size: int = 13) -> np.ndarray:
    """[(rgb, text)] as coloured squares with text, in one line."""
    parts = []
    for rgb, text in items:
        w, h = text_size(text, size)
        canvas = Image.new("RGB", (w + 22, max(h, 12) + 6), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        draw.rectangle([0, 2, 12, 14], fill=tuple(int(c) for c in rgb))
        draw.text((18, 1), text, fill=INK, font=font(size))
        parts.append(np.asarray(canvas))
    return row(parts, gap=14) if parts else np.full((1, 1, 3), 255, np.uint8)


def dashed_rectangle(draw, box, color, width: int = 1, dash: int = 6) -> None:
    """An outline of dashes (Pillow draws no dashed lines)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        n = max(1, int(length // dash))
        for k in range(0, n, 2):
            t0, t1 = k / n, min(k + 1, n) / n
            draw.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                      fill=color, width=width)


def arrow(draw, start, end, color, width: int = 2, head: float = 7.0) -> None:
    """A line from start to end with a filled arrow head at end."""
    (x0, y0), (x1, y1) = start, end
    draw.line([(x0, y0), (x1, y1)], fill=color, width=width)
    d = np.hypot(x1 - x0, y1 - y0)
    if d < 1e-6:
        return
    ux, uy = (x1 - x0) / d, (y1 - y0) / d
    draw.polygon([(x1, y1), (x1 - head * ux + head * 0.5 * uy, y1 - head * uy - head * 0.5 * ux),
                  (x1 - head * ux - head * 0.5 * uy, y1 - head * uy + head * 0.5 * ux)], fill=color)


def label(draw, xy, text: str, color, size: int = 12, above: bool = False, image_width: int | None = None) -> None:
    """Text on a filled rectangle of `color` (black or white text, whichever reads better), its top-left corner at
    `xy`; with `above`, standing on `xy` (inside, below it, where there is no room above), and kept within
    `image_width`."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font(size))
    pad = 2
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = (float(v) for v in xy)
    if image_width is not None:
        x = min(max(x, 0), max(image_width - tw, 0))
    if above:
        y = y - th if y - th >= 0 else max(y, 0)
    x0, y0 = int(x), int(y)
    color = tuple(int(c) for c in color)
    draw.rectangle([x0, y0, x0 + tw - 1, y0 + th - 1], fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x0 + pad - left, y0 + pad - top), text, fill=(0, 0, 0) if luminance > 150 else (255, 255, 255),
              font=font(size))
