"""The Winograd F(4x4, 3x3) convolution (minimaskrcnn/nn/winograd.py) against its matrices and against torch.

The transform kernels sum each row's terms in a fixed order, so they must equal the float32 matrix formulas of
tests/naive_layers.py (matrices built there from the interpolation points) bit for bit. The whole convolution is
checked against the exact float64 result with the bound of winograd.py's docstring: gamma_{C+21} times the
Winograd magnitude |A^T| [sum_c |G||g||G^T| (*) |B^T||d||B|] |A| (+ |bias|, + |residual|); against torch, whose
direct convolution errs by at most gamma_{9C+1} sum |g||d|, by the sum of the two bounds.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minimaskrcnn.nn import layers, winograd
import oracle
from naive_layers import (WINOGRAD_G, conv2d_naive, gamma_bound, winograd_conv3x3_naive,
                          winograd_input_transform_naive, winograd_output_transform_naive)


def random_array(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def block_pairs(rng, n):
    """Arbitrary consecutive blocks (start, stop) covering 0..n."""
    bounds = sorted({0, n, *rng.integers(0, n + 1, 2).tolist()})
    return list(zip(bounds[:-1], bounds[1:]))


@given(c=st.integers(1, 4), n=st.integers(0, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       relu=st.booleans(), seed=st.integers(0, 2**31), step=st.integers(1, 3))
def test_transform_kernels_equal_the_matrix_formulas_bitwise(c, n, h, w, relu, seed, step):
    """Each kernel run as `run_interleaved` splits it over `step` threads (here one after the other)."""
    rng = np.random.default_rng(seed)
    th, tw = -(-h // 4), -(-w // 4)
    # image layout, in arbitrary blocks of tile rows
    x = random_array(rng, (c, h, w))
    expected = winograd_input_transform_naive(x)                             # (C, 36, TH*TW)
    m = random_array(rng, (c + 1, 36, th * tw))                              # (C', 36, TH*TW)
    bias = random_array(rng, c + 1)
    expected_out = winograd_output_transform_naive(m, bias, h, w, relu)      # (C', H, W)
    got_out = np.full_like(expected_out, np.nan)
    rows = np.zeros((step, 6, 4 * tw + 2), np.float32)                       # row buffers, reused as conv3x3 does
    cols = np.full((step, 6, 4 * tw + 2), np.nan, np.float32)                # scratch: every element written first
    tile_cols = np.full((step, 24, th * tw), np.nan, np.float32)             # scratch: A^T M of a block's tiles
    for ty0, ty1 in block_pairs(rng, th):
        got = np.full((c, 36, (ty1 - ty0) * tw), np.nan, np.float32)
        block = np.ascontiguousarray(m[:, :, ty0 * tw:ty1 * tw])
        for first in range(step):
            winograd._input_tiles_kernel(x, ty0, ty1, rows, cols, got, first, step)
            winograd._output_tiles_kernel(block, bias, ty0, ty1, relu, tile_cols, got_out, first, step)
        np.testing.assert_array_equal(got, expected[:, :, ty0 * tw:ty1 * tw])
    np.testing.assert_array_equal(got_out, expected_out)
    # channels-last RoI batch, in arbitrary blocks of RoIs; tiles numbered (roi, ty, tx)
    x = random_array(rng, (n, h, w, c))
    m = random_array(rng, (36, n * th * tw, c + 1))                          # (36, N*TH*TW, C')
    got_out = np.full((n, h, w, c + 1), np.nan, np.float32)
    pads = np.zeros((step, 4 * th + 2, 4 * tw + 2, c), np.float32)           # zero-bordered RoI buffers
    tile_cols = np.full((step, 6, 4 * tw + 2, c), np.nan, np.float32)        # scratch: every element written first
    tile_rows, out_rows = np.full((step, 24, c + 1), np.nan, np.float32), np.full((step, 4, c + 1), np.nan, np.float32)
    for n0, n1 in block_pairs(rng, n):
        got = np.full((36, (n1 - n0) * th * tw, c), np.nan, np.float32)
        block = np.ascontiguousarray(m[:, n0 * th * tw:n1 * th * tw])
        for first in range(step):
            winograd._input_tiles_rois_kernel(x, n0, n1, pads, tile_cols, got, first, step)
            winograd._output_tiles_rois_kernel(block, bias, n0, n1, relu, tile_rows, out_rows, got_out, first, step)
        for r in range(n0, n1):
            roi = slice((r - n0) * th * tw, (r - n0 + 1) * th * tw)
            np.testing.assert_array_equal(got[:, roi], winograd_input_transform_naive(
                np.ascontiguousarray(x[r].transpose(2, 0, 1))).transpose(1, 2, 0))
    for r in range(n):
        tiles = m[:, r * th * tw:(r + 1) * th * tw].transpose(2, 0, 1)           # (C', 36, TH*TW)
        np.testing.assert_array_equal(got_out[r], winograd_output_transform_naive(tiles, bias, h, w, relu)
                                      .transpose(1, 2, 0))


def winograd_reference(x, weight, bias):
    """(exact result, Winograd error bound) for one image x (C, H, W); the exact result is also the direct one."""
    exact, magnitude = winograd_conv3x3_naive(x, weight, bias)
    direct = conv2d_naive(x, weight, bias, 1, 1)
    assert np.allclose(exact, direct, rtol=1e-12, atol=1e-12 * np.abs(direct).max())   # the matrices are right
    return exact, gamma_bound(x.shape[0] + 21) * magnitude


@given(c_in=st.integers(1, 6), c_out=st.integers(1, 5), n=st.integers(0, 3), h=st.integers(1, 11),
       w=st.integers(1, 11), scale=st.sampled_from([1e-3, 1.0, 1e3]), relu=st.booleans(), with_residual=st.booleans(),
       block_bytes=st.sampled_from([1, 300, winograd.BLOCK_BYTES]), seed=st.integers(0, 2**31))
def test_winograd_convolution_within_its_bound_of_exact_and_torch(c_in, c_out, n, h, w, scale, relu, with_residual,
                                                                   block_bytes, seed):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(winograd, "BLOCK_BYTES", block_bytes)                 # many blocks, down to one tile row/RoI
        check_winograd_convolution(c_in, c_out, n, h, w, scale, relu, with_residual, seed)


def check_winograd_convolution(c_in, c_out, n, h, w, scale, relu, with_residual, seed):
    torch = oracle.torch()
    rng = np.random.default_rng(seed)
    weight, bias = random_array(rng, (c_out, c_in, 3, 3)), random_array(rng, c_out, scale)
    conv = layers.make_conv(weight, bias, padding=1)
    assert conv.winograd and conv.in_channels == c_in and conv.out_channels == c_out
    # one image
    x = random_array(rng, (c_in, h, w), scale)
    exact, bound = winograd_reference(x, weight, bias)                       # (C', H, W)
    residual = random_array(rng, exact.shape, scale) if with_residual else None
    if with_residual:
        exact, bound = exact + residual, bound + gamma_bound(c_in + 22) * np.abs(residual)
    got = layers.conv2d(x, conv, relu=relu, residual=residual)
    expected = np.maximum(exact, 0) if relu else exact
    assert got.shape == exact.shape and got.dtype == np.float32
    assert np.all(np.abs(got - expected) <= bound)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight), torch.from_numpy(bias),
                                     padding=1)[0].numpy() + (0 if residual is None else residual)
    torch_bound = gamma_bound(9 * c_in + 2) * (conv2d_naive(np.abs(x), np.abs(weight), np.abs(bias), 1, 1) +
                                               (0 if residual is None else np.abs(residual)))
    assert np.all(np.abs(got - (np.maximum(ref, 0) if relu else ref)) <= bound + torch_bound)
    # a channels-last RoI batch
    rois = random_array(rng, (n, h, w, c_in), scale)
    conv = layers.make_conv(weight, bias, padding=1, channels_last=True)
    assert conv.winograd and conv.in_channels == c_in and conv.out_channels == c_out
    got = layers.conv2d_rois(rois, conv, relu=relu)
    assert got.shape == (n, h, w, c_out) and got.dtype == np.float32
    for r in range(n):
        exact, bound = winograd_reference(np.ascontiguousarray(rois[r].transpose(2, 0, 1)), weight, bias)
        expected = (np.maximum(exact, 0) if relu else exact).transpose(1, 2, 0)
        assert np.all(np.abs(got[r] - expected) <= bound.transpose(1, 2, 0))


@pytest.mark.parametrize("c_in, c_out, h, w", [(64, 64, 50, 67), (256, 256, 25, 34), (128, 128, 13, 17)])
def test_realistic_shapes_match_torch(c_in, c_out, h, w):
    torch = oracle.torch()
    rng = np.random.default_rng(c_in + h)
    x = np.maximum(random_array(rng, (c_in, h, w)), 0)                       # post-ReLU activations
    weight = random_array(rng, (c_out, c_in, 3, 3), 1 / np.sqrt(9 * c_in))
    bias = random_array(rng, c_out, 0.1)
    got = layers.conv2d(x, layers.make_conv(weight, bias, padding=1), relu=True)
    _, magnitude = winograd_conv3x3_naive(x, weight, bias)
    direct_magnitude = conv2d_naive(np.abs(x), np.abs(weight), np.abs(bias), 1, 1)
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight),
                                                torch.from_numpy(bias), padding=1))[0].numpy()
    assert np.all(np.abs(got - ref) <= gamma_bound(c_in + 21) * magnitude +
                  gamma_bound(9 * c_in + 1) * direct_magnitude)
    # and the typical error, not just the worst case: within 1e-5 of the output scale (measured 1.7e-6 to 4.1e-6)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    # the same map as a channels-last batch of 3 identical RoIs
    rois = np.ascontiguousarray(np.stack([x.transpose(1, 2, 0)] * 3))       # (3, H, W, C)
    got_rois = layers.conv2d_rois(rois, layers.make_conv(weight, bias, padding=1, channels_last=True), relu=True)
    for r in range(3):
        assert np.abs(got_rois[r] - ref.transpose(1, 2, 0)).max() <= 1e-5 * np.abs(ref).max()


def test_packing_choice_and_errors():
    np.testing.assert_allclose(winograd.G, WINOGRAD_G, rtol=0, atol=1e-15)   # the module's G is the Toom-Cook one
    weight = np.ones((4, 3, 3, 3), np.float32)
    assert layers.make_conv(weight, padding=1).winograd                    # the default for 3x3 / 1 / 1
    assert not layers.make_conv(weight, padding=1, winograd=False).winograd
    assert not layers.make_conv(weight, padding=1, stride=2).winograd       # ResNet's strided 3x3: im2col
    for packed in (layers.make_conv(weight, padding=1), layers.make_conv(weight, padding=1, channels_last=True)):
        assert (packed.in_channels, packed.out_channels) == (3, 4)
    with pytest.raises(ValueError, match="winograd"):
        layers.make_conv(weight, padding=0, winograd=True)
    with pytest.raises(ValueError, match="x: expected"):
        layers.conv2d(np.zeros((5, 4, 4), np.float32), layers.make_conv(weight, padding=1))
    with pytest.raises(ValueError, match="too small"):
        layers.conv2d(np.zeros((3, 0, 4), np.float32), layers.make_conv(weight, padding=1))
    with pytest.raises(ValueError, match="weight"):
        winograd.pack_filters(np.ones((4, 3, 1, 1)), channels_last=False)
