"""A long `segment` run killed with SIGKILL keeps the images it finished (the journal in OUT), and `--resume` finishes
it: the outputs then equal an uninterrupted run's (tests/runs.py: the results JSON bit for bit, pictures pixel for
pixel), and the images done before the kill are not done again.

The kill is timed on the journal, not on the clock: the run is killed as soon as its first record is complete, while
the other photos are still to come.
"""
import os
import signal
import subprocess

import runs
from conftest import ROOT, checkout_env
from minimaskrcnn.io.journal import JOURNAL_NAME


def test_killed_run_resumes_to_the_uninterrupted_outputs(tmp_path):
    photos = runs.photo_folder(tmp_path / "in")
    reference, out = tmp_path / "reference", tmp_path / "out"
    status, _, err = runs.run_segment(photos, reference)
    assert status == 1 and runs.CORRUPT in err, err
    assert not (reference / JOURNAL_NAME).exists()                   # a run that reached its end removes it

    p = subprocess.Popen(runs.segment_args(photos, out), cwd=ROOT, env=checkout_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        runs.wait_until(lambda: runs.journal_records(out) >= 1, p, runs.RUN_TIMEOUT_S, "the first image was done")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL
    done_before = runs.journal_records(out)
    assert 1 <= done_before < len(runs.PHOTOS)                        # killed mid-run
    assert not (out / "coco_results.json").exists()
    first = os.path.splitext(sorted(runs.PHOTOS)[0])[0]              # the run goes in input order (by name)
    overlay = out / f"{first}_overlay.png"
    before = os.stat(overlay)

    status, stdout, err = run_resume(photos, out)
    assert status == 1 and err.count("\n") == 1 and runs.CORRUPT in err, err
    runs.assert_same_outputs(reference, out)
    assert os.stat(overlay).st_mtime_ns == before.st_mtime_ns and os.stat(overlay).st_ino == before.st_ino


def run_resume(photos, out, *extra):
    p = subprocess.run([*runs.segment_args(photos, out, *extra), "--resume"], capture_output=True, text=True,
                       cwd=ROOT, env=checkout_env(), timeout=runs.RUN_TIMEOUT_S)
    return p.returncode, p.stdout, p.stderr


def test_resume_with_other_options_is_refused_and_writes_nothing(tmp_path):
    from minimaskrcnn.io.journal import Journal
    photos = runs.photo_folder(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    settings = {"minimaskrcnn": "0", "weights": ["elsewhere.npz"], "json": True}
    Journal.open(out, settings, resume=False).close()
    journal = (out / JOURNAL_NAME).read_bytes()
    status, _, err = run_resume(photos, out)
    assert status == 1 and err.count("\n") == 1, err
    assert "other settings" in err and "without --resume" in err
    assert all(key in err.split("(")[-1] for key in ("minimaskrcnn", "weights", "score_threshold", "cutouts"))
    assert os.listdir(out) == [JOURNAL_NAME] and (out / JOURNAL_NAME).read_bytes() == journal
