"""weights_convert.reader on hostile input: crafted checkpoints are refused before any code runs, forged sizes before
any allocation, and fuzzed files (random bytes, truncations, bit flips of a real checkpoint) end in a clean
CheckpointError or a successful read: never another exception, a crash, a hang or a huge allocation."""
import io
import json
import os
import pickle
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import oracle
from checkpoints import FORMATS, Pk, legacy_checkpoint, one_tensor_checkpoint, save, zip_checkpoint
from conftest import checkout_env
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

def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    except CheckpointError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


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


# --- fuzzing ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_checkpoints(tmp_path_factory):
    """A real small checkpoint in both formats: conv + BN state dict, views, float16, int64, _metadata."""
    torch = oracle.torch()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sd = net.state_dict()
    base = torch.randn(4, 5)
    sd["view"], sd["half"] = base.t()[1:], torch.randn(3).half()
    d = tmp_path_factory.mktemp("fuzz")
    return {fmt: save(sd, d / f"{fmt}.pth", fmt).read_bytes() for fmt in FORMATS}


def read_cleanly(data: bytes):
    """Read `data`; it may fail only with CheckpointError, quickly and without a large allocation."""
    start = time.monotonic()
    tracemalloc.start()
    try:
        for reader in (read_state_dict, load):
            try:
                reader(data)
            except CheckpointError:
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(data) + (4 << 20), f"allocated {peak} bytes for a {len(data)}-byte file"
    assert time.monotonic() - start < 10


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x02\x8a\x0a"]), tail=st.binary(max_size=600))
def test_fuzz_random_bytes(prefix, tail):
    read_cleanly(prefix + tail)


@FUZZ
@given(fmt=st.sampled_from(FORMATS), cut=st.floats(0, 1, exclude_max=True))
def test_fuzz_truncated_checkpoints(small_checkpoints, fmt, cut):
    data = small_checkpoints[fmt]
    read_cleanly(data[: int(cut * len(data))])


@FUZZ
@given(fmt=st.sampled_from(FORMATS), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                              st.integers(0, 7)), min_size=1, max_size=4))
def test_fuzz_bit_flips(small_checkpoints, fmt, flips):
    data = bytearray(small_checkpoints[fmt])
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    read_cleanly(bytes(data))


def flip_bits(body: bytes, flips) -> bytes:
    body = bytearray(body)
    for where, bit in flips:
        body[where % len(body)] ^= 1 << bit
    return bytes(body)


def with_pickle_flipped(data: bytes, fmt: str, flips) -> bytes:
    """Flip bits of the object pickle only; in a zip, rebuild the archive so that its CRCs still match and the
    flipped pickle reaches the unpickler instead of zipfile's CRC check."""
    if fmt == "legacy":
        start = 137                                   # after the magic, protocol and sys_info pickles
        end = data.index(b"\x80\x02]", start)          # the storage key list pickle that follows the object
        return data[:start] + flip_bits(data[start:end], flips) + data[end:]
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            body = src.read(info)
            z.writestr(info.filename, flip_bits(body, flips) if info.filename.endswith("/data.pkl") else body)
    return out.getvalue()


@FUZZ
@given(fmt=st.sampled_from(FORMATS), flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 7)),
                                                    min_size=1, max_size=3))
@example(fmt="zip", flips=[(444, 0)])        # issue 12: BINUNICODE length 13 -> 12, 914 MB for the C unpickler's memo
@example(fmt="legacy", flips=[(514, 0)])     # the same string in the legacy file's pickle
@example(fmt="legacy", flips=[(767, 5)])     # REDUCE 'R' -> LONG_BINPUT 'r': a memo index of 1.9e9 (30 GB)
def test_fuzz_bit_flips_in_the_pickle(small_checkpoints, fmt, flips):
    """Flips aimed at the object pickle, where a flip changes opcodes, lengths, sizes, strides and storage keys."""
    read_cleanly(with_pickle_flipped(small_checkpoints[fmt], fmt, flips))


def pickle_of(data: bytes, fmt: str) -> bytes:
    if fmt == "legacy":
        return data[137:data.index(b"\x80\x02]", 137)]
    z = zipfile.ZipFile(io.BytesIO(data))
    return z.read(next(name for name in z.namelist() if name.endswith("/data.pkl")))


@pytest.mark.parametrize("fmt, where, bit", [("zip", 444, 0), ("legacy", 514, 0)])
def test_the_flipped_string_length_of_issue_12(small_checkpoints, fmt, where, bit):
    """The case the fuzzing found by luck: bit 0 of the BINUNICODE length of '1.running_var' (13 -> 12). The string
    then ends one byte early and its last byte, 'r' (0x72), is read as LONG_BINPUT with the next four bytes as its
    index, 57,159,281: CPython's C unpickler grew its memo array to twice that (914 MB of pointers) before failing."""
    body = pickle_of(small_checkpoints[fmt], fmt)
    assert body[where - 1:where + 4] == b"X\r\x00\x00\x00" and body[where + 4:where + 17] == b"1.running_var", \
        "torch.save now writes this pickle differently: find the BINUNICODE length of '1.running_var' again"
    data = with_pickle_flipped(small_checkpoints[fmt], fmt, [(where, bit)])
    for reader in (read_state_dict, load):
        with pytest.raises(CheckpointError, match="memo index 57159281 out of sequence"):
            reader(data)
    # A clean read of this file peaks at ~16x its size (tensors, the unpickled objects, the zip directory); 64x leaves
    # room for allocator noise and is still 3,500x below what the bug allocated.
    assert peak_bytes(lambda: read_state_dict(data)) < 64 * len(data)


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


SWEEP_HEADROOM = 8 << 20
SWEEP = r"""
import json, resource, sys, zlib
from weights_convert import CheckpointError, load, read_state_dict

cases = json.loads(sys.argv[1])
headroom = int(sys.argv[2])
for case in cases:                                       # warm up: imports and caches allocate once, before the cap
    data = open(case["path"], "rb").read()
    read_state_dict(data), load(data)
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    bytearray(2 * headroom)
    print("CAP NOT ENFORCED")
except MemoryError:
    pass
for case in cases:
    buf = bytearray(open(case["path"], "rb").read())
    begin, end = case["begin"], case["end"]
    outcomes = {"read": 0, "refused": 0}
    for pos in range(begin, end):
        for bit in range(8):
            buf[pos] ^= 1 << bit
            for at in case["crc_at"]:                    # keep the zip's CRC-32 right, so the flip reaches the pickle
                buf[at:at + 4] = zlib.crc32(buf[begin:end]).to_bytes(4, "little")
            data = bytes(buf)
            buf[pos] ^= 1 << bit
            for reader in (read_state_dict, load):
                try:
                    reader(data)
                    outcomes["read"] += 1
                except CheckpointError as e:
                    outcomes["refused"] += 1
                    if "\n" in str(e) or not str(e):
                        print("BAD", case["fmt"], pos - begin, bit, "message not one line:", repr(str(e))[:200])
                except BaseException as e:               # MemoryError above the cap, or any other exception
                    print("BAD", case["fmt"], pos - begin, bit, type(e).__name__, repr(str(e))[:200])
    print("DONE", case["fmt"], end - begin, json.dumps(outcomes))
"""


def pickle_span(data: bytes, fmt: str):
    """(begin, end, CRC-32 field offsets): where the object pickle lies in the file, and the CRC fields over it.

    Zip (PKWARE APPNOTE 4.3.7 and 4.3.12): the local header's CRC-32 is at offset 14, the central directory entry's
    at offset 16; the name, extra and comment lengths at 26/28 (local) and 28/30/32 (central)."""
    if fmt == "legacy":
        return 137, data.index(b"\x80\x02]", 137), []
    z = zipfile.ZipFile(io.BytesIO(data))
    info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    h = info.header_offset
    begin = h + 30 + int.from_bytes(data[h + 26:h + 28], "little") + int.from_bytes(data[h + 28:h + 30], "little")
    crc_at, pos = [h + 14], z.start_dir
    while data[pos:pos + 4] == b"PK\x01\x02":
        n, m, k = (int.from_bytes(data[pos + o:pos + o + 2], "little") for o in (28, 30, 32))
        if data[pos + 46:pos + 46 + n] == info.filename.encode():
            crc_at.append(pos + 16)
        pos += 46 + n + m + k
    assert len(crc_at) == 2 and data[begin:begin + info.file_size] == z.read(info)
    return begin, begin + info.file_size, crc_at


def test_every_single_bit_flip_of_the_pickle(small_checkpoints, tmp_path):
    """Exhaustive and deterministic: each of the 8 bits of every byte of the object pickle flipped alone (~14,000
    files over both formats, each read by read_state_dict and load), so that CI finds a case like issue 12's whether or
    not a random seed happens to hit it. Every flip must read or end in a one-line CheckpointError.

    Memory: tracemalloc slows the reader ~7x (~4 min here), so the sweep runs in a subprocess whose address space is
    capped (RLIMIT_AS, Linux) at what it uses after a warm-up plus SWEEP_HEADROOM = 8 MiB, the reader's own tensor
    budget for a file this size (4 x 4 kB + 1 MiB) with room for allocator slack (Python's 1 MiB arenas, glibc). A
    read asking for more raises MemoryError, which the sweep reports. Measured: the sweep passes with 1 MiB of
    headroom; issue 12's case asked for 914 MB, the legacy file's REDUCE -> LONG_BINPUT flip for 30 GB."""
    cases = []
    for fmt, data in small_checkpoints.items():
        path = tmp_path / f"{fmt}.pth"
        path.write_bytes(data)
        begin, end, crc_at = pickle_span(data, fmt)
        cases.append({"fmt": fmt, "path": str(path), "begin": begin, "end": end, "crc_at": crc_at})
    run = subprocess.run([sys.executable, "-c", SWEEP, json.dumps(cases), str(SWEEP_HEADROOM)], capture_output=True,
                         text=True, timeout=900, cwd=ROOT, env=checkout_env())
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "CAP NOT ENFORCED" not in lines, "RLIMIT_AS did not stop a 16 MiB allocation: the sweep would prove nothing"
    bad = [line for line in lines if line.startswith("BAD")]
    assert not bad, f"{len(bad)} flips misbehaved, e.g.:\n" + "\n".join(bad[:20])
    done = {line.split()[1]: (int(line.split()[2]), json.loads(line.split(maxsplit=3)[3]))
            for line in lines if line.startswith("DONE")}
    assert set(done) == set(FORMATS)
    for fmt, (n, outcomes) in done.items():
        assert sum(outcomes.values()) == 2 * 8 * n, "not every flip was read"
        assert outcomes["read"] > 0 and outcomes["refused"] > 0, "a sweep where every flip ends alike tests one check"


def test_the_fuzz_base_reads(small_checkpoints):
    """The fuzzed files are real checkpoints (else the fuzzing above would test only the first check)."""
    torch = oracle.torch()
    for fmt, data in small_checkpoints.items():
        sd = read_state_dict(data)
        assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                            "1.num_batches_tracked", "view", "half"]
        assert sd["half"].dtype == np.float16
        assert read_state_dict(with_pickle_flipped(data, fmt, [])).keys() == sd.keys()    # the rebuild is faithful
        ref = torch.load(io.BytesIO(data))
        assert all(sd[k].tobytes() == ref[k].contiguous().numpy().tobytes() for k in ref)
