"""Images per second of `segment`'s work (read, detect, render every picture, PNG-encode) three ways, in one run:

  1. one process with 2 threads (Numba and BLAS), the images one after another;
  2. a local Dask cluster of two single-threaded worker processes (`segment --workers 2`, the API underneath),
     the client writing the files' bytes;
  3. one single-threaded worker against this process with 1 thread: the distributed path's overhead per image
     (sending the bytes, scheduling, returning RLE + PNG bytes, writing them).

It also prints what travels per image, and what re-rendering the pictures on the client from the RLE would cost
there (the alternative to rendering on the workers, distributed/tasks.py). The four runs alternate for --rounds
rounds and the fastest round of each is reported: on a shared machine, read the ratios of one run, not the seconds.

    python benchmarks/bench_distributed.py [--weights FILE] [--repeat N] [--rounds R] [--score-threshold S]
"""
import argparse
import glob
import logging
import os
import pickle
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEMO = os.path.join(ROOT, "minimaskrcnn", "demo", "data", "shapes_maskrcnn.npz")
PHOTOS = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "images", "*")))


def in_process(model, paths, threshold, pictures, threads: int) -> float:
    """Seconds for the whole list in this process with `threads` threads."""
    import numba
    from threadpoolctl import threadpool_limits
    from minimaskrcnn.image import read_image
    from minimaskrcnn.io.coco import coco_results
    from minimaskrcnn.render.outputs import write_image_outputs
    numba.set_num_threads(threads)
    with threadpool_limits(limits=threads, user_api="blas"), tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        for k, p in enumerate(paths):
            image = read_image(p)
            det = model.predict(image, score_threshold=threshold)
            write_image_outputs(out, f"i{k}", image, det, pictures)
            coco_results(det, k, os.path.basename(p), pictures.mask_threshold)
        return time.perf_counter() - t0


def on_cluster(client, paths, weights, threshold, pictures) -> tuple:
    """(seconds, results) for the whole list on the cluster, the files written here as the CLI does."""
    import minimaskrcnn.distributed as mdist
    results = []
    with tempfile.TemporaryDirectory() as out:
        list(mdist.segment(client, paths[:1], weights, score_threshold=threshold, pictures=pictures))  # load, warm
        t0 = time.perf_counter()
        for r in mdist.segment(client, paths, weights, score_threshold=threshold, pictures=pictures):
            for name, data in r.files.items():
                with open(os.path.join(out, f"{r.index}-{name}"), "wb") as f:
                    f.write(data)
            results.append(r)
        return time.perf_counter() - t0, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=DEMO)
    ap.add_argument("--repeat", type=int, default=2, help="each of ../shared/images this many times (default 2)")
    ap.add_argument("--score-threshold", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the fastest of each is reported")
    args = ap.parse_args()
    import distributed
    import threadpoolctl
    import minimaskrcnn
    from minimaskrcnn.render.outputs import Pictures
    paths = PHOTOS * args.repeat
    pictures = Pictures(0.5, cutouts=True, semantic=True, instances=True)
    model = minimaskrcnn.load(args.weights)
    in_process(model, paths[:2], args.score_threshold, pictures, 2)                     # compile, warm the caches
    blas = [(i["internal_api"], i.get("architecture"), i["version"]) for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"]
    print(f"{time.strftime('%Y-%m-%d')}  {len(paths)} images ({len(PHOTOS)} photos x {args.repeat}), "
          f"{os.path.basename(args.weights)}, every picture; BLAS {blas}; {os.cpu_count()} cores")

    kw = dict(threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
              silence_logs=logging.ERROR)
    times = {"p2": [], "w2": [], "p1": [], "w1": []}
    with distributed.LocalCluster(n_workers=2, **kw) as c2, distributed.Client(c2) as two, \
            distributed.LocalCluster(n_workers=1, **kw) as c1, distributed.Client(c1) as one:
        for _ in range(args.rounds):                                 # alternating, so that load bursts hit all
            times["p2"].append(in_process(model, paths, args.score_threshold, pictures, 2))
            t, results = on_cluster(two, paths, args.weights, args.score_threshold, pictures)
            times["w2"].append(t)
            times["p1"].append(in_process(model, paths, args.score_threshold, pictures, 1))
            times["w1"].append(on_cluster(one, paths, args.weights, args.score_threshold, pictures)[0])
    print("seconds per round: " + "; ".join(f"{k} " + " ".join(f"{x:.1f}" for x in v) for k, v in times.items()))
    t2, tw2, t1, tw1 = (min(times[k]) for k in ("p2", "w2", "p1", "w1"))   # the least disturbed round of each
    n = len(paths)
    print(f"one process, 2 threads        {n / t2:6.2f} images/s  ({t2 / n:.3f} s per image)")
    print(f"two 1-thread local workers    {n / tw2:6.2f} images/s  ({tw2 / n:.3f} s per image)  "
          f"= {t2 / tw2:.2f}x the 2-thread process")
    print(f"one process, 1 thread         {n / t1:6.2f} images/s;  one 1-thread worker {n / tw1:6.2f} images/s: "
          f"distributed overhead {(tw1 - t1) / n * 1000:+.0f} ms per image ({(tw1 / t1 - 1) * 100:+.1f}%)")

    sent = sum(os.path.getsize(p) for p in paths) / n
    pngs = sum(sum(len(b) for b in r.files.values()) for r in results) / n
    rest = sum(len(pickle.dumps((r.entries, r.boxes, r.labels, r.scores))) for r in results) / n
    dense = sum(len(r.entries) * r.image_size[0] * r.image_size[1] * 4 for r in results) / n
    print(f"per image: {sent / 1e3:.0f} kB of input sent; back {rest / 1e3:.1f} kB of detections with RLE masks "
          f"(dense float32 masks would be {dense / 1e6:.1f} MB) + {pngs / 1e3:.0f} kB of PNG files")

    from minimaskrcnn.image import read_image
    from minimaskrcnn.render.outputs import write_image_outputs
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        for r in results:
            if r.error is None:
                write_image_outputs(out, f"i{r.index}", read_image(paths[r.index]), r.detections(), pictures)
        rerender = (time.perf_counter() - t0) / n
    print(f"re-rendering every picture on the client from the RLE instead: {rerender * 1000:.0f} ms of the client's "
          f"time per image (it writes bytes only now)")


if __name__ == "__main__":
    main()
