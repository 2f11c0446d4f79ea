"""minimaskrcnn.ops anchors against torchvision's AnchorGenerator (models/detection/anchor_utils.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oracle
from minimaskrcnn import ops

# facts §3 table: rows = sizes 32..512, columns = aspect ratios 0.5, 1, 2
FACTS_CELL_ANCHORS = {
    32: [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]],
    64: [[-45, -23, 45, 23], [-32, -32, 32, 32], [-23, -45, 23, 45]],
    128: [[-91, -45, 91, 45], [-64, -64, 64, 64], [-45, -91, 45, 91]],
    256: [[-181, -91, 181, 91], [-128, -128, 128, 128], [-91, -181, 91, 181]],
    512: [[-362, -181, 362, 181], [-256, -256, 256, 256], [-181, -362, 181, 362]],
}


@pytest.mark.parametrize("size", sorted(FACTS_CELL_ANCHORS))
def test_cell_anchors_facts_table(size):
    a = ops.cell_anchors((size,), (0.5, 1.0, 2.0))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, np.array(FACTS_CELL_ANCHORS[size], np.float32))


def torchvision_anchors(feature_shapes, padded, sizes, aspect_ratios):
    torch = oracle.torch()
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList
    gen = AnchorGenerator(sizes, aspect_ratios)
    images = ImageList(torch.zeros((1, 3) + tuple(padded)), [tuple(padded)])
    maps = [torch.zeros((1, 1) + tuple(s)) for s in feature_shapes]
    return gen(images, maps)[0].numpy()


def fpn_shapes(hp, wp):
    """P2..P5 at strides 4..32 of a padded (multiple of 32) size, then 'pool' = ceil(P5 / 2) (facts §2.2)."""
    shapes = [(hp // s, wp // s) for s in (4, 8, 16, 32)]
    return shapes + [(-(-shapes[-1][0] // 2), -(-shapes[-1][1] // 2))]


@pytest.mark.parametrize("padded, total", [((800, 1088), 217_413), ((800, 1344), 268_569)])
def test_grid_anchors_default_pyramid_bitwise(padded, total):
    shapes = fpn_shapes(*padded)
    ours = ops.grid_anchors(shapes, padded)
    ref = torchvision_anchors(shapes, padded, ops.anchors.DEFAULT_SIZES, ((0.5, 1.0, 2.0),) * 5)
    assert ours.shape == (total, 4) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
    assert sum(ops.num_anchors_per_level(shapes, 3)) == total


def test_pool_level_stride_is_floor_division():
    # facts §3: H_pad 800 over 13 rows -> 61, W_pad 1088 over 17 columns -> 64
    assert ops.anchor_strides(fpn_shapes(800, 1088), (800, 1088))[-1] == (61, 64)
    anchors = ops.grid_anchors(fpn_shapes(800, 1088), (800, 1088))
    pool = anchors[-13 * 17 * 3:].reshape(13, 17, 3, 4)                     # (fh, fw, A, 4)
    np.testing.assert_array_equal(pool[1, 0, 1], [-256, 61 - 256, 256, 61 + 256])   # cell (y=1, x=0), ratio 1
    np.testing.assert_array_equal(pool[0, 2, 0], [128 - 362, -181, 128 + 362, 181])  # cell (0, 2), ratio 0.5


def test_flat_index_order():
    a = ops.grid_anchors([(2, 3)], (8, 12), sizes=((4,),), aspect_ratios=(0.5, 1.0, 2.0))   # strides 4, 4
    cell = ops.cell_anchors((4,), (0.5, 1.0, 2.0))
    for y in range(2):
        for x in range(3):
            for k in range(3):
                np.testing.assert_array_equal(a[(y * 3 + x) * 3 + k], cell[k] + [4 * x, 4 * y, 4 * x, 4 * y])


size_lists = st.lists(st.integers(1, 700), min_size=1, max_size=3)
ratio_lists = st.lists(st.floats(0.1, 10.0, allow_nan=False).map(lambda v: round(v, 3)), min_size=1, max_size=3)


@settings(max_examples=40)
@given(data=st.data(), levels=st.integers(1, 4), hp=st.integers(1, 400), wp=st.integers(1, 400),
       shared_ratios=st.booleans())
def test_grid_anchors_random_configs_bitwise(data, levels, hp, wp, shared_ratios):
    sizes = tuple(tuple(data.draw(size_lists)) for _ in range(levels))
    if shared_ratios:
        ratios = tuple(data.draw(ratio_lists))
        tv_ratios = (ratios,) * levels
    else:
        ratios = tv_ratios = tuple(tuple(data.draw(ratio_lists)) for _ in range(levels))
    shapes = [(data.draw(st.integers(1, hp)), data.draw(st.integers(1, wp))) for _ in range(levels)]
    ours = ops.grid_anchors(shapes, (hp, wp), sizes, ratios)
    ref = torchvision_anchors(shapes, (hp, wp), sizes, tv_ratios)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("call, match", [
    (lambda: ops.cell_anchors((32,), (0.0,)), "aspect_ratios: expected a number > 0"),
    (lambda: ops.cell_anchors((), (1.0,)), "sizes: expected a non-empty sequence"),
    (lambda: ops.grid_anchors([(10, 10)], (80, 80)), "one entry per feature level"),
    (lambda: ops.grid_anchors([(0, 10)], (80, 80), ((32,),)), r"feature_shapes\[0\] height: expected an integer >= 1"),
    (lambda: ops.grid_anchors([(10, 10)], (80,), ((32,),)), "padded_image_shape: expected"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
