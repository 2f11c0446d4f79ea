"""What every `minimaskrcnn` subcommand shares on its command line: the parser class with one-line errors, the
validators of option values, and the option groups (general: --threads/--quiet/--debug; model: --weights,
thresholds, --classes). Each subcommand module adds its parsers with these as `parents`.
"""
from __future__ import annotations

import argparse

PROG = "minimaskrcnn"
DEFAULT_WEIGHTS = "maskrcnn_resnet50_fpn_coco"
JSON_NAME = "coco_results.json"
FORMATTER = argparse.RawDescriptionHelpFormatter


class UsageError(Exception):
    """A bad command line found after parsing (unknown class, unknown video format): exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "minimaskrcnn segment: error: ... (see minimaskrcnn segment --help)"."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def describe(e: BaseException) -> str:
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


# --- validators (argparse `type=`) -------------------------------------------------------------------------------------

def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return v


def positive(text: str) -> int:
    """An integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def sizes(text: str) -> list:
    """Comma-separated image sizes HxW, each side a positive integer: "480x640,800x1333" -> [(480, 640), (800, 1333)]."""
    out = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"expected sizes such as 480x640,800x1333, got {item.strip()!r}")
        out.append((int(parts[0]), int(parts[1])))
    return out


# --- option groups ------------------------------------------------------------------------------------------------------

def general_options() -> argparse.ArgumentParser:
    """--threads, --quiet, --debug: every subcommand has them (`main` reads all three)."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("general options")
    g.add_argument("--threads", type=positive, metavar="N", help="CPU threads (default: all cores)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary; errors only")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return common


def weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, metavar="NAME|FILE",
                        help=f"official name (downloaded once), converted .npz, torchvision .pth or matterport .h5 "
                             f"(default {DEFAULT_WEIGHTS})")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE|FILE.json",
                        help="matterport weights: a matterport Config attribute, e.g. IMAGE_MIN_DIM=512 (VALUE read "
                             "as JSON, else as text), or a JSON file of them; repeatable, later ones win")
    parser.add_argument("--class-names", metavar="A,B,...",
                        help="matterport weights: the class names, comma separated (background first or left out)")


def load_options(args) -> dict:
    """The keyword arguments of `minimaskrcnn.load` from --config / --class-names ({} if neither was given)."""
    import json
    out = {}
    if args.config:
        config = {}
        for item in args.config:
            key, sep, value = item.partition("=")
            if sep and key.strip():
                try:
                    config[key.strip()] = json.loads(value)
                except ValueError:
                    config[key.strip()] = value                    # IMAGE_RESIZE_MODE=pad64
                continue
            try:
                with open(item, encoding="utf-8") as f:
                    loaded = json.load(f)
            except OSError as e:
                raise UsageError(f"--config {item}: neither KEY=VALUE nor a readable JSON file ({e.strerror})")
            except ValueError as e:
                raise UsageError(f"--config {item}: not JSON ({e})")
            if not isinstance(loaded, dict):
                raise UsageError(f"--config {item}: expected a JSON object of matterport Config attributes")
            config.update(loaded)
        out["config"] = config
    if args.class_names:
        out["class_names"] = [n.strip() for n in args.class_names.split(",")]
    return out


def model_options() -> argparse.ArgumentParser:
    """--weights, --score-threshold, --mask-threshold, --classes: the commands that segment."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and output options")
    weights_option(g)
    g.add_argument("--score-threshold", type=fraction, default=0.5, metavar="S",
                   help="keep objects whose score is above S (default 0.5)")
    g.add_argument("--mask-threshold", type=fraction, default=0.5, metavar="M",
                   help="a pixel belongs to an object where its mask probability is >= M (default 0.5)")
    g.add_argument("--classes", metavar="NAMES", help="keep only these classes, comma separated: person,car")
    return common
