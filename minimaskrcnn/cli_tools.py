"""`minimaskrcnn demo` (the built-in shapes model, offline) and `minimaskrcnn bench` (speed against torchvision).

Like the rest of the CLI, heavy modules are imported inside the command functions, after `--threads` is applied.
"""
from __future__ import annotations

import os
import time
from collections import Counter

from .cli import JSON_NAME, PROG, UsageError, _fraction, _objects_line, _positive, _prepare_outdir, _summary


def add_tool_commands(sub, formatter_class) -> None:
    """Add the demo and bench subparsers to `sub` (argparse subparsers of the main parser)."""
    demo = sub.add_parser("demo", formatter_class=formatter_class, epilog=DEMO_EPILOG,
                          help="segment synthetic shapes with the built-in model (offline, nothing to download)",
                          description="Draw synthetic images of circles, squares and triangles and segment them with "
                                      "the small model that ships with minimaskrcnn.")
    demo.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    demo.add_argument("--n", type=_positive, default=4, metavar="N", help="number of images (default 4)")
    demo.add_argument("--seed", type=int, default=1, metavar="S",
                      help="which images: generator set S (default 1; set 0 is what the model was trained on)")
    demo.add_argument("--score-threshold", type=_fraction, default=0.5, metavar="S",
                      help="keep objects whose score is above S (default 0.5)")
    demo.add_argument("--threads", type=_positive, metavar="N", help="CPU threads for the network (default: all cores)")
    demo.add_argument("--quiet", "-q", action="store_true", help="no summary; errors only")
    demo.add_argument("--debug", action="store_true", help="show the traceback of an error")
    demo.set_defaults(func=cmd_demo)

    from .bench import arguments
    bench = sub.add_parser("bench", parents=[arguments()], formatter_class=formatter_class,
                           help="speed and memory against torchvision (needs torch and torchvision)",
                           description="Run minimaskrcnn and torchvision with the same weights, threads and images, "
                                       "alternately, and print latencies, ratios, stages, memory and start-up costs.",
                           epilog=f"examples:\n  {PROG} bench\n  {PROG} bench --threads 1 --sizes 480x640 --repeats 9")
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from .bench import run
    return run(args)


# --- demo -------------------------------------------------------------------------------------------------------------

DEMO_EPILOG = f"""The images come from minimaskrcnn.shapes (seeded: the same S gives the same images everywhere); the
model is minimaskrcnn/data/shapes_maskrcnn.npz, a small Mask R-CNN trained on such images in torchvision
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
    outdir = _prepare_outdir(args.output)
    import minimaskrcnn
    from . import outputs, shapes

    model = minimaskrcnn.load(shapes.shipped_model_path())
    results, found, drawn, seconds = [], Counter(), Counter(), 0.0
    for k in range(args.n):
        sample = shapes.make_sample(args.seed, k)
        t0 = time.perf_counter()
        det = model.predict(sample.image, score_threshold=args.score_threshold)
        seconds += time.perf_counter() - t0
        stem = f"shapes_{args.seed}_{k}"
        outputs.write_png(sample.image, os.path.join(outdir, f"{stem}.png"))
        outputs.write_png(outputs.render_overlay(sample.image, det), os.path.join(outdir, f"{stem}_overlay.png"))
        results.extend(outputs.coco_results(det, k + 1, f"{stem}.png"))
        found.update(det.label_names)
        drawn.update(shapes.CLASS_NAMES[label] for label in sample.labels)
    outputs.write_json(results, os.path.join(outdir, JSON_NAME))
    _summary([f"{args.n} synthetic images segmented with the built-in shapes model; {seconds / args.n:.2f} s per image",
              f"found {_objects_line(found)}", f"drawn {_objects_line(drawn)}", f"outputs in {outdir}"], args.quiet)
    return 0
