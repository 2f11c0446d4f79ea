"""`minimaskrcnn demo` (the built-in shapes model, offline) and `minimaskrcnn bench` (speed against torchvision
and ONNX Runtime).

Like the rest of the CLI, heavy modules are imported inside the command functions, after `--threads` is applied.
"""
from __future__ import annotations

import argparse
import os
import time
from collections import Counter

from minimaskrcnn.cli.options import FORMATTER, JSON_NAME, PROG, UsageError, fraction, positive, sizes
from minimaskrcnn.cli.steps import objects_line, prepare_outdir, summary


def add_commands(sub, general) -> None:
    """The demo and bench subparsers; `general` is the shared option parent (cli.options)."""
    demo = sub.add_parser("demo", parents=[general], formatter_class=FORMATTER, epilog=DEMO_EPILOG,
                          help="segment synthetic shapes with the built-in model (offline, nothing to download)",
                          description="Draw synthetic images of circles, squares and triangles and segment them with "
                                      "the small model that ships with minimaskrcnn.")
    demo.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    demo.add_argument("--n", type=positive, default=4, metavar="N", help="number of images (default 4)")
    demo.add_argument("--seed", type=int, default=1, metavar="S",
                      help="which images: generator set S (default 1; set 0 is what the model was trained on)")
    demo.add_argument("--score-threshold", type=fraction, default=0.5, metavar="S",
                      help="keep objects whose score is above S (default 0.5)")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", parents=[general], formatter_class=FORMATTER,
                           help="speed and memory against torchvision and ONNX Runtime (needs torch, torchvision, "
                                "onnx, onnxruntime)",
                           description="Run minimaskrcnn, torchvision and ONNX Runtime (torchvision's ONNX export) with "
                                       "the same weights, threads and images, in turn, and print latencies, ratios to "
                                       "the fastest, stages, memory, the BLAS kernel each one runs, the ratio to the "
                                       "direct-GEMM time and start-up costs.",
                           epilog=f"examples:\n  {PROG} bench\n  {PROG} bench --threads 1 --sizes 480x640 --repeats 9"
                                  f"\n  {PROG} bench --native-blas --throughput 8 --fresh-install")
    bench.add_argument("--repeats", type=positive, default=5, metavar="N",
                       help="timed runs of each, after one warm-up (default 5)")
    bench.add_argument("--sizes", type=sizes, default=sizes("480x640,800x1333"), metavar="HxW,...",
                       help="comma-separated input sizes (default 480x640,800x1333)")
    bench.add_argument("--peers", type=peers, default=PEERS, metavar="NAME,...",
                       help=f"which implementations, comma-separated (default {','.join(PEERS)})")
    bench.add_argument("--native-blas", action="store_true",
                       help="start the workers without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, so that OpenBLAS picks "
                            "its kernel for this CPU (the variables stay as they are for everything else)")
    bench.add_argument("--throughput", type=positive, default=0, metavar="N",
                       help="also: N images through one process with all threads, and through one 1-thread "
                            "process per thread at the same time (images per second)")
    bench.add_argument("--fresh-install", action="store_true",
                       help="also time the first result of a real fresh install: this checkout built into a wheel "
                            "by pip and installed into a new virtual environment (about a minute more)")
    bench.add_argument("--v2", action="store_true", help="benchmark maskrcnn_resnet50_fpn_v2")
    bench.add_argument("--json", metavar="FILE", help="also write the raw results here")
    bench.set_defaults(func=cmd_bench)


PEERS = ("minimaskrcnn", "torchvision", "onnxruntime", "torchvision+mallopt")   # as crosscheck/bench.py


def peers(text: str) -> tuple:
    """A comma-separated subset of PEERS, in PEERS' order."""
    names = {t.strip() for t in text.split(",") if t.strip()}
    unknown = sorted(names - set(PEERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(PEERS)}, got {text!r}")
    return tuple(p for p in PEERS if p in names)


def cmd_bench(args) -> int:
    """Needs torch and torchvision (and onnx + onnxruntime for that peer); --threads defaults to all cores."""
    import importlib.util
    needed = ["torch", "torchvision"] + (["onnx", "onnxruntime"] if "onnxruntime" in args.peers else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"bench needs {', '.join(missing)}: pip install '.[test]'"
                         + (" (or --peers minimaskrcnn,torchvision)" if "onnxruntime" in missing else ""))
    from minimaskrcnn.crosscheck.bench import CHECKOUT, run
    if args.fresh_install and not (CHECKOUT / "setup.py").is_file():
        raise UsageError(f"--fresh-install builds the package from its checkout, and {CHECKOUT} is not one "
                         "(no setup.py): run the bench from a source checkout's installation")
    return run(args.sizes, args.threads or os.cpu_count(), args.repeats, v2=args.v2, json_path=args.json,
               peers=args.peers, native_blas=args.native_blas, throughput_images=args.throughput,
               install=args.fresh_install)


# --- demo -------------------------------------------------------------------------------------------------------------

DEMO_EPILOG = f"""The images come from minimaskrcnn.demo.shapes (seeded: the same S gives the same images everywhere); the
model is minimaskrcnn/demo/data/shapes_maskrcnn.npz, a small Mask R-CNN trained on such images in torchvision
(examples/train_shapes.py). Outputs in OUTDIR, for image K = 0..N-1:
  shapes_S_K.png, shapes_S_K_overlay.png   the image, and the objects found drawn on it
  {JSON_NAME:<41}all detections in COCO results format (image id K + 1)

examples:
  {PROG} demo -o demo/
  {PROG} demo -o demo/ --n 8 --seed 3 --score-threshold 0.8"""


def cmd_demo(args) -> int:
    """Segment seeded synthetic shapes images with the shipped model; overlays and COCO JSON into OUTDIR."""
    if args.seed < 0:
        raise UsageError(f"--seed: expected an integer >= 0, got {args.seed}")
    outdir = prepare_outdir(args.output)
    import minimaskrcnn
    from minimaskrcnn.io.coco import coco_results
    from minimaskrcnn.io.files import write_json, write_png
    from minimaskrcnn.render.overlay import render_overlay
    from minimaskrcnn.demo import shapes

    model = minimaskrcnn.load(shapes.shipped_model_path())
    results, found, drawn, seconds = [], Counter(), Counter(), 0.0
    for k in range(args.n):
        sample = shapes.make_sample(args.seed, k)
        t0 = time.perf_counter()
        det = model.predict(sample.image, score_threshold=args.score_threshold)
        seconds += time.perf_counter() - t0
        stem = f"shapes_{args.seed}_{k}"
        write_png(sample.image, os.path.join(outdir, f"{stem}.png"))
        write_png(render_overlay(sample.image, det), os.path.join(outdir, f"{stem}_overlay.png"))
        results.extend(coco_results(det, k + 1, f"{stem}.png"))
        found.update(det.label_names)
        drawn.update(shapes.CLASS_NAMES[label] for label in sample.labels)
    write_json(results, os.path.join(outdir, JSON_NAME))
    summary([f"{args.n} synthetic images segmented with the built-in shapes model; {seconds / args.n:.2f} s per image",
              f"found {objects_line(found)}", f"drawn {objects_line(drawn)}", f"outputs in {outdir}"], args.quiet)
    return 0
