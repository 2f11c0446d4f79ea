"""The `minimaskrcnn` command: `segment` images and folders, `video` files; `main` only dispatches.

Every error ends the run with one line on stderr, "minimaskrcnn: error: ...", and a non-zero status: 2 for usage
errors (bad option values, unknown class names, no inputs), 1 otherwise. An image that cannot be read or written
is reported the same way and the run goes on with the other images, ending with status 1. `--debug` shows the
traceback instead. Heavy modules (NumPy, Numba, the network) are imported only after `--threads` has set the
thread-count environment variables they read at import.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import Counter

__all__ = ["main", "build_parser"]

PROG = "minimaskrcnn"
DEFAULT_WEIGHTS = "maskrcnn_resnet50_fpn_coco"
JSON_NAME = "coco_results.json"
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class UsageError(Exception):
    """A bad command line found after parsing (unknown class, unknown video format): exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "minimaskrcnn segment: error: ... (see minimaskrcnn segment --help)"."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- parser -----------------------------------------------------------------------------------------------------------

MAIN_EPILOG = f"""examples:
  {PROG} segment photo.jpg -o out/                      overlay PNG of every object found
  {PROG} segment photos/ "shots/*.png" -o out/ --json --cutouts --classes person,dog
  {PROG} video street.mp4 -o street_masks.mp4 --every 2 --jsonl street.jsonl

Run "{PROG} COMMAND --help" for the options of a command."""

SEGMENT_EPILOG = f"""outputs in OUTDIR, for an image named STEM.*:
  STEM_overlay.png            masks, boxes and "label score" drawn on the image (always)
  {JSON_NAME:<27} --json: all detections of the run in COCO results format (RLE masks); image ids
                              are the file names' numbers when all are numbers (000000039769.png -> 39769),
                              otherwise 1, 2, 3, ... in input order
  STEM_<k>_<label>.png        --cutouts: object k (by descending score) cropped to its box, transparent
                              outside its mask
  STEM_semantic.png           --semantic: class id per pixel (0 = background), STEM_semantic_color.png a preview
  STEM_instances.png          --instances: k per pixel for the k-th object by score (0 = background)
Where objects overlap, the higher score wins. Two inputs with the same STEM get STEM-2, STEM-3, ...

examples:
  {PROG} segment photo.jpg -o out/
  {PROG} segment photos/ -o out/ --recursive --json --semantic --score-threshold 0.7
  {PROG} segment "shots/*.png" -o out/ --cutouts --classes person,car --weights my_model.npz"""

VIDEO_EPILOG = f"""Animated GIF works out of the box; other formats need PyAV: pip install "minimaskrcnn[video]".
Output format by extension: .mp4 .mkv .mov .m4v (H.264), .avi (MPEG-4), .webm (VP9), .gif.
The output holds the processed frames at the input frame rate / N (--every N), so it plays in real time.

examples:
  {PROG} video street.avi -o street_masks.mp4
  {PROG} video clip.mp4 -o clip.gif --every 3 --max-frames 300 --classes person
  {PROG} video clip.mp4 -o clip_masks.mp4 --jsonl clip.jsonl   (one JSON line per frame, masks as COCO RLE)"""


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and output options")
    g.add_argument("--weights", default=DEFAULT_WEIGHTS, metavar="NAME|FILE",
                   help=f"official name (downloaded once), converted .npz or torchvision .pth (default {DEFAULT_WEIGHTS})")
    g.add_argument("--score-threshold", type=_fraction, default=0.5, metavar="S",
                   help="keep objects whose score is above S (default 0.5)")
    g.add_argument("--mask-threshold", type=_fraction, default=0.5, metavar="M",
                   help="a pixel belongs to an object where its mask probability is >= M (default 0.5)")
    g.add_argument("--classes", metavar="NAMES", help="keep only these classes, comma separated: person,car")
    g.add_argument("--threads", type=_positive, metavar="N", help="CPU threads for the network (default: all cores)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary; errors only")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return common


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, formatter_class=fmt, epilog=MAIN_EPILOG,
                                     description="Mask R-CNN instance segmentation on the CPU, without PyTorch.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    common = _common_options()

    seg = sub.add_parser("segment", parents=[common], formatter_class=fmt, epilog=SEGMENT_EPILOG,
                         help="find and segment the objects of images",
                         description="Detect and segment objects in images, folders of images and glob patterns.")
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns")
    seg.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    seg.add_argument("--recursive", "-r", action="store_true", help="also images in subfolders; ** in patterns")
    seg.add_argument("--json", action="store_true", help=f"write OUTDIR/{JSON_NAME} (COCO results format)")
    seg.add_argument("--cutouts", action="store_true", help="each object as a transparent PNG cropped to its box")
    seg.add_argument("--semantic", action="store_true", help="class-id map PNG and a colour preview")
    seg.add_argument("--instances", action="store_true", help="instance-id map PNG")
    seg.set_defaults(func=cmd_segment)

    vid = sub.add_parser("video", parents=[common], formatter_class=fmt, epilog=VIDEO_EPILOG,
                         help="overlay video of the objects of a video, frame by frame",
                         description="Detect and segment objects frame by frame into an overlay video.")
    vid.add_argument("input", metavar="IN", help="video file (.gif, or any format FFmpeg reads with the video extra)")
    vid.add_argument("-o", "--output", required=True, metavar="OUT", help="output video file")
    vid.add_argument("--every", type=_positive, default=1, metavar="N", help="process every N-th frame (default 1)")
    vid.add_argument("--max-frames", type=_positive, metavar="N", help="read only the first N frames of the input")
    vid.add_argument("--jsonl", metavar="FILE", help="per-frame detections as JSON lines (frame, time, detections)")
    vid.set_defaults(func=cmd_video)
    from .cli_study import add_study_commands         # trace, compare, explain: looking inside the network
    add_study_commands(sub, fmt)

    from .cli_tools import add_tool_commands          # demo (built-in model), bench (against torchvision)
    add_tool_commands(sub, fmt)
    return parser


# --- entry point ------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    """Parse, dispatch to the subcommand's function, turn any error into one line. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _set_threads(args.threads)
    warnings.showwarning = _one_line_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {_describe(e)}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


def _describe(e: BaseException) -> str:
    """One line for an error: the project's own errors and ValueError/OSError/ImportError by their message, anything
    else by type and message plus a hint to rerun with --debug."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e)
    text = " ".join(text.split())
    module = type(e).__module__ or ""
    expected = (UsageError, ValueError, OSError, ImportError)
    if isinstance(e, expected) or module.split(".")[0] in ("minimaskrcnn", "weights_convert"):
        return text or type(e).__name__
    return f"unexpected {type(e).__name__}: {text} (rerun with --debug for the traceback)"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _set_threads(n) -> None:
    """Thread counts for Numba and the BLAS: environment variables for modules not imported yet, and
    numba.set_num_threads if Numba already is."""
    if n is None:
        return
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    if "numba" in sys.modules:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


# --- shared steps -----------------------------------------------------------------------------------------------------

def _class_list(text):
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def _class_ids(names: list, class_names) -> object:
    """Label indices of `names` in the model's `class_names`, or None for "all". Unknown name -> UsageError."""
    if not names:
        return None
    valid = [c for c in class_names[1:] if c != "N/A"]
    lookup = {c.lower(): i for i, c in enumerate(class_names) if i > 0 and c != "N/A"}
    unknown = [n for n in names if n.lower() not in lookup]
    if unknown:
        raise UsageError(f"unknown class {', '.join(repr(u) for u in unknown)} for these weights; valid names: "
                         f"{', '.join(valid)}")
    return sorted({lookup[n.lower()] for n in names})


def _load_model(weights: str, class_names_wanted: list):
    """`minimaskrcnn.load(weights)`; checks --classes against the COCO names first when the weights are official
    COCO weights, so a typo fails before any download."""
    from .config import COCO_CATEGORIES
    if class_names_wanted and weights.endswith("_coco") and not os.path.exists(weights):
        _class_ids(class_names_wanted, COCO_CATEGORIES)
    import minimaskrcnn
    model = minimaskrcnn.load(weights)
    return model, _class_ids(class_names_wanted, tuple(model.class_names))


def _detector(model, score_threshold: float, keep):
    """image -> Detections, filtered to the kept label indices."""
    import numpy as np

    def detect(image):
        det = model.predict(image, score_threshold=score_threshold)
        return det if keep is None else det.select(np.isin(det.labels, keep))
    return detect


def _prepare_outdir(path: str) -> str:
    """Create the output folder and prove it writable now, not after the first image."""
    import tempfile
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise OSError(e.errno, f"cannot write to the output folder ({e.strerror})", path) from None
    return path


def _summary(lines: list, quiet: bool) -> None:
    if not quiet:
        print("\n".join(lines))


def _objects_line(objects: Counter) -> str:
    if not objects:
        return "objects: none"
    return "objects: " + ", ".join(f"{n} {name}" for name, n in sorted(objects.items(), key=lambda kv: (-kv[1], kv[0])))


# --- segment ----------------------------------------------------------------------------------------------------------

def cmd_segment(args) -> int:
    wanted = _class_list(args.classes)
    outdir = _prepare_outdir(args.output)
    from .image_io import find_images, read_image
    inputs, problems = find_images(args.inputs, args.recursive)
    for item, why in problems:
        print(f"{PROG}: error: {item}: {why}", file=sys.stderr)
    if not inputs:
        return 2                                                     # nothing to do: each input's problem is said

    from . import outputs
    from .progress import Progress

    model, keep = _load_model(args.weights, wanted)
    detect = _detector(model, args.score_threshold, keep)
    protected = outputs.protect(inputs)
    ids, stems = outputs.assign_image_ids(inputs), outputs.output_stems(inputs)
    results, objects, seconds, failures = [], Counter(), [], len(problems)
    with Progress(len(inputs), "images", enabled=None if not args.quiet else False) as bar:
        for path, stem, image_id in zip(inputs, stems, ids):
            try:
                t0 = time.perf_counter()
                image = read_image(path)
                det = detect(image)
                seconds.append(time.perf_counter() - t0)
                _write_image_outputs(args, outdir, stem, image, det, protected)
                if args.json:
                    results.extend(outputs.coco_results(det, image_id, os.path.basename(path), args.mask_threshold))
                objects.update(det.label_names)
            except (ValueError, OSError) as e:                       # unreadable image, unwritable output
                failures += 1
                bar.write(f"{PROG}: error: {_describe(e)}")
            bar.update()
    if args.json:
        outputs.write_json(results, os.path.join(outdir, JSON_NAME), protected)
    done = len(seconds)
    mean = f"; {sum(seconds) / done:.2f} s per image" if done else ""
    _summary([f"{done} of {len(inputs) + len(problems)} inputs done, {failures} failed{mean}",
              _objects_line(objects), f"outputs in {outdir}"], args.quiet)
    return 1 if failures else 0


def _write_image_outputs(args, outdir: str, stem: str, image, det, protected) -> None:
    from . import outputs
    t = args.mask_threshold

    def path(kind: str) -> str:
        return os.path.join(outdir, f"{stem}_{kind}.png")

    outputs.write_png(outputs.render_overlay(image, det, t), path("overlay"), protected)
    if args.cutouts:
        outputs.write_cutouts(outdir, stem, image, det, t, protected)
    if args.semantic:
        sem = outputs.semantic_map(det, t)
        outputs.write_png(sem, path("semantic"), protected)
        outputs.write_png(outputs.colorize(sem, len(det.class_names)), path("semantic_color"), protected)
    if args.instances:
        outputs.write_png(outputs.instance_map(det, t), path("instances"), protected)


# --- video ------------------------------------------------------------------------------------------------------------

def cmd_video(args) -> int:
    from . import outputs, video
    from .progress import Progress

    wanted = _class_list(args.classes)
    try:
        video.check_support(args.input, args.output)                 # a missing PyAV is an ImportError: status 1
    except ValueError as e:                                          # unknown output format: a usage error
        raise UsageError(str(e)) from None
    if not os.path.isfile(args.input):
        raise video.VideoReadError(f"{args.input}: {'is a directory' if os.path.isdir(args.input) else 'no such file'}")
    if os.path.realpath(args.input) in {os.path.realpath(p) for p in (args.output, args.jsonl) if p}:
        raise UsageError(f"{args.input}: refusing to overwrite the input video")
    if args.jsonl and os.path.realpath(args.jsonl) == os.path.realpath(args.output):
        raise UsageError(f"{args.jsonl}: the JSON lines file and the output video must differ")
    for target in filter(None, (args.output, args.jsonl)):
        _prepare_outdir(os.path.dirname(os.path.abspath(target)))
    model, keep = _load_model(args.weights, wanted)
    detect = _detector(model, args.score_threshold, keep)
    with Progress(None, "frames", enabled=None if not args.quiet else False) as bar:
        s = video.segment_video(detect, args.input, args.output, every=args.every, max_frames=args.max_frames,
                                jsonl=args.jsonl, mask_threshold=args.mask_threshold, progress=bar,
                                protected=outputs.protect([args.input]))
    mean = s.seconds_detecting / s.frames_processed
    _summary([f"{s.frames_processed} frames processed of {s.frames_read} read; {mean:.2f} s per frame",
              _objects_line(s.objects) + " (summed over frames)",
              "outputs: " + ", ".join(filter(None, (args.output, args.jsonl)))], args.quiet)
    return 0
