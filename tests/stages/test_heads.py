"""RPN head, box head and mask head against torchvision.

1. Small torchvision head modules (RPNHead, TwoMLPHead, FastRCNNConvFCHead, FastRCNNPredictor, MaskRCNNHeads,
   MaskRCNNPredictor) with random weights, every configuration the Config can express (conv depth, v2 norm, number
   of layers and classes), every label. Tolerance 1e-4 of max|ref|: each float32 layer adds about sqrt(K)*2^-24
   (3e-6 for K = 2304) of relative error in practice, a few layers stay far below 1e-4, while any layout or
   indexing mistake is O(1).
2. Stage parity on calibrated v1 / v2 / ResNet-18 models (tests/tv_models.py), each head fed torchvision's own
   input of that stage, with the facts §10.4 tolerances: RPN logits 5e-3, RPN deltas 5e-4, box logits 2e-3 (box
   regression held to the same), mask logits 3e-3 against the predicted label's channel of torchvision's predictor.
"""
import numpy as np
import pytest

import oracle
import tv_models
from minimaskrcnn.stages import backbone, box_head, fpn, mask_head, rpn
from minimaskrcnn.config import Config

REL_TO_MAX = 1e-4   # module docstring, point 1
CASES = tv_models.STAGE_CASES


def small_config(**changes) -> Config:
    n = changes.get("num_classes", 5)
    return Config(num_classes=n, class_names=("__background__",) + tuple(f"c{i}" for i in range(1, n)), **changes)


def prefixed(module, prefix: str) -> dict:
    return {f"{prefix}.{k}": v.numpy() for k, v in module.state_dict().items()}


def assert_close_to_max(got, ref, rel=REL_TO_MAX):
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() <= rel * np.abs(ref).max()


# ----------------------------------------------------------------------------------------------------------------
# 1. Small torchvision head modules
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("conv_depth", [1, 2, 3])
def test_rpn_head_module(conv_depth):
    torch, tv = oracle.torch(), oracle.torchvision()
    torch.manual_seed(conv_depth)
    head = tv.models.detection.rpn.RPNHead(8, 3, conv_depth=conv_depth).eval()
    maps = [torch.randn(1, 8, h, w) for h, w in [(20, 27), (10, 14), (5, 7), (3, 4), (2, 2)]]
    with torch.no_grad():
        ref_obj, ref_deltas = head(maps)
    w = rpn.load_rpn_head(prefixed(head, "rpn.head"), small_config(rpn_conv_depth=conv_depth))
    objectness, deltas = rpn.rpn_head_forward(w, [m[0].numpy() for m in maps])
    for got, ref in zip(objectness + deltas, ref_obj + ref_deltas):
        assert_close_to_max(got, ref[0].numpy())


@pytest.mark.parametrize("n_convs", [0, 1, 4])
def test_box_head_module(n_convs):
    torch, tv = oracle.torch(), oracle.torchvision()
    det = tv.models.detection
    torch.manual_seed(n_convs)
    if n_convs:
        head = det.faster_rcnn.FastRCNNConvFCHead((8, 7, 7), [8] * n_convs, [32], norm_layer=torch.nn.BatchNorm2d)
    else:
        head = det.faster_rcnn.TwoMLPHead(8 * 7 * 7, 32)
    predictor = det.faster_rcnn.FastRCNNPredictor(32, 5)
    x = torch.randn(9, 8, 7, 7)
    tv_models.calibrate_batchnorm(head, lambda: head(x), seed=n_convs)
    with torch.no_grad():
        ref_logits, ref_deltas = predictor(head.eval()(x))
    sd = {**prefixed(head, "roi_heads.box_head"), **prefixed(predictor, "roi_heads.box_predictor")}
    w = box_head.load_box_head(sd, small_config(box_head_convs=n_convs, representation_size=32))
    logits, deltas = box_head.box_head_forward(w, x.numpy())
    assert_close_to_max(logits, ref_logits.numpy())
    assert_close_to_max(deltas, ref_deltas.numpy())


@pytest.mark.parametrize("layers, norm", [((8, 8, 8, 8), False), ((8, 6), True), ((8,), False)])
def test_mask_head_module_every_label(layers, norm):
    torch, tv = oracle.torch(), oracle.torchvision()
    mask_rcnn = tv.models.detection.mask_rcnn
    torch.manual_seed(len(layers))
    head = mask_rcnn.MaskRCNNHeads(8, list(layers), 1, norm_layer=torch.nn.BatchNorm2d if norm else None)
    predictor = mask_rcnn.MaskRCNNPredictor(layers[-1], 7, 5)
    x = torch.randn(10, 8, 14, 14)
    tv_models.calibrate_batchnorm(head, lambda: head(x), seed=1)
    with torch.no_grad():
        ref = predictor(head.eval()(x)).numpy()                             # (N, NC, 28, 28)
    sd = {**prefixed(head, "roi_heads.mask_head"), **prefixed(predictor, "roi_heads.mask_predictor")}
    w = mask_head.load_mask_head(sd, small_config(mask_head_layers=layers, mask_head_norm=norm))
    for label in range(5):                                                   # every class, background included
        labels = np.full(10, label)
        assert_close_to_max(mask_head.mask_head_forward(w, x.numpy(), labels), ref[:, label])
    labels = np.random.default_rng(0).integers(0, 5, 10)                     # mixed labels in one batch
    assert_close_to_max(mask_head.mask_head_forward(w, x.numpy(), labels), ref[np.arange(10), labels])


def test_empty_batches_and_bad_labels():
    raw = tv_models.state_dict_numpy(tv_models._build("maskrcnn_resnet50_fpn_v2", 0, {}))
    cfg = tv_models.config_for("maskrcnn_resnet50_fpn_v2")
    logits, deltas = box_head.box_head_forward(box_head.load_box_head(raw, cfg), np.zeros((0, 256, 7, 7), np.float32))
    assert logits.shape == (0, 91) and deltas.shape == (0, 364)
    mask_w = mask_head.load_mask_head(raw, cfg)
    assert mask_head.mask_head_forward(mask_w, np.zeros((0, 256, 14, 14), np.float32), np.zeros(0, np.int64)).shape \
        == (0, 28, 28)
    with pytest.raises(ValueError, match="labels"):
        mask_head.mask_head_forward(mask_w, np.zeros((1, 256, 14, 14), np.float32), np.array([91]))
    with pytest.raises(ValueError, match="labels"):
        mask_head.mask_head_forward(mask_w, np.zeros((2, 256, 14, 14), np.float32), np.array([1]))


@pytest.mark.parametrize("arch", tv_models.ARCHS)
def test_loaders_read_every_key(arch):
    """Every state-dict entry (but the BN step counters) is used by exactly the loaders of the config's stages."""
    class Recording(dict):
        def __getitem__(self, key):
            used.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            used.add(key)
            return super().get(key, default)

    used = set()
    sd = Recording(tv_models.state_dict_numpy(tv_models._build(arch, 0, {})))
    cfg = tv_models.config_for(arch)
    backbone.load_backbone(sd, cfg), fpn.load_fpn(sd, cfg), rpn.load_rpn_head(sd, cfg), box_head.load_box_head(sd, cfg)
    if cfg.masks:
        mask_head.load_mask_head(sd, cfg)
    assert sorted(set(sd) - used) == []


# ----------------------------------------------------------------------------------------------------------------
# 2. Stage parity on calibrated models
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{s}-seed{seed}" for a, s, seed in CASES])
def case(request):
    arch, source, seed = request.param
    image, model, tv = tv_models.reference_case(arch, source, seed)
    cfg = tv_models.config_for(arch)
    return arch, tv, cfg, tv_models.state_dict_numpy(model)


def test_rpn_head_matches_torchvision(case):
    arch, tv, cfg, sd = case
    objectness, deltas = rpn.rpn_head_forward(rpn.load_rpn_head(sd, cfg), tv["P"])
    err_obj = max(np.abs(g - r).max() for g, r in zip(objectness, tv["rpn_objectness"]))
    err_deltas = max(np.abs(g - r).max() for g, r in zip(deltas, tv["rpn_deltas"]))
    print(arch, "RPN objectness / deltas max abs error", err_obj, err_deltas)
    assert [o.shape for o in objectness] == [r.shape for r in tv["rpn_objectness"]]
    assert [d.shape for d in deltas] == [r.shape for r in tv["rpn_deltas"]]
    assert err_obj <= 5e-3 and err_deltas <= 5e-4


def test_box_head_matches_torchvision(case):
    arch, tv, cfg, sd = case
    logits, deltas = box_head.box_head_forward(box_head.load_box_head(sd, cfg), tv["box_features"])
    assert logits.shape == tv["class_logits"].shape and deltas.shape == tv["box_regression"].shape
    err_logits = np.abs(logits - tv["class_logits"]).max()
    err_deltas = np.abs(deltas - tv["box_regression"]).max()
    print(arch, "box logits / regression max abs error", err_logits, err_deltas)
    assert err_logits <= 2e-3 and err_deltas <= 2e-3


def test_mask_head_matches_torchvision(case):
    arch, tv, cfg, sd = case
    labels = tv["labels"]
    assert len(labels) > 0, "no detection: the comparison would prove nothing"
    logits = mask_head.mask_head_forward(mask_head.load_mask_head(sd, cfg), tv["mask_features"], labels)
    ref = tv["mask_logits"][np.arange(len(labels)), labels]                  # (N, 28, 28): the label's channel
    err = np.abs(logits - ref).max()
    print(arch, "mask logits max abs error", err, "of max", np.abs(ref).max())
    assert logits.shape == ref.shape and err <= 3e-3


def test_loaders_cast_float64_and_float16_weights_to_float32():
    """State dicts may hold float64 or float16 arrays: prepared weights are float32, and float64 copies of float32
    weights give bitwise the same network (the BatchNorm fold is computed in float64 either way)."""
    sd32 = tv_models.state_dict_numpy(tv_models._build(tv_models.SMALL_ARCH, 0, {}))
    cfg = tv_models.config_for(tv_models.SMALL_ARCH)
    x = np.random.default_rng(0).standard_normal((3, 64, 96)).astype(np.float32)
    rois = np.random.default_rng(1).standard_normal((3, 256, 14, 14)).astype(np.float32)

    def run(sd):
        p_maps = fpn.fpn_forward(fpn.load_fpn(sd, cfg), backbone.backbone_forward(backbone.load_backbone(sd, cfg), x))
        objectness, _ = rpn.rpn_head_forward(rpn.load_rpn_head(sd, cfg), p_maps)
        logits, _ = box_head.box_head_forward(box_head.load_box_head(sd, cfg), rois[:, :, :7, :7])
        masks = mask_head.mask_head_forward(mask_head.load_mask_head(sd, cfg), rois, np.array([0, 1, 3]))
        return p_maps + objectness + [logits, masks]

    reference = run(sd32)
    for got, ref in zip(run({k: v.astype(np.float64) for k, v in sd32.items()}), reference):
        np.testing.assert_array_equal(got, ref)
    for got in run({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in sd32.items()}):
        assert got.dtype == np.float32 and np.all(np.isfinite(got))
