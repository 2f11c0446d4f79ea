"""minimaskrcnn.ops resize: the output size rule against torchvision's GeneralizedRCNNTransform and the bilinear
kernel against torch.nn.functional.interpolate and naive.py.

torch's own bilinear result depends on its CPU capability and thread count (measured here: the AVX512 kernel
contracts FMAs, even into the source index, and a 2-thread run differs from a 1-thread run in ~50% of pixels; a
Numba parallel kernel run in the same process re-sizes the shared OpenMP pool that torch uses). The kernel is
therefore checked bitwise against torch's scalar kernel (ATEN_CPU_CAPABILITY=default, one thread) in a fresh
process that computes torch's results before running any Numba kernel.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from conftest import checkout_env
import oracle
from minimaskrcnn import ops

HERE = Path(__file__).resolve().parent


def floor_edge_sizes(limit=40):
    """(h, w) whose resized side floors one pixel below the intended one (facts §1), found by the rule."""
    found = []
    for short in range(100, 800):
        for long_ in (short + 81, int(short * 1.5) + 1, 2 * short + 7):
            scale = min(800 / short, 1333 / long_)
            if math.floor(short * scale) != round(short * scale) or math.floor(long_ * scale) != round(long_ * scale):
                found.append((short, long_) if len(found) % 2 else (long_, short))
                if len(found) == limit:
                    return found
    return found


def torchvision_resized_size(h, w):
    torch = oracle.torch()
    from torchvision.models.detection.transform import _resize_image_and_masks
    image, _ = _resize_image_and_masks(torch.zeros((1, h, w)), 800, 1333)
    return tuple(image.shape[-2:])


def test_known_size_cases():
    assert ops.resized_size(161, 242) == (799, 1202)       # facts §1: 161 * (800/161) = 799.99999999999989
    assert ops.resized_size(800, 1333) == (800, 1333)
    assert ops.resized_size(480, 640) == (800, 1066)
    assert ops.resized_size(300, 1200) == (333, 1333)      # max_size binds
    for h, w in [(161, 242), (480, 640), (300, 1200)]:
        assert ops.resized_size(h, w) == torchvision_resized_size(h, w)


def test_floor_edge_cases_match_torchvision():
    sizes = floor_edge_sizes() + [(161, 242), (242, 161)]
    assert len(sizes) == 42
    for h, w in sizes:
        assert ops.resized_size(h, w) == torchvision_resized_size(h, w), (h, w)
        scale = min(800 / min(h, w), 1333 / max(h, w))
        assert ops.resized_size(h, w) != (round(h * scale), round(w * scale))


@settings(max_examples=40)
@given(h=st.integers(1, 2000), w=st.integers(1, 2000))
def test_resized_size_matches_torchvision(h, w):
    try:
        expected = torchvision_resized_size(h, w)
    except RuntimeError:          # e.g. 1x1334: torchvision's interpolate refuses an output side of 0
        with pytest.raises(ValueError, match="too elongated"):
            ops.resized_size(h, w)
        return
    assert ops.resized_size(h, w) == expected


def test_too_elongated_image_is_a_clear_error():
    with pytest.raises(ValueError, match="1x1334 is too elongated"):
        ops.resized_size(1, 1334)


def test_identity_when_the_size_is_unchanged():
    x = np.random.default_rng(0).standard_normal((3, 800, 1333)).astype(np.float32)
    np.testing.assert_array_equal(ops.resize_image(x), x)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 12), w=st.integers(1, 12), oh=st.integers(1, 25),
       ow=st.integers(1, 25), layout=st.sampled_from(["c", "strided"]))
def test_kernel_matches_loop_reference(seed, h, w, oh, ow, layout):
    """float32 only: float64 is computed in float64 (test_dtypes.py checks it against torch's float64 kernel)."""
    x = np.random.default_rng(seed).standard_normal((2, h, w)).astype(np.float32)
    arg = {"c": x, "strided": np.repeat(x, 2, axis=2)[..., ::2]}[layout]
    np.testing.assert_array_equal(ops.resize_bilinear(arg, oh, ow), naive.resize_bilinear(x, oh, ow))


def check_against_torch_scalar_kernel():
    """Run in a fresh process with ATEN_CPU_CAPABILITY=default: torch first (1 thread), then ours. Prints a JSON
    report: per case whether it is bitwise, and the max abs difference."""
    torch = oracle.torch()
    functional = torch.nn.functional
    rng = np.random.default_rng(0)
    cases = [(480, 640), (161, 242), (300, 1200), (57, 13), (5, 91), (1, 1), (800, 1333)] + floor_edge_sizes(6)
    inputs, refs = [], []
    for h, w in cases:
        x = ((rng.random((3, h, w), dtype=np.float32) - np.float32(0.45)) / np.float32(0.225))  # normalized image
        size = ops.resized_size(h, w)
        ref = functional.interpolate(torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False)
        inputs.append(x)
        refs.append(ref[0].numpy())
    report = []
    for (h, w), x, ref in zip(cases, inputs, refs):
        ours = ops.resize_image(x)
        report.append({"case": [h, w], "bitwise": bool(np.array_equal(ours.view(np.int32), ref.view(np.int32))),
                       "max_abs": float(np.abs(ours - ref).max())})
    print(json.dumps(report))


def test_resize_bitwise_torch_scalar_kernel_in_fresh_process():
    env = checkout_env(ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", "import test_resize as t; t.check_against_torch_scalar_kernel()"],
                          env=env, cwd=HERE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(r["bitwise"] for r in report), report


@pytest.mark.parametrize("call, match", [
    (lambda: ops.resize_bilinear(np.zeros((4, 4)), 2, 2), "image: expected 3 dimensions"),
    (lambda: ops.resize_bilinear(np.zeros((1, 0, 4)), 2, 2), "image: expected non-empty height and width"),
    (lambda: ops.resize_bilinear(np.zeros((1, 4, 4)), 0, 2), "out_h: expected an integer >= 1"),
    (lambda: ops.resize_bilinear(np.zeros((1, 4, 4), bool), 2, 2), "image: expected a real numeric"),
    (lambda: ops.resized_size(0, 5), "h: expected an integer >= 1"),
    (lambda: ops.resized_size(5, 5, min_size=-1), "min_size: expected a number > 0"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
