"""Speed and memory of minimaskrcnn against torchvision on the same CPU cores (`minimaskrcnn bench`).

Method. Each implementation runs in its own worker process, so that each one's peak resident memory is its own.
Both load the same weights (a random-weight torchvision model saved once and converted; the same arithmetic as the
COCO checkpoint), get the same thread count, and process the same image; the parent drives them alternately,
A B A B ..., after one warm-up run each, so that a noisy, shared machine slows both alike. It reports medians, the
ratio, a per-stage breakdown (our trace timings; torchvision's from forward hooks), peak RSS, the arithmetic rate of
our convolutions in one extra pass against a plain float32 matrix product measured in the same process, and the
start-up costs
of a fresh process with an empty and with a warm Numba cache. Speed is never asserted by a test; this prints
ratios measured in one run.

Requires torch and torchvision (the comparison's other side); minimaskrcnn itself never imports them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = ((480, 640), (800, 1333))
TV_STAGES = (("backbone", "backbone.body"), ("fpn", "backbone.fpn"), ("rpn", "rpn"),
             ("box_branch", "roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor"),
             ("mask_branch", "roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor"))


# --- workers (run in child processes) -----------------------------------------------------------------------------

def _worker(kind: str, weights: str, threads: int, image_path: str):
    """Serve 'run' requests on stdin with one JSON line each on stdout; 'quit' reports peak RSS."""
    import resource
    image = np.load(image_path)                                              # (H, W, 3) float32 in [0, 1]
    if kind == "torchvision":
        run = _torchvision_runner(weights, threads)
    else:
        run = _minimaskrcnn_runner(weights, threads)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        if line.strip() == "convs":
            print(json.dumps(_convolution_rates(run, image)), flush=True)
            continue
        t0 = time.perf_counter()
        stages, n = run(image)
        print(json.dumps({"latency": time.perf_counter() - t0, "stages": stages, "detections": n}), flush=True)
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def _minimaskrcnn_runner(weights, threads):
    import numba
    numba.set_num_threads(threads)
    import minimaskrcnn
    model = minimaskrcnn.load(weights)

    def run(image):
        det, trace = model.predict(image, trace=True)
        return dict(trace.timings), len(det)
    return run


def _convolution_rates(run, image):
    """One more forward pass with every convolution timed: per kind (Winograd 3x3, im2col, 1x1) the direct-method
    FLOPs (2 C' C k^2 H' W' per image or RoI batch, what the layer computes whatever the algorithm) and seconds; and,
    in the same process, the rate of a plain float32 matrix product of the largest convolution's im2col GEMM."""
    from minimaskrcnn.stages import backbone, box_head, fpn, mask_head, rpn
    kinds, largest = {}, (0, None)

    def timed(fn):
        def wrapper(x, conv, *args, **kwargs):
            t0 = time.perf_counter()
            y = fn(x, conv, *args, **kwargs)
            seconds = time.perf_counter() - t0
            c_out, positions = conv.out_channels, y.size // conv.out_channels
            flops = 2 * c_out * conv.in_channels * conv.kernel ** 2 * positions
            kind = "3x3 Winograd" if conv.winograd else "1x1" if conv.kernel == 1 else "im2col"
            total = kinds.setdefault(kind, [0.0, 0.0])
            total[0], total[1] = total[0] + flops, total[1] + seconds
            nonlocal largest
            largest = max(largest, (flops, (c_out, conv.in_channels * conv.kernel ** 2, positions)), key=lambda v: v[0])
            return y
        return wrapper

    patched = [(m, name, getattr(m, name)) for m in (backbone, fpn, rpn, box_head, mask_head) for name in ("conv2d", "conv2d_rois")
               if hasattr(m, name)]
    for m, name, fn in patched:
        setattr(m, name, timed(fn))
    try:
        run(image)
    finally:
        for m, name, fn in patched:
            setattr(m, name, fn)
    m_, k_, n_ = largest[1]
    rng = np.random.default_rng(0)
    a, b = rng.random((m_, k_), dtype=np.float32), rng.random((k_, n_), dtype=np.float32)
    c = np.empty((m_, n_), np.float32)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return {"kinds": kinds, "matmul_shape": [m_, k_, n_], "matmul_gflops": 2 * m_ * k_ * n_ / min(times) / 1e9}


def _torchvision_runner(weights, threads):
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


# --- driver ---------------------------------------------------------------------------------------------------------

class Worker:
    def __init__(self, kind, weights, threads, image_path):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   NUMBA_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        code = f"from minimaskrcnn.crosscheck.bench import _worker; _worker({kind!r}, {str(weights)!r}, {threads}, {image_path!r})"
        self.p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=env)
        self._read()

    def _read(self):
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("benchmark worker died (see its stderr above)")
        return json.loads(line)

    def run(self):
        self.p.stdin.write("run\n")
        self.p.stdin.flush()
        return self._read()

    def close(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        rss = self._read()["maxrss_mb"]
        self.p.wait()
        return rss


def bench_size(weights, image, threads, repeats, tmp):
    """Interleaved runs of both implementations on one image; returns a result dict."""
    path = str(Path(tmp) / f"image-{image.shape[0]}x{image.shape[1]}.npy")
    np.save(path, image)
    workers = {k: Worker(k, weights, threads, path) for k in ("minimaskrcnn", "torchvision")}
    runs = {k: [] for k in workers}
    for k, w in workers.items():
        w.run()                                                              # warm-up (Numba, allocator, caches)
    for _ in range(repeats):
        for k, w in workers.items():
            runs[k].append(w.run())
    w = workers["minimaskrcnn"]
    w.p.stdin.write("convs\n")
    w.p.stdin.flush()
    convs = w._read()
    rss = {k: w.close() for k, w in workers.items()}
    result = {"size": image.shape[:2], "rss_mb": rss, "convolutions": convs}
    for k, rs in runs.items():
        result[k] = {"median": float(np.median([r["latency"] for r in rs])),
                     "detections": rs[-1]["detections"],
                     "stages": {s: float(np.median([r["stages"].get(s, 0.0) for r in rs]))
                                for s in rs[0]["stages"]}}
    return result


def startup(weights, image, tmp):
    """A fresh process: import, load the weights, first result; with an empty, then a warm Numba cache."""
    path = str(Path(tmp) / "startup.npy")
    np.save(path, image)
    code = ("import time; t0 = time.perf_counter(); import numpy as np, minimaskrcnn; from minimaskrcnn import model;"
            "t1 = time.perf_counter(); m = minimaskrcnn.load(%r); t2 = time.perf_counter();"
            "m.predict(np.load(%r)); t3 = time.perf_counter();"
            "print(t1 - t0, t2 - t1, t3 - t2)") % (str(weights), path)
    cache = Path(tmp) / "numba-cache"
    out = {}
    for label in ("empty cache", "warm cache"):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        total = time.perf_counter() - t0
        imp, load, first = (float(v) for v in res.stdout.split())
        out[label] = {"process": total, "import": imp, "load_weights": load, "first_predict": first}
    return out


def make_weights(tmp, arch_v2=False, seed=0):
    """A random-weight torchvision ResNet-50 FPN Mask R-CNN, saved by torch and converted (COCO-sized)."""
    import torch
    from torchvision.models import detection as D
    from weights_convert import convert
    torch.manual_seed(seed)
    build = D.maskrcnn_resnet50_fpn_v2 if arch_v2 else D.maskrcnn_resnet50_fpn
    model = build(weights=None, weights_backbone=None)
    pth = Path(tmp) / ("maskrcnn_v2.pth" if arch_v2 else "maskrcnn.pth")
    torch.save(model.state_dict(), pth)
    return convert(pth, pth.with_suffix(".npz"), source_name=pth.name)


def test_image(h, w):
    """A real photo (examples/dog.jpg or ../shared/images/dog.jpg) resized to (h, w), float32 in [0, 1]."""
    from PIL import Image
    root = Path(__file__).resolve().parent.parent
    for p in (root / "examples" / "dog.jpg", root.parent / "shared" / "images" / "dog.jpg"):
        if p.exists():
            im = Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR)
            return np.asarray(im, np.float32) / 255.0
    rng = np.random.default_rng(0)
    return rng.random((h, w, 3), dtype=np.float32)


def report(results, start, threads) -> str:
    import platform
    lines = [f"minimaskrcnn vs torchvision, {threads} thread(s), {platform.processor() or platform.machine()}, "
             f"{time.strftime('%Y-%m-%d')}", ""]
    for r in results:
        a, b = r["minimaskrcnn"], r["torchvision"]
        h, w = r["size"]
        lines.append(f"input {h}x{w}: minimaskrcnn {a['median']:.3f} s, torchvision {b['median']:.3f} s, "
                     f"ratio {a['median'] / b['median']:.2f}  (detections {a['detections']} / {b['detections']})")
        lines.append(f"  peak RSS: minimaskrcnn {r['rss_mb']['minimaskrcnn']:.0f} MB, "
                     f"torchvision {r['rss_mb']['torchvision']:.0f} MB")
        lines.append(f"  {'stage':<14}{'ours s':>9}{'tv s':>9}{'ratio':>8}")
        for stage in a["stages"]:
            sa, sb = a["stages"][stage], b["stages"].get(stage)
            ratio = f"{sa / sb:8.2f}" if sb else f"{'-':>8}"
            tv = f"{sb:9.3f}" if sb else f"{'-':>9}"
            lines.append(f"  {stage:<14}{sa:9.3f}{tv}{ratio}")
        c = r["convolutions"]
        flops, seconds = (sum(v[i] for v in c["kinds"].values()) for i in (0, 1))
        m_, k_, n_ = c["matmul_shape"]
        lines.append(f"  convolutions: {flops / 1e9:.0f} GFLOP (direct method) in {seconds:.3f} s = "
                     f"{flops / seconds / 1e9:.0f} GFLOP/s; plain float32 matmul {m_}x{k_} @ {k_}x{n_}: "
                     f"{c['matmul_gflops']:.0f} GFLOP/s (ratio {flops / seconds / 1e9 / c['matmul_gflops']:.2f})")
        lines.append("    " + ", ".join(f"{kind} {f / 1e9:.0f} GFLOP in {t:.3f} s = {f / t / 1e9:.0f} GFLOP/s"
                                        for kind, (f, t) in sorted(c["kinds"].items())))
        lines.append("")
    for label, s in start.items():
        lines.append(f"fresh process, {label}: {s['process']:.2f} s total (import {s['import']:.2f} s, load weights "
                     f"{s['load_weights']:.2f} s, first predict {s['first_predict']:.2f} s)")
    return "\n".join(lines)


def run(sizes, threads: int, repeats: int, v2: bool = False, json_path=None) -> int:
    """Benchmark every (h, w) of `sizes`; print the report (and write the raw results to `json_path`)."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_weights(tmp, v2)
        results = [bench_size(weights, test_image(h, w), threads, repeats, tmp) for h, w in sizes]
        start = startup(weights, test_image(*sizes[0]), tmp)
    print(report(results, start, threads))
    if json_path:
        Path(json_path).write_text(json.dumps({"results": results, "startup": start}, indent=1))
    return 0
