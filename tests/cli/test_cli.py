"""The command line without the network: help, argument errors, input expansion, error lines, progress bar.

Runs of `python -m minimaskrcnn` that need a model are in tests/cli/test_end_to_end.py.
"""
import io
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from conftest import IMAGES, ROOT, SHARED
from minimaskrcnn.cli import main as cli
from minimaskrcnn.cli import options, steps
from minimaskrcnn.io import files
from minimaskrcnn.config import COCO_CATEGORIES
from minimaskrcnn.io.images import find_images
from minimaskrcnn.cli.progress import Progress


def run(*args, cwd=None, pre=""):
    """`python -m minimaskrcnn ARGS` (or, with `pre`, the same after running `pre`): (status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MINIMASKRCNN_HOME=str(ROOT / ".no-such-cache"))
    code = f"{pre}\nimport sys\nfrom minimaskrcnn.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       env=env, timeout=300)
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(stderr, *needles):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("minimaskrcnn") and ": error: " in lines[0]
    assert "Traceback" not in stderr
    for n in needles:
        assert n in lines[0], lines[0]


# --- help ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["segment", "--help"], ["video", "--help"]])
def test_help_shows_examples(argv):
    status, out, err = run(*argv)
    assert status == 0 and err == ""
    assert "examples:" in out and "minimaskrcnn " in out.split("examples:")[1]


def test_python_dash_m_entry_point():
    p = subprocess.run([sys.executable, "-m", "minimaskrcnn", "--version"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("minimaskrcnn ")


def test_no_command_prints_help_and_fails():
    status, out, err = run()
    assert status == 2 and "segment" in err and "video" in err


# --- argument errors ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["segment", "x.jpg"], "required"),
    (["segment", "x.jpg", "-o", "out", "--score-threshold", "1.5"], "--score-threshold"),
    (["segment", "x.jpg", "-o", "out", "--mask-threshold", "abc"], "--mask-threshold"),
    (["segment", "x.jpg", "-o", "out", "--threads", "0"], "--threads"),
    (["video", "in.avi", "-o", "out.mp4", "--every", "-2"], "--every"),
    (["bogus"], "invalid choice"),
    (["bench", "--sizes", "12x"], "--sizes"),           # bench's parser lacked the common options: a traceback
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--peers", "minimaskrcnn,tensorflow"], "--peers"),
    (["bench", "--throughput", "0"], "--throughput"),
    (["demo", "-o", "out", "--threads", "-1"], "--threads"),
])
def test_bad_arguments_one_line_exit_2(tmp_path, argv, needle):
    status, out, err = run(*argv, cwd=tmp_path)
    assert status == 2
    assert_one_line_error(err, needle, "--help")


@pytest.mark.parametrize("names", [("a", "b"), ("arr_0", "arr_0")])
def test_compare_of_files_that_are_not_traces_fails(tmp_path, names):
    """Two .npz files with no trace stage in common: nothing compared is a failure, not "all 0 stages ok"."""
    import numpy as np
    paths = []
    for i, name in enumerate(names):
        paths.append(tmp_path / f"{i}.npz")
        np.savez(paths[-1], **{name: np.zeros(3)})
    status, out, err = run("compare", *paths)
    assert status == 1 and out == ""
    assert_one_line_error(err, "nothing was compared")


def test_unknown_class_lists_valid_names_before_loading_anything(tmp_path):
    status, out, err = run("segment", IMAGES / "dog.jpg", "-o", tmp_path / "out", "--classes", "dog,persn")
    assert status == 2
    assert_one_line_error(err, "'persn'", "person", "toothbrush")
    assert "N/A" not in err and "__background__" not in err
    assert os.listdir(tmp_path / "out") == []


def test_missing_inputs_exit_2_one_line_each(tmp_path):
    (tmp_path / "empty").mkdir()
    status, out, err = run("segment", tmp_path / "nope.jpg", tmp_path / "empty", tmp_path / "*.png",
                           "-o", tmp_path / "out")
    assert status == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("minimaskrcnn: error: ") for line in lines)
    assert "no such file" in lines[0] and "no images in this folder" in lines[1] and "no image matches" in lines[2]


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    status, out, err = run("segment", IMAGES / "dog.jpg", "-o", blocker / "out")
    assert status == 1
    assert_one_line_error(err, str(blocker / "out"), "output folder")


def test_unknown_video_format(tmp_path):
    status, out, err = run("video", SHARED / "video" / "vtest.avi", "-o", tmp_path / "out.xyz")
    assert status == 2
    assert_one_line_error(err, ".xyz", ".mp4", ".gif")


def test_video_refuses_to_overwrite_its_input(tmp_path):
    gif = tmp_path / "a.gif"
    Image.new("RGB", (8, 8)).save(gif)
    status, out, err = run("video", gif, "-o", gif)
    assert status == 2
    assert_one_line_error(err, "refusing to overwrite")


def test_video_without_pyav_says_how_to_install(tmp_path):
    status, out, err = run("video", SHARED / "video" / "vtest.avi", "-o", tmp_path / "out.mp4",
                           pre="import sys; sys.modules['av'] = None")
    assert status == 1
    assert_one_line_error(err, 'pip install "minimaskrcnn[video]"')
    assert not (tmp_path / "out.mp4").exists()


def test_missing_video_input(tmp_path):
    status, out, err = run("video", tmp_path / "missing.avi", "-o", tmp_path / "out.mp4")
    assert status == 1
    assert_one_line_error(err, "missing.avi", "no such file")


def test_debug_shows_the_traceback(tmp_path):
    status, out, err = run("segment", IMAGES / "dog.jpg", "-o", tmp_path, "--classes", "persn", "--debug")
    assert status != 0 and "Traceback" in err and "UsageError" in err


def test_unexpected_errors_get_a_debug_hint():
    assert options.describe(RuntimeError("boom\nsecond line")) == \
        "unexpected RuntimeError: boom second line (rerun with --debug for the traceback)"
    assert options.describe(ValueError("x.png: bad")) == "x.png: bad"
    assert options.describe(FileNotFoundError(2, "No such file or directory", "w.npz")) == \
        "w.npz: No such file or directory"


# --- pieces -------------------------------------------------------------------------------------------------------------

def _touch_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def test_find_images_folders_globs_and_duplicates(tmp_path):
    _touch_images(tmp_path / "a", ["b.png", "a.JPG", "notes.txt", "c.webp"])
    _touch_images(tmp_path / "a" / "sub", ["d.png"])
    (tmp_path / "x.dat").write_bytes(b"")
    files, problems = find_images([str(tmp_path / "a"), str(tmp_path / "a" / "b.png"), str(tmp_path / "x.dat"),
                                         str(tmp_path / "a" / "*.png"), str(tmp_path / "nope")])
    names = [os.path.relpath(f, tmp_path) for f in files]
    assert names == ["a/a.JPG", "a/b.png", "a/c.webp", "x.dat"]      # sorted folder, dupes dropped, named file kept
    assert problems == [(str(tmp_path / "nope"), "no such file or directory")]
    files, _ = find_images([str(tmp_path / "a")], recursive=True)
    assert [os.path.relpath(f, tmp_path) for f in files] == ["a/a.JPG", "a/b.png", "a/c.webp", "a/sub/d.png"]
    files, _ = find_images([str(tmp_path / "**" / "*.png")], recursive=True)
    assert [os.path.relpath(f, tmp_path) for f in files] == ["a/b.png", "a/sub/d.png"]


def test_unique_stems():
    assert files.output_stems(["a/x.jpg", "b/x.png", "X.gif", "y.png"]) == ["x", "x-2", "X-3", "y"]


def test_class_ids():
    assert steps.class_ids([], COCO_CATEGORIES) is None
    assert steps.class_ids(["Dog", "person", "dog"], COCO_CATEGORIES) == [1, 18]
    with pytest.raises(options.UsageError, match="'N/A'"):
        steps.class_ids(["N/A"], COCO_CATEGORIES)
    assert steps.class_list(" person, traffic light ,") == ["person", "traffic light"]


def test_threads_set_before_heavy_imports(monkeypatch):
    # A private environment: the variables _set_threads writes must not outlive this test (monkeypatch.delenv of an
    # absent variable records nothing to undo), and Numba, as in a fresh CLI process, is not loaded yet. Otherwise
    # Numba's pool would run with 3 threads in this pytest process, and every later compilation would refuse the
    # changed NUMBA_NUM_THREADS. Reaching Numba is checked in a fresh process by the next test.
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in cli.THREAD_VARIABLES})
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    cli._set_threads(3)
    assert all(os.environ[name] == "3" for name in cli.THREAD_VARIABLES)


def test_threads_reach_numba_in_a_fresh_process(tmp_path):
    code = ("import numba\nprint(numba.config.NUMBA_NUM_THREADS, numba.get_num_threads())")
    status, out, err = run("segment", IMAGES / "dog.jpg", "-o", tmp_path, "--threads", "1", "--classes", "persn",
                           pre=f"import atexit\natexit.register(lambda: exec({code!r}))")
    assert status == 2 and out.split() == ["1", "1"]


def test_progress_bar_only_on_a_terminal():
    quiet = io.StringIO()
    with Progress(3, "images", stream=quiet) as p:                    # StringIO is not a tty: nothing drawn
        p.update()
        p.write("minimaskrcnn: error: x")
    assert quiet.getvalue() == "minimaskrcnn: error: x\n"
    shown = io.StringIO()
    with Progress(4, "images", enabled=True, stream=shown) as p:
        p.update(2)
        p.write("an error")
        p.update(2)
    text = shown.getvalue()
    assert "2/4 images" in text and "4/4 images" in text and "an error\n" in text and text.endswith("\n")
    assert Progress(None, "frames", enabled=False).render(2.0) == "0 frames"


def test_installed_console_script_runs_from_any_directory(tmp_path):
    """The README's commands install the package; its `minimaskrcnn` script must then work outside the checkout."""
    import minimaskrcnn
    script = shutil.which("minimaskrcnn")
    assert script, "no `minimaskrcnn` on PATH: install the package first (the README's commands do)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([script, "--version"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["minimaskrcnn", minimaskrcnn.__version__]
