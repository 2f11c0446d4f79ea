"""matterport's own code as a test oracle: builds its Python 3.7 + TensorFlow 1.15 environment and runs scripts in it.

Not a test module. Tests call `run_script("mrcnn_save_weights.py", ...)` or `cached_run(...)`; the scripts live in
`tests/oracles/` and run under Python 3.7 with `PYTHONPATH=../shared/oracles/matterport_mrcnn`, so they can
`from mrcnn import model as modellib`. The environment follows the recipe of `../shared/oracles/README.md`:

    $MINIMASKRCNN_ORACLE_DIR   the venv (default ~/.cache/minimaskrcnn-oracles/mrcnn-py37), built once if missing;
                               a lock file next to it keeps parallel pytest processes from building it twice
    $MINIMASKRCNN_PY37         the Python 3.7 interpreter (default $(pyenv root)/versions/3.7.16/bin/python3.7)

A missing interpreter, a failed install or a failing script is `pytest.fail` (never a skip: the oracle is the test).
Outputs of expensive scripts are cached on disk under `<venv>/../outputs/<key>`, keyed by the script's source, its
parameters and the pinned requirements, so a change to any of them recomputes; each entry keeps what computing it
cost (oracle_cost.json: CPU seconds of the oracle process and its children, and wall seconds), printed when computed.
Least recently used entries beyond $MINIMASKRCNN_ORACLE_CACHE_BYTES (default 8 GiB; an entry is up to ~1 GB) are deleted.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import disk_cache

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MATTERPORT_SRC = SHARED / "oracles" / "matterport_mrcnn"
SCRIPTS = Path(__file__).resolve().parent / "oracles"
# Least recently used output entries beyond this many bytes are deleted (disk_cache.evict).
OUTPUTS_MAX_BYTES = int(os.environ.get("MINIMASKRCNN_ORACLE_CACHE_BYTES", 8 * 2**30))

# ../shared/oracles/README.md: the pinned stack matterport runs on unmodified.
REQUIREMENTS = ("tensorflow-cpu==1.15.0", "keras==2.2.5", "h5py==2.10.0", "numpy==1.18.5", "scikit-image==0.16.2",
                "scipy==1.4.1", "protobuf==3.20.3", "Pillow<10")
_MARKER = ".minimaskrcnn-oracle-complete"      # written last: its content is the requirement list that was installed


def env_dir() -> Path:
    default = Path.home() / ".cache" / "minimaskrcnn-oracles" / "mrcnn-py37"
    return Path(os.environ.get("MINIMASKRCNN_ORACLE_DIR") or default).expanduser()


def python37() -> Path:
    if os.environ.get("MINIMASKRCNN_PY37"):
        return Path(os.environ["MINIMASKRCNN_PY37"])
    root = None
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return Path(root or Path.home() / ".pyenv") / "versions" / "3.7.16" / "bin" / "python3.7"


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)        # blocks while another process builds
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(venv: Path) -> bool:
    marker = venv / _MARKER
    return (venv / "bin" / "python").exists() and marker.exists() and marker.read_text() == "\n".join(REQUIREMENTS)


def ensure_env() -> Path:
    """The oracle venv's python, building the venv first if it is missing or incomplete (pytest.fail if it can't)."""
    venv = env_dir()
    if _complete(venv):
        return venv / "bin" / "python"
    with _lock(venv.parent / (venv.name + ".lock")):
        if _complete(venv):                  # built by another process while we waited
            return venv / "bin" / "python"
        py = python37()
        if not py.exists():
            pytest.fail(f"matterport oracle: no Python 3.7 at {py} (set MINIMASKRCNN_PY37); the oracle environment "
                        f"of ../shared/oracles/README.md cannot be built", pytrace=False)
        if venv.exists():
            shutil.rmtree(venv)              # a half-built venv from an interrupted run
        steps = ([str(py), "-m", "venv", str(venv)],
                 [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", *REQUIREMENTS])
        for cmd in steps:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if r.returncode:
                pytest.fail(f"matterport oracle: building the environment failed ({' '.join(cmd[:3])} ...): "
                            f"{_tail(r.stderr or r.stdout)}", pytrace=False)
        (venv / _MARKER).write_text("\n".join(REQUIREMENTS))
    return venv / "bin" / "python"


def _tail(text, n=1500):
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def run_script(script: str, *args, timeout: float = 1200, threads: int = 2) -> subprocess.CompletedProcess:
    """Run `tests/oracles/<script>` with `args` in the oracle env; pytest.fail with its stderr if it fails."""
    python = ensure_env()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(MATTERPORT_SRC),
        "CUDA_VISIBLE_DEVICES": "",          # CPU only, as in the README recipe
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": str(threads),
        "MINIMASKRCNN_ORACLE_THREADS": str(threads),
    }
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):   # the machine's settings pass through unchanged
        if key in os.environ:
            env[key] = os.environ[key]
    cmd = [str(python), str(SCRIPTS / script), *map(str, args)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(SCRIPTS))
    except subprocess.TimeoutExpired:
        pytest.fail(f"matterport oracle: {script} did not finish in {timeout} s", pytrace=False)
    if r.returncode:
        pytest.fail(f"matterport oracle: {script} failed (exit {r.returncode}): {_tail(r.stderr)}", pytrace=False)
    return r


def cache_key(script: str, params: dict) -> str:
    h = hashlib.sha256()
    h.update((SCRIPTS / script).read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update("\n".join(REQUIREMENTS).encode())
    return h.hexdigest()[:20]


def cached_run(script: str, params: dict, timeout: float = 1200) -> Path:
    """Directory of the outputs of `script --out DIR --params JSON`, computed once per (script source, params).

    The script writes its files into DIR; the directory is filled in a temporary sibling and renamed into place, so
    a reader never sees half the outputs, and a lock keeps parallel processes from computing the same key twice."""
    outputs = env_dir().parent / "outputs"
    final = outputs / f"{Path(script).stem}-{cache_key(script, params)}"
    if final.is_dir():
        disk_cache.touch(final)
        return final
    with _lock(outputs / (final.name + ".lock")):
        if final.is_dir():
            disk_cache.touch(final)
            return final
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=outputs))
        try:
            before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            run_script(script, "--out", tmp, "--params", json.dumps(params), timeout=timeout)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cost = {"cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
                    "wall_s": round(time.perf_counter() - t0, 1)}
            (tmp / "oracle_cost.json").write_text(json.dumps(cost))     # what a cold run of this entry costs
            print(f"oracle {script} computed: {cost['cpu_s']} CPU-s, {cost['wall_s']} s wall -> {final.name}")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    disk_cache.evict((p for p in outputs.iterdir() if p.is_dir() and "." not in p.name), OUTPUTS_MAX_BYTES, keep=final)
    return final
