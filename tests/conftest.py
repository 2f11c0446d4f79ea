"""Shared pytest configuration: hypothesis profiles and paths to the shared test data."""
import os
from pathlib import Path

from hypothesis import HealthCheck, settings

# Numba compiles on first call, so no per-example deadline; CI derandomizes so a red run can be reproduced.
settings.register_profile("dev", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"          # ../shared from the project root (shared/README.md)
IMAGES = SHARED / "images"
COCO_39769 = SHARED / "coco_val2017_39769"


def checkout_env(**overrides):
    """The environment for a test subprocess, importing this checkout's packages (and tests/ helpers) first.

    Without the explicit path a subprocess started outside the project root can import another copy: an installed
    one, or the namespace package pip leaves behind when it uninstalls a `pip install .` whose Numba cache files
    (not in its RECORD) stay in site-packages/minimaskrcnn/__pycache__ and shadow an editable install."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **overrides}
