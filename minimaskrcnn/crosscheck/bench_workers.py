"""The worker processes of `minimaskrcnn bench` (`bench.py` drives them): one implementation each, serving requests.

A worker loads its peer (minimaskrcnn, torchvision, or ONNX Runtime running torchvision's ONNX export of the same
weights), sets its thread count, and answers one JSON line per request line on stdin:

    run     one image end to end: latency, CPU seconds of the process (all threads), per-stage seconds (ours: the trace; torchvision: forward hooks; ONNX
            Runtime: none, a session is one call), number of detections
    blas    the thread pools actually loaded: threadpoolctl's `threadpool_info()` (BLAS library, version, kernel
            "architecture", threads) when installed, else minimaskrcnn's own view (nn/threads.py), and the
            OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE the process was started with
    flops   (minimaskrcnn only) one more pass with every convolution and fully connected layer timed: their
            direct-method FLOPs per kind, and the float32 matmul rate measured in the same process
    rss     peak resident memory so far (VmHWM): asked before `flops`, whose matmul of the largest convolution's
            GEMM shape allocates ~0.6 GB that no inference needs
    quit    peak resident memory (VmHWM), then exit

Our worker gets its thread count from `minimaskrcnn.set_num_threads` alone (its environment has no thread
variables), so the `blas` answer shows whether the API limits every pool. The peers get OMP/MKL/OpenBLAS variables
and their own API (torch.set_num_threads; SessionOptions.intra_op_num_threads).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from minimaskrcnn.crosscheck.bench_report import MALLOPT_PEER

TV_STAGES = (("backbone", "backbone.body"), ("fpn", "backbone.fpn"), ("rpn", "rpn"),
             ("box_branch", "roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor"),
             ("mask_branch", "roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor"))
# The square float32 product that measures "the machine's matmul rate" (the 2048^3 figure).
MATMUL_SIDE = 2048


def worker(kind: str, weights: str, threads: int, image_path: str, onnx_path: str = "") -> None:
    """Serve requests on stdin (module docstring) with one JSON line each on stdout."""
    image = np.load(image_path)                                              # (H, W, 3) float32 in [0, 1]
    if kind in ("minimaskrcnn", MALLOPT_PEER):     # ours as the `minimaskrcnn` command runs (cli/main.py)
        from minimaskrcnn.nn.workspace import reuse_freed_memory
        reuse_freed_memory()
    run = {"minimaskrcnn": _minimaskrcnn_runner, "torchvision": _torchvision_runner,
           MALLOPT_PEER: _torchvision_runner, "onnxruntime": _onnxruntime_runner}[kind](weights, threads, onnx_path)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = line.strip()
        if request == "quit":
            break
        if request == "blas":
            print(json.dumps(blas_report()), flush=True)
        elif request == "rss":
            print(json.dumps({"maxrss_mb": peak_rss_mb()}), flush=True)
        elif request == "flops":
            print(json.dumps(_flop_rates(run, image, threads)), flush=True)
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            stages, n = run(image)
            print(json.dumps({"latency": time.perf_counter() - t0, "cpu": time.process_time() - c0, "stages": stages,
                              "detections": n}), flush=True)
    print(json.dumps({"maxrss_mb": peak_rss_mb()}), flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (Linux; getrusage's ru_maxrss would include the parent's peak,
    which Linux carries across fork + exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024         # bytes on macOS, kB elsewhere


def blas_report() -> dict:
    """The thread pools of this process, and the OpenBLAS variables it was started with."""
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        from minimaskrcnn.nn.threads import blas_pools
        pools = [{"internal_api": p["api"], "version": p.get("config", ""), "architecture": p.get("corename", "?"),
                  "num_threads": p["num_threads"], "filepath": p["path"]} for p in blas_pools()]
        return {"source": "minimaskrcnn.nn.threads (threadpoolctl not installed)", "pools": pools, "env": env}
    pools = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "architecture", "num_threads",
                                    "filepath")} for p in threadpool_info()]
    return {"source": "threadpoolctl", "pools": pools, "env": env, "own": _own_pools()}


def _own_pools() -> str:
    """Pools threadpoolctl cannot see: torch's statically linked MKL / oneDNN, ONNX Runtime's MLAS thread pool."""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        return f"torch intra-op threads {torch.get_num_threads()}, MKL {torch.backends.mkl.is_available()}, " \
               f"oneDNN {torch.backends.mkldnn.is_available()}"
    if "onnxruntime" in sys.modules:
        return "ONNX Runtime MLAS kernels, intra_op_num_threads as requested (not visible to threadpoolctl)"
    return ""


# --- the peers -----------------------------------------------------------------------------------------------------

def _minimaskrcnn_runner(weights, threads, _onnx):
    import minimaskrcnn
    from minimaskrcnn.trace import Trace
    model = minimaskrcnn.load(weights)
    minimaskrcnn.set_num_threads(threads)

    def run(image):        # stage timings only: a full trace would hold every intermediate, and count in the peak
        det, trace = model.predict(image, trace=Trace(keep_arrays=False))
        return dict(trace.timings), len(det)
    return run


def _torchvision_runner(weights, threads, _onnx):
    import torch
    torch.set_num_threads(threads)
    from weights_convert import read_npz
    from minimaskrcnn.crosscheck.torch_trace import torchvision_model
    cfg, sd = read_npz(weights)
    model = torchvision_model(cfg, sd)
    times = {}

    def timed(name, module):
        def pre(*_):
            times.setdefault("_start", {})[name] = time.perf_counter()

        def post(*_):
            times[name] = times.get(name, 0.0) + time.perf_counter() - times["_start"].pop(name)
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    for stage, *paths in TV_STAGES:
        if stage == "mask_branch" and not cfg.masks:
            continue
        for path in paths:
            timed(stage, model.get_submodule(path))

    def run(image):
        times.clear()
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.no_grad():
            out = model([t])[0]
        stages = {k: v for k, v in times.items() if k != "_start"}
        return stages, int(out["labels"].numel())
    return run


def _onnxruntime_runner(_weights, threads, onnx_path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1                                         # one graph, run serially between ops
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    labels = [i for i, o in enumerate(session.get_outputs()) if "label" in o.name] or [1]

    def run(image):
        out = session.run(None, {name: np.ascontiguousarray(image.transpose(2, 0, 1))})
        return {}, int(out[labels[0]].size)
    return run


# --- FLOPs of the direct method, and the machine's matmul rate --------------------------------------------------------

def _flop_rates(run, image, threads):
    """One more forward pass with every convolution, transposed convolution and fully connected layer timed: per
    kind the direct-method FLOPs (2 C' C k^2 H' W' per image or RoI batch, 2 K In Out for a linear layer: what the
    layer computes whatever the algorithm) and seconds; and, in this process, the float32 matmul rate of a
    2048^3 product (the best of samples before and after the pass) and of the largest convolution's im2col GEMM.
    (The mask head's per-class 1x1, one row per RoI, is left out: 0.04 GFLOP for 100 detections.)"""
    from minimaskrcnn.stages import backbone, box_head, fpn, mask_head, rpn
    kinds, largest = {}, (0, None)

    def add(kind, flops, seconds, gemm=None):
        nonlocal largest
        total = kinds.setdefault(kind, [0.0, 0.0])
        total[0], total[1] = total[0] + flops, total[1] + seconds
        if gemm is not None and flops > largest[0]:
            largest = (flops, gemm)

    def conv_flops(x, c, y):
        positions = y.size // c.out_channels
        kind = "3x3 Winograd" if c.winograd else "1x1" if c.kernel == 1 else "im2col"
        return (kind, 2 * c.out_channels * c.in_channels * c.kernel ** 2 * positions,
                (c.out_channels, c.in_channels * c.kernel ** 2, positions))

    def linear_flops(x, fc, y):
        return "linear", 2 * x.shape[0] * fc.weight.shape[0] * fc.weight.shape[1], None

    def deconv_flops(x, d, y):
        return "deconv 2x2", 2 * x.size * d.weight.shape[1], None

    def timed(flops_of):
        """A layer function `fn(x, layer, ...)` wrapped to add its seconds and direct-method FLOPs to `kinds`."""
        def wrap(fn):
            def wrapper(x, layer, *args, **kwargs):
                t0 = time.perf_counter()
                y = fn(x, layer, *args, **kwargs)
                seconds = time.perf_counter() - t0
                kind, flops, gemm = flops_of(x, layer, y)
                add(kind, flops, seconds, gemm)
                return y
            return wrapper
        return wrap

    square = _matmul_gflops(MATMUL_SIDE, MATMUL_SIDE, MATMUL_SIDE)         # also before the pass: see below
    wrappers = {"conv2d": timed(conv_flops), "conv2d_rois": timed(conv_flops), "linear": timed(linear_flops),
                "conv_transpose2x2_patches": timed(deconv_flops)}
    patched = [(m, name, getattr(m, name)) for m in (backbone, fpn, rpn, box_head, mask_head) for name in wrappers
               if hasattr(m, name)]
    for m, name, fn in patched:
        setattr(m, name, wrappers[name](fn))
    try:
        run(image)
    finally:
        for m, name, fn in patched:
            setattr(m, name, fn)
    # The machine's rate is the best it reaches: on a shared machine one set of samples can fall into a busy spell
    # (2026-12-02, a 2-core Zen 4 VM: 107 GFLOP/s in one run, 185-200 in the others, which made end to end look
    # 0.52x the direct-GEMM time instead of ~0.9x), so the best of the samples before and after the timed pass
    square = max(square, _matmul_gflops(MATMUL_SIDE, MATMUL_SIDE, MATMUL_SIDE))
    m_, k_, n_ = largest[1]
    return {"kinds": kinds, "matmul_square_gflops": square, "matmul_shape": [m_, k_, n_],
            "matmul_gflops": _matmul_gflops(m_, k_, n_), "threads": threads}


def _matmul_gflops(m_, k_, n_, repeats=5) -> float:
    """Best of `repeats` float32 products (m, k) @ (k, n) into a preallocated output, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = rng.random((m_, k_), dtype=np.float32), rng.random((k_, n_), dtype=np.float32)
    c = np.empty((m_, n_), np.float32)
    np.matmul(a, b, out=c)                                                   # first touch of c, BLAS threads up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2 * m_ * k_ * n_ / min(times) / 1e9
