"""Reading matterport's Keras `.h5` files, checked bitwise against what Keras itself reports (the oracle env).

The `.h5` files are made by matterport's own code, with what `layer.get_weights()` held dumped beside them: the
ResNet-50 / 4-class (non-default head sizes, also saved by `keras_model.save` as a full model) and ResNet-101 /
81-class files are the parity cases' own (tests/matterport_cases.py `reference`, tests/oracles/matterport_dump.py:
calibrated weights, `keras_model.save_weights`), so no model is built twice; the training graph's file, which no case
provides, comes from `tests/oracles/mrcnn_save_weights.py` (seeded-random weights) at a small config. Bitwise means
the float32 bytes are equal: no tolerance applies to reading a file.
"""
import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import matterport_cases
import matterport_oracle
from minimaskrcnn.matterport.config import MATTERPORT_COCO_CLASS_NAMES
from weights_convert import CheckpointError, convert
from weights_convert.__main__ import main as weights_convert_main
from weights_convert.keras_h5 import read_keras_h5
from weights_convert.matterport_convert import read_matterport, read_matterport_npz

# the training graph, whose weights matterport's training loop checkpoints (what users' own models are saved from),
# at the smallest config that builds it (the image size only sizes the graph's inputs; the layout is the same)
TRAINING = {"BACKBONE": "resnet50", "NUM_CLASSES": 3, "seed": 3, "full_save": False, "mode": "training",
            "IMAGE_MAX_DIM": 256, "IMAGE_MIN_DIM": 256}


@pytest.fixture(scope="module")
def r50():
    return matterport_cases.reference("small_r50")


@pytest.fixture(scope="module")
def training():
    out = matterport_oracle.cached_run("mrcnn_save_weights.py", TRAINING, timeout=1800)
    return {"dir": out, "weights.h5": out / "weights.h5", "params": TRAINING}


@pytest.fixture(scope="module")
def r101():
    return matterport_cases.reference("coco_r101")


def _keras_arrays(out):
    """{our key: array} as Keras reported it: "<layer>/<weight>", the RPN's inner layers by their own names."""
    report = json.loads((out / "report.json").read_text())
    with np.load(out / "keras.npz") as z:
        return {f"{e['inner_layer'] or e['layer']}/{e['weight'].rsplit('/', 1)[-1]}": z[e["array"]]
                for e in report["weights"]}, report


def _assert_bitwise(ours, keras):
    assert list(ours) and set(ours) == set(keras)
    for key, expected in keras.items():
        got = ours[key]
        assert got.dtype == np.float32 and got.shape == expected.shape, key
        assert got.tobytes() == expected.astype(np.float32).tobytes(), key


@pytest.mark.parametrize("case, filename", [("r50", "weights.h5"), ("r50", "full.h5"), ("r101", "weights.h5"),
                                            ("training", "weights.h5")])
def test_every_weight_is_bitwise_what_keras_holds(case, filename, request):
    ref = request.getfixturevalue(case)
    keras, report = _keras_arrays(ref["dir"])
    arrays, facts, _, info = read_keras_h5(ref[filename])
    _assert_bitwise(arrays, keras)
    params = ref["params"]
    assert facts["BACKBONE"] == params["BACKBONE"] and facts["NUM_CLASSES"] == params["NUM_CLASSES"]
    assert facts["TOP_DOWN_PYRAMID_SIZE"] == params.get("TOP_DOWN_PYRAMID_SIZE", 256)
    assert facts["FPN_CLASSIF_FC_LAYERS_SIZE"] == params.get("FPN_CLASSIF_FC_LAYERS_SIZE", 1024)
    assert facts["POOL_SIZE"] == params.get("POOL_SIZE", 7) and facts["ANCHORS_PER_LOCATION"] == 3
    assert info["layout"] == ("full model" if filename == "full.h5" else "save_weights")
    if filename == "full.h5":
        print(f"full-model file written by: {report['full_save']}")


def test_config_from_the_file_and_the_user(r50, r101):
    cfg, _ = read_matterport(r101["weights.h5"])
    assert (cfg.BACKBONE, cfg.NUM_CLASSES, cfg.class_names) == ("resnet101", 81, MATTERPORT_COCO_CLASS_NAMES)
    cfg, _ = read_matterport(r50["weights.h5"], config={"IMAGE_MIN_DIM": 512, "DETECTION_MIN_CONFIDENCE": 0.5},
                             class_names=["a", "b", "c"])
    assert (cfg.BACKBONE, cfg.NUM_CLASSES, cfg.POOL_SIZE, cfg.IMAGE_MIN_DIM) == ("resnet50", 4, 5, 512)
    assert cfg.class_names == ("BG", "a", "b", "c") and cfg.DETECTION_MIN_CONFIDENCE == 0.5
    assert read_matterport(r50["weights.h5"])[0].class_names == ("BG", "class_1", "class_2", "class_3")
    with pytest.raises(CheckpointError, match=r"NUM_CLASSES 81 contradicts the weights file, which has NUM_CLASSES 4 "
                                              r"\(mrcnn_class_logits/kernel:0 is \(256, 4\)\)"):
        read_matterport(r50["weights.h5"], config={"NUM_CLASSES": 81})
    with pytest.raises(CheckpointError, match="BACKBONE \"resnet101\" contradicts .* \"resnet50\" \\(6 res4 blocks"):
        read_matterport(r50["weights.h5"], config={"BACKBONE": "resnet101"})


def test_converted_npz_reads_back_to_the_same_arrays(r50, tmp_path, capsys):
    dst = tmp_path / "m.npz"
    assert weights_convert_main([str(r50["weights.h5"]), "-o", str(dst), "--set", "IMAGE_MIN_DIM=512"]) == 0
    assert "matterport_maskrcnn_resnet50, 4 classes, bn_eps 0.001" in capsys.readouterr().out
    cfg, arrays, meta = read_matterport_npz(dst)
    assert meta["family"] == "matterport" and cfg.IMAGE_MIN_DIM == 512
    keras, _ = _keras_arrays(r50["dir"])
    _assert_bitwise(arrays, keras)
    assert read_matterport(dst, config={"IMAGE_MIN_DIM": 640})[0].IMAGE_MIN_DIM == 640
    with np.load(dst, allow_pickle=False) as z:
        assert len(z.files) == len(keras) + 1


# --- pytorch-mask-rcnn: its convert_from_keras.py rules, re-expressed, applied with torch ---------------------------
def _pytorch_mask_rcnn_key(keras_key):
    """convert_from_keras.py's renaming of "<layer>.<weight>" (ordered substring rules, then two exact ones)."""
    rules = [("beta:0", "bias"), ("gamma:0", "weight"), ("moving_mean:0", "running_mean"),
             ("moving_variance:0", "running_var"), ("bias:0", "bias"), ("kernel:0", "weight"),
             ("mrcnn_mask_", "mask."), ("mrcnn_mask", "mask.conv5"), ("mrcnn_class_", "classifier."),
             ("logits", "linear_class"), ("mrcnn_bbox_fc", "classifier.linear_bbox"), ("rpn_", "rpn."),
             ("class_raw", "conv_class"), ("bbox_pred", "conv_bbox"), ("bn_conv1", "fpn.C1.1")]
    for s in (2, 3, 4, 5):
        rules += [(f"bn{s}a_branch1", f"fpn.C{s}.0.downsample.1"), (f"res{s}a_branch1", f"fpn.C{s}.0.downsample.0")]
    rules += [(f"fpn_c{s}p{s}", f"fpn.P{s}_conv1") for s in (2, 3, 4, 5)]
    rules += [(f"fpn_p{s}", f"fpn.P{s}_conv2.1") for s in (2, 3, 4, 5)]
    for s, n in ((2, 3), (3, 4), (4, 23), (5, 3)):
        for b in range(n):
            for j in range(3):
                tag = f"{s}{'abcdefghijklmnopqrstuvwxyz'[b]}_branch2{'abc'[j]}"
                rules += [(f"bn{tag}", f"fpn.C{s}.{b}.bn{j + 1}"), (f"res{tag}", f"fpn.C{s}.{b}.conv{j + 1}")]
    key = keras_key
    for old, new in rules:
        key = key.replace(old, new)
    return {"conv1.bias": "fpn.C1.0.bias", "conv1.weight": "fpn.C1.0.weight"}.get(key, key)


@pytest.mark.parametrize("legacy", [False, True])
def test_pytorch_mask_rcnn_pth_made_from_the_h5_loads_bitwise(r50, tmp_path, legacy):
    import oracle
    torch = oracle.torch()
    state = {}
    with h5py.File(r50["weights.h5"], "r") as f:        # walked as convert_from_keras.py walks it
        for group in f.values():
            for layer_name, layer in group.items():
                for weight_name, weight in layer.items():
                    a = weight[()]
                    a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a
                    state[_pytorch_mask_rcnn_key(f"{layer_name}.{weight_name}")] = torch.from_numpy(a.copy())
    assert "classifier.linear_class.weight" in state and "fpn.C4.5.bn3.running_var" in state
    pth = tmp_path / "mask_rcnn.pth"
    torch.save(state, pth, _use_new_zipfile_serialization=not legacy)
    cfg, arrays = read_matterport(pth)
    keras, _ = _keras_arrays(r50["dir"])
    _assert_bitwise(arrays, keras)
    assert (cfg.BACKBONE, cfg.NUM_CLASSES) == ("resnet50", 4)
    dst = convert(pth, tmp_path / "from_pth.npz")
    _assert_bitwise(read_matterport(dst)[1], keras)


# --- bad input ----------------------------------------------------------------------------------------------------
def _write_keras(path, layers, *, nest=None):
    """A Keras save_weights layout: layers = {layer: {weight name: array}} (weightless layers: {})."""
    with h5py.File(path, "w") as f:
        root = f.create_group(nest) if nest else f
        root.attrs["layer_names"] = np.array([n.encode() for n in layers])
        root.attrs["backend"], root.attrs["keras_version"] = b"tensorflow", b"2.2.5"
        for name, weights in layers.items():
            g = root.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode() for w in weights])
            for w, a in weights.items():
                g.create_dataset(w, data=a)
    return path


def _dense(*names):
    rng = np.random.default_rng(0)
    return {n: {f"{n}/kernel:0": rng.standard_normal((4, 3), dtype=np.float32),
                f"{n}/bias:0": np.zeros(3, np.float32)} for n in names}


def _one_line_error(path, match, **kw):
    with pytest.raises(CheckpointError, match=match) as e:
        read_matterport(path, **kw)
    assert "\n" not in str(e.value)


def test_a_keras_file_of_another_model_says_what_it_found(tmp_path):
    path = _write_keras(tmp_path / "other.h5", {"input_1": {}, **_dense("dense_1", "dense_2")})
    _one_line_error(path, "other.h5 is a Keras model with layers dense_1, dense_2 — not matterport Mask R-CNN")
    backbone = {"conv1": {"conv1/kernel:0": np.zeros((7, 7, 3, 64), np.float32)}, "bn_conv1": {}}
    _one_line_error(_write_keras(tmp_path / "imagenet.h5", backbone), "no layers fpn_c5p5, .*a ResNet backbone")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["data"] = np.zeros(3)
    _one_line_error(tmp_path / "plain.h5", "plain.h5 is an HDF5 file but not Keras weights \\(no layer_names")


@pytest.mark.parametrize("name, match", [
    ("model.ckpt.index", "TensorFlow checkpoint"), ("model.ckpt.data-00000-of-00001", "TensorFlow checkpoint"),
    ("model.ckpt", "TensorFlow checkpoint"), ("model.ckpt.meta", "TensorFlow checkpoint"),
    ("frozen_inference_graph.pb", "TensorFlow graph"), ("notes.txt", "neither HDF5 nor a readable PyTorch")])
def test_tensorflow_files_given_by_mistake(tmp_path, name, match):
    (tmp_path / name).write_bytes(b"\x08\x01\x12\x04abcd" * 10)
    _one_line_error(tmp_path / name, f"{match}.*expected matterport's Keras .h5")


def test_links_external_storage_and_compression_are_refused(tmp_path):
    other = _write_keras(tmp_path / "other.h5", _dense("dense_1"))
    path = _write_keras(tmp_path / "links.h5", _dense("dense_1", "dense_2"))
    with h5py.File(path, "a") as f:
        del f["dense_1/dense_1/kernel:0"]
        f["dense_1/dense_1/kernel:0"] = h5py.ExternalLink(str(other), "/dense_1/dense_1/kernel:0")
    _one_line_error(path, "weight 'dense_1/kernel:0' of layer 'dense_1' is not stored in the file as a dataset")
    with h5py.File(path, "a") as f:
        del f["dense_1/dense_1/kernel:0"]
        f["dense_1/dense_1/kernel:0"] = h5py.SoftLink("/dense_2/dense_2/kernel:0")
    _one_line_error(path, "is not stored in the file as a dataset")
    with h5py.File(path, "a") as f:
        del f["dense_1/dense_1/kernel:0"]
        f["dense_1/dense_1"].create_dataset("kernel:0", shape=(4, 3), dtype="f4", external=[(str(other), 0, 48)])
    _one_line_error(path, "compressed or stored outside the file")
    with h5py.File(path, "a") as f:
        del f["dense_1/dense_1/kernel:0"]
        f["dense_1/dense_1"].create_dataset("kernel:0", data=np.ones((4, 3), "f4"), compression="gzip")
    _one_line_error(path, "compressed or stored outside the file")
    with h5py.File(path, "a") as f:
        del f["dense_1/dense_1/kernel:0"]
        f["dense_1/dense_1"].create_dataset("kernel:0", shape=(4, 3), dtype="f4")       # never written
    _one_line_error(path, "declares 48 bytes but the file stores 0")


def test_too_many_names_is_refused_before_reading_them(tmp_path):
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"l%d" % i for i in range(5000)])
    _one_line_error(path, "layer_names has shape \\(5000,\\); expected at most 4096 names")


@settings(max_examples=12, deadline=None)
@given(fraction=st.floats(0.0, 0.9999))
def test_a_truncated_file_is_a_one_line_error(r50, tmp_path_factory, fraction):
    src = r50["weights.h5"]
    cut = int(os.path.getsize(src) * fraction)
    path = tmp_path_factory.mktemp("cut") / "weights.h5"
    with open(src, "rb") as f, open(path, "wb") as g:
        g.write(f.read(cut))
    _one_line_error(path, ".")
    os.unlink(path)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_corrupt_bytes_give_a_one_line_error_or_the_declared_arrays(tmp_path_factory, data):
    """Flipped bytes anywhere in a small Keras file: a CheckpointError one-liner, never another exception. (HDF5
    raw data has no checksum, so a flip inside an array reads as another value: not detectable, not asserted.)"""
    base = tmp_path_factory.getbasetemp() / "fuzz_base.h5"
    if not base.exists():
        _write_keras(base, {"input_1": {}, **_dense("dense_1", "dense_2")})
    raw = bytearray(base.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    path = tmp_path_factory.mktemp("flip") / "x.h5"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as e:       # a dense model is never matterport: every outcome is an error
        read_matterport(path)
    assert "\n" not in str(e.value)


# Found by the test above (hypothesis seed 124, h5py 3.16.0 / HDF5 2.0.0): the Keras file it writes with byte 1017
# changed from 0x01 to 0xc2. With those versions, a process that opens it and reads its attributes dies of SIGSEGV
# inside libhdf5 (another build may refuse it cleanly; either way it must be a one-line error, and this process live).
SEGFAULTS_LIBHDF5 = Path(__file__).parent / "data" / "libhdf5_segfault.h5"


def test_a_file_that_crashes_libhdf5_is_a_one_line_error_and_this_process_lives():
    _one_line_error(SEGFAULTS_LIBHDF5, r"^libhdf5_segfault.h5: corrupt HDF5 structure: |"
                                       r"^libhdf5_segfault.h5 is not a readable HDF5 file")


def test_a_reader_that_crashes_exits_or_hangs_is_a_one_line_error(tmp_path, monkeypatch):
    """The child's endings other than a complete read or a refusal: killed by a signal, an unexpected exit status, no
    end in its time limit (libhdf5 loops forever on some corrupt headers; 0.5 s here instead of the 30 s it gets)."""
    import weights_convert.keras_h5 as keras_h5
    monkeypatch.setattr(keras_h5, "CHILD_TIMEOUT_S", 0.5)
    path = _write_keras(tmp_path / "m.h5", _dense("dense_1"))
    python = sys.executable
    for script, match in [("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
                           r"^m.h5: corrupt HDF5 structure: the HDF5 library crashed reading it \(SIGSEGV\)$"),
                          ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
                           r"^m.h5: corrupt HDF5 structure: the HDF5 library crashed reading it \(SIGKILL\)$"),
                          ("import sys; sys.exit('out of memory')",
                           r"^m.h5: reading it failed in a child process \(exit 1\): out of memory$"),
                          ("import time; time.sleep(30)",
                           r"^m.h5: the HDF5 library did not finish reading it in 1 s \(corrupt structure\)$")]:
        fake = tmp_path / "python"
        fake.write_text(f"#!/bin/sh\nexec {python} -c \"{script}\"\n")
        fake.chmod(0o755)
        monkeypatch.setattr(sys, "executable", str(fake))
        _one_line_error(path, match)


_EDITS = st.sampled_from(["rename_layer", "rename_weight", "drop_dataset", "reshape_dataset", "retype_dataset",
                          "drop_layer_name", "duplicate_weight"])


@settings(max_examples=10, deadline=None)
@given(edit=_EDITS, pick=st.integers(0, 10 ** 6))
def test_edited_names_and_shapes_of_a_real_file_are_one_line_errors(r50, tmp_path_factory, edit, pick):
    path = tmp_path_factory.mktemp("edit") / "weights.h5"
    shutil.copyfile(r50["weights.h5"], path)
    with h5py.File(path, "a") as f:
        names = [n.decode() for n in f.attrs["layer_names"] if len(f[n.decode()].attrs["weight_names"])]
        layer = names[pick % len(names)]
        weights = [w.decode() for w in f[layer].attrs["weight_names"]]
        w = weights[pick % len(weights)]
        if edit == "rename_layer":
            f.attrs["layer_names"] = np.array([(n + b"x" if n.decode() == layer else n) for n in f.attrs["layer_names"]])
            f.move(layer, layer + "x")
        elif edit == "rename_weight":
            f[layer].attrs["weight_names"] = np.array([(x + "x" if x == w else x).encode() for x in weights])
            f[layer].move(w, w + "x")
        elif edit == "drop_dataset":
            del f[layer][w]
        elif edit in ("reshape_dataset", "retype_dataset"):
            a = f[layer][w][()]
            del f[layer][w]
            f[layer][w] = a.reshape(-1)[:-1] if edit == "reshape_dataset" else a.astype(np.int32)
        elif edit == "drop_layer_name":
            f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n.decode() != layer])
        else:
            f[layer].attrs["weight_names"] = np.array([x.encode() for x in weights + [w]])
    with pytest.raises(CheckpointError) as e:
        read_matterport(path)
    assert "\n" not in str(e.value)
    os.unlink(path)


@pytest.mark.parametrize("form", ["chunked", "vlen"])
def test_name_attributes_in_the_other_forms_keras_and_h5py_write(tmp_path, form):
    """Keras splits an attribute too long for an object header into name0, name1, ... (saving.py); h5py >= 3 and
    tf.keras write str lists as variable-length strings. Both read: the error then names the layers it found."""
    path = _write_keras(tmp_path / f"{form}.h5", _dense("dense_1", "dense_2", "dense_3"))
    with h5py.File(path, "a") as f:
        del f.attrs["layer_names"]
        if form == "chunked":
            f.attrs["layer_names0"] = np.array([b"dense_1", b"dense_2"])
            f.attrs["layer_names1"] = np.array([b"dense_3"])
        else:
            f.attrs["layer_names"] = ["dense_1", "dense_2", "dense_3"]
            f["dense_2"].attrs["weight_names"] = ["dense_2/kernel:0", "dense_2/bias:0"]
    _one_line_error(path, "a Keras model with layers dense_1, dense_2, dense_3 — not matterport")


def test_other_pytorch_checkpoints_are_told_apart(tmp_path):
    import oracle
    torch = oracle.torch()
    torch.save({"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "torchvision.pth")
    _one_line_error(tmp_path / "torchvision.pth", "a PyTorch checkpoint but not pytorch-mask-rcnn's")
    state = {"fpn.C1.0.weight": torch.zeros(64, 3, 7, 7), "rpn.conv_shared.weight": torch.zeros(512, 256, 3, 3),
             "fpn.C6.0.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "odd.pth")
    _one_line_error(tmp_path / "odd.pth", "odd.pth has keys pytorch-mask-rcnn's model does not: fpn.C6.0.weight")


def test_a_saved_model_directory_is_named_as_such(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "saved_model.pb").write_bytes(b"\x08\x01")
    _one_line_error(tmp_path / "export", "export is a TensorFlow graph or SavedModel, not Keras weights")


@settings(max_examples=8, deadline=None)
@given(offsets=st.lists(st.integers(0, 65535), min_size=1, max_size=3), value=st.integers(1, 255))
def test_corrupt_bytes_in_a_real_files_structure_are_one_line_errors_or_read(r50, tmp_path_factory, offsets, value):
    """The first 64 KiB of a matterport file hold the superblock, the root group and its layer_names: flips there
    either still read (a flip in padding or in a weight's bytes) or fail with a CheckpointError one-liner."""
    path = tmp_path_factory.mktemp("flip_real") / "weights.h5"
    shutil.copyfile(r50["weights.h5"], path)
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ value]))
    try:
        read_matterport(path)
    except CheckpointError as e:
        assert "\n" not in str(e)
    os.unlink(path)


def test_without_h5py_the_error_names_the_extra(tmp_path, monkeypatch):
    path = _write_keras(tmp_path / "m.h5", _dense("dense_1"))
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)       # as if the extra were not installed
    _one_line_error(path, r"reading Keras .h5 weights needs h5py: pip install 'minimaskrcnn\[hdf5\]'")


def test_a_converted_file_whose_metadata_contradicts_its_arrays_is_refused(r50, tmp_path):
    from weights_convert import write_npz
    from weights_convert.npz import read_npz_metadata
    dst = convert(r50["weights.h5"], tmp_path / "m.npz")
    meta = read_npz_metadata(dst)
    meta["config"]["NUM_CLASSES"] = 5
    meta["config"]["class_names"] = ["BG"] + [f"c{i}" for i in range(4)]
    with np.load(dst, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__metadata__"}
    write_npz(tmp_path / "edited.npz", arrays, meta)
    _one_line_error(tmp_path / "edited.npz", "NUM_CLASSES 5 contradicts the weights file, which has NUM_CLASSES 4")
    with pytest.raises(CheckpointError, match="matterport'?-family weights"):
        from weights_convert import read_npz
        read_npz(dst)                                  # the torchvision reader does not misread the family
