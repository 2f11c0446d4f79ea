"""weights_convert.reader: torch.save files (zip and legacy) read without torch, bitwise equal to torch.load.

The hand-written pickle builder (`Pk`, `zip_checkpoint`, `legacy_checkpoint`) is in tests/checkpoints.py.
"""
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import oracle
from checkpoints import FORMATS, Pk, one_tensor_checkpoint, save, zip_checkpoint
from weights_convert import CheckpointError, load, read_state_dict

def assert_bitwise(ours, tensor):
    """`ours` has torch's dtype, shape and bits (bfloat16, which NumPy lacks, is compared widened to float32)."""
    torch = oracle.torch()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    theirs = tensor.contiguous().numpy()
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    assert ours.shape == theirs.shape
    assert ours.flags.c_contiguous
    assert ours.tobytes() == theirs.tobytes()


def varied_tensors():
    """Every storage type a checkpoint may hold, and views: offsets, transposes, steps, zero strides, empty, 0-d."""
    torch = oracle.torch()
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    return OrderedDict([
        ("base", base),
        ("transposed", base.t()),
        ("offset_slice", base[2:, 3:]),
        ("stepped", base[1::2, ::3]),
        ("row", base[4]),
        ("expanded", torch.arange(3.0).expand(4, 3)),
        ("permuted4d", torch.randn(2, 3, 4, 5, generator=g).permute(3, 1, 0, 2)),
        ("half", torch.randn(5, 3, generator=g).half()),
        ("double", torch.randn(7, generator=g, dtype=torch.float64)),
        ("bfloat16", torch.randn(4, generator=g).bfloat16()),
        ("int64", torch.arange(-3, 9)),
        ("int32", torch.arange(5, dtype=torch.int32)),
        ("uint8", torch.arange(250, 256, dtype=torch.uint8)),
        ("bool", torch.tensor([True, False, True])),
        ("scalar", torch.tensor(2.5)),
        ("empty", torch.zeros(0, 3)),
        ("special", torch.tensor([float("nan"), float("inf"), -0.0, 1e-45])),
    ])


# --- torch-written files ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dtype_and_view_bitwise_equal_to_torch_load(tmp_path, fmt):
    torch = oracle.torch()
    tensors = varied_tensors()
    tensors._metadata = OrderedDict([("", {"version": 1}), ("rpn.head", {"version": 2})])
    path = save(tensors, tmp_path / "t.pth", fmt)
    ours = read_state_dict(path)
    theirs = torch.load(path)
    assert list(ours) == list(theirs)
    for key in theirs:
        assert_bitwise(ours[key], theirs[key])
    assert ours._metadata == {"": {"version": 1}, "rpn.head": {"version": 2}}


def test_views_share_one_storage_in_the_file(tmp_path):
    """The view test above exercises offsets/strides into a shared storage, not copies torch made on save."""
    path = save(varied_tensors(), tmp_path / "t.pth", "zip")
    with zipfile.ZipFile(path) as z:
        storages = [n for n in z.namelist() if "/data/" in n]
    assert len(storages) == len(varied_tensors()) - 4        # base and its 4 views share one storage


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("nest", ["model", "state_dict"])
def test_state_dict_nested_in_a_training_checkpoint(tmp_path, fmt, nest):
    torch = oracle.torch()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    path = save({nest: net.state_dict(), "optimizer": opt.state_dict(), "epoch": 7}, tmp_path / "c.pth", fmt)
    ours = read_state_dict(path)
    theirs = torch.load(path)[nest]
    assert list(ours) == list(theirs)
    for key in theirs:
        assert_bitwise(ours[key], theirs[key])
    assert ours._metadata == {k: dict(v) for k, v in theirs._metadata.items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameters_and_arbitrary_containers_with_load(tmp_path, fmt):
    torch = oracle.torch()
    w = torch.nn.Parameter(torch.randn(3, 2))
    obj = {"p": w, "list": [torch.ones(2), (torch.arange(4), 3, "x")], "d": {"n": None, "f": 1.5}}
    path = save(obj, tmp_path / "o.pth", fmt)
    ours = load(path)
    assert_bitwise(ours["p"], w.detach())
    assert_bitwise(ours["list"][0], torch.ones(2))
    assert_bitwise(ours["list"][1][0], torch.arange(4))
    assert ours["list"][1][1:] == (3, "x") and isinstance(ours["list"][1], tuple)
    assert ours["d"] == {"n": None, "f": 1.5}


# --- hand-built files: what torch writes on other machines -----------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_big_endian_storage(fmt):
    values = [1.5, -2.0, 3.25, 1e-3]
    sd = read_state_dict(one_tensor_checkpoint(fmt, values, (2, 2), (1, 2), dtype=">f4"))
    np.testing.assert_array_equal(sd["w"], np.array(values, np.float32).reshape(2, 2, order="F"))
    assert sd["w"].dtype == np.float32 and sd["w"].dtype.isnative


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpu_location_and_cuda_storage_names_are_read_on_cpu(fmt):
    sd = read_state_dict(one_tensor_checkpoint(fmt, [1.0, 2.0], (2,), (1,), location="cuda:0"))
    np.testing.assert_array_equal(sd["w"], [1.0, 2.0])


def test_storage_element_count_is_counted_in_elements_not_bytes():
    sd = read_state_dict(one_tensor_checkpoint("zip", [7, 8, 9], (3,), (1,), storage_class="LongStorage",
                                               dtype="<i8"))
    assert sd["w"].dtype == np.int64 and sd["w"].tolist() == [7, 8, 9]


# --- not checkpoints -------------------------------------------------------------------------------------------------

def test_not_a_checkpoint_is_named(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_state_dict(text)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_state_dict(pickle.dumps({"a": 1}, 2))                 # a pickle, but not torch's
    npz = tmp_path / "w.npz"
    np.savez(npz, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="already converted"):
        read_state_dict(npz)


def test_no_state_dict_in_checkpoint():
    body = Pk.ordered_dict([(Pk.str("epoch"), Pk.int(3))])
    with pytest.raises(CheckpointError, match=r"no state dict in the checkpoint: it holds a dict with keys 'epoch'"):
        read_state_dict(zip_checkpoint(Pk.program(body)))


def test_compressed_members_are_refused():
    body = Pk.ordered_dict([(Pk.str("w"), Pk.tensor(Pk.storage("0", 2), 0, (2,), (1,)))])
    data = zip_checkpoint(Pk.program(body), {"0": np.zeros(2, np.float32).tobytes()},
                          compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="is compressed"):
        read_state_dict(data)
