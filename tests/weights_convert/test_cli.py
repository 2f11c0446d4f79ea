"""The `weights-convert` command: conversion, one-line errors, exit statuses; the runtime never imports torch.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import oracle
from checkpoints import assert_npz_equals_torch_load, save
from weights_convert import (CheckpointError, convert, read_npz,
                             read_npz_metadata)


ROOT = Path(__file__).resolve().parents[2]
STATE_DICTS = ROOT.parent / "shared" / "reference" / "state_dicts"


# --- command line ----------------------------------------------------------------------------------------------------

def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "weights_convert", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


def assert_one_line_error(run, pattern):
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("weights-convert: error: ")
    import re
    assert re.search(pattern, run.stderr), run.stderr


def test_cli_converts(small_files, tmp_path):
    src = small_files("mask_v1_frozenbn", "legacy")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(["__background__", "a", "b", "c", "d"]) + "\n")
    run = run_cli(src, "-o", tmp_path / "out.npz", "--bn-eps", "0", "--class-names", names,
                  "--set", "box_score_thresh=0.5")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"wrote {tmp_path / 'out.npz'}: maskrcnn_resnet18_fpn_custom, 5 classes, bn_eps 0.0")
    config, _ = read_npz(tmp_path / "out.npz")
    assert config.bn_eps == 0.0 and config.class_names[1] == "a" and config.box_score_thresh == 0.5
    assert_npz_equals_torch_load(tmp_path / "out.npz", src)


def test_cli_default_output_and_quiet(small_files, tmp_path):
    src = tmp_path / "model.pth"
    src.write_bytes(small_files("faster_v2", "zip").read_bytes())
    run = run_cli(src, "-q")
    assert run.returncode == 0 and run.stdout == "" and run.stderr == ""
    assert read_npz_metadata(tmp_path / "model.npz")["architecture"] == "fasterrcnn_resnet18_fpn_v2_custom"


def test_cli_errors_are_one_line_and_leave_the_output_alone(small_files, tmp_path):
    tv = oracle.torchvision()
    detector = small_files("faster_v1", "zip")
    out = tmp_path / "out.npz"
    out.write_bytes(b"previous")
    classifier = save(tv.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth", "zip")
    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    cases = [
        ((tmp_path / "missing.pth", "-o", out), r"missing.pth: No such file or directory"),
        ((classifier, "-o", out), r"image-classification ResNet"),
        ((evil, "-o", out), r"refusing to load global posix.system"),
        ((classifier, "-o", out, "--set", "nonsense"), r"--set expects KEY=JSON"),
        ((detector, "-o", out, "--set", "no_such_field=1"), r"unknown config fields: \['no_such_field'\]"),
        ((detector, "-o", out, "--set", "bn_eps=0"), r"override bn_eps with its own argument"),
        ((detector, "-o", out, "--class-names", tmp_path / "none.txt"), r"none.txt: No such file or directory"),
        ((detector, "-o", tmp_path / "no_dir" / "x.npz"), r"no_dir: no such directory for the output file"),
        ((classifier, "--bn-eps", "abc"), r"argument --bn-eps: invalid float value"),
        ((), r"the following arguments are required: SRC"),
    ]
    for args, pattern in cases:
        assert_one_line_error(run_cli(*args), pattern)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth", "out.npz", "resnet18.pth"]


def test_cli_usage_error_exit_status_2_and_bad_input_1(tmp_path):
    assert run_cli().returncode == 2
    assert run_cli(tmp_path / "missing.pth").returncode == 1


def test_runtime_never_imports_torch(small_files, tmp_path):
    script = ("import sys, weights_convert, minimaskrcnn.weights as hub\n"
              f"weights_convert.convert({str(small_files('mask_v2', 'zip'))!r}, {str(tmp_path / 'w.npz')!r})\n"
              f"hub.load_weights({str(tmp_path / 'w.npz')!r})\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_converting_a_converted_file_says_so(small_files, tmp_path):
    dst = convert(small_files("faster_v1", "zip"), tmp_path / "w.npz")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint.*already converted"):
        convert(dst, tmp_path / "again.npz")
