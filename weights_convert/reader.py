"""Read PyTorch checkpoints (`torch.save` output) into NumPy arrays, without torch and without trusting the file.

Shape glossary: `numel`: elements in a storage; `offset`, `strides`: in elements, as torch records them.

Two on-disk formats (PyTorch's `torch/serialization.py`, read for the layout only):

* zip (torch >= 1.6, the default). Members under one top folder `<archive>/`: `data.pkl` (the object pickle),
  `data/<key>` (one raw storage per key, stored uncompressed), `byteorder` ('little' | 'big'), `version`.
  A storage's persistent id is ('storage', StorageClass, key, location, numel).
* legacy (`_use_new_zipfile_serialization=False`). One stream of pickles: magic number, protocol version (1001),
  sys_info {'little_endian': ...}, the object, the sorted list of storage keys; then, per key in that order, an int64
  element count followed by the raw storage. A persistent id is ('storage', StorageClass, key, location, numel,
  view_metadata); view_metadata (storage views of PyTorch < 0.4) is not supported.

Every size is checked against the bytes actually present before anything is allocated, and the total that the
tensors would occupy is capped at `4 x file size + 1 MiB` (views may share storage; an expanded tensor with zero
strides could otherwise ask for terabytes).
"""
from __future__ import annotations

import io
import math
import os
import zipfile
import zlib

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .errors import CheckpointError
from .pickle_scan import MAX_DEPTH
from .unpickler import ITEMSIZE, StateDict, StorageRef, TensorRef, restricted_load

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C       # torch/serialization.py MAGIC_NUMBER
LEGACY_PROTOCOL = 1001                      # torch/serialization.py PROTOCOL_VERSION
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
STATE_DICT_KEYS = ("state_dict", "model")   # where training checkpoints nest the weights


def read_bytes(path) -> bytes:
    """The file's bytes, after a look at its first bytes so that a large non-checkpoint is not read whole."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(4)
        _check_signature(head, os.path.basename(path))
        return head + f.read()


def _check_signature(head: bytes, name: str):
    if head[:4] in ZIP_SIGNATURES or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return
    raise CheckpointError(f"{name} is not a PyTorch checkpoint (neither a zip archive nor a pickle stream)")


def load(source):
    """Like `torch.load(..., weights_only=True)`: the checkpoint's object with every tensor as a NumPy array."""
    data = _as_bytes(source)
    obj = _parse(data)
    return _materialize_tree(obj, _Budget(data), 0)


def read_state_dict(source) -> StateDict:
    """The state dict (key -> NumPy array, in file order) found at the top level or under 'state_dict' / 'model'.

    The returned `StateDict` carries `_metadata` (module prefix -> {'version': n}) as a plain dict, or None.
    """
    data = _as_bytes(source)
    found = _find_state_dict(_parse(data))
    budget = _Budget(data)
    out = StateDict()
    out._metadata = _plain_metadata(found._metadata if isinstance(found, StateDict) else None)
    for key, value in found.items():
        out[key] = materialize(value, budget)
    return out


def _as_bytes(source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_signature(data[:4], "the data")
        return data
    return read_bytes(source)


def _parse(data: bytes):
    if data[:4] in ZIP_SIGNATURES:
        return _parse_zip(data)
    return _parse_legacy(data)


# --- zip format ------------------------------------------------------------------------------------------------------

def _parse_zip(data: bytes):
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = {info.filename: info for info in zf.infolist()}
    except Exception as e:   # BadZipFile, EOFError, ValueError, struct.error on a forged directory
        raise CheckpointError(f"corrupt zip checkpoint: {e}") from None
    roots = [name[: -len("data.pkl")] for name in infos if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(roots) != 1:
        hint = " (a .npz is already converted)" if any(n.endswith(".npy") for n in infos) else ""
        raise CheckpointError(f"not a PyTorch checkpoint: zip archive without a single <archive>/data.pkl{hint}")
    root = roots[0]

    def member(name):
        info = infos.get(root + name)
        if info is None:
            raise CheckpointError(f"corrupt zip checkpoint: missing member {root + name}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"unsupported zip checkpoint: member {root + name} is compressed (torch stores "
                                  f"members uncompressed)")
        return info

    def read(info):
        try:
            return zf.read(info)
        except Exception as e:   # CRC mismatch, truncated member, bad local header
            raise CheckpointError(f"corrupt zip checkpoint: {info.filename}: {e}") from None

    byteorder = "little"
    if root + "byteorder" in infos:
        byteorder = read(member("byteorder")).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"corrupt zip checkpoint: byteorder record {byteorder[:10]!r}")
    storages = {}

    def storage(key, dtype, numel, extra):
        if extra:
            raise CheckpointError("corrupt zip checkpoint: storage id with extra fields")
        ref = _shared_storage(storages, key, dtype, numel)
        if ref.data is None:
            info = member("data/" + key)
            nbytes = numel * ITEMSIZE[dtype]
            if info.file_size != nbytes:
                raise CheckpointError(f"corrupt zip checkpoint: storage {key} declares {numel} {dtype} elements "
                                      f"({nbytes} bytes) but the archive holds {info.file_size} bytes")
            ref.data = _Lazy(lambda: _stored_member(data, info), byteorder)
        return ref

    obj, _ = restricted_load(read(member("data.pkl")), 0, storage)
    return obj


def _stored_member(data: bytes, info: zipfile.ZipInfo) -> memoryview:
    """An uncompressed member's bytes as a view into `data` (no copy of a 100 MB storage), CRC-checked like zipfile.

    Local file header (PKWARE APPNOTE 4.3.7): signature, then at offset 26 the name and extra-field lengths; the data
    follows them.
    """
    start = info.header_offset
    header = data[start:start + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04" or int.from_bytes(header[6:8], "little") & 1:
        raise CheckpointError(f"corrupt zip checkpoint: bad local header for {info.filename}")
    begin = start + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    if begin + info.file_size > len(data):
        raise CheckpointError(f"truncated zip checkpoint: {info.filename} runs past the end of the file")
    body = memoryview(data)[begin:begin + info.file_size]
    if zlib.crc32(body) != info.CRC:
        raise CheckpointError(f"corrupt zip checkpoint: {info.filename}: CRC-32 mismatch")
    return body


class _Lazy:
    """A zip member read on first use, so that the storages of an unused optimizer state are never read."""

    def __init__(self, reader, byteorder):
        self._reader, self._bytes, self.byteorder = reader, None, byteorder

    def get(self) -> bytes:
        if self._bytes is None:
            self._bytes = self._reader()
        return self._bytes


def _shared_storage(storages, key, dtype, numel):
    ref = storages.get(key)
    if ref is None:
        ref = storages[key] = StorageRef(key, dtype, numel)
    elif ref.dtype != dtype or ref.numel != numel:
        raise CheckpointError(f"corrupt checkpoint: storage {key} referenced with two different types or sizes")
    return ref


# --- legacy format ---------------------------------------------------------------------------------------------------

def _no_storage(*_):
    raise CheckpointError("corrupt legacy checkpoint: storage reference outside the object pickle")


def _parse_legacy(data: bytes):
    magic, pos = restricted_load(data, 0, _no_storage)
    if magic != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint: a pickle without torch's magic number")
    protocol, pos = restricted_load(data, pos, _no_storage)
    if protocol != LEGACY_PROTOCOL:
        shown = protocol if type(protocol) is int and abs(protocol) < 1 << 63 else type(protocol).__name__
        raise CheckpointError(f"unsupported legacy checkpoint protocol {shown} (expected {LEGACY_PROTOCOL})")
    sys_info, pos = restricted_load(data, pos, _no_storage)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else None
    if not isinstance(little, bool):
        raise CheckpointError("corrupt legacy checkpoint: sys_info record")
    byteorder = "little" if little else "big"
    storages = {}

    def storage(key, dtype, numel, extra):
        if extra != (None,):
            raise CheckpointError("unsupported legacy checkpoint: storage views (PyTorch < 0.4) or a malformed id")
        return _shared_storage(storages, key, dtype, numel)

    obj, pos = restricted_load(data, pos, storage)
    keys, pos = restricted_load(data, pos, _no_storage)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys) \
            or set(keys) != set(storages):
        raise CheckpointError("corrupt legacy checkpoint: the storage key list does not match the storages used")
    view = memoryview(data)
    for key in keys:
        ref = storages[key]
        if pos + 8 > len(data):
            raise CheckpointError("truncated legacy checkpoint: storage header past the end of the file")
        numel = int.from_bytes(data[pos:pos + 8], byteorder, signed=True)
        pos += 8
        if numel != ref.numel:
            raise CheckpointError(f"corrupt legacy checkpoint: storage {key} declares {ref.numel} elements in the "
                                  f"pickle but {numel} in the data")
        nbytes = numel * ITEMSIZE[ref.dtype]
        if pos + nbytes > len(data):
            raise CheckpointError(f"truncated legacy checkpoint: storage {key} needs {nbytes} bytes, "
                                  f"{len(data) - pos} left")
        ref.data = _Lazy(lambda chunk=view[pos:pos + nbytes]: chunk, byteorder)
        pos += nbytes
    return obj


# --- materialising tensors -------------------------------------------------------------------------------------------

class _Budget:
    """Caps the bytes all materialised tensors may take, relative to the size of the file."""

    def __init__(self, data: bytes):
        self.left = 4 * len(data) + (1 << 20)

    def take(self, nbytes: int):
        if nbytes > self.left:
            raise CheckpointError(f"refusing to allocate {nbytes} bytes for a tensor: the checkpoint's tensors "
                                  f"would take more than 4x the file size (forged shape or expanded view)")
        self.left -= nbytes


def _np_dtype(name: str, byteorder: str) -> np.dtype:
    base = {"bfloat16": "uint16", "bool": "uint8"}.get(name, name)
    return np.dtype(base).newbyteorder("<" if byteorder == "little" else ">")


def materialize(ref: TensorRef, budget: _Budget) -> np.ndarray:
    """Copy one tensor out of its storage into a contiguous, native-byte-order array of torch's dtype.

    bfloat16 (no NumPy dtype) becomes float32, exactly; bool storage bytes become 0/1.
    """
    storage = ref.storage
    out_itemsize = 4 if storage.dtype == "bfloat16" else ITEMSIZE[storage.dtype]
    budget.take(math.prod(ref.shape) * out_itemsize)
    if storage.data is None:
        raise CheckpointError(f"corrupt checkpoint: storage {storage.key} has no data")
    buf = storage.data.get()
    dtype = _np_dtype(storage.dtype, storage.data.byteorder)
    base = np.frombuffer(buf, dtype=dtype, count=storage.numel)                 # (numel,)
    view = as_strided(base[ref.offset:], shape=ref.shape,
                      strides=tuple(s * dtype.itemsize for s in ref.stride), writeable=False)
    out = np.array(view, dtype=dtype.newbyteorder("="), order="C", copy=True)   # (*shape) contiguous copy
    if storage.dtype == "bfloat16":                                             # bfloat16 = upper half of float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    elif storage.dtype == "bool":
        out = out != 0
    return out


def _materialize_tree(obj, budget, depth):
    if depth > MAX_DEPTH:
        raise CheckpointError(f"corrupt checkpoint: containers nested more than {MAX_DEPTH} deep (or cyclic)")
    if isinstance(obj, TensorRef):
        return materialize(obj, budget)
    if isinstance(obj, StorageRef):   # a bare storage: its elements as a 1-D array
        return materialize(TensorRef(obj, 0, (obj.numel,), (1,)), budget)
    if isinstance(obj, dict):
        out = StateDict() if isinstance(obj, StateDict) else {}
        if isinstance(obj, StateDict):
            out._metadata = _plain_metadata(obj._metadata)
        for key, value in obj.items():
            out[key] = _materialize_tree(value, budget, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize_tree(v, budget, depth + 1) for v in obj)
    return obj


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, TensorRef) for v in obj.values())


def _find_state_dict(obj):
    if _is_state_dict(obj):
        found = obj
    else:
        nested = [obj[k] for k in STATE_DICT_KEYS if isinstance(obj, dict) and _is_state_dict(obj.get(k))]
        if not nested:
            raise CheckpointError(f"no state dict in the checkpoint: it holds {_describe(obj)}; expected a dict of "
                                  f"tensors at the top level or under 'state_dict' or 'model'")
        found = nested[0]
    bad = [k for k in found if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"corrupt state dict: a key of type {type(bad[0]).__name__} (keys must be strings)")
    return found


def _describe(obj) -> str:
    if isinstance(obj, dict):
        keys = [repr(k[:40]) if isinstance(k, str) else type(k).__name__ for k in list(obj)[:6]]
        return f"a dict with keys {', '.join(keys)}{', ...' if len(obj) > 6 else ''}" if keys else "an empty dict"
    if isinstance(obj, TensorRef):
        return "a single tensor"
    return f"a {type(obj).__name__}"


def _plain_metadata(meta):
    """torch's `_metadata` as {prefix: {'version': n, ...}}, dropping anything of another shape."""
    if not isinstance(meta, dict):
        return None
    return {k: dict(v) for k, v in meta.items() if isinstance(k, str) and isinstance(v, dict)}
