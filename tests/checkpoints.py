"""Test helpers that make checkpoints: small torchvision detectors with random weights, `torch.save` in both file
formats, and a hand-written pickle builder (`Pk`, `zip_checkpoint`, `legacy_checkpoint`) that forges files torch would
never write (tests/weights_convert/test_reader_security.py). Imported by test modules; never a test module itself.
"""
import io
import pickle
import zipfile

import numpy as np

import oracle
from weights_convert.reader import LEGACY_MAGIC, LEGACY_PROTOCOL

FORMATS = ["zip", "legacy"]


# --- a hand-written pickle builder (protocol 2 opcodes) --------------------------------------------------------------

class Pk:
    """Protocol-2 pickle fragments, concatenated by the tests into whole (possibly malicious) programs."""

    PROTO = b"\x80\x02"
    STOP = b"."

    @staticmethod
    def glob(module, name):
        return b"c" + f"{module}\n{name}\n".encode()

    @staticmethod
    def str(text):
        data = text.encode()
        return b"X" + len(data).to_bytes(4, "little") + data

    @staticmethod
    def int(n):
        if 0 <= n < 256:
            return b"K" + bytes([n])
        data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(data)]) + data          # LONG1

    @staticmethod
    def tuple(*items):
        return b"(" + b"".join(items) + b"t"

    @classmethod
    def ordered_dict(cls, items=()):
        """OrderedDict() via REDUCE, then SETITEMS with the (key fragment, value fragment) pairs."""
        body = b"".join(k + v for k, v in items)
        return cls.glob("collections", "OrderedDict") + b")R" + (b"(" + body + b"u" if items else b"")

    @classmethod
    def storage(cls, key, numel, storage_class="FloatStorage", location="cpu", legacy=False):
        fields = [cls.str("storage"), cls.glob("torch", storage_class), cls.str(key), cls.str(location),
                  cls.int(numel)] + ([b"N"] if legacy else [])
        return cls.tuple(*fields) + b"Q"                     # BINPERSID

    @classmethod
    def tensor(cls, storage, offset, size, stride):
        args = cls.tuple(storage, cls.int(offset), cls.tuple(*map(cls.int, size)), cls.tuple(*map(cls.int, stride)),
                         b"\x89", cls.ordered_dict())
        return cls.glob("torch._utils", "_rebuild_tensor_v2") + args + b"R"

    @classmethod
    def program(cls, body):
        return cls.PROTO + body + cls.STOP


def zip_checkpoint(data_pkl: bytes, storages=None, root="archive", byteorder="little",
                   compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        z.writestr(f"{root}/data.pkl", data_pkl)
        z.writestr(f"{root}/byteorder", byteorder)
        for key, raw in (storages or {}).items():
            z.writestr(f"{root}/data/{key}", raw)
        z.writestr(f"{root}/version", "3\n")
    return buf.getvalue()


def legacy_checkpoint(object_pkl: bytes, storages=(), little_endian=True, keys=None) -> bytes:
    """storages: [(key, numel, raw bytes)] in file order; keys: the key list pickle (default: those keys)."""
    order = "little" if little_endian else "big"
    sys_info = {"protocol_version": LEGACY_PROTOCOL, "little_endian": little_endian,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    out = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(LEGACY_PROTOCOL, 2), pickle.dumps(sys_info, 2), object_pkl,
           pickle.dumps([k for k, _, _ in storages] if keys is None else keys, 2)]
    for _key, numel, raw in storages:
        out.append(numel.to_bytes(8, order, signed=True) + raw)
    return b"".join(out)


def one_tensor_checkpoint(fmt, values, size, stride, offset=0, numel=None, storage_class="FloatStorage",
                          dtype="<f4", location="cpu"):
    """A file holding {'w': tensor} over one storage with `values`, built by hand in format `fmt`."""
    raw = np.asarray(values, dtype=dtype).tobytes()
    numel = len(values) if numel is None else numel
    legacy = fmt == "legacy"
    body = Pk.ordered_dict([(Pk.str("w"), Pk.tensor(Pk.storage("0", numel, storage_class, location, legacy),
                                                    offset, size, stride))])
    if legacy:
        return legacy_checkpoint(Pk.program(body), [("0", numel, raw)], little_endian=dtype[0] != ">")
    return zip_checkpoint(Pk.program(body), {"0": raw}, byteorder="big" if dtype[0] == ">" else "little")


# --- helpers ---------------------------------------------------------------------------------------------------------

def save(obj, path, fmt):
    torch = oracle.torch()
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def randomize(model, seed=0):
    """Every float parameter and buffer random (BN statistics too), so that a swapped or mis-cast array shows."""
    torch = oracle.torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
    return model


def small_detector(*, v2=False, masks=True, frozen=True, returned_layers=(1, 2, 3, 4), anchors=3, fpn=64, rep=128,
                   mask_layers=(64, 32), num_classes=5, depth=18):
    """A torchvision Mask/Faster R-CNN on ResNet-18 with narrow heads: every layout switch, a fraction of the size."""
    torch, tv = oracle.torch(), oracle.torchvision()
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import FrozenBatchNorm2d
    bn = torch.nn.BatchNorm2d
    body = getattr(tv.models, f"resnet{depth}")(weights=None, norm_layer=FrozenBatchNorm2d if frozen else bn)
    expansion = 4 if depth >= 50 else 1
    backbone = BackboneWithFPN(body, {f"layer{layer}": str(i) for i, layer in enumerate(returned_layers)},
                               [64 * 2 ** (layer - 1) * expansion for layer in returned_layers], fpn,
                               norm_layer=bn if v2 else None)
    levels = len(returned_layers) + 1
    ratios = (0.5, 1.0, 2.0) if anchors == 3 else tuple(float(r) for r in np.geomspace(0.25, 4.0, anchors))
    box_head = FastRCNNConvFCHead((fpn, 7, 7), [fpn] * 4, [rep], norm_layer=bn) if v2 else TwoMLPHead(fpn * 49, rep)
    kwargs = dict(rpn_anchor_generator=AnchorGenerator(tuple((32 * 2 ** i,) for i in range(levels)),
                                                       (ratios,) * levels),
                  rpn_head=RPNHead(fpn, anchors, conv_depth=2 if v2 else 1),
                  box_head=box_head, box_predictor=FastRCNNPredictor(rep, num_classes))
    if masks:
        model = MaskRCNN(backbone, None, mask_head=MaskRCNNHeads(fpn, list(mask_layers), 1,
                                                                 norm_layer=bn if v2 else None),
                         mask_predictor=MaskRCNNPredictor(mask_layers[-1], 256, num_classes), **kwargs)
    else:
        model = FasterRCNN(backbone, None, **kwargs)
    return randomize(model.eval())


# --- the small detectors' variants, and checking a conversion against torch.load ---------------------------------

SMALL = {   # name: (builder kwargs, the Config fields the converter must infer)
    "mask_v1_frozenbn": (dict(), dict(masks=True, fpn_norm=False, rpn_conv_depth=1, box_head_convs=0,
                                      mask_head_layers=(64, 32), mask_head_norm=False)),
    "mask_v1_bn": (dict(frozen=False), dict(masks=True, fpn_norm=False, mask_head_layers=(64, 32))),
    "mask_v2": (dict(v2=True, frozen=False), dict(masks=True, fpn_norm=True, rpn_conv_depth=2, box_head_convs=4,
                                                  mask_head_layers=(64, 32), mask_head_norm=True)),
    "faster_v1": (dict(masks=False), dict(masks=False, fpn_norm=False, rpn_conv_depth=1, box_head_convs=0)),
    "faster_v2": (dict(masks=False, v2=True, frozen=False), dict(masks=False, fpn_norm=True, rpn_conv_depth=2,
                                                                 box_head_convs=4)),
}


def assert_npz_equals_torch_load(npz_path, pth_path, nested=None):
    """Every array of the .npz has the key, dtype, shape and bits of torch.load's tensor (num_batches_tracked
    dropped), in the same order; the .npz has nothing else but the metadata."""
    torch = oracle.torch()
    theirs = torch.load(pth_path)
    theirs = theirs[nested] if nested else theirs
    theirs = {k: v for k, v in theirs.items() if not k.endswith("num_batches_tracked")}
    with np.load(npz_path, allow_pickle=False) as z:
        assert z.files == ["__metadata__"] + list(theirs)
        for key, tensor in theirs.items():
            ours, ref = z[key], tensor.contiguous().numpy()
            assert ours.dtype == ref.dtype and ours.shape == ref.shape, key
            assert ours.tobytes() == ref.tobytes(), key


def peak_bytes(fn):
    """The peak of Python's traced allocations while `fn()` runs (a CheckpointError from it is expected)."""
    import tracemalloc
    from weights_convert import CheckpointError
    tracemalloc.start()
    try:
        fn()
    except CheckpointError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak
