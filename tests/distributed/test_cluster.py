"""`segment --scheduler` / `--workers` and `minimaskrcnn.distributed.segment` on a real Dask cluster on 127.0.0.1: a
scheduler and two single-threaded worker processes (LocalCluster with processes, each worker under a nanny that
restarts it), against the single-process run of the same command (tests/runs.py: four photos and a truncated JPEG,
the shipped demo model, every output option).

The oracle here is the single-process run: the cluster's outputs must be the same files, the JSON bit for bit, the
pictures pixel for pixel, also when one worker is SIGKILLed while it runs an image.
"""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import distributed                 # part of the test extra: missing, this module fails (never skips)

import runs
from conftest import ROOT, checkout_env


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return runs.photo_folder(tmp_path_factory.mktemp("photos") / "in")


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory):
    """The single-process run that every cluster run must equal, at the workers' thread count (1): OpenBLAS's
    results depend on its thread count (with the Haswell kernel on the 2-core AMD EPYC, C2 of the demo model already
    differs between 1 and 2 threads, at float32 rounding level, also before 2026-12-02), ours do not."""
    out = tmp_path_factory.mktemp("reference") / "out"
    status, _, err = runs.run_segment(photos, out, "--threads", "1")
    assert status == 1 and err.count("\n") == 1 and runs.CORRUPT in err, err   # the truncated JPEG, by name
    return out


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as c, distributed.Client(c) as client:
        client.wait_for_workers(2, timeout=120)
        yield c, client


def test_worker_killed_mid_run_loses_nothing(photos, reference, cluster, tmp_path):
    c, client = cluster
    out = tmp_path / "out"
    p = subprocess.Popen(runs.segment_args(photos, out, "--scheduler", c.scheduler_address), cwd=ROOT,
                         env=checkout_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = []

    def an_image_done_and_one_running():
        if runs.journal_records(out) < 1:
            return False
        busy = [addr for addr, keys in client.processing().items()
                if any("minimaskrcnn-image" in str(k) for k in keys)]
        victim[:] = busy[:1]
        return bool(busy)
    try:
        runs.wait_until(an_image_done_and_one_running, p, runs.RUN_TIMEOUT_S, "a worker was busy mid-run")
        assert runs.journal_records(out) < len(runs.PHOTOS)          # mid-run: images are still to come
        pid = client.run(os.getpid, workers=victim)[victim[0]]
        os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=runs.RUN_TIMEOUT_S)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1 and err.count("\n") == 1 and runs.CORRUPT in err, err
    runs.assert_same_outputs(reference, out)
    client.wait_for_workers(2, timeout=120)                          # the nanny restarted it, for the next tests


def test_local_workers_equal_the_single_process_run(photos, reference, tmp_path):
    status, _, err = runs.run_segment(photos, tmp_path / "out", "--workers", "2")
    assert status == 1 and err.count("\n") == 1 and runs.CORRUPT in err, err
    runs.assert_same_outputs(reference, tmp_path / "out")


def test_python_api_yields_each_image_as_it_completes(photos, reference, cluster):
    import minimaskrcnn.distributed as mdist
    from minimaskrcnn.io import coco
    _, client = cluster
    paths = sorted(str(p) for p in photos.iterdir())
    results = list(mdist.segment(client, paths, runs.WEIGHTS, ahead=2))
    assert sorted(r.index for r in results) == list(range(len(paths)))
    expected = json.loads((reference / "coco_results.json").read_bytes())
    ids = coco.assign_image_ids(paths)
    for r in results:
        if os.path.basename(r.path) == runs.CORRUPT:
            assert r.error.startswith(r.path) and r.detections() is None
            continue
        assert r.error is None
        assert r.entries == [e for e in expected if e["image_id"] == ids[r.index]]
        det = r.detections()                                         # masks decoded from the RLE, in rank order
        assert [coco.encode(m >= 0.5) for m in det.masks] == [e["segmentation"] for e in r.entries]
        assert det.label_names == r.label_names and len(det) == len(r.entries)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_one_line_nothing_written(photos, tmp_path):
    env = checkout_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s")
    address = f"tcp://127.0.0.1:{_free_port()}"
    status, out, err = runs.run_segment(photos, tmp_path / "out", "--scheduler", address, env=env)
    assert status == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith("minimaskrcnn: error: cannot reach the Dask scheduler at " + address)
    assert not (tmp_path / "out").exists()


def test_workers_without_the_weights_one_line_nothing_written(photos, cluster, tmp_path):
    c, _ = cluster
    missing = tmp_path / "elsewhere" / "model.npz"                   # a path the workers cannot open
    status, _, err = runs.run_segment(photos, tmp_path / "out", "--scheduler", c.scheduler_address,
                                      "--weights", missing)
    assert status == 1 and err.count("\n") == 1, err
    assert "cannot load the weights" in err and str(missing) in err and "worker tcp://127.0.0.1" in err
    assert not (tmp_path / "out").exists()


def test_workers_without_minimaskrcnn_one_line_nothing_written(photos, tmp_path):
    """A worker process where `import minimaskrcnn` fails (a package of that name that raises, first on its path)."""
    shadow = tmp_path / "shadow" / "minimaskrcnn"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'minimaskrcnn'\")\n")
    with distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as c:
        env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", c.scheduler_address,
                                   "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                                  env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            status, out, err = runs.run_segment(photos, tmp_path / "out", "--scheduler", c.scheduler_address)
        finally:
            worker.kill()
            worker.wait(timeout=60)
    assert status == 1 and err.count("\n") == 1, err
    assert "cannot run minimaskrcnn" in err and "install minimaskrcnn" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--workers", "0"], "expected a positive integer"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not allowed with argument"),
])
def test_bad_cluster_options_are_usage_errors(photos, tmp_path, argv, needle):
    status, out, err = runs.run_segment(photos, tmp_path / "out", *argv)
    assert status == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_video_chunks_come_back_in_order(cluster, tmp_path):
    """A GIF of photo crops (the demo model finds shapes in them), every 2nd frame: the single-process loop against
    the cluster's chunks of 2 frames (three chunks on two workers, reassembled in order), and the CLI's --scheduler.
    Output GIF (frame durations included: the skipped frames extend the kept ones) and JSON lines, bit for bit."""
    import numpy as np
    from PIL import Image
    from minimaskrcnn.cli.segment import segment_video
    from minimaskrcnn.cli.steps import detector
    from minimaskrcnn.distributed import RunSpec
    from minimaskrcnn.distributed.client import map_frames
    import minimaskrcnn
    from videos import write
    c, client = cluster
    crops = [np.asarray(Image.open(runs.IMAGES / name).convert("RGB"))[y:y + 200, x:x + 260]
             for name in runs.PHOTOS for y, x in ((0, 0), (90, 180), (40, 60))][:10]
    src = tmp_path / "clip.gif"
    write(src, crops, 10)
    detect = detector(minimaskrcnn.load(runs.WEIGHTS), 0.5, None)
    minimaskrcnn.set_num_threads(1)         # the workers' thread count (see `reference`): OpenBLAS's bits depend on it
    try:
        segment_video(detect, src, tmp_path / "one.gif", every=2, jsonl=tmp_path / "one.jsonl")
    finally:
        minimaskrcnn.set_num_threads(os.cpu_count())
    lines = (tmp_path / "one.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(x)["detections"] for x in lines)   # not vacuous

    spec = RunSpec(str(runs.WEIGHTS), 0.5, 0.5)
    segment_video(None, src, tmp_path / "two.gif", every=2, jsonl=tmp_path / "two.jsonl",
                  process=lambda frames: map_frames(client, frames, spec, chunk=2, ahead=2))
    p = subprocess.run([sys.executable, "-m", "minimaskrcnn", "video", str(src), "-o", str(tmp_path / "cli.gif"),
                        "--jsonl", str(tmp_path / "cli.jsonl"), "--every", "2", "--weights", str(runs.WEIGHTS),
                        "--scheduler", c.scheduler_address, "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, env=checkout_env(), timeout=runs.RUN_TIMEOUT_S)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    for name in ("two", "cli"):
        assert (tmp_path / f"{name}.gif").read_bytes() == (tmp_path / "one.gif").read_bytes(), name
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes(), name


def _threads_in_a_task():
    """Run in a task thread of a worker: the counts `cache.predict` sets there before a predict."""
    import numba
    import threadpoolctl
    from minimaskrcnn.distributed import cache
    cache._set_threads(cache.worker_threads())
    blas = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
    return cache.worker_threads(), numba.get_num_threads(), blas


def test_numba_and_blas_threads_follow_the_worker_thread_count(cluster):
    """One-thread workers run one thread of each; a two-thread worker two (its nanny started the BLAS with one)."""
    _, client = cluster
    fn = lambda: _threads_in_a_task()                                # noqa: E731 (pickled by value, with its global)
    assert client.submit(fn, pure=False).result(timeout=120) == (1, 1, {1})
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as c, distributed.Client(c) as two:
        assert two.submit(fn, pure=False).result(timeout=120) == (2, 2, {2})


def test_without_the_extra_says_how_to_install_it(photos, tmp_path):
    """dask.distributed missing (a package of that name that fails to import, first on the path)."""
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'distributed'\")\n")
    env = checkout_env()
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env["PYTHONPATH"]])
    status, out, err = runs.run_segment(photos, tmp_path / "out", "--workers", "2", env=env)
    assert status == 1 and err.count("\n") == 1, err
    assert 'pip install "minimaskrcnn[distributed]"' in err
    assert not (tmp_path / "out").exists()
