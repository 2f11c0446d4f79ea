"""The study subcommands of `minimaskrcnn`: `trace`, `compare` and `explain` (registered by `cli.main.build_parser`).

    minimaskrcnn trace photo.jpg -o ours.npz --weights model.npz                  every intermediate, as .npz
    minimaskrcnn trace photo.jpg -o tv.npz --weights model.npz --torchvision      the same from torchvision
    minimaskrcnn compare tv.npz ours.npz                                          stage by stage; exit 1 if beyond
    minimaskrcnn explain photo.jpg -o study/ --weights model.npz                 a picture per stage + index.html

Like the rest of the CLI, heavy modules are imported inside the command functions, after `--threads` is applied.
"""
from __future__ import annotations

import argparse
import os
import re

from minimaskrcnn.cli.options import (FORMATTER, PROG, UsageError, fraction, load_options, positive,
                                      weights_option)
from minimaskrcnn.cli.steps import prepare_outdir

TRACE_EPILOG = f"""The .npz holds one array per stage under its trace name (normalized, P2, proposals, boxes, masks,
...) and a JSON "_meta" entry; docs/trace_format.md describes the layout, so that any implementation can write one.
--torchvision builds torchvision's model from the same weights and records its intermediates through hooks
(needs torch and torchvision; never needed otherwise).

examples:
  {PROG} trace photo.jpg -o ours.npz --weights model.npz
  {PROG} trace photo.jpg -o tv.npz --weights model.npz --torchvision"""

COMPARE_EPILOG = f"""A is the reference: relative errors are relative to max |A| of each stage. Feature maps and head
outputs are compared elementwise; proposals and detections as sets (pairs of equal label and box IoU above
--match-iou, since near-equal scores swap order), and the per-proposal / per-detection stages along those pairs.
Stages missing on either side are listed. Exit status 0 when every checked stage is within tolerance, 1 otherwise.

default tolerances (facts §10.4; "rel" = relative to max |A|):
  image 0, image_size 0, anchors 0 (bitwise)        normalized 4.4e-3 (resize)  C*, P* maps: rel 1e-3
  objectness 5e-3        rpn_deltas 5e-4             class_logits, box_deltas 2e-3    box_features: rel 1e-3
  proposals / boxes: >= 98% matched (.matched), box diff 0.1 px      proposal_scores / scores 3e-3
  roi_levels: 2% of matched proposals on another level               mask_features: rel 1e-3
  mask_logits 3e-3       mask_probs 7.5e-4           final_boxes 0.1 px
  masks: >= 95% of matched instances with binarized IoU >= 0.97 (masks.iou)

examples:
  {PROG} compare tv.npz ours.npz
  {PROG} compare tv.npz mine.npz --tolerance P=2e-3 objectness=1e-2 boxes.matched=0.95"""

EXPLAIN_EPILOG = f"""OUTDIR receives 01_input.png ... 10_result.png (one per stage) and index.html, which walks through
them with each stage's shapes, value ranges, time, and what it does with the paper it comes from.

examples:
  {PROG} explain photo.jpg -o study/ --weights model.npz
  {PROG} explain photo.jpg -o study/ --anchor-location P4:20,30 --proposals 100 --score-threshold 0.8"""


def add_commands(sub, general) -> None:
    """The trace, compare and explain subparsers; `general` is the shared option parent (cli.options)."""
    weights = argparse.ArgumentParser(add_help=False)
    weights_option(weights)

    tr = sub.add_parser("trace", parents=[weights, general], formatter_class=FORMATTER, epilog=TRACE_EPILOG,
                        help="save every intermediate of one image as .npz",
                        description="Run one image and save every named intermediate (the trace) as .npz.")
    tr.add_argument("input", metavar="IMAGE", help="image file")
    tr.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="trace file to write")
    tr.add_argument("--torchvision", action="store_true", help="capture torchvision's intermediates instead")
    tr.add_argument("--compress", action="store_true", help="zlib-compress the .npz (about half the size, slower)")
    tr.add_argument("--score-threshold", type=fraction, metavar="S",
                    help="detection score threshold (default the model's, 0.05 as torchvision)")
    tr.set_defaults(func=cmd_trace)

    co = sub.add_parser("compare", parents=[general], formatter_class=FORMATTER, epilog=COMPARE_EPILOG,
                        help="compare two traces stage by stage",
                        description="Compare two trace files stage by stage: shapes, errors, matching statistics.")
    co.add_argument("reference", metavar="A", help="reference trace (.npz)")
    co.add_argument("candidate", metavar="B", help="trace to check against A (.npz)")
    co.add_argument("--tolerance", nargs="+", action="extend", default=[], metavar="STAGE=VALUE",
                    help="override a tolerance: STAGE=VALUE or STAGE.CHECK=VALUE (see below)")
    co.add_argument("--match-iou", type=fraction, default=0.99, metavar="IOU",
                    help="box IoU a matched pair must exceed (default 0.99)")
    co.set_defaults(func=cmd_compare)

    ex = sub.add_parser("explain", parents=[weights, general], formatter_class=FORMATTER, epilog=EXPLAIN_EPILOG,
                        help="a picture of every stage and an index.html",
                        description="Pictures of every stage of Mask R-CNN on one image, with an index.html.")
    ex.add_argument("input", metavar="IMAGE", help="image file")
    ex.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    ex.add_argument("--anchor-location", metavar="Y,X|LEVEL:ROW,COL",
                    help="where to show the anchors: original-image pixels, or a cell such as P4:20,30 "
                         "(default: the image centre)")
    ex.add_argument("--proposals", type=positive, default=50, metavar="N", help="proposals to draw (default 50)")
    ex.add_argument("--detections", type=positive, default=12, metavar="K",
                    help="detections shown in the refinement and mask pictures (default 12)")
    ex.add_argument("--score-threshold", type=fraction, default=0.5, metavar="S",
                    help="keep detections whose score is above S (default 0.5)")
    ex.set_defaults(func=cmd_explain)


def _read(path: str):
    from minimaskrcnn.image import read_image
    if not os.path.isfile(path):
        raise OSError(2, "no such file" if not os.path.isdir(path) else "is a directory", path)
    return read_image(path)


def cmd_trace(args) -> int:
    import minimaskrcnn
    from minimaskrcnn.image import to_network_input
    from minimaskrcnn.trace import save_trace
    from minimaskrcnn.weights import load_weights

    image = _read(args.input)
    folder = os.path.dirname(os.path.abspath(args.output))
    prepare_outdir(folder)
    meta = {"image": os.path.basename(args.input), "weights": str(args.weights)}
    if args.torchvision:
        from minimaskrcnn.crosscheck import torch_trace
        torch_trace.import_torchvision()                  # a missing torch fails before the weights are read
        cfg, sd = load_weights(args.weights)
        model = torch_trace.torchvision_model(cfg, sd)
        if args.score_threshold is not None:
            model.roi_heads.score_thresh = args.score_threshold
        import torch
        import torchvision
        trace = torch_trace.torchvision_trace(model, to_network_input(image))
        meta.update(producer=f"torchvision {torchvision.__version__} (torch {torch.__version__}, "
                             f"{torch.get_num_threads()} threads)", config=cfg.to_json())
    else:
        model = minimaskrcnn.load(args.weights, **load_options(args))
        _, trace = model.predict(image, score_threshold=args.score_threshold, trace=True)
        meta.update(producer=f"minimaskrcnn {minimaskrcnn.__version__}", config=model.config.to_json())
    save_trace(trace, args.output, args.compress, **meta)
    if not args.quiet:
        print(trace.summary())
        print(f"{len(trace)} stages written to {args.output}")
    return 0


def cmd_compare(args) -> int:
    from minimaskrcnn.crosscheck import compare
    from minimaskrcnn.trace import load_trace
    try:
        tolerances = compare.parse_tolerances(args.tolerance)
    except ValueError as e:
        raise UsageError(str(e)) from None
    a, meta_a = load_trace(args.reference)
    b, meta_b = load_trace(args.candidate)
    results = compare.compare_traces(a, b, tolerances, args.match_iou)
    if not any(r.checks for r in results):                       # comparing nothing proves nothing
        common = [r.stage for r in results if r.shape_a is not None and r.shape_b is not None]
        found = f"common entries: {', '.join(common[:8])}" if common else "no entry in common"
        raise ValueError(f"{args.reference} and {args.candidate}: nothing was compared, no trace stage that compare "
                         f"checks is in both ({found}; docs/trace_format.md lists the stage names)")
    if not args.quiet:
        for side, path, meta in (("A", args.reference, meta_a), ("B", args.candidate, meta_b)):
            print(f"{side}: {path}" + (f" ({meta['producer']})" if meta.get("producer") else ""))
        print(compare.format_table(results, "A", "B"))
    return 0 if compare.passed(results) else 1


def cmd_explain(args) -> int:
    from minimaskrcnn.study import explain, view
    if args.anchor_location and not re.fullmatch(view.LOCATION, args.anchor_location):
        raise UsageError(f"--anchor-location: expected Y,X or LEVEL:ROW,COL such as P4:20,30, got "
                         f"{args.anchor_location!r}")
    image = _read(args.input)
    outdir = prepare_outdir(args.output)
    import minimaskrcnn
    model = minimaskrcnn.load(args.weights, **load_options(args))
    result = explain.explain(model, image, outdir, anchor_location=args.anchor_location,
                             proposals=args.proposals, score_threshold=args.score_threshold,
                             max_detections=args.detections, note=f"weights: {args.weights}")
    if not args.quiet:
        print(f"{len(result.sections)} pictures and {result.index} written; {len(result.detections)} detections")
    return 0
