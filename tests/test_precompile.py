"""minimaskrcnn/precompile.py and the build step that runs it (setup.py): what a fresh install compiles.

The claim under test is the module's: kernels compiled from the small demo model and small matterport inputs are
every signature a COCO-sized run needs, and a wheel built by pip carries them, so a fresh install compiles nothing.
Both are checked in fresh processes through Numba's own cache statistics (`precompile.cache_misses`).
"""
import ast
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import IMAGES, ROOT, checkout_env
from minimaskrcnn.crosscheck.bench import build_and_install

PREDICT = ("import sys, minimaskrcnn; from minimaskrcnn.precompile import cache_misses; "
           "minimaskrcnn.load(sys.argv[1]).predict(sys.argv[2]); print(cache_misses())")


@pytest.fixture(scope="module")
def coco_sized_weights(tmp_path_factory):
    """A random-weight torchvision Mask R-CNN v1 (ResNet-50 FPN, 91 classes), converted: not the demo model."""
    import oracle
    torch, tv = oracle.torch(), oracle.torchvision()
    from weights_convert import convert
    torch.manual_seed(0)
    model = tv.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    pth = tmp_path_factory.mktemp("coco-sized") / "maskrcnn.pth"
    torch.save(model.state_dict(), pth)
    npz = convert(pth, pth.with_suffix(".npz"), source_name=pth.name)
    pth.unlink()
    return npz


def test_precompile_compiles_what_a_coco_sized_model_then_runs(tmp_path, coco_sized_weights):
    env = checkout_env(NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    first = subprocess.run([sys.executable, "-m", "minimaskrcnn.precompile"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    compiled = int(first.stdout.split(":")[1].split()[0])
    assert compiled >= 15, first.stdout               # a fresh cache: everything was compiled here
    run = subprocess.run([sys.executable, "-c", PREDICT, str(coco_sized_weights), str(IMAGES / "dog.jpg")], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "{}", f"compiled after precompile: {run.stdout}"


def test_without_precompile_the_same_run_compiles(tmp_path, coco_sized_weights):
    """The check above can fail: the same run with an empty cache reports the kernels it compiled."""
    env = checkout_env(NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", PREDICT, str(coco_sized_weights), str(IMAGES / "dog.jpg")], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    misses = ast.literal_eval(run.stdout.strip())     # {name: count} printed by cache_misses
    assert "minimaskrcnn.nn.winograd._input_tiles_kernel" in misses and "minimaskrcnn.ops.paste._paste_kernel" in misses


def test_a_wheel_built_by_pip_ships_the_kernels_and_its_install_compiles_nothing(tmp_path, coco_sized_weights):
    """README's install, `pip install .`, as a wheel built by pip (build isolation: setup.py's step runs in pip's
    build environment) installed into a new virtual environment; then a fresh process there runs the COCO-sized
    model on a photo from outside the checkout."""
    wheel, python, _ = build_and_install(ROOT, tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    for kernel in ("nn/__pycache__/winograd._input_tiles_kernel", "ops/__pycache__/paste._paste_kernel",
                   "matterport/__pycache__/tf_nms._nms_kernel"):
        assert any(n.startswith(f"minimaskrcnn/{kernel}-") and n.endswith(".nbi") for n in names), kernel
    assert not any(n.endswith(".pyc") for n in names)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    run = subprocess.run([python, "-c", PREDICT, str(coco_sized_weights), str(IMAGES / "dog.jpg")], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "{}", f"a fresh install compiled: {run.stdout}"
    where = subprocess.run([python, "-c", "import minimaskrcnn; print(minimaskrcnn.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True)
    assert str(tmp_path / "fresh-venv") in where.stdout    # the installed copy ran, not the checkout
