"""Speed and memory of minimaskrcnn against its peers on the same CPU cores (`minimaskrcnn bench`).

Peers: torchvision, and ONNX Runtime running torchvision's ONNX export of the same model (torch.onnx.export, the
TorchScript exporter, traced here at each benchmark size; the runtime a CPU user without PyTorch would pick). Our
worker runs with the malloc setting the `minimaskrcnn` command sets for itself (`nn/workspace.reuse_freed_memory`:
freed feature maps are reused instead of returned to the kernel); "torchvision+mallopt", torchvision in a process with
that same setting, shows how much of a difference is that setting rather than the arithmetic ("/ fastest" is
against the peers as their users run them, without it).

Method. Each peer runs in its own worker process (`bench_workers.py`), so that each one's peak resident memory is its
own. All load the same weights (a random-weight torchvision model saved once and converted: the same arithmetic as
the COCO checkpoint), get the same thread count (ours through `minimaskrcnn.set_num_threads`, torchvision through
torch.set_num_threads, ONNX Runtime through SessionOptions.intra_op_num_threads; the peers also through the OMP /
MKL / OpenBLAS variables), and process the same image; the parent drives them in turn, A B C A B C ..., after one
warm-up run each, so that a noisy, shared machine slows all alike. It reports per size:

- median latency per peer and its ratio to the fastest peer; peak RSS and its ratio to torchvision's;
- the stage breakdown (our trace timings; torchvision's from forward hooks; ONNX Runtime has none);
- the "direct-GEMM time": the direct-method FLOPs of every convolution and fully connected layer divided by the
  float32 matmul rate (a 2048^3 product) measured in our worker, and the ratio of our end-to-end time to it;
- the BLAS library and kernel each worker actually runs (threadpoolctl's threadpool_info: internal_api, version,
  architecture, num_threads), with a warning when OPENBLAS_CORETYPE forces a kernel (`--native-blas` starts the
  workers without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE; the benchmark command only, never tests or CI);

then the start-up of a fresh process with no Numba cache (NUMBA_CACHE_DIR pointed at an empty directory: every
kernel compiled) and with a warm one; with `--fresh-install`, of a real one: the checkout built into a wheel by pip
(which compiles the kernels into it, `minimaskrcnn/precompile.py`) and installed into a new virtual environment. On
request (`--throughput N`) images per second of one T-thread process
against T 1-thread processes running at the same time. Speed is never asserted by a test; this prints ratios
measured in one run.

Requires torch and torchvision (and onnx + onnxruntime for that peer); minimaskrcnn itself never imports them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import numpy as np

from minimaskrcnn.crosscheck.bench_report import MALLOPT_PEER

# MALLOPT_PEER, torchvision+mallopt: torchvision in a process with the malloc setting our worker runs with, as the
# `minimaskrcnn` command does (nn/workspace.reuse_freed_memory); it shows how much of the difference is that setting
PEERS = ("minimaskrcnn", "torchvision", "onnxruntime", MALLOPT_PEER)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS")
FORCING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")     # OpenBLAS's kernel choice and cache-size overrides
CHECKOUT = Path(__file__).resolve().parents[2]          # the source tree, when installed from one (editable)
ONNX_OPSET = 11                                          # what torchvision's detection export is tested with


def worker_env(kind: str, threads: int, native_blas: bool, **extra) -> dict:
    """The environment of a worker: for ours no thread variables (set_num_threads must do it) and OpenBLAS's
    sleeping threads as the `minimaskrcnn` command has them, the usual thread variables for the peers; without the
    OpenBLAS kernel overrides when native_blas."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES and not (native_blas and k in FORCING)}
    if kind != "minimaskrcnn":
        env.update({k: str(threads) for k in THREAD_VARIABLES})
    else:                                   # as the `minimaskrcnn` command sets it for itself (nn/threads.py)
        from minimaskrcnn.nn.threads import BLAS_SLEEP_VARIABLES
        env = {**BLAS_SLEEP_VARIABLES, **env}
    env.update(extra)
    return env


class Worker:
    def __init__(self, kind, weights, threads, image_path, onnx_path="", native_blas=False):
        from minimaskrcnn.crosscheck import bench_workers  # noqa: F401  (fails here, not in the child, if broken)
        code = (f"from minimaskrcnn.crosscheck.bench_workers import worker; "
                f"worker({kind!r}, {str(weights)!r}, {threads}, {image_path!r}, {str(onnx_path)!r})")
        self.kind = kind
        self.p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=worker_env(kind, threads, native_blas))
        self._read()

    def _read(self):
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.kind} died (see its stderr above)")
        return json.loads(line)

    def send(self, request="run"):
        self.p.stdin.write(request + "\n")
        self.p.stdin.flush()

    def ask(self, request="run"):
        self.send(request)
        return self._read()

    def close(self):
        rss = self.ask("quit")["maxrss_mb"]
        self.p.wait()
        return rss


def export_onnx(weights, image, path) -> Path:
    """torchvision's model with `weights`, exported by torch.onnx.export (TorchScript tracer) on `image`."""
    import warnings
    import torch
    from weights_convert import read_npz
    from minimaskrcnn.crosscheck.torch_trace import torchvision_model
    cfg, sd = read_npz(weights)
    model = torchvision_model(cfg, sd)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")                                      # the tracer's TracerWarnings
        torch.onnx.export(model, ([x],), str(path), opset_version=ONNX_OPSET, dynamo=False, input_names=["images"])
    return Path(path)


def bench_size(weights, image, threads, repeats, tmp, peers=PEERS, native_blas=False):
    """Interleaved runs of every peer on one image; returns a result dict."""
    h, w = image.shape[:2]
    path = str(Path(tmp) / f"image-{h}x{w}.npy")
    np.save(path, image)
    onnx_path = export_onnx(weights, image, Path(tmp) / f"tv-{h}x{w}.onnx") if "onnxruntime" in peers else ""
    workers = {k: Worker(k, weights, threads, path, onnx_path, native_blas) for k in peers}
    runs = {k: [] for k in workers}
    for w_ in workers.values():
        w_.ask()                                                             # warm-up (Numba, allocator, caches)
    for _ in range(repeats):
        for k, w_ in workers.items():
            runs[k].append(w_.ask())
    blas = {k: w_.ask("blas") for k, w_ in workers.items()}
    rss = {k: w_.ask("rss")["maxrss_mb"] for k, w_ in workers.items()}     # the inference's peak, before `flops`
    flops = workers["minimaskrcnn"].ask("flops") if "minimaskrcnn" in workers else None
    for w_ in workers.values():
        w_.close()
    result = {"size": [h, w], "rss_mb": rss, "flops": flops, "blas": blas}
    for k, rs in runs.items():
        result[k] = {"median": float(np.median([r["latency"] for r in rs])), "detections": rs[-1]["detections"],
                     "cpu": float(np.median([r["cpu"] for r in rs])),
                     "stages": {s: float(np.median([r["stages"].get(s, 0.0) for r in rs])) for s in rs[0]["stages"]}}
    return result


def throughput(weights, image, threads, n_images, tmp, native_blas=False) -> dict:
    """Images per second of minimaskrcnn: one `threads`-thread process on n_images, against `threads` 1-thread
    processes given n_images / threads each at the same time (each after its own warm-up)."""
    path = str(Path(tmp) / "throughput.npy")
    np.save(path, image)
    out = {}
    for label, n_workers, per_worker in ((f"1 process x {threads} threads", 1, threads),
                                         (f"{threads} processes x 1 thread", threads, 1)):
        workers = [Worker("minimaskrcnn", weights, per_worker, path, native_blas=native_blas) for _ in range(n_workers)]
        for w_ in workers:
            w_.send()
        for w_ in workers:
            w_._read()                                                       # warm-ups, concurrently
        rounds = max(1, n_images // n_workers)
        t0 = time.perf_counter()
        for _ in range(rounds):
            for w_ in workers:
                w_.send()
            for w_ in workers:
                w_._read()
        seconds = time.perf_counter() - t0
        blas = workers[0].ask("blas")
        rss = [w_.close() for w_ in workers]
        out[label] = {"images": rounds * n_workers, "seconds": seconds, "images_per_s": rounds * n_workers / seconds,
                      "rss_mb": rss, "blas": blas}
    return out


STARTUP = ("import time; t0 = time.perf_counter(); import numpy as np, minimaskrcnn; from minimaskrcnn import model;"
           "t1 = time.perf_counter(); m = minimaskrcnn.load(%r); t2 = time.perf_counter();"
           "m.predict(np.load(%r)); t3 = time.perf_counter(); from minimaskrcnn.precompile import cache_misses;"
           "print(t1 - t0, t2 - t1, t3 - t2, sum(cache_misses().values()))")


def startup(weights, image, tmp, native_blas=False):
    """A fresh process: import, load the weights, first result; with no Numba cache at all (NUMBA_CACHE_DIR pointed at
    an empty directory: what an install without compiled kernels runs, e.g. an editable one), then with the cache that
    run left. The thread variables are left as the caller's environment has them."""
    env = {k: v for k, v in os.environ.items() if not (native_blas and k in FORCING)}
    env["NUMBA_CACHE_DIR"] = str(Path(tmp) / "numba-cache")
    return _first_results(weights, image, tmp, sys.executable, env, ("no cache", "warm cache"))


def fresh_install(weights, image, tmp, native_blas=False):
    """A real fresh install (`build_and_install`), then two fresh processes in it. Needs the checkout (setup.py
    beside the package) and pip's access to numpy, numba and pillow."""
    _, python, built = build_and_install(CHECKOUT, tmp)
    env = {k: v for k, v in os.environ.items()
           if not (native_blas and k in FORCING) and k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    out = _first_results(weights, image, tmp, python, env, ("fresh install", "fresh install, second run"))
    out["fresh install"]["wheel_build"] = built
    return out


def build_and_install(checkout, tmp) -> tuple:
    """(wheel, python, seconds of the build): `checkout` built into a wheel by pip (in pip's isolated build
    environment, where setup.py compiles the Numba kernels into it: minimaskrcnn/precompile.py) and installed into a
    new virtual environment under `tmp`, whose `python` is returned. A failing step raises RuntimeError with pip's
    last output."""
    wheels, env_dir = Path(tmp) / "wheels", Path(tmp) / "fresh-venv"
    t0 = time.perf_counter()
    _pip([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(checkout), "-w", str(wheels)], tmp)
    built = time.perf_counter() - t0
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    wheel = next(wheels.glob("minimaskrcnn-*.whl"))
    _pip([python, "-m", "pip", "install", "-q", str(wheel)], tmp)
    return wheel, python, built


def _pip(command, cwd):
    res = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=1800)
    if res.returncode:
        raise RuntimeError(f"{' '.join(command[2:4])} failed: {res.stderr[-3000:]}")


def _first_results(weights, image, tmp, python, env, labels) -> dict:
    path = str(Path(tmp) / "startup.npy")
    np.save(path, image)
    out = {}
    for label in labels:
        t0 = time.perf_counter()
        res = subprocess.run([python, "-c", STARTUP % (str(weights), path)], env=env, cwd=tmp, capture_output=True,
                             text=True, check=True)
        total = time.perf_counter() - t0
        imp, load, first, compiled = res.stdout.split()
        out[label] = {"process": total, "import": float(imp), "load_weights": float(load),
                      "first_predict": float(first), "compiled_signatures": int(compiled)}
    return out


def native_kernel(native_blas: bool) -> str:
    """The OpenBLAS kernel NumPy would pick here without OPENBLAS_CORETYPE (asked in a fresh process)."""
    env = {k: v for k, v in os.environ.items() if k not in FORCING}
    code = ("import numpy; from minimaskrcnn.nn.threads import blas_pools; "
            "print(' '.join(p.get('corename', p['api']) for p in blas_pools()) or '?')")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return res.stdout.strip() or "?"


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
    root = CHECKOUT
    for p in (root / "examples" / "dog.jpg", root.parent / "shared" / "images" / "dog.jpg"):
        if p.exists():
            im = Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR)
            return np.asarray(im, np.float32) / 255.0
    rng = np.random.default_rng(0)
    return rng.random((h, w, 3), dtype=np.float32)


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("numpy", "numba", "scipy", "torch", "torchvision", "onnxruntime", "threadpoolctl"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "-"
    return out


def run(sizes, threads: int, repeats: int, v2: bool = False, json_path=None, peers=PEERS, native_blas=False,
        throughput_images=0, install=False) -> int:
    """Benchmark every (h, w) of `sizes`; print the report (and write the raw results to `json_path`)."""
    from minimaskrcnn.crosscheck.bench_report import report
    forced = {k: os.environ[k] for k in FORCING if k in os.environ and not native_blas}
    if forced:
        print(f"warning: {', '.join(f'{k}={v}' for k, v in forced.items())} forces OpenBLAS's kernel choice in every "
              f"worker (without it this CPU gets: {native_kernel(native_blas)}); --native-blas runs them without",
              file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_weights(tmp, v2)
        results = [bench_size(weights, test_image(h, w), threads, repeats, tmp, peers, native_blas) for h, w in sizes]
        start = startup(weights, test_image(*sizes[0]), tmp, native_blas)
        if install:
            start.update(fresh_install(weights, test_image(*sizes[0]), tmp, native_blas))
        tput = (throughput(weights, test_image(*sizes[0]), threads, throughput_images, tmp, native_blas)
                if throughput_images else None)
    raw = {"date": time.strftime("%Y-%m-%d"), "threads": threads, "versions": versions(), "forced": forced,
           "results": results, "startup": start, "throughput": tput}
    print(report(raw))
    if json_path:
        Path(json_path).write_text(json.dumps(raw, indent=1))
    return 0
