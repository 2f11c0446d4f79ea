"""ResNet body and FPN against torchvision, stage by stage (facts §10.4: C2..C5 and P2..P6 within 1e-3 of max|x|).

Each stage is fed torchvision's own input for that stage: the body gets the model's normalized padded image tensor,
the FPN gets torchvision's C maps. Reference models are calibrated on the very image they are tested on
(tests/tv_models.py, facts §10.3). fp32 vs fp64 torch differ by 3e-5 .. 2.5e-4 of max|x| through the whole body
(facts §10.1), so a wrong weight, stride, padding or block order shows up orders of magnitude above the bound.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import oracle
import tv_models
from minimaskrcnn.stages import backbone, fpn
from minimaskrcnn.config import MASKRCNN_RESNET50_FPN, MASKRCNN_RESNET50_FPN_V2, Config

REL_TO_MAX = 1e-3   # facts §10.4
CASES = tv_models.STAGE_CASES


def rel_to_max(got, ref) -> float:
    assert got.shape == ref.shape and got.dtype == np.float32
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{s}-seed{seed}" for a, s, seed in CASES])
def case(request):
    arch, source, seed = request.param
    image, model, tv = tv_models.reference_case(arch, source, seed)
    cfg = tv_models.config_for(arch)
    return arch, image, model, tv, cfg, tv_models.state_dict_numpy(model)


def test_reference_model_is_well_conditioned(case):
    arch, image, model, tv, cfg, sd = case
    report = tv_models.sanity_report(model, image, tv["outputs"])
    assert report.ok, report


@pytest.fixture(scope="module")
def our_c_maps(case):
    arch, image, model, tv, cfg, sd = case
    return backbone.backbone_forward(backbone.load_backbone(sd, cfg), tv["input"])


def test_body_matches_torchvision(case, our_c_maps):
    arch, image, model, tv, cfg, sd = case
    c_maps = our_c_maps
    assert len(c_maps) == len(tv["C"]) == len(cfg.returned_layers)
    errors = [rel_to_max(got, ref) for got, ref in zip(c_maps, tv["C"])]
    print(arch, "C rel-to-max errors", errors)
    assert max(errors) <= REL_TO_MAX


def test_fpn_matches_torchvision(case):
    arch, image, model, tv, cfg, sd = case
    p_maps = fpn.fpn_forward(fpn.load_fpn(sd, cfg), tv["C"])
    assert len(p_maps) == len(tv["P"]) == len(cfg.returned_layers) + 1
    errors = [rel_to_max(got, ref) for got, ref in zip(p_maps, tv["P"])]
    print(arch, "P rel-to-max errors", errors)
    assert max(errors) <= REL_TO_MAX


def test_body_then_fpn_matches_torchvision(case, our_c_maps):
    """Our body feeding our FPN: the errors of both stages compound and must still be within the bound."""
    arch, image, model, tv, cfg, sd = case
    p_maps = fpn.fpn_forward(fpn.load_fpn(sd, cfg), our_c_maps)
    assert max(rel_to_max(got, ref) for got, ref in zip(p_maps, tv["P"])) <= REL_TO_MAX


@pytest.mark.parametrize("depth, returned_layers", [(18, (2, 3, 4)), (34, (1, 2, 3, 4)), (50, (1, 3)), (101, (4,))])
def test_resnet_depths_and_returned_layers(depth, returned_layers):
    """Bare torchvision ResNets (BasicBlock and Bottleneck), BN calibrated on a small structured image."""
    torch, tv = oracle.torch(), oracle.torchvision()
    torch.manual_seed(depth)
    net = getattr(tv.models, f"resnet{depth}")(weights=None).eval()
    body = tv.models._utils.IntermediateLayerGetter(net, {f"layer{k}": str(k) for k in returned_layers})
    x = torch.from_numpy(tv_models.structured_image(96, 160, depth).transpose(2, 0, 1).copy())[None] * 4 - 2
    tv_models.calibrate_batchnorm(body, lambda: body(x), seed=depth)
    with torch.no_grad():
        ref = [v[0].numpy() for v in body(x).values()]
    sd = {f"backbone.body.{k}": v.numpy() for k, v in body.state_dict().items()}
    cfg = Config(resnet_depth=depth, returned_layers=returned_layers)
    got = backbone.backbone_forward(backbone.load_backbone(sd, cfg), x[0].numpy())
    assert len(got) == len(ref)
    assert max(rel_to_max(g, r) for g, r in zip(got, ref)) <= REL_TO_MAX


@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(2, 40), st.integers(2, 40)), min_size=1, max_size=4), st.booleans(),
       st.integers(0, 2**16))
def test_fpn_any_map_sizes_and_norm(sizes, norm, seed):
    """General (non-2x) upsampling sizes, v1 (bias) and v2 (BatchNorm) blocks, 1 to 4 levels. (Sizes from 2: a
    train-mode BatchNorm, used for calibration, cannot take a 1x1 map.)"""
    torch, tv = oracle.torch(), oracle.torchvision()
    torch.manual_seed(seed)
    channels = [4 * (i + 1) for i in range(len(sizes))]
    net = tv.ops.FeaturePyramidNetwork(channels, 8, extra_blocks=tv.ops.feature_pyramid_network.LastLevelMaxPool(),
                                       norm_layer=torch.nn.BatchNorm2d if norm else None).eval()
    xs = {str(i): torch.randn(1, c, h, w) for i, (c, (h, w)) in enumerate(zip(channels, sizes))}
    tv_models.calibrate_batchnorm(net, lambda: net(xs), seed)
    with torch.no_grad():
        ref = [v[0].numpy() for v in net(xs).values()]
    sd = {f"backbone.fpn.{k}": v.numpy() for k, v in net.state_dict().items()}
    cfg = Config(returned_layers=tuple(range(1, len(sizes) + 1)), fpn_channels=8, fpn_norm=norm)
    got = fpn.fpn_forward(fpn.load_fpn(sd, cfg), [x[0].numpy() for x in xs.values()])
    assert len(got) == len(ref)
    assert max(rel_to_max(g, r) for g, r in zip(got, ref)) <= REL_TO_MAX


def test_v1_v2_mismatch_is_reported_by_key():
    """A v2 state dict with a v1 config (and the reverse) fails loudly, naming the missing key."""
    raw = {arch: tv_models.state_dict_numpy(tv_models._build(arch, 0, {}))
           for arch in ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")}
    with pytest.raises(KeyError, match="inner_blocks.0.0.bias"):
        fpn.load_fpn(raw["maskrcnn_resnet50_fpn_v2"], MASKRCNN_RESNET50_FPN)
    with pytest.raises(KeyError, match="inner_blocks.0.1.weight"):
        fpn.load_fpn(raw["maskrcnn_resnet50_fpn"], MASKRCNN_RESNET50_FPN_V2)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight"):   # a Bottleneck 1x1 where a 3x3 belongs
        backbone.load_backbone(raw["maskrcnn_resnet50_fpn"], Config(resnet_depth=18))


def test_invalid_inputs_are_named():
    with pytest.raises(ValueError, match="resnet_depth"):
        backbone.load_backbone({}, Config(resnet_depth=42))
    with pytest.raises(ValueError, match="returned_layers"):
        backbone.load_backbone({}, Config(returned_layers=(3, 2)))
    weights = backbone.ResNetWeights(None, (), (1,))
    with pytest.raises(ValueError, match="x: expected"):
        backbone.backbone_forward(weights, np.zeros((4, 32, 32), np.float32))
