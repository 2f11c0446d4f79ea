"""weights_convert.reader on hostile input: crafted checkpoints are refused before any code runs, and forged sizes,
lengths and memo indices before any allocation. Fuzzing (random bytes, truncations, bit flips) is in
test_reader_fuzz.py."""
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

import oracle
from checkpoints import FORMATS, Pk, legacy_checkpoint, one_tensor_checkpoint, peak_bytes, save, zip_checkpoint
from weights_convert import CheckpointError, UnsafeCheckpointError, load, read_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

class Reduce:
    """Pickles as `fn(*args)`: the classic pickle exploit."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):          # pickle wants the callable of a nested __reduce__ to look callable
        raise AssertionError("never called")


def wrap(fmt, object_pkl):
    return zip_checkpoint(object_pkl) if fmt == "zip" else legacy_checkpoint(object_pkl)


def exploits(canary):
    import builtins
    import subprocess as sp
    touch = f"open({str(canary)!r}, 'w').write('pwned')"
    return {
        "os.system": (Reduce(os.system, f"touch {canary}"), "posix.system"),
        "builtins.eval": (Reduce(builtins.eval, touch), r"builtins\.eval"),
        "builtins.exec": (Reduce(builtins.exec, touch), r"builtins\.exec"),
        "subprocess.Popen": (Reduce(sp.Popen, ["touch", str(canary)]), "subprocess.Popen"),
        # a global hidden inside an allowed container, next to a genuine-looking entry
        "hidden_in_ordered_dict": (OrderedDict([("w", [1.0]), ("b", Reduce(os.system, f"touch {canary}"))]),
                                   "posix.system"),
        # nested __reduce__: getattr(__import__('os'), 'system')(...)
        "nested_reduce": (Reduce(Reduce(getattr, Reduce(builtins.__import__, "os"), "system"),
                                 f"touch {canary}"), r"builtins\.getattr"),
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen",
                                  "hidden_in_ordered_dict", "nested_reduce"])
def test_code_execution_globals_are_refused_by_name(tmp_path, fmt, name):
    canary = tmp_path / "canary"
    obj, global_name = exploits(canary)[name]
    data = wrap(fmt, pickle.dumps(obj, protocol=2, fix_imports=False))
    path = tmp_path / "evil.pth"
    path.write_bytes(data)
    for reader in (read_state_dict, load):
        with pytest.raises(UnsafeCheckpointError, match=f"refusing to load global {global_name}"):
            reader(path)
    assert not canary.exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("module, name", [
    ("posix", "system"), ("os", "system"), ("__builtin__", "eval"), ("commands", "Popen"), ("torch", "load"),
    ("torch._utils", "_rebuild_qtensor"), ("numpy.core.multiarray", "_reconstruct"), ("copyreg", "_reconstructor")])
def test_globals_written_by_hand(tmp_path, fmt, module, name):
    """Python 2 spellings (protocol 2's fix_imports), torch's other rebuild functions and numpy's reconstructor."""
    canary = tmp_path / "canary"
    body = Pk.glob(module, name) + Pk.tuple(Pk.str(f"touch {canary}")) + b"R"
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load global {module}.{name}"):
        read_state_dict(wrap(fmt, Pk.program(body)))
    assert not canary.exists()


def test_a_global_inside_tensor_arguments_is_refused():
    evil = Pk.glob("os", "system") + Pk.tuple(Pk.str("true")) + b"R"
    body = Pk.ordered_dict([(Pk.str("w"), Pk.glob("torch._utils", "_rebuild_tensor_v2")
                             + Pk.tuple(Pk.storage("0", 2), evil, Pk.tuple(Pk.int(2)), Pk.tuple(Pk.int(1))) + b"R")])
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        read_state_dict(zip_checkpoint(Pk.program(body), {"0": bytes(8)}))


@pytest.mark.parametrize("opcodes, name", [
    (b"(S'touch x'\nios\nsystem\n", "INST"),                                             # protocol 0 instance
    (Pk.glob("collections", "OrderedDict") + b"(o", "OBJ"),
    (Pk.glob("collections", "OrderedDict") + b")\x81", "NEWOBJ"),
    (b"\x82\x01", "EXT1"),                                                                # copyreg extension registry
])
def test_object_building_opcodes_are_refused(opcodes, name):
    with pytest.raises(UnsafeCheckpointError, match=f"refusing pickle opcode {name}"):
        read_state_dict(zip_checkpoint(Pk.PROTO + opcodes + b"."))


def test_build_cannot_modify_the_allowed_globals():
    """BUILD (pickle's attribute setter) on an allowed function or storage class is refused, so one file cannot
    alter how the next is read."""
    for target in (Pk.glob("torch._utils", "_rebuild_tensor_v2"), Pk.glob("torch", "FloatStorage")):
        state = b"}" + Pk.str("fn") + Pk.int(1) + b"s"
        with pytest.raises(UnsafeCheckpointError, match="tries to set attributes"):
            read_state_dict(zip_checkpoint(Pk.program(target + state + b"b")))
    bad_state = b"}" + Pk.str("__class__") + Pk.int(1) + b"s"
    with pytest.raises(UnsafeCheckpointError, match="other than _metadata"):
        read_state_dict(zip_checkpoint(Pk.program(Pk.ordered_dict() + bad_state + b"b")))


@pytest.mark.parametrize("pid, message", [
    (Pk.str("storage"), "unsupported persistent id of type str"),
    (Pk.tuple(Pk.str("module"), Pk.str("a"), Pk.str("b"), Pk.str("c"), Pk.int(1)), "unsupported persistent id"),
    (Pk.tuple(Pk.str("storage"), Pk.str("FloatStorage"), Pk.str("0"), Pk.str("cpu"), Pk.int(1)),
     "does not name a storage type"),
    (Pk.tuple(Pk.str("storage"), Pk.glob("torch", "FloatStorage"), Pk.str("../../etc/passwd"), Pk.str("cpu"),
              Pk.int(1)), "invalid storage key"),
    (Pk.tuple(Pk.str("storage"), Pk.glob("torch", "FloatStorage"), Pk.str("0"), Pk.str("cpu"), Pk.int(-1)),
     "storage size must be an int64 >= 0"),
])
def test_persistent_ids_are_validated(pid, message):
    body = Pk.ordered_dict([(Pk.str("w"), Pk.tensor(pid + b"Q", 0, (1,), (1,)))])
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(zip_checkpoint(Pk.program(body), {"0": bytes(4)}))


# --- forged sizes and shapes: refused before allocation -------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_forged_storage_element_count(fmt):
    """The pickle claims 2**40 elements for a 4-element storage, with a tensor that fits that claim."""
    data = one_tensor_checkpoint(fmt, [1.0, 2.0, 3.0, 4.0], (1 << 20, 1 << 20), (1 << 20, 1), numel=1 << 40)
    with pytest.raises(CheckpointError, match="declares 1099511627776 float32 elements|needs 4398046511104 bytes"):
        read_state_dict(data)
    assert peak_bytes(lambda: read_state_dict(data)) < 1 << 20


def test_forged_legacy_element_count_in_the_data_section():
    raw = np.ones(4, np.float32).tobytes()
    body = Pk.ordered_dict([(Pk.str("w"), Pk.tensor(Pk.storage("0", 4, legacy=True), 0, (4,), (1,)))])
    for numel in (1 << 62, -1, 5):
        data = legacy_checkpoint(Pk.program(body), [("0", numel, raw)])
        with pytest.raises(CheckpointError, match="declares 4 elements in the pickle"):
            read_state_dict(data)


def test_truncated_legacy_storage():
    data = one_tensor_checkpoint("legacy", [1.0, 2.0, 3.0, 4.0], (4,), (1,))
    with pytest.raises(CheckpointError, match="truncated legacy checkpoint"):
        read_state_dict(data[:-3])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size, stride, offset, message", [
    ((1 << 20, 1 << 20), (1, 1), 0, "reaches element"),                   # far beyond the storage
    ((1 << 62, 1 << 62), (1, 1), 0, "too large"),                         # overflows int64 element count
    ((4,), (1,), 1, "reaches element 4 of a storage of 4"),               # one past the end
    ((1 << 40,), (0,), 0, "more than 4x the file size"),                  # expanded view asking for 4 TiB
    ((0, 3), (3, 1), 4, None),                                            # empty at the end: fine
    ((1 << 62, 1 << 62, 0), (0, 0, 1), 0, "too large"),                   # empty, but beyond NumPy's limits
    ((0,), (1,), 5, "offset 5 beyond its storage"),
    ((1 << 63,), (1,), 0, "tensor size must be an int64"),
    ((2,), (-1,), 0, "tensor stride must be an int64 >= 0"),
    ((1,) * 40, (1,) * 40, 0, "40 dimensions"),
])
def test_forged_shapes_are_refused_before_allocation(fmt, size, stride, offset, message):
    data = one_tensor_checkpoint(fmt, [1.0, 2.0, 3.0, 4.0], size, stride, offset=offset)
    if message is None:
        assert read_state_dict(data)["w"].shape == size
    else:
        with pytest.raises(CheckpointError, match=message):
            read_state_dict(data)
    assert peak_bytes(lambda: read_state_dict(data)) < 1 << 20


def test_nested_tuples_do_not_crash_the_interpreter():
    """CPython hashes nested tuples recursively in C: a 3 MB pickle of nested tuples used as a dict key segfaults a
    plain pickle.loads. Run in a subprocess so that a regression is a failed test, not a dead test session."""
    script = (
        "import sys; from checkpoints import zip_checkpoint, legacy_checkpoint\n"
        "from weights_convert import read_state_dict, CheckpointError\n"
        "body = b'\\x80\\x02}' + b')' + b'\\x85' * 3_000_000 + b'K\\x01s.'\n"
        "for data in (zip_checkpoint(body), legacy_checkpoint(body)):\n"
        "    try:\n"
        "        read_state_dict(data)\n"
        "    except CheckpointError as e:\n"
        "        print('refused:', e)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=os.path.join(ROOT, "tests"), env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("refused: corrupt checkpoint: containers nested more than 64 deep") == 2


def test_cyclic_and_deep_lists_end_in_a_clean_error():
    cyclic = Pk.PROTO + b"]q\x00h\x00a."                                  # L = []; L.append(L)
    with pytest.raises(CheckpointError, match="nested more than"):
        load(zip_checkpoint(cyclic))
    deep = Pk.PROTO + b"]" * 1000 + b"a" * 999 + b"."
    with pytest.raises(CheckpointError, match="nested more than 64 deep"):
        load(zip_checkpoint(deep))


def test_argparse_namespace_in_a_training_checkpoint_is_refused(tmp_path):
    """torchvision's reference scripts save `args`; like torch.load(weights_only=True) we refuse that global."""
    import argparse
    torch = oracle.torch()
    path = save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "c.pth", "zip")
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        read_state_dict(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("opcodes, message", [
    (b"]r" + (57159281).to_bytes(4, "little"), "memo index 57159281 out of sequence"),     # LONG_BINPUT
    (b"]p1000000000\n", "memo index 1000000000 out of sequence"),                           # PUT (text)
    (b"]q\x01", "memo index 1 out of sequence"),                                            # BINPUT skipping 0
    (b"B" + (1 << 31).to_bytes(4, "little") + b"x" * 16, "expected 2147483648 bytes"),     # BINBYTES
    (b"X" + (1 << 31).to_bytes(4, "little") + b"x" * 16, "expected 2147483648 bytes"),     # BINUNICODE
    (b"\x8e" + (1 << 40).to_bytes(8, "little") + b"x" * 16, "expected 1099511627776 bytes"),  # BINBYTES8
    (b"\x8b" + ((1 << 31) - 1).to_bytes(4, "little") + b"x" * 16, "not enough data in stream to read long4"),   # LONG4
])
def test_forged_pickle_lengths_and_memo_indices_are_refused_before_allocation(fmt, opcodes, message):
    """Sizes inside the pickle are bounded by the bytes that remain (BINBYTES: the C unpickler allocates the declared
    length first, 2 GB here) and memo indices by the entries so far (it allocates twice the index in pointers)."""
    data = wrap(fmt, Pk.PROTO + opcodes + b".")
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(data)
    assert peak_bytes(lambda: read_state_dict(data)) < 1 << 20


def test_a_dense_memo_with_overwrites_still_reads():
    """Dense means 0, 1, 2, ... or an index already used: what pickle.py and _pickle.c write (and overwrites)."""
    body = Pk.ordered_dict([(Pk.str("w"), Pk.tensor(Pk.storage("0", 2), 0, (2,), (1,)))])
    data_pkl = Pk.PROTO + b"]q\x00]q\x01]q\x00" + b"0" * 3 + body + b"."
    assert read_state_dict(zip_checkpoint(data_pkl, {"0": np.ones(2, np.float32).tobytes()}))["w"].tolist() == [1, 1]
