"""Compile every Numba kernel a run uses, once, into Numba's cache beside the package's own modules.

`pip install .` runs this on the wheel it builds (`setup.py`, `build_py`), so that a fresh install's first
`minimaskrcnn segment` does not spend ~6-9 s compiling (issue 16). How it works, in Numba's terms: every kernel is
`@njit(cache=True)`, so Numba stores its machine code in the module's `__pycache__/` (`<module>.<kernel>-<line>.py3X
.nbi` index, `.nbc` code) and later processes load it instead of compiling. The index is keyed by the source file's
content hash (not its time stamp, since Numba 0.59), the kernel's argument types, the CPU (name and features) and the
Numba version; the files written here at build time therefore stay valid when pip copies the wheel into
site-packages. Where a key differs (another CPU, another Numba), Numba compiles on first use exactly as without them.

Which kernels and argument types: those of a real run, because they are produced by one. The shipped demo model (a
small ResNet-FPN Mask R-CNN, the torchvision family's code path: Winograd and im2col convolutions in both layouts,
max pooling, upsampling, NMS, RoIAlign, resizing, mask pasting) predicts one uint8 and one float image; the one layer
path of ResNet-50 its basic blocks lack (a 1x1 convolution plus the identity) and matterport's kernels (its NMS,
crop-and-resize and skimage-0.16 resize) are called through their public functions on small inputs, which validate
and cast exactly as in the pipelines. Argument types do not depend on sizes, so a small model
compiles what the COCO model runs (the bench's fresh-install figure checks it).

Run it yourself where the build could not (an editable install, a wheel built on another machine):
    python -m minimaskrcnn.precompile
"""
from __future__ import annotations

import sys
import time

import numpy as np


def compile_kernels() -> None:
    """Run every kernel once (see the module's docstring)."""
    from minimaskrcnn.demo.shapes import make_sample, shipped_model_path
    from minimaskrcnn.matterport import mold, roi_align as mp_roi_align, tf_nms
    from minimaskrcnn.model import load
    from minimaskrcnn.nn import layers

    model = load(shipped_model_path())
    image = make_sample(seed=0, index=0, height=96, width=128).image                 # (H, W, 3) uint8
    model.predict(image)
    model.predict(image.astype(np.float32) / 255)                                   # a float image in [0, 1]

    rng = np.random.default_rng(0)
    # ResNet-50's bottleneck (torchvision's and matterport's) ends in a 1x1 convolution plus the identity, a path the
    # demo model's basic blocks (3x3 + identity) do not take
    x = rng.random((4, 6, 6), np.float32)                                           # (C, H, W)
    layers.conv2d(x, layers.make_conv(rng.random((4, 4, 1, 1), np.float32)), relu=True, residual=x)

    boxes = np.sort(rng.random((8, 4), np.float32).reshape(8, 2, 2), axis=1).reshape(8, 4)   # y1 <= y2, x1 <= x2
    tf_nms.non_max_suppression(boxes, rng.random(8, np.float32), 4, 0.5)
    mp_roi_align.crop_and_resize(rng.random((16, 16, 8), np.float32), boxes, 7)
    for dtype in (np.uint8, np.float32):                                            # photos, and float inputs
        mold.resize_skimage016((rng.random((20, 30, 3)) * 255).astype(dtype), 24, 36)


def cache_misses() -> dict:
    """{`module.kernel`: signatures compiled in this process because Numba's cache did not have them}, over the
    package's loaded cache-enabled kernels (Numba's `Dispatcher.stats`)."""
    from numba.core.registry import CPUDispatcher
    misses = {}
    for name, module in sorted(sys.modules.items()):
        if not name.startswith("minimaskrcnn.") or module is None:
            continue
        for attr, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == name and obj._cache.__class__.__name__ != "NullCache":
                missed = sum(obj.stats.cache_misses.values())
                if missed:
                    misses[f"{name}.{attr}"] = missed
    return misses


def main() -> int:
    t0 = time.perf_counter()
    compile_kernels()
    print(f"minimaskrcnn.precompile: {sum(cache_misses().values())} kernel signatures compiled into Numba's cache, "
          f"the rest loaded from it, in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
