"""A restricted unpickler for PyTorch state dicts: the pickle builds containers and tensor descriptions, nothing else.

A checkpoint's pickle is a small program. `torch.load` runs it with the full power of `pickle`, so a crafted file can
call `os.system`. Here it runs in two guarded passes:

1. `pickle_scan.scan_pickle` walks the opcodes without building anything. It refuses the opcodes that instantiate
   arbitrary classes (INST, OBJ, NEWOBJ, EXT*) and globals not allowed, and it bounds how deeply containers nest:
   CPython hashes nested tuples recursively in C, so a 3 MB pickle of nested tuples used as a dict key overflows the
   C stack (a segfault, not an exception).
2. `_RestrictedUnpickler` (a `pickle.Unpickler`) builds the objects. `find_class` returns only our own inert
   replacements of the few globals a state dict uses; every other global raises `UnsafeCheckpointError` naming it.
   `persistent_load` validates the storage tuple and hands it to the caller's format reader (zip or legacy).

Tensors come out as `TensorRef` (storage, offset, shape, strides in elements): bounds are checked here against the
storage's element count, bytes are attached later by the format reader, and `reader.materialize` copies them out.
"""
from __future__ import annotations

import io
import math
import pickle
import re
from collections import OrderedDict

from .errors import CheckpointError, UnsafeCheckpointError
from .pickle_scan import scan_pickle
MAX_NDIM = 32             # numpy's limit is 64; no weight tensor comes close

# torch storage class name -> element type. "bfloat16" has no numpy dtype: it is widened to float32 when materialised.
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "UntypedStorage": "uint8",
}
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
            "int8": 1, "uint8": 1, "bool": 1}
_TORCH_DTYPE_NAMES = ("float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long",
                      "int32", "int", "int16", "short", "int8", "uint8", "bool")
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,64}\Z")      # storage keys ('0', '94651766690144') and locations ('cuda:0')


class _Inert:
    """Base of every object the pickle can obtain from a global: it refuses BUILD (pickle's attribute setter)."""

    __slots__ = ("qualname",)

    def __setstate__(self, state):
        raise UnsafeCheckpointError(f"the pickle tries to set attributes of {self.qualname}; refusing")

    def __repr__(self):
        return f"<{self.qualname}>"


class StorageType(_Inert):
    """Stands for `torch.FloatStorage` etc.: only a dtype name, never callable."""

    __slots__ = ("dtype",)

    def __init__(self, qualname, dtype):
        self.qualname, self.dtype = qualname, dtype


class DtypeToken(_Inert):
    """Stands for a `torch.float32`-style dtype object."""

    __slots__ = ()

    def __init__(self, qualname):
        self.qualname = qualname


class _SafeFunction(_Inert):
    """Stands for an allowed callable global (e.g. `torch._utils._rebuild_tensor_v2`) and calls our reimplementation."""

    __slots__ = ("fn",)

    def __init__(self, qualname, fn):
        self.qualname, self.fn = qualname, fn

    def __call__(self, *args):
        return self.fn(*args)


class StorageRef(_Inert):
    """One storage of the checkpoint: its key, element type and element count; `data` (bytes) is attached later."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key, dtype, numel):
        self.qualname, self.key, self.dtype, self.numel, self.data = f"storage {key}", key, dtype, numel, None


class TensorRef(_Inert):
    """A tensor as `_rebuild_tensor_v2` describes it: a strided view into a storage, in elements."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage, offset, shape, stride):
        self.qualname = "tensor"
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


class StateDict(OrderedDict):
    """`collections.OrderedDict` as torch pickles it, keeping the `_metadata` attribute.

    `_metadata` maps a module prefix ('', 'backbone.fpn', 'rpn.head', ...) to {'version': n}; torchvision's legacy key
    renames depend on it (facts §9). BUILD may set that attribute and nothing else.
    """

    _metadata = None

    def __setstate__(self, state):
        if not isinstance(state, dict) or set(state) - {"_metadata"}:
            raise UnsafeCheckpointError("the pickle sets attributes other than _metadata on an OrderedDict; refusing")
        self._metadata = state.get("_metadata")


def _int(value, what, minimum=0):
    """An int64 as torch stores sizes, offsets and strides (bounded, so that messages can print it)."""
    if type(value) is not int or not minimum <= value < 1 << 63:
        shown = value if type(value) is int and abs(value) < 1 << 64 else type(value).__name__
        raise CheckpointError(f"corrupt checkpoint: {what} must be an int64 >= {minimum}, got {shown}")
    return value


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor(_v2): validate the view against the storage, return a `TensorRef`."""
    if not isinstance(storage, StorageRef):
        raise CheckpointError("corrupt checkpoint: a tensor's storage is not a storage reference")
    offset = _int(storage_offset, "tensor storage offset")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
        raise CheckpointError("corrupt checkpoint: tensor size and stride must be sequences of equal length")
    if len(size) > MAX_NDIM:
        raise CheckpointError(f"corrupt checkpoint: tensor with {len(size)} dimensions (at most {MAX_NDIM})")
    shape = tuple(_int(n, "tensor size") for n in size)
    strides = tuple(_int(s, "tensor stride") for s in stride)
    if math.prod(n for n in shape if n) >= 1 << 59:            # numpy's limit: bytes of the non-empty dims < 2**63
        raise CheckpointError(f"corrupt checkpoint: tensor shape {shape} is too large")
    if 0 in shape:
        if offset > storage.numel:
            raise CheckpointError(f"corrupt checkpoint: tensor offset {offset} beyond its storage of {storage.numel}")
    else:
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))   # Python ints: no overflow
        if last >= storage.numel:
            raise CheckpointError(f"corrupt checkpoint: tensor of shape {shape} with strides {strides} at offset "
                                  f"{offset} reaches element {last} of a storage of {storage.numel} elements")
    return TensorRef(storage, offset, shape, strides)


def _rebuild_parameter(data, *_ignored):
    """torch._utils._rebuild_parameter(_with_state): a Parameter is its data for inference."""
    if not isinstance(data, TensorRef):
        raise CheckpointError("corrupt checkpoint: a parameter does not wrap a tensor")
    return data


def _ordered_dict(*args):
    if len(args) > 1:
        raise CheckpointError("corrupt checkpoint: OrderedDict called with more than one argument")
    return StateDict(*args)


def _allowed_globals():
    table = {
        ("collections", "OrderedDict"): _SafeFunction("collections.OrderedDict", _ordered_dict),
        ("torch._utils", "_rebuild_tensor_v2"): _SafeFunction("torch._utils._rebuild_tensor_v2", _rebuild_tensor),
        ("torch._utils", "_rebuild_tensor"): _SafeFunction("torch._utils._rebuild_tensor", _rebuild_tensor),
        ("torch._utils", "_rebuild_parameter"): _SafeFunction("torch._utils._rebuild_parameter", _rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state"):
            _SafeFunction("torch._utils._rebuild_parameter_with_state", _rebuild_parameter),
    }
    for name, dtype in STORAGE_DTYPES.items():
        for module in ("torch", "torch.cuda", "torch.storage"):
            table[(module, name)] = StorageType(f"{module}.{name}", dtype)
    for name in _TORCH_DTYPE_NAMES:
        table[("torch", name)] = DtypeToken(f"torch.{name}")
    return table


ALLOWED_GLOBALS = _allowed_globals()


def _allowed_global(module, name):
    """Our stand-in for the global `module.name`, or UnsafeCheckpointError naming it."""
    obj = ALLOWED_GLOBALS.get((module, name))
    if obj is None:
        raise UnsafeCheckpointError(f"refusing to load global {_clip(module)}.{_clip(name)}: a state dict never "
                                    f"needs it, and loading it could run code")
    return obj


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storage_factory):
        super().__init__(file)
        self._storage_factory = storage_factory

    def find_class(self, module, name):
        return _allowed_global(module, name)

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CheckpointError(f"corrupt checkpoint: unsupported persistent id of type {type(pid).__name__}")
        _, storage_type, key, location, numel, *extra = pid
        if not isinstance(storage_type, StorageType):
            raise CheckpointError("corrupt checkpoint: persistent id does not name a storage type")
        if not isinstance(key, str) or not _NAME.match(key):
            raise CheckpointError("corrupt checkpoint: invalid storage key")
        if not isinstance(location, str) or not _NAME.match(location):
            raise CheckpointError("corrupt checkpoint: invalid storage location")
        return self._storage_factory(key, storage_type.dtype, _int(numel, "storage size"), tuple(extra))


def _clip(text, n=80):
    text = str(text)
    return text if len(text) <= n else text[:n] + "..."


def restricted_load(data: bytes, start: int, storage_factory):
    """Scan, then unpickle `data[start:]` with the restricted unpickler. Returns (object, offset past the pickle).

    `storage_factory(key, dtype, numel, extra)` is called for each persistent storage id and returns a `StorageRef`.
    The unpickler is given only the bytes the scan accepted, so no argument it reads can reach past them.
    """
    end = scan_pickle(data, start, _allowed_global)
    f = io.BytesIO(memoryview(data)[start:end])   # a copy of the pickle alone, not of the storages after it
    try:
        obj = _RestrictedUnpickler(f, storage_factory).load()
    except (CheckpointError, MemoryError):  # out of memory is not corruption: say so (the scan bounds what it asks)
        raise
    except Exception as e:   # TypeError/AttributeError/... from a malformed but scan-clean pickle
        raise CheckpointError(f"corrupt pickle: {type(e).__name__}: {_clip(e)}") from None
    if f.tell() != end - start:
        raise CheckpointError("corrupt pickle: unpickler and scanner disagree on its length")
    return obj, end
