"""Command line: `weights-convert SRC [-o DST.npz] [--bn-eps E] [--class-names FILE] [--set KEY=JSON ...]`.

Also `python -m weights_convert`. Errors are one line on stderr and a non-zero exit status (1: the checkpoint or an
argument is wrong, 2: usage); never a traceback, never a half-written output file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROG = "weights-convert"


class _Parser(argparse.ArgumentParser):
    def error(self, message):      # one line (argparse would print the usage too)
        print(f"{PROG}: error: {message} (see {PROG} --help)", file=sys.stderr)
        sys.exit(2)


def _parser():
    p = _Parser(
        prog=PROG,
        description="Convert a torchvision Mask R-CNN / Faster R-CNN checkpoint (.pth, zip or legacy format), a "
                    "matterport Keras .h5 or a pytorch-mask-rcnn .pth to minimaskrcnn's .npz, without torch or "
                    "TensorFlow. Checkpoints are read with a restricted unpickler, .h5 files (extra 'hdf5': h5py) "
                    "with every size bounded: no code in them can run.",
        epilog="bn-eps rule: 0.0 if SRC is one of torchvision's COCO v1 checkpoints (sha256 prefix bf2d0c1e or "
               "258fb6c6), else 1e-5.")
    p.add_argument("src", metavar="SRC", help="checkpoint saved by torch.save (a state dict, possibly under "
                                              "'model' or 'state_dict')")
    p.add_argument("-o", "--output", metavar="DST", help="output .npz (default: SRC with suffix .npz)")
    p.add_argument("--bn-eps", type=float, metavar="E", help="batch-norm eps, overriding the rule above")
    p.add_argument("--class-names", metavar="FILE",
                   help="text file with one class name per line, index 0 = background (default: COCO names for 91 "
                        "classes, else class_1, class_2, ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="set a Config field the weights do not determine, e.g. --set 'aspect_ratios=[0.5,1,2]' "
                        "(matterport weights: a matterport Config attribute, e.g. --set IMAGE_MIN_DIM=512)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def _overrides(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=JSON, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"--set {key}: {value!r} is not JSON") from None
    return out


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        from .convert import convert
        from .npz import read_npz_metadata

        names = None
        if args.class_names:
            names = [line.strip() for line in Path(args.class_names).read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        dst = convert(args.src, args.output, bn_eps=args.bn_eps, class_names=names, overrides=_overrides(args.set))
        if not args.quiet:
            meta = read_npz_metadata(dst)
            print(f"wrote {dst}: {meta['architecture']}, {meta['num_classes']} classes, bn_eps {meta['bn_eps']}, "
                  f"source sha256 {meta['source_sha256'][:16]}...")
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:      # CheckpointError is a ValueError
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:                  # a bug: still one line, with the type to report it
        print(f"{PROG}: internal error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 3


def _one_line(e) -> str:
    text = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror}"
    return " ".join(text.split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
