"""Convolution throughput and backbone + FPN time against torchvision, measured interleaved in one process.

    python benchmarks/bench_convolution.py [--threads 2] [--repeats 7]

1. A 3x3 256 -> 256 convolution at 200x272 (the P2 level of an 800x1088 input): `convolution.conv2d` against a plain
   float32 `np.matmul` of the same (M, K, N) = (256, 2304, 54400) and against `torch.nn.functional.conv2d`.
2. ResNet-50 body + FPN at 800x1088: ours against torchvision's `model.backbone`, same thread count.
Runs are interleaved (ours, reference, ours, ...) so that load from other processes hits both alike; the ratio is
taken per round and its median reported. Each timed run starts after a 0.3 s pause, so that thread pools still
spinning after the previous run (OpenMP in torch, BLAS) do not eat into it. torch is imported for the reference only.

The thread count must be set before NumPy loads BLAS, so --threads sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS and
re-executes. OpenBLAS picks its kernels at load time: on CPUs it does not recognise it may fall back to AVX2
kernels; `OPENBLAS_CORETYPE` (e.g. SkylakeX on an AVX-512 machine) overrides that, and the core in use is printed.
"""
import argparse
import ctypes
import glob
import os
import sys
import time
from pathlib import Path

PAUSE = 0.3     # seconds before each timed run


def _openblas_core() -> str:
    import numpy as np
    for lib in glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "*openblas*.so*")):
        for name in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(ctypes.CDLL(lib), name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return "unknown"


def _median(v):
    v = sorted(v)
    return v[len(v) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        os.execve(sys.executable, [sys.executable] + sys.argv, env)

    import numpy as np
    import torch
    import torchvision
    from minimaskrcnn.stages import backbone, fpn
    from minimaskrcnn.nn import convolution
    from minimaskrcnn.config import MASKRCNN_RESNET50_FPN

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}, OpenBLAS core {_openblas_core()}, torch {torch.__version__}")

    # 1. one 3x3 convolution at P2
    x = rng.standard_normal((256, 200, 272), dtype=np.float32)
    weight = (rng.standard_normal((256, 256, 3, 3)) * 0.02).astype(np.float32)
    conv = convolution.make_conv(weight, np.zeros(256, np.float32), padding=1)
    a, b = conv.weight, rng.standard_normal((2304, 200 * 272), dtype=np.float32)
    c = np.empty((256, 200 * 272), np.float32)
    xt, wt = torch.from_numpy(x)[None], torch.from_numpy(weight)
    runs = {"conv2d": lambda: convolution.conv2d(x, conv), "np.matmul": lambda: np.matmul(a, b, out=c),
            "torch conv2d": lambda: torch.nn.functional.conv2d(xt, wt, padding=1)}
    times = {k: [] for k in runs}
    with torch.no_grad():
        for _ in range(args.repeats + 1):
            for name, run in runs.items():
                time.sleep(PAUSE)
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    gflop = 2 * 256 * 2304 * 200 * 272 / 1e9
    for name, t in times.items():
        t = t[1:]
        print(f"{name:>13}: median {_median(t) * 1e3:7.1f} ms  {gflop / _median(t):6.1f} GFLOP/s "
              f"(best {gflop / min(t):6.1f})")

    # 2. ResNet-50 body + FPN at 800x1088
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = MASKRCNN_RESNET50_FPN
    wb, wf = backbone.load_backbone(sd, cfg), fpn.load_fpn(sd, cfg)
    image = rng.standard_normal((3, 800, 1088), dtype=np.float32)
    image_t = torch.from_numpy(image)[None]
    ours, theirs = [], []
    with torch.no_grad():
        for _ in range(args.repeats + 1):
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            fpn.fpn_forward(wf, backbone.backbone_forward(wb, image))
            ours.append(time.perf_counter() - t0)
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            model.backbone(image_t)
            theirs.append(time.perf_counter() - t0)
    ratios = [o / t for o, t in zip(ours[1:], theirs[1:])]
    print(f"body + FPN 800x1088: ours median {_median(ours[1:]):.3f} s, torchvision {_median(theirs[1:]):.3f} s, "
          f"ratio ours/torchvision median {_median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
