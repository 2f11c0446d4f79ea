"""`minimaskrcnn crosscheck MODEL.onnx IMAGE [IMAGE ...]`: where does an ONNX export of a torchvision R-CNN deviate?

One row per stage (minimaskrcnn's stage on the export's own input of that stage against the export's output), the
first stage beyond tolerance named; exit status 0 when every stage is within tolerance, 1 when one is not, 2 for
usage errors (not an ONNX file, not a torchvision R-CNN export, an image a fixed-size export cannot take, onnx or
onnxruntime missing). Like the rest of the CLI, heavy modules are imported inside the command function.
"""
from __future__ import annotations

import sys
from pathlib import Path

from minimaskrcnn.cli.options import FORMATTER, PROG, UsageError

EPILOG = f"""\
examples:
  {PROG} crosscheck model.onnx photo.jpg
  {PROG} crosscheck model.onnx a.jpg b.jpg --weights model.pth --json report.json
  {PROG} crosscheck model.onnx photo.jpg --trace onnx.npz && {PROG} compare ours.npz onnx.npz

Each minimaskrcnn stage is run on the export's own input of that stage (its normalized image, C maps, P maps,
proposals, ...), so a discrete flip upstream cannot hide the stage that deviates. Tolerances: docs/trace_format.md.
Needs the optional extra: pip install "minimaskrcnn[onnx]"."""


def add_commands(sub, general) -> None:
    """The crosscheck subparser; `general` is the shared option parent (cli.options)."""
    cc = sub.add_parser("crosscheck", parents=[general], formatter_class=FORMATTER, epilog=EPILOG,
                        help="check an ONNX export stage by stage against minimaskrcnn",
                        description="Check an ONNX export of a torchvision Mask R-CNN / Faster R-CNN stage by stage, "
                                    "with minimaskrcnn built from the export's own weights.")
    cc.add_argument("model", metavar="MODEL.onnx", help="the exported model")
    cc.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    cc.add_argument("--weights", metavar="ORIGINAL", help="the .pth/.npz the export was made from: check that the "
                                                          "export stored these weights")
    cc.add_argument("--json", metavar="REPORT", help="write the report as JSON")
    cc.add_argument("--trace", metavar="OUT.npz", help="save the ONNX run's stage outputs as a trace file (with "
                                                       "several images: OUT-STEM.npz per image)")
    cc.add_argument("--first-failure", action="store_true",
                    help="stop comparing an image's stages after the first one beyond tolerance")
    cc.add_argument("--end-to-end", action="store_true",
                    help="also compare minimaskrcnn's own run of each image with the export's outputs")
    cc.add_argument("--tolerance", nargs="+", action="extend", default=[], metavar="STAGE=VALUE",
                    help="override a tolerance, as for compare")
    cc.set_defaults(func=cmd_crosscheck)


def cmd_crosscheck(args) -> int:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UsageError(f"crosscheck needs onnx and onnxruntime ({e}): pip install \"minimaskrcnn[onnx]\"") \
            from None
    from minimaskrcnn.crosscheck.compare import parse_tolerances
    from minimaskrcnn.crosscheck.onnx import crosscheck, report_json, save_onnx_trace
    from minimaskrcnn.io.files import write_json
    for path in [args.model] + args.images + ([args.weights] if args.weights else []):
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file")
    try:
        tolerances = parse_tolerances(args.tolerance)
        report = crosscheck(args.model, args.images, weights=args.weights, tolerances=tolerances,
                            threads=args.threads, first_failure=args.first_failure,
                            end_to_end=args.end_to_end)
    except ValueError as e:        # not an ONNX file / not an R-CNN export / an image the export cannot take
        raise UsageError(" ".join(str(e).split())) from None
    if not args.quiet:
        print(report.format_table())
    if args.json:
        import json
        write_json(json.loads(report_json(report)), args.json)
    if args.trace:
        for image in args.images:
            out = args.trace if len(args.images) == 1 else str(Path(args.trace).with_name(
                f"{Path(args.trace).stem}-{Path(image).stem}.npz"))
            save_onnx_trace(report, image, out)
    if not report.ok and args.quiet:
        print(f"{PROG} crosscheck: first stage beyond tolerance: {report.first_failing_stage}", file=sys.stderr)
    return 0 if report.ok else 1
