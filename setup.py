"""setuptools entry point. Everything about the package is declared in setup.cfg; this file adds one build step.

After `build_py` has copied the package into the build directory, `minimaskrcnn.precompile` runs there, on the copy,
so that Numba compiles every kernel into the copy's `__pycache__/` and the wheel ships the machine code: a fresh
install's first run loads it instead of compiling for ~6-9 s (minimaskrcnn/precompile.py says why the files stay
valid after pip installs the wheel, and when they are not used). If that step fails the wheel is still built, only
without the compiled kernels, and the build says so. Editable installs run the package from the checkout and skip it.
"""
import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithKernels(build_py):
    def run(self):
        super().run()
        if self.editable_mode or self.dry_run:
            return
        build_lib = os.path.abspath(self.build_lib)
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}     # Numba's in-tree cache, not a user's
        # pip's isolated build environment reaches its build requirements through PYTHONPATH: keep it, after ours
        env["PYTHONPATH"] = os.pathsep.join([build_lib] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONDONTWRITEBYTECODE"] = "1"                                        # no stray .pyc in the wheel
        res = subprocess.run([sys.executable, "-m", "minimaskrcnn.precompile"], cwd=build_lib, env=env)
        if res.returncode != 0:
            print("warning: minimaskrcnn.precompile failed (exit %d): the wheel has no compiled Numba kernels, so the "
                  "first run compiles them" % res.returncode, file=sys.stderr)


setup(cmdclass={"build_py": BuildPyWithKernels})
