"""Test helper (not a test module): `minimaskrcnn segment` runs over a small folder of photos with the shipped demo
model, and the comparison of two runs' output folders (the results JSON bit for bit, pictures pixel for pixel).

The folder: four photos from ../shared/images (a greyscale one among them) and a truncated JPEG, the bad input of
every run. The demo model (minimaskrcnn/demo/data, ResNet-18 at 192x288) finds 10-20 shapes in each photo at score
0.5, so every kind of picture has content; a photo takes 0.3-3 s on the shared 2 cores.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from conftest import IMAGES, ROOT, checkout_env
from minimaskrcnn.io.journal import JOURNAL_NAME

WEIGHTS = ROOT / "minimaskrcnn" / "demo" / "data" / "shapes_maskrcnn.npz"
PHOTOS = ("chelsea.png", "messi5.jpg", "camera.png", "person.jpg")
CORRUPT = "broken.jpg"
OUTPUTS = ("--json", "--cutouts", "--semantic", "--instances")
RUN_TIMEOUT_S = 600


def photo_folder(folder):
    """`folder` with copies of PHOTOS and a truncated JPEG (its first 3000 bytes); returns the folder."""
    os.makedirs(folder, exist_ok=True)
    for name in PHOTOS:
        shutil.copy(IMAGES / name, folder / name)
    (folder / CORRUPT).write_bytes((IMAGES / "dog.jpg").read_bytes()[:3000])
    return folder


def segment_args(inputs, out, *extra):
    return [sys.executable, "-m", "minimaskrcnn", "segment", str(inputs), "-o", str(out), "--weights", str(WEIGHTS),
            *OUTPUTS, "--quiet", *map(str, extra)]


def run_segment(inputs, out, *extra, env=None):
    """(status, stdout, stderr) of a complete run."""
    p = subprocess.run(segment_args(inputs, out, *extra), capture_output=True, text=True, cwd=ROOT,
                       env=env or checkout_env(), timeout=RUN_TIMEOUT_S)
    return p.returncode, p.stdout, p.stderr


def journal_records(out) -> int:
    """Complete records in OUT's journal (lines after the header that end in a newline)."""
    try:
        data = (out / JOURNAL_NAME).read_bytes()
    except FileNotFoundError:
        return 0
    return max(data.count(b"\n") - 1, 0)


def wait_until(predicate, process, timeout_s: float, what: str):
    """Poll `predicate` every 20 ms until true; fail if `process` ends first or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before {what}: "
                                 f"{process.stderr.read() if process.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def assert_same_outputs(expected, actual):
    """Same file names, the results JSON byte for byte, every PNG the same mode and pixels; no journal left (both
    runs reached their end)."""
    names = sorted(os.listdir(expected))
    assert sorted(os.listdir(actual)) == names and JOURNAL_NAME not in names
    assert not [n for n in names if ".part" in n]
    results = json.loads((expected / "coco_results.json").read_bytes())
    assert {r["file_name"] for r in results} == set(PHOTOS)          # every photo has detections: not vacuous
    for name in names:
        a, b = (expected / name).read_bytes(), (actual / name).read_bytes()
        if name.endswith(".json"):
            assert a == b, name
            continue
        with Image.open(expected / name) as ia, Image.open(actual / name) as ib:
            assert ia.mode == ib.mode and ia.size == ib.size, name
            assert np.array_equal(np.asarray(ia), np.asarray(ib)), name
