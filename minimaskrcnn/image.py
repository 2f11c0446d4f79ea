"""What `MaskRCNN.predict` accepts: any image, read into the one layout the network and the writers use, (H, W, 3) RGB.

This is the input contract of the public API, so it sits beside `model.py` rather than in `io/`: the network imports
nothing from `io/`. Finding the image files of a run (folders, glob patterns) is `io.images.find_images`.

Shape glossary
    H, W: image height and width after the EXIF orientation is applied

`read_image` accepts a file path (str or os.PathLike), a binary file object, a PIL image or a NumPy array, and returns
an (H, W, 3) array: uint8 for files, PIL images and integer arrays; float32 in [0, 1] for float arrays (kept as float so
that a float input reaches the network exactly as given, as it would reach torchvision). `to_network_input` turns any of
these into the (3, H, W) float32 tensor in [0, 1] torchvision's `to_tensor` makes (uint8 / 255 in float32).

Conversion rules (the same for files, PIL images and arrays):
- EXIF orientation is applied (`PIL.ImageOps.exif_transpose`): a phone photo comes out the way viewers show it.
- Greyscale is replicated to the three channels. 1-bit images become 0 / 255.
- 16-bit data (PIL modes I;16*, uint16 arrays) is scaled by round(v / 257), which maps 0..65535 onto 0..255 exactly
  (257 * k -> k). 32-bit integer images (mode I) are taken as 8-bit when all values lie in 0..255, as 16-bit (same
  rule) when they lie in 0..65535, and are otherwise stretched linearly from their min..max onto 0..255.
  Float images (mode F) in [0, 1] are scaled by 255 and rounded; other ranges are stretched from min..max.
  NaN or infinite values are an error.
- Transparency (RGBA, LA, palette images with a transparent colour) is composited over white:
  c' = round((c * a + 255 * (255 - a)) / 255). Dropping alpha, as `PIL.Image.convert("RGB")` and hence torchvision
  do, shows whatever colour the encoder left under transparent pixels (often black, sometimes garbage); a user
  handing us a transparent PNG expects the object on the white page they see in most viewers. Opaque pixels are
  unchanged, so fully opaque RGBA images give exactly the torchvision input.
- Palette (P), CMYK, YCbCr, LAB and HSV images go through Pillow's conversion to RGB (embedded ICC profiles are not
  applied, as in torchvision).
- Multi-frame files (animated GIF, multi-page TIFF) give their first frame.

A file that cannot be read raises `ImageReadError` (a ValueError) whose message is one line: "<file>: <why>".
Arrays of an unsupported shape, dtype or range raise ValueError.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageReadError", "read_image", "to_network_input", "pil_to_rgb", "array_to_rgb"]

_WHITE = 255


class ImageReadError(ValueError):
    """A file or PIL image that cannot be decoded. `str(e)` is "<file>: <why>"; also `.path` and `.reason`."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")


def read_image(image) -> np.ndarray:
    """(H, W, 3) RGB: uint8 for paths, file objects, PIL images and integer arrays; float32 in [0, 1] for floats.

    The returned array may share memory with an (H, W, 3) uint8 or float32 input array. See the module docstring for
    how greyscale, 16-bit, float, transparent, palette and CMYK inputs are converted.
    """
    if isinstance(image, np.ndarray):
        return array_to_rgb(image)
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "<PIL image>"
        try:
            return pil_to_rgb(image)
        except ValueError:
            raise
        except Exception as e:  # a lazily loaded PIL image can fail to decode here
            raise ImageReadError(name, _describe(e)) from e
    if isinstance(image, (str, os.PathLike)):
        return _read_file(os.fspath(image))
    if hasattr(image, "read"):
        return _read_file(image, name=getattr(image, "name", "<file object>"))
    raise ValueError(f"image: expected a file path, a file object, a PIL image or a NumPy array, got {type(image)}")


def to_network_input(image) -> np.ndarray:
    """(3, H, W) float32 in [0, 1], as torchvision's `to_tensor`: uint8 data divided by 255 in float32.

    Accepts anything `read_image` does; float inputs are passed through unscaled (as float32).
    """
    rgb = read_image(image)                                          # (H, W, 3)
    chw = rgb.transpose(2, 0, 1)                                     # (3, H, W)
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(chw, dtype=np.float32) / np.float32(255)   # (3, H, W) float32 true division
    return np.ascontiguousarray(chw, dtype=np.float32)               # (3, H, W)


def _read_file(source, name=None) -> np.ndarray:
    name = source if name is None else name
    try:
        with Image.open(source) as img:
            img.load()                                               # decode now: truncation surfaces here
            return pil_to_rgb(img)
    except FileNotFoundError:
        raise ImageReadError(name, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(name, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError(name, "permission denied") from None
    except UnidentifiedImageError:
        empty = isinstance(source, str) and os.path.isfile(source) and os.path.getsize(source) == 0
        raise ImageReadError(name, "empty file" if empty else "not an image (or a format Pillow cannot read)") \
            from None
    except ImageReadError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, struct.error, ... for corrupt data
        raise ImageReadError(name, _describe(e)) from e


def _describe(e: Exception) -> str:
    if isinstance(e, Image.DecompressionBombError):
        return "image too large (Pillow's decompression-bomb limit; raise PIL.Image.MAX_IMAGE_PIXELS to allow it)"
    text = " ".join(str(e).split()) or type(e).__name__
    return f"cannot decode: {text}"


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image, by the rules of the module docstring (EXIF orientation included)."""
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        pass                                                         # a broken EXIF block: keep the stored orientation
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)                      # (H, W, 3)
    if mode == "L":
        return _grey_to_rgb(np.asarray(img, dtype=np.uint8))
    if mode == "1":
        return _grey_to_rgb(np.asarray(img.convert("L"), dtype=np.uint8))
    if mode.startswith("I;16"):
        return _grey_to_rgb(_scale_16bit(np.asarray(img).astype(np.uint32)))
    if mode == "I":
        return _grey_to_rgb(_int_to_uint8(np.asarray(img, dtype=np.int64)))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(img, dtype=np.float64)))
    if mode in ("LA", "La", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)       # (H, W, 4)
        return _composite_on_white(rgba)
    if mode in ("RGBA", "RGBa"):
        return _composite_on_white(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)       # (H, W, 3)
    raise ValueError(f"unsupported PIL image mode {mode!r}")


def array_to_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB from an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array; uint8 stays uint8, floats stay float."""
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        channels = a.shape[2]
    elif a.ndim == 2:
        channels = 1
    else:
        hint = " (channels first? use a.transpose(1, 2, 0))" if a.ndim == 3 and a.shape[0] in (1, 3, 4) else ""
        raise ValueError(f"image: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape "
                         f"{a.shape}{hint}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image: empty array of shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        a = _checked_unit_float(a)                                   # float32 in [0, 1]
    elif a.dtype == np.uint16:
        a = _scale_16bit(a.astype(np.uint32))                        # uint8
    elif a.dtype == np.uint8:
        pass
    elif np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"image: {a.dtype} array with values outside 0..255 (min {a.min()}, max {a.max()}); "
                             f"pass uint8, uint16 or floats in [0, 1]")
        a = a.astype(np.uint8)
    else:
        raise ValueError(f"image: expected a uint8, uint16, integer or float array, got dtype {a.dtype}")
    if channels == 1:
        return _grey_to_rgb(a.reshape(a.shape[0], a.shape[1]))     # (H, W) -> (H, W, 3)
    if channels == 4:
        return _composite_on_white(a)                                # (H, W, 4) -> (H, W, 3)
    return np.ascontiguousarray(a)                                   # (H, W, 3)


def _checked_unit_float(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError("image: float array contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image: float arrays must hold values in [0, 1], got min {lo:g}, max {hi:g} "
                         f"(for 0..255 data pass a uint8 array)")
    return a


def _grey_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))  # (H, W) -> (H, W, 1) -> (H, W, 3)


def _scale_16bit(v: np.ndarray) -> np.ndarray:
    """round(v / 257) for v in 0..65535 (no ties can occur: v / 257 = k + 1/2 has no integer solution)."""
    return ((v + 128) // 257).astype(np.uint8)


def _int_to_uint8(v: np.ndarray) -> np.ndarray:
    lo, hi = int(v.min()), int(v.max())
    if lo >= 0 and hi <= 255:
        return v.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return _scale_16bit(v.astype(np.uint32))
    return _stretch(v.astype(np.float64), lo, hi)


def _float_to_uint8(v: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(v)):
        raise ValueError("float image contains NaN or infinite values")
    lo, hi = float(v.min()), float(v.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(v * 255.0).astype(np.uint8)
    return _stretch(v, lo, hi)


def _stretch(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros(v.shape, np.uint8)
    return np.rint((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) over a white page -> (H, W, 3); uint8 with integer rounding, float in [0, 1] exactly."""
    rgb, alpha = rgba[:, :, :3], rgba[:, :, 3:]                      # (H, W, 3), (H, W, 1)
    if rgba.dtype == np.uint8:
        c, a = rgb.astype(np.uint32), alpha.astype(np.uint32)
        return ((c * a + _WHITE * (255 - a) + 127) // 255).astype(np.uint8)   # (H, W, 3)
    out = np.clip(rgb * alpha + (1.0 - alpha), 0.0, 1.0)            # (H, W, 3); clip float32 rounding past 1
    return np.ascontiguousarray(out, dtype=np.float32)

