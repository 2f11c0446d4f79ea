"""The `minimaskrcnn` command: `main` builds the parser from the subcommand modules and dispatches.

Subcommands, by module: `segment.py` (segment, video), `study.py` (trace, compare, explain), `tools.py` (demo,
bench). Every error ends the run with one line on stderr, "minimaskrcnn: error: ...", and a non-zero status: 2 for
usage errors (bad option values, unknown class names, no inputs), 1 otherwise. An image that cannot be read or
written is reported the same way and the run goes on with the other images, ending with status 1. `--debug` shows
the traceback instead. Heavy modules (NumPy, Numba, the network) are imported only after `--threads` has set the
thread-count environment variables they read at import. Nothing imports this package: it is the outermost layer.
"""
from __future__ import annotations

import os
import sys
import warnings

from minimaskrcnn.cli import crosscheck, segment, study, tools
from minimaskrcnn.cli.options import FORMATTER, PROG, Parser, UsageError, describe, general_options, model_options

__all__ = ["main", "build_parser"]

THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

MAIN_EPILOG = f"""examples:
  {PROG} segment photo.jpg -o out/                      overlay PNG of every object found
  {PROG} segment photos/ "shots/*.png" -o out/ --json --cutouts --classes person,dog
  {PROG} video street.mp4 -o street_masks.mp4 --every 2 --jsonl street.jsonl

Run "{PROG} COMMAND --help" for the options of a command."""


def build_parser() -> Parser:
    from minimaskrcnn._version import __version__
    parser = Parser(prog=PROG, formatter_class=FORMATTER, epilog=MAIN_EPILOG,
                    description="Mask R-CNN instance segmentation on the CPU, without PyTorch.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    general, model = general_options(), model_options()
    segment.add_commands(sub, general, model)        # segment, video
    study.add_commands(sub, general)                 # trace, compare, explain: looking inside the network
    tools.add_commands(sub, general)                 # demo (built-in model), bench (against torchvision)
    crosscheck.add_commands(sub, general)            # crosscheck: an ONNX export stage by stage
    return parser


def main(argv=None) -> int:
    """Parse, dispatch to the subcommand's function, turn any error into one line. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _set_threads(args.threads)
    from minimaskrcnn.nn.threads import let_blas_threads_sleep
    let_blas_threads_sleep()        # before NumPy loads OpenBLAS: its idle threads sleep instead of spinning (threads.py)
    from minimaskrcnn.nn.workspace import reuse_freed_memory
    reuse_freed_memory()            # this process's malloc keeps freed feature maps for the next layer (workspace.py)
    warnings.showwarning = _one_line_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {describe(e)}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


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
