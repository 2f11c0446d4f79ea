"""Read matterport's Keras HDF5 weight files (`keras_model.save_weights` / `keras_model.save`) without Keras.

Layout Keras 2.x writes (keras/engine/saving.py, read for the layout only), under the root, or under the group
`model_weights` of a full-model save:
    attr  layer_names            every layer of the model, weightless ones too (fixed-length bytes; split into
                                 layer_names0, layer_names1, ... when longer than an object header holds)
    group <layer>                one per layer name; attr weight_names: the weights' TF variable names, in the order
                                 of `layer.weights`, e.g. b"conv1/kernel:0"; dataset <layer>/<weight name> (the
                                 variable name's "/" makes nested groups)
    group rpn_model              matterport's nested RPN model: weight_names b"rpn_conv_shared/kernel:0", ... of its
                                 three inner layers, loaded by Keras in order
Output: {"<layer>/<weight>": float32 array} (see `matterport_layout`) in the order of `expected_layout`.

The file is untrusted. h5py (the optional extra `hdf5`) parses it; nothing in it is executed or evaluated (a full
save's `model_config` JSON is not read). Before anything is allocated: every attribute's declared size and every
dataset's shape is bounded by the file size and by the expected layout; links must be hard links (an external or
soft link, an external raw-data file, a virtual dataset could make a read reach other files); datasets must be
uncompressed floats with all their storage present (unallocated HDF5 storage reads back as zeros). Raw data has no
checksum in HDF5: a flipped bit inside a weight array cannot be detected by any reader.

libhdf5 itself is not safe on corrupt input: a few flipped bytes in an object header can make it read out of bounds
and kill the process (SIGSEGV; found by the fuzz test, h5py 3.16 / HDF5 2.0.0). So the file is first read once in a
throwaway child process (`_read_in_child`): a crash there becomes a one-line error here, and only a file the child
read to the end is read in this process (libhdf5 is deterministic: the same bytes take the same path).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np

from .errors import CheckpointError, WeightsFileError
from .matterport_layout import check_layout, expected_layout, infer_facts

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"     # HDF5 spec, superblock: at offset 0 or 512, 1024, 2048, ... (user block)
MAX_LAYERS = 4096          # ours: matterport's training model has < 500 layers
MAX_WEIGHTS_PER_LAYER = 64  # ours: a matterport layer has at most 6 (rpn_model)
MAX_NAME = 512             # ours: longest matterport name is 26 bytes
MAX_ATTR_CHUNKS = 64       # ours: saving.py splits long attributes into name0, name1, ...
RPN_MODEL = "rpn_model"    # mrcnn/model.py build_rpn_model: KM.Model(..., name="rpn_model")
RPN_LAYERS = ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")    # its layers with weights, in creation order
FLOAT_KINDS = ("f2", "f4", "f8")
# The child's time limit: corrupt headers can also make libhdf5 loop forever (3 of ~190 fuzz runs of 150 files).
# Ours: 30 s for the start plus 1 s per 10 MB, a slow disk's rate. Measured here: a 179 MB matterport R50 save_weights
# file takes 0.4-0.75 s in the child (start included) and 0.2 s in process; the 246 MB mask_rcnn_coco.h5 gets 55 s.
CHILD_TIMEOUT_S, CHILD_TIMEOUT_S_PER_BYTE = 30.0, 1 / 10e6
CHILD_REFUSED = 3          # the child's exit status for "read, and refused with a WeightsFileError" (message on stdout)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise CheckpointError("reading Keras .h5 weights needs h5py: pip install 'minimaskrcnn[hdf5]'") from None
    return h5py


def hdf5_offset(head: bytes):
    """Offset of the HDF5 signature in the first bytes of a file (0, 512, 1024, ...), or None."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= len(head):
        if head[offset:offset + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def read_keras_h5(path):
    """(arrays, facts, evidence, info) of a matterport `.h5`: Keras-named float32 arrays, what they show about the
    model (`matterport_layout.infer_facts`) and {"layout": "save_weights" | "full model", "keras_version": ...}."""
    h5py = _h5py()
    name = os.path.basename(os.fspath(path))
    with open(path, "rb") as f:
        head = f.read(4096)
    if hdf5_offset(head) is None:
        raise WeightsFileError(f"{name} is not an HDF5 file (no HDF5 signature); expected a Keras .h5 saved by "
                               f"matterport's keras_model.save_weights")
    _read_in_child(path, name)
    return _read_file(h5py, path, name)


def _read_file(h5py, path, name):
    size = os.path.getsize(path)
    try:
        h5 = h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsFileError(f"{name} is not a readable HDF5 file (truncated or corrupt): {_first_line(e)}") from None
    try:
        with h5:
            return _read(h5py, h5, name, size)
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise WeightsFileError(f"{name}: corrupt HDF5 structure: {_first_line(e)}") from None


def _read_in_child(path, name):
    """Read the file once in a new Python process (the module docstring says why); its refusal or its crash is
    raised here as a one-line WeightsFileError."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # this weights_convert, not another
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from weights_convert.keras_h5 import _child_main; _child_main(sys.argv[2])")
    timeout = CHILD_TIMEOUT_S + os.path.getsize(path) * CHILD_TIMEOUT_S_PER_BYTE
    try:
        child = subprocess.run([sys.executable, "-I", "-c", code, package_root, os.path.abspath(path)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WeightsFileError(f"{name}: the HDF5 library did not finish reading it in {timeout:.0f} s "
                               f"(corrupt structure)") from None
    if child.returncode == 0:
        return
    if child.returncode == CHILD_REFUSED and child.stdout.strip():
        raise WeightsFileError(child.stdout.strip().splitlines()[-1])
    if child.returncode < 0:
        try:
            how = signal.Signals(-child.returncode).name
        except ValueError:
            how = f"signal {-child.returncode}"
        raise WeightsFileError(f"{name}: corrupt HDF5 structure: the HDF5 library crashed reading it ({how})")
    last = (child.stderr.strip().splitlines() or ["no message"])[-1]
    raise WeightsFileError(f"{name}: reading it failed in a child process (exit {child.returncode}): {last[:200]}")


def _child_main(path):
    """The child's side of `_read_in_child`: exit 0 after a complete read, CHILD_REFUSED with the one-line error on
    stdout when the reader refuses the file."""
    try:
        _read_file(_h5py(), path, os.path.basename(path))
    except CheckpointError as e:
        print(str(e), flush=True)
        raise SystemExit(CHILD_REFUSED) from None


def _read(h5py, h5, name, size):
    root, layout = h5, "save_weights"
    if not _has_names(h5, "layer_names") and _link_kind(h5py, h5, "model_weights") == "group":
        root, layout = h5["model_weights"], "full model"          # keras_model.save
    if not _has_names(root, "layer_names"):
        top = ", ".join(sorted(k[:40] for k in list(h5.keys())[:8])) or "nothing"
        raise WeightsFileError(f"{name} is an HDF5 file but not Keras weights (no layer_names attribute; it holds "
                               f"{top})")
    info = {"layout": layout, "keras_version": _text_attr(h5, "keras_version", size) or
            _text_attr(root, "keras_version", size), "backend": _text_attr(root, "backend", size)}
    datasets = {}                                                     # key -> h5py Dataset, in file order
    for layer in _strings(root, "layer_names", size, MAX_LAYERS, name):
        if _link_kind(h5py, root, layer) != "group":
            raise WeightsFileError(f"{name}: layer {layer[:60]!r} is in layer_names but has no group (or a link to "
                                   f"elsewhere)")
        group = root[layer]
        weights = _strings(group, "weight_names", size, MAX_WEIGHTS_PER_LAYER, name, required=False)
        for i, weight in enumerate(weights):
            parts = weight.split("/")
            base = parts[-1]
            if layer == RPN_MODEL:                                    # by order, as Keras loads a nested model
                if len(weights) != 2 * len(RPN_LAYERS) or base != ("kernel:0", "bias:0")[i % 2]:
                    raise WeightsFileError(f"{name}: {RPN_MODEL} holds {', '.join(w[:40] for w in weights[:8])}; "
                                           f"matterport's holds kernel and bias of {', '.join(RPN_LAYERS)}")
                key = f"{RPN_LAYERS[i // 2]}/{base}"
            else:
                key = f"{layer}/{base}"
            if key in datasets:
                raise WeightsFileError(f"{name}: weight {key} appears twice")
            datasets[key] = _dataset(h5py, group, parts, name, size)
    shapes = {k: tuple(int(n) for n in ds.shape) for k, ds in datasets.items()}
    facts, evidence = infer_facts(shapes, name)
    check_layout(shapes, facts, name)
    budget = size
    arrays = {}
    for key in expected_layout(facts):
        ds = datasets[key]
        budget -= ds.dtype.itemsize * int(np.prod(ds.shape))
        if budget < 0:
            raise WeightsFileError(f"{name}: the weights declare more bytes than the file has (truncated or corrupt)")
        raw = np.empty(ds.shape, dtype=ds.dtype)                      # bounded above by the file size
        if raw.size:
            ds.read_direct(raw)
        arrays[key] = np.ascontiguousarray(raw, dtype=np.float32)    # float16/64 cast as Keras' set_value does
    return arrays, facts, evidence, info


def _has_attr(obj, attr):
    try:
        return attr in obj.attrs
    except (OSError, RuntimeError, KeyError):
        return False


def _has_names(obj, attr):
    return _has_attr(obj, attr) or _has_attr(obj, f"{attr}0")            # whole, or split in chunks


def _link_kind(h5py, group, name):
    """"group" | "dataset" for a hard link to one, else None (missing, soft or external link, other object)."""
    try:
        link = group.get(name, getlink=True)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError):
        return None
    if not isinstance(link, h5py.HardLink):
        return None
    obj = group.get(name)
    return "group" if isinstance(obj, h5py.Group) else "dataset" if isinstance(obj, h5py.Dataset) else None


def _dataset(h5py, group, parts, name, size):
    where = "/".join(parts)
    if not 1 <= len(parts) <= 4 or any(not p or p in (".", "..") for p in parts):
        raise WeightsFileError(f"{name}: bad weight name {where[:80]!r}")
    node = group
    for i, part in enumerate(parts):
        kind = _link_kind(h5py, node, part)
        if kind != ("dataset" if i == len(parts) - 1 else "group"):
            raise WeightsFileError(f"{name}: weight {where[:80]!r} of layer {group.name[1:][:60]!r} is not stored in "
                                   f"the file as a dataset")
        node = node[part]
    ds = node
    if ds.dtype.kind != "f" or f"f{ds.dtype.itemsize}" not in FLOAT_KINDS:
        raise WeightsFileError(f"{name}: {where[:80]} has dtype {ds.dtype}; Keras weights are floats")
    if not 0 <= len(ds.shape) <= 4:
        raise WeightsFileError(f"{name}: {where[:80]} has {len(ds.shape)} dimensions; matterport weights have 1 to 4")
    plist = ds.id.get_create_plist()
    if plist.get_layout() not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        raise WeightsFileError(f"{name}: {where[:80]} is a virtual dataset; Keras writes plain ones")
    if plist.get_external_count() or plist.get_nfilters():
        raise WeightsFileError(f"{name}: {where[:80]} is compressed or stored outside the file; Keras writes "
                               f"plain uncompressed datasets")
    nbytes = ds.dtype.itemsize * int(np.prod(ds.shape, dtype=np.float64))
    if nbytes > size or ds.id.get_storage_size() < nbytes:
        raise WeightsFileError(f"{name}: {where[:80]} declares {nbytes} bytes but the file stores "
                               f"{min(ds.id.get_storage_size(), size)} for it (truncated or corrupt)")
    return ds


def _strings(obj, attr, size, limit, name, required=True):
    """A list-of-strings attribute (or its chunks attr0, attr1, ...), bounded before it is read."""
    if _has_attr(obj, attr):
        values = _string_attr(obj, attr, size, limit, name)
    elif _has_attr(obj, f"{attr}0"):
        values = []
        for i in range(MAX_ATTR_CHUNKS):
            if not _has_attr(obj, f"{attr}{i}"):
                break
            values += _string_attr(obj, f"{attr}{i}", size, limit - len(values), name)
    elif required:
        raise WeightsFileError(f"{name}: no {attr} attribute")
    else:
        return []
    return values


def _string_attr(obj, attr, size, limit, name):
    h5py = _h5py()
    aid = obj.attrs.get_id(attr)
    shape, dtype = aid.shape, aid.dtype
    count = int(np.prod(shape, dtype=np.float64)) if shape is not None else 0
    where = f"{obj.name}:{attr}"
    if shape is None or len(shape) > 1 or count > limit:
        raise WeightsFileError(f"{name}: attribute {where[:80]} has shape {shape}; expected at most {limit} names")
    if count == 0:
        return []
    vlen = h5py.check_string_dtype(dtype) is not None and dtype.kind == "O"
    if not vlen and (dtype.kind != "S" or dtype.itemsize > MAX_NAME):
        raise WeightsFileError(f"{name}: attribute {where[:80]} holds {dtype}; expected names (strings)")
    if aid.get_storage_size() > size or (not vlen and count * dtype.itemsize > size):
        raise WeightsFileError(f"{name}: attribute {where[:80]} declares more bytes than the file has")
    values = np.atleast_1d(obj.attrs[attr])
    out = []
    for v in values:
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise WeightsFileError(f"{name}: attribute {where[:80]} holds a name that is not UTF-8") from None
        if not isinstance(v, str) or len(v) > MAX_NAME or not v or "\x00" in v:
            raise WeightsFileError(f"{name}: attribute {where[:80]} holds an empty, overlong or non-text name")
        out.append(v)
    return out


def _text_attr(obj, attr, size):
    try:
        if not _has_attr(obj, attr) or obj.attrs.get_id(attr).get_storage_size() > min(size, 1024):
            return None
        v = obj.attrs[attr]
        v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        return v if isinstance(v, str) else None
    except (OSError, RuntimeError, KeyError, ValueError, TypeError):
        return None


def _first_line(e):
    text = " ".join(str(e).split())
    return (text[:200] or type(e).__name__)
