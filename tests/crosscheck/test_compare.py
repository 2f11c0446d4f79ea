"""`minimaskrcnn trace` / `compare` (issue 8): minimaskrcnn's and torchvision's traces of a shared photo agree under
the default (facts §10.4) tolerances; a stage perturbed beyond its tolerance fails the comparison; reordered sets still
match; missing stages are listed; bad files give one line. The torchvision twin of a Config is checked bit for bit.

One calibrated random Mask R-CNN (tests/tv_models.py, facts §10.3) on dog.jpg, converted once per module; both traces
are written through the command line.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import oracle
import tv_models
from conftest import IMAGES, ROOT
from minimaskrcnn.crosscheck import compare
from minimaskrcnn import trace as trace_module
from minimaskrcnn.trace import load_trace, save_trace

PHOTO = IMAGES / "dog.jpg"
ARCH = "maskrcnn_resnet50_fpn"


def run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "minimaskrcnn", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=1800)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from weights_convert import convert
    torch = oracle.torch()
    model = tv_models.calibrated_model(ARCH, tv_models.load_photo(PHOTO))
    folder = tmp_path_factory.mktemp("compare")
    torch.save(model.state_dict(), folder / "calibrated.pth")
    npz = convert(folder / "calibrated.pth", folder / "calibrated.npz")
    (folder / "calibrated.pth").unlink()
    yield npz
    npz.unlink()


@pytest.fixture(scope="module")
def traces(weights):
    """(ours.npz, tv.npz) written by `minimaskrcnn trace`, torchvision with 2 threads (docs/trace_format.md)."""
    folder = weights.parent
    ours, tv = folder / "ours.npz", folder / "tv.npz"
    status, out, err = run("trace", PHOTO, "-o", ours, "--weights", weights, "--threads", "2")
    assert status == 0, err
    assert "proposals" in out and f"written to {ours}" in out
    status, out, err = run("trace", PHOTO, "-o", tv, "--weights", weights, "--threads", "2", "--torchvision")
    assert status == 0, err
    yield ours, tv
    for path in (ours, tv):                          # ~0.45 GB each for this photo
        path.unlink()


def table_rows(stdout: str) -> dict:
    """stage -> the table line of `compare`'s output."""
    return {line.split()[0]: line for line in stdout.splitlines() if line and not line.startswith(("A:", "B:"))}


def test_torchvision_and_minimaskrcnn_agree(traces):
    ours, tv = traces
    status, out, err = run("compare", tv, ours)
    print(out)
    assert status == 0, out + err
    rows = table_rows(out)
    expected = ["image", "normalized", "C2", "C5", "P2", "P6", "anchors", "objectness", "rpn_deltas", "proposals",
                "proposal_scores", "roi_levels", "box_features", "class_logits", "box_deltas", "boxes", "scores",
                "mask_features", "mask_logits", "mask_probs", "final_boxes", "masks", "image_size"]
    for stage in expected:
        assert stage in rows, stage
        assert "(" in rows[stage]                                            # the shapes
    checked = [s for s in expected if s != "labels"]
    assert all(f" ok " in rows[s] for s in checked), out
    assert "matched 100% >= 98%" in rows["boxes"] or "matched 99" in rows["boxes"]
    assert "torchvision" in out.splitlines()[0] and "minimaskrcnn" in out.splitlines()[1]
    assert "within tolerance" in out.splitlines()[-1]
    a, meta = load_trace(tv)
    assert meta["format"] == trace_module.FORMAT and "config" in meta
    assert len(a["boxes"]) > 0, "no detection: the comparison would prove little"


def _modified(path, out, **changes):
    """Write a copy of trace `path` to `out` with stages replaced (array) or removed (None)."""
    t, meta = load_trace(path)
    for name, value in changes.items():
        if value is None:
            del t[name]
        else:
            t[name] = value
    save_trace(t, out, **meta)
    return out


def test_perturbed_stage_fails_and_tolerance_overrides(traces, tmp_path):
    ours, tv = traces
    t, _ = load_trace(ours)
    p3 = t["P3"] + np.float32(2e-3) * np.abs(t["P3"]).max()                # rel 2e-3 > 1e-3
    bad = _modified(ours, tmp_path / "p3.npz", P3=p3)
    status, out, err = run("compare", tv, bad)
    rows = table_rows(out)
    assert status == 1, out
    assert " FAIL " in rows["P3"] and " ok " in rows["P4"] and " ok " in rows["boxes"]
    assert out.splitlines()[-1] == "FAIL: P3 beyond tolerance"
    status, out, _ = run("compare", tv, bad, "--tolerance", "P3=3e-3")
    assert status == 0, out
    status, out, _ = run("compare", tv, bad, "--tolerance", "P=3e-3", "P3=1e-3")   # the specific key wins
    assert status == 1, out
    bad.unlink()


def test_shifted_proposals_fail_reordered_sets_match(traces):
    ours, tv = traces
    a, _ = load_trace(tv)
    b, _ = load_trace(ours)
    shifted = dict(b, proposals=b["proposals"] + np.float32(0.5))            # 0.5 px > 0.1 px
    rows = {r.stage: r for r in compare.compare_traces(a, shifted)}
    assert rows["proposals"].status == "FAIL" and rows["boxes"].status == "ok"
    # The same sets in another order: proposals and every per-proposal row permuted together still agree ...
    perm = np.random.default_rng(0).permutation(len(b["proposals"]))
    reordered = dict(b, **{k: b[k][perm] for k in ("proposals", "proposal_scores", "roi_levels", "box_features",
                                                    "class_logits", "box_deltas")})
    results = compare.compare_traces(a, reordered)
    assert compare.passed(results), compare.format_table(results)
    # ... but rows permuted without their proposals are compared against the wrong proposals.
    rows = {r.stage: r for r in compare.compare_traces(a, dict(b, class_logits=b["class_logits"][perm]))}
    assert rows["class_logits"].status == "FAIL" and rows["box_deltas"].status == "ok"


def test_missing_stages_are_listed_not_errors(traces, tmp_path):
    ours, tv = traces
    partial = _modified(ours, tmp_path / "partial.npz", box_features=None, masks=None)
    status, out, err = run("compare", tv, partial)
    assert status == 0, out
    assert "missing in B: box_features, masks" in out
    assert "box_features" not in table_rows(out)
    partial.unlink()


def test_bad_files_one_line_errors(traces, tmp_path):
    ours, _ = traces
    text = tmp_path / "text.npz"
    text.write_text("not an archive\n")
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros(3))
    objects = tmp_path / "objects.npz"
    np.savez(objects, boxes=np.array([{"a": 1}], dtype=object))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(ours.read_bytes()[:4096])
    cases = [(text, "not an .npz archive"), (npy, "not an .npz archive"), (objects, "Object arrays"),
             (truncated, "not a readable trace file"), (tmp_path / "missing.npz", "No such file")]
    for path, reason in cases:
        status, out, err = run("compare", path, ours)
        assert status == 1, (path, err)
        assert err.count("\n") == 1 and err.startswith(f"minimaskrcnn: error: {path}: ") and reason in err, err
    status, _, err = run("compare", ours, ours, "--tolerance", "P3")
    assert status == 2 and "STAGE=VALUE" in err and err.count("\n") == 1


def test_trace_file_roundtrip(tmp_path):
    from minimaskrcnn.trace import Trace
    t = Trace()
    t.record(image=np.zeros((3, 4, 5), np.float32), image_size=np.array([4, 5]), labels=np.arange(3))
    t.timings["transform"] = 0.5
    for compress in (False, True):
        save_trace(t, tmp_path / "t.npz", compress, producer="test")
        back, meta = load_trace(tmp_path / "t.npz")
        assert list(back) == ["image", "image_size", "labels"]
        assert back["labels"].dtype == np.int64 and back["image"].shape == (3, 4, 5)
        assert meta == {"format": trace_module.FORMAT, "version": trace_module.FORMAT_VERSION, "producer": "test",
                        "timings": {"transform": 0.5}}


@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn_v2", tv_models.SMALL_ARCH])
def test_torchvision_model_is_the_twin(arch):
    """torchvision_model(config, state_dict) rebuilds a torchvision model that computes bitwise what the original
    does (v2: BatchNorm FPN and heads, conv box head; small: ResNet-18, three returned layers, four classes)."""
    from minimaskrcnn.crosscheck.torch_trace import torchvision_model
    torch = oracle.torch()
    small = {"min_size": 160, "max_size": 256}
    picture = tv_models.structured_image(120, 160, 1)
    reference = tv_models.calibrated_model(arch, picture, seed=1, **small)
    twin = torchvision_model(tv_models.config_for(arch, **small), tv_models.state_dict_numpy(reference))
    image = torch.from_numpy(picture.transpose(2, 0, 1).copy())
    with torch.no_grad():
        a, b = reference([image])[0], twin([image])[0]
    assert set(a) == set(b) and len(a["boxes"]) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
